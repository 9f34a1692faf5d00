package dataplane

// Peers the dataplane leaves out. One peer that cannot be programmed — its
// lease asks for what this backend cannot do, its address is off the L2
// segment (host-gw), or somebody else's route holds its subnet — must not
// make every apply fail: /readyz would then fail on every host of the
// overlay for one bad lease. Such a peer is skipped, logged once per change,
// counted by reason and listed by Loop.Warnings; every other peer is
// programmed and the apply succeeds.

import (
	"cmp"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
)

// Why a peer is not programmed: the label values of the
// weft_dataplane_peers_skipped metric.
const (
	// SkipInvalid: its lease asks for what this backend cannot program
	// (another backend type, no or a clashing VtepMAC, …).
	SkipInvalid = "invalid"
	// SkipUnreachable: its address is not on a subnet connected to the
	// underlay interface, so no direct route to it can exist (host-gw).
	SkipUnreachable = "unreachable"
	// SkipForeignRoute: a route weft does not own holds its subnet; weft
	// leaves it in place.
	SkipForeignRoute = "foreign_route"
)

// SkipReasons lists every skip reason, for metrics that start at zero.
var SkipReasons = [...]string{SkipInvalid, SkipUnreachable, SkipForeignRoute}

// skippedPeer is a peer the last apply left out, and why.
type skippedPeer struct {
	peer   netip.Prefix
	reason string // one of SkipReasons
	msg    string
}

func (s skippedPeer) String() string {
	return fmt.Sprintf("peer %s not programmed (%s): %s", s.peer, s.reason, s.msg)
}

// skipReporter is a backend that says which peers its last apply left out
// (host-gw, vxlan, and the dual-stack backend over them). It is called on
// the loop's goroutine, after an apply.
type skipReporter interface {
	skipped() []skippedPeer
}

// peerNotes records the peers an apply leaves out and logs each once, not
// on every apply; a peer that is fixed or gone and breaks again is logged
// again. An apply calls begin, notes what it skips, then end; what the
// last finished apply noted is what skipped reports.
type peerNotes struct {
	prev, cur map[netip.Prefix]peerNote
}

type peerNote struct{ reason, msg string }

func (n *peerNotes) begin() { n.cur = make(map[netip.Prefix]peerNote) }

// noteAs records a peer skipped for reason. Outside begin … end it only
// logs (it cannot happen: every path that skips a peer begins).
func (n *peerNotes) noteAs(log *slog.Logger, subnet netip.Prefix, reason, msg string) {
	pn := peerNote{reason, msg}
	if n.cur != nil {
		n.cur[subnet] = pn
	}
	if n.prev[subnet] != pn {
		log.Warn("skipping peer lease", "peer", subnet, "reason", reason, "why", msg)
	}
}

// end makes what was noted since begin the current set; without a begin
// (an apply that recomputed nothing) the current set stays.
func (n *peerNotes) end() {
	if n.cur != nil {
		n.prev, n.cur = n.cur, nil
	}
}

// skipped lists the peers of the last finished apply, by subnet.
func (n *peerNotes) skipped() []skippedPeer {
	if len(n.prev) == 0 {
		return nil
	}
	out := make([]skippedPeer, 0, len(n.prev))
	for p, pn := range n.prev {
		out = append(out, skippedPeer{peer: p, reason: pn.reason, msg: pn.msg})
	}
	slices.SortFunc(out, func(a, b skippedPeer) int {
		return cmp.Or(a.peer.Addr().Compare(b.peer.Addr()), cmp.Compare(a.peer.Bits(), b.peer.Bits()))
	})
	return out
}
