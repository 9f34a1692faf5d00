// Package doctor checks a host's overlay the way an operator following the
// ops note would, by hand, with ip, cat and etcdctl: is the vxlan device's
// address the lease's /32 (not the pre-0.7.0 /16), does docker0 sit inside
// the lease (not the 192.168.x.x Docker picks when it starts before weftd),
// is ip_forward on, does every lease in etcd have its route, neighbour and FDB
// entry and no gone lease still have one, and so on.
//
// The work is split in two so that each check is a pure function that a test
// can feed any state:
//
//   - Observe* read the world (etcd, subnet.env, the kernel through a netlink
//     handle bound to one namespace, a sysctl reader) into a State;
//   - Check turns a State into one Verdict per check, each with the fix.
//
// Reads are not atomic across etcd and the kernel: a check run while weftd is
// applying a change can report an entry as missing for a moment. The fixes
// say "run again" where that matters.
package doctor

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// Status is a check's outcome.
type Status string

// The statuses, in increasing severity. Only FAIL makes the host unhealthy:
// a WARN is advice (the note's -iface tip) or a condition that will become a
// FAIL if nothing changes (a lease near its expiry).
const (
	Pass Status = "PASS"
	Warn Status = "WARN"
	Fail Status = "FAIL"
)

// Verdict is the result of one check.
type Verdict struct {
	Check  string `json:"check"`
	Status Status `json:"status"`
	What   string `json:"what"`
	Fix    string `json:"fix,omitempty"`
}

// String is the one-line form: `PASS|FAIL|WARN <check>: <what> — fix: <how>`.
// A passing check has nothing to fix and says so.
func (v Verdict) String() string {
	fix := v.Fix
	if fix == "" {
		fix = "nothing to do"
	}
	return fmt.Sprintf("%s %s: %s — fix: %s", v.Status, v.Check, v.What, fix)
}

// Report is every verdict of one run.
type Report struct {
	Healthy bool      `json:"healthy"`
	Checks  []Verdict `json:"checks"`
}

// NewReport computes Healthy: no check failed.
func NewReport(vs []Verdict) Report {
	r := Report{Healthy: true, Checks: vs}
	for _, v := range vs {
		if v.Status == Fail {
			r.Healthy = false
		}
	}
	return r
}

// Find returns the verdict of a check by name (tests and callers that
// care about one check).
func (r Report) Find(check string) (Verdict, bool) {
	for _, v := range r.Checks {
		if v.Check == check {
			return v, true
		}
	}
	return Verdict{}, false
}

// WriteText writes one line per check.
func (r Report) WriteText(w io.Writer) error {
	var b strings.Builder
	for _, v := range r.Checks {
		b.WriteString(v.String())
		b.WriteByte('\n')
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteJSON writes the report as one indented JSON object.
func (r Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("encode doctor report: %w", err)
	}
	return nil
}
