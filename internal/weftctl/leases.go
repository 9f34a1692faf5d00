package weftctl

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/weft-net/weft/internal/etcdopts"
	"github.com/weft-net/weft/internal/flagenv"
	"github.com/weft-net/weft/internal/lease"
)

const leasesUsage = `usage: weftctl leases <list|show|rm|reserve|unreserve> [flags]

  list [-o table|json]              every lease: subnet, public IP, backend, VTEP MAC, expiry
  show SUBNET                       one lease's value and expiry
  rm SUBNET [--yes]                 delete a lease (asks first; etcdctl rmdir)
  reserve SUBNET --public-ip IP     keep SUBNET for the host with IP, never expiring
  unreserve SUBNET                  delete a reservation (refuses live leases)

SUBNET is 172.30.19.0/24 or 172.30.19.0-24. The -etcd-* flags (and FLANNELD_ETCD_*
environment variables) are flanneld's.`

// runLeases is the seed's `etcdctl ls/get/rmdir …/subnets`, done with the
// lease package so that keys and values are read and written exactly as
// weftd does.
func runLeases(ctx context.Context, env *Env, args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprintln(env.Stderr, leasesUsage)
		if len(args) == 0 {
			return &UsageError{Msg: "missing subcommand"}
		}
		return nil
	}
	sub, args := args[0], args[1:]
	fs := flag.NewFlagSet("weftctl leases "+sub, flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	var opts etcdopts.Options
	opts.AddFlags(fs)
	output := fs.String("o", "table", "output format: table or json (list)")
	publicIP := fs.String("public-ip", "", "public IP of the host the subnet is reserved for (reserve)")
	yes := fs.Bool("yes", false, "do not ask for confirmation (rm)")

	want := map[string]int{"list": 0, "show": 1, "rm": 1, "reserve": 1, "unreserve": 1}
	n, ok := want[sub]
	if !ok {
		return &UsageError{Msg: fmt.Sprintf("unknown subcommand %q\n%s", sub, leasesUsage)}
	}
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return &UsageError{Msg: err.Error()}
	}
	if len(pos) != n {
		return &UsageError{Msg: fmt.Sprintf("%s takes %d argument(s), got %d: %q", sub, n, len(pos), pos)}
	}
	// The environment feeds the etcd flags only: FLANNELD_PUBLIC_IP is the
	// local host's address, not the one an operator reserves for.
	ip := *publicIP
	if err := flagenv.Apply(fs, "FLANNELD_", env.LookupEnv); err != nil {
		return &UsageError{Msg: err.Error()}
	}
	*publicIP = ip
	if *output != "table" && *output != "json" {
		return &UsageError{Msg: fmt.Sprintf("-o %q: must be table or json", *output)}
	}
	var subnet netip.Prefix
	if n == 1 {
		if subnet, err = parseSubnetArg(pos[0]); err != nil {
			return &UsageError{Msg: err.Error()}
		}
	}
	var attrs lease.Attrs
	if sub == "reserve" {
		a, err := netip.ParseAddr(*publicIP)
		if err != nil || !a.Is4() {
			return &UsageError{Msg: fmt.Sprintf("--public-ip %q: an IPv4 address is required", *publicIP)}
		}
		attrs.PublicIP = a
	}

	cli, err := opts.Connect(ctx)
	if err != nil {
		return err
	}
	defer cli.Close()
	logger := slog.New(slog.NewTextHandler(env.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	st := lease.NewStore(cli, opts.Prefix, logger)
	key := st.Key(subnet, netip.Prefix{})

	switch sub {
	case "list":
		return leasesList(ctx, env.Stdout, st, *output)
	case "show":
		return leasesShow(ctx, env.Stdout, st, subnet)
	case "rm":
		if err := confirmRemove(ctx, env, st, subnet, *yes); err != nil {
			return err
		}
		if err := st.Delete(ctx, subnet); err != nil {
			return err
		}
		fmt.Fprintf(env.Stdout, "deleted lease %s\n", subnet)
	case "reserve":
		if err := st.Reserve(ctx, subnet, attrs); err != nil {
			return err
		}
		fmt.Fprintf(env.Stdout, "reserved %s for %s (%s)\n", subnet, attrs.PublicIP, key)
	case "unreserve":
		if err := st.Unreserve(ctx, subnet); err != nil {
			return err
		}
		fmt.Fprintf(env.Stdout, "unreserved %s\n", subnet)
	}
	return nil
}

// confirmRemove shows what is about to be deleted, warns when a live host
// holds it (its weftd takes it straight back, so deleting only makes sense
// for a host that is gone), and asks unless --yes. Without a terminal answer
// the lease is kept: a script must say --yes.
func confirmRemove(ctx context.Context, env *Env, st *lease.Store, subnet netip.Prefix, yes bool) error {
	l, err := st.Get(ctx, subnet)
	if err != nil {
		return err
	}
	exps, err := st.Expirations(ctx, []lease.Lease{l})
	if err != nil {
		return err
	}
	switch exp := exps.Of(l); {
	case l.Reserved():
		fmt.Fprintf(env.Stderr, "warning: %s is a reservation for %s; use `leases unreserve` to drop a reservation\n", subnet, l.Attrs.PublicIP)
	case time.Until(exp) > 0:
		fmt.Fprintf(env.Stderr, "warning: %s is held by a live host, %s (its etcd lease expires in %s); "+
			"if that host's weftd is running it re-acquires the lease within a second\n",
			subnet, l.Attrs.PublicIP, expiresIn(l, exp, time.Now()))
	}
	if yes {
		return nil
	}
	fmt.Fprintf(env.Stderr, "delete lease %s of %s? [y/N] ", subnet, l.Attrs.PublicIP)
	answer, _ := bufio.NewReader(env.Stdin).ReadString('\n')
	if a := strings.ToLower(strings.TrimSpace(answer)); a == "y" || a == "yes" {
		return nil
	}
	return fmt.Errorf("lease %s not deleted (answer y, or pass --yes)", subnet)
}

// parseInterleaved lets flags follow positional arguments (`reserve SUBNET
// --public-ip IP`), which the flag package alone stops at.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// parseSubnetArg accepts 172.30.19.0/24 and the key spelling 172.30.19.0-24.
func parseSubnetArg(s string) (netip.Prefix, error) {
	var p netip.Prefix
	var err error
	if strings.Contains(s, "/") {
		p, err = netip.ParsePrefix(s)
	} else {
		p, _, err = lease.ParseKey(s)
	}
	if err != nil || !p.Addr().Is4() {
		return netip.Prefix{}, fmt.Errorf("subnet %q: want an IPv4 subnet like 172.30.19.0/24 or 172.30.19.0-24", s)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("subnet %q: host bits set; the subnet is %s", s, p.Masked())
	}
	return p, nil
}

// expiresIn renders the time left until exp as 23h59m, 5m or 42s;
// "reserved" for a key without an etcd lease.
func expiresIn(l lease.Lease, exp, now time.Time) string {
	if l.Reserved() {
		return "reserved"
	}
	d := exp.Sub(now)
	switch {
	case exp.IsZero() || d <= 0:
		return "expired"
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	default:
		return fmt.Sprintf("%dh%dm", int(d/time.Hour), int(d%time.Hour/time.Minute))
	}
}

func subnetString(l lease.Lease) string {
	if l.IPv6Subnet.IsValid() {
		return l.Subnet.String() + "," + l.IPv6Subnet.String()
	}
	return l.Subnet.String()
}

// printable makes text read from etcd safe for a terminal: anything that is
// not a graphic character (ESC and OSC sequences, newlines, tabs, DEL, C1
// controls, bidi overrides) or not UTF-8 is written as a Go escape, so that a
// forged lease can neither drive the operator's terminal nor add a row to
// the table. The subnets and addresses are parsed values and print safely.
func printable(s string) string {
	for _, r := range s {
		if r == utf8.RuneError || !unicode.IsGraphic(r) {
			q := strconv.QuoteToGraphic(s)
			return q[1 : len(q)-1]
		}
	}
	return s
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// leaseJSON is one lease in `leases list -o json`.
type leaseJSON struct {
	Key         string          `json:"key"`
	Subnet      string          `json:"subnet"`
	IPv6Subnet  string          `json:"ipv6Subnet,omitempty"`
	PublicIP    string          `json:"publicIP"`
	PublicIPv6  string          `json:"publicIPv6,omitempty"`
	BackendType string          `json:"backendType,omitempty"`
	VtepMAC     string          `json:"vtepMAC,omitempty"`
	BackendData json.RawMessage `json:"backendData,omitempty"`
	Reserved    bool            `json:"reserved"`
	Expires     *time.Time      `json:"expires,omitempty"`
	ExpiresIn   string          `json:"expiresIn"`
}

func leasesList(ctx context.Context, w io.Writer, st *lease.Store, output string) error {
	leases, _, err := st.List(ctx)
	if err != nil {
		return err
	}
	exps, err := st.Expirations(ctx, leases)
	if err != nil {
		return err
	}
	now := time.Now()
	if output == "json" {
		out := make([]leaseJSON, 0, len(leases))
		for _, l := range leases {
			j := leaseJSON{
				Key: st.Key(l.Subnet, l.IPv6Subnet), Subnet: l.Subnet.String(),
				PublicIP: l.Attrs.PublicIP.String(), BackendType: l.Attrs.BackendType,
				VtepMAC: l.Attrs.VtepMAC(), BackendData: l.Attrs.BackendData,
				Reserved: l.Reserved(), ExpiresIn: expiresIn(l, exps.Of(l), now),
			}
			if l.IPv6Subnet.IsValid() {
				j.IPv6Subnet = l.IPv6Subnet.String()
			}
			if l.Attrs.PublicIPv6.IsValid() {
				j.PublicIPv6 = l.Attrs.PublicIPv6.String()
			}
			if !l.Reserved() {
				e := exps.Of(l).UTC().Truncate(time.Second)
				j.Expires = &e
			}
			out = append(out, j)
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SUBNET\tPUBLIC-IP\tBACKEND\tVTEP-MAC\tEXPIRES")
	for _, l := range leases {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", subnetString(l), l.Attrs.PublicIP,
			orDash(printable(l.Attrs.BackendType)), orDash(printable(l.Attrs.VtepMAC())), expiresIn(l, exps.Of(l), now))
	}
	return tw.Flush()
}

func leasesShow(ctx context.Context, w io.Writer, st *lease.Store, subnet netip.Prefix) error {
	l, err := st.Get(ctx, subnet)
	if err != nil {
		return err
	}
	exps, err := st.Expirations(ctx, []lease.Lease{l})
	if err != nil {
		return err
	}
	val, err := l.Attrs.MarshalJSON()
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "key:     %s\nvalue:   %s\n", st.Key(l.Subnet, l.IPv6Subnet), printable(string(val)))
	if l.Reserved() {
		fmt.Fprintln(w, "expires: reserved")
	} else {
		exp := exps.Of(l)
		fmt.Fprintf(w, "expires: %s (%s, etcd lease %x)\n", expiresIn(l, exp, time.Now()), exp.UTC().Format(time.RFC3339), l.EtcdLease)
	}
	return nil
}
