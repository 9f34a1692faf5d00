package rules

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/weft-net/weft/internal/testutil/netnstest"
)

func newManager(t testing.TB) (*netnstest.NS, *Manager) {
	t.Helper()
	ns := netnstest.New(t, "rul")
	m := New(slog.New(slog.NewTextHandler(t.Output(), nil)), WithNetNS(int(ns.Fd())))
	t.Cleanup(func() { m.Close() })
	return ns, m
}

func desired() Desired {
	return Desired{
		Network:      netip.MustParsePrefix("172.30.0.0/16"),
		Subnet:       netip.MustParsePrefix("172.30.19.0/24"),
		IPMasq:       true,
		RandomFully:  true,
		ForwardRules: true,
	}
}

// The chains exactly as COMPAT.md orders them (written out, not rendered by
// the code under test).
var (
	wantMasq = []string{
		"-N FLANNEL-POSTRTG",
		`-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "weftd masq" -j RETURN`,
		`-A FLANNEL-POSTRTG -s 172.30.19.0/24 -d 172.30.0.0/16 -m comment --comment "weftd masq" -j RETURN`,
		`-A FLANNEL-POSTRTG -s 172.30.0.0/16 -d 172.30.19.0/24 -m comment --comment "weftd masq" -j RETURN`,
		`-A FLANNEL-POSTRTG ! -s 172.30.0.0/16 -d 172.30.19.0/24 -m comment --comment "weftd masq" -j RETURN`,
		`-A FLANNEL-POSTRTG -s 172.30.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "weftd masq" -j MASQUERADE --random-fully`,
		`-A FLANNEL-POSTRTG ! -s 172.30.0.0/16 -d 172.30.0.0/16 -m comment --comment "weftd masq" -j MASQUERADE --random-fully`,
	}
	wantFwd = []string{
		"-N FLANNEL-FWD",
		`-A FLANNEL-FWD -s 172.30.0.0/16 -m comment --comment "weftd forward" -j ACCEPT`,
		`-A FLANNEL-FWD -d 172.30.0.0/16 -m comment --comment "weftd forward" -j ACCEPT`,
	}
	masqJump = `-A POSTROUTING -m comment --comment "weftd masq" -j FLANNEL-POSTRTG`
	fwdJump  = `-A FORWARD -m comment --comment "weftd forward" -j FLANNEL-FWD`
)

// testFamily is what the test helpers need to know of one address family.
type testFamily struct {
	iptables string // iptables or ip6tables
	nft      string // the nftables family of table weft: ip or ip6
	label    string // prefix of messages: "" or "ip6 "
}

var (
	fam4 = testFamily{iptables: "iptables", nft: "ip"}
	fam6 = testFamily{iptables: "ip6tables", nft: "ip6", label: "ip6 "}
)

// chainLines is `iptables -t table -S chain`, or nil when the chain is
// absent. The whole table is listed and filtered because iptables 1.8.9
// reports a missing chain as "incompatible".
func (f testFamily) chainLines(t testing.TB, ns *netnstest.NS, table, chain string) []string {
	t.Helper()
	out := ns.MustRun(t, f.iptables, "-w", "-t", table, "-S")
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if l == "-N "+chain || strings.HasPrefix(l, "-A "+chain+" ") || strings.HasPrefix(l, "-P "+chain+" ") {
			lines = append(lines, l)
		}
	}
	return lines
}

// jumps returns the rules of base that jump to chain.
func (f testFamily) jumps(t testing.TB, ns *netnstest.NS, table, base, chain string) []string {
	t.Helper()
	var out []string
	for _, l := range f.chainLines(t, ns, table, base) {
		if strings.HasSuffix(l, "-j "+chain) {
			out = append(out, l)
		}
	}
	return out
}

// nftChainLines returns the body lines of chain in table <f.nft> weft, or nil.
func (f testFamily) nftChainLines(t testing.TB, ns *netnstest.NS, chain string) []string {
	t.Helper()
	out, err := ns.Run("nft", "list", "chain", f.nft, NFTTable, chain)
	if err != nil {
		return nil
	}
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(l)
		if l == "" || l == "}" || strings.HasPrefix(l, "table ") || strings.HasPrefix(l, "chain ") {
			continue
		}
		lines = append(lines, l)
	}
	return lines
}

// assertIptables checks the family's whole iptables-mode state (nil = the
// chain absent).
func (f testFamily) assertIptables(t *testing.T, ns *netnstest.NS, masq, fwd []string) {
	t.Helper()
	for _, c := range []struct {
		table, base, chain, jump string
		want                     []string
	}{{"nat", "POSTROUTING", MasqChain, masqJump, masq}, {"filter", "FORWARD", FwdChain, fwdJump, fwd}} {
		if diff := cmp.Diff(c.want, f.chainLines(t, ns, c.table, c.chain)); diff != "" {
			t.Errorf("%s%s %s (-want +got):\n%s", f.label, c.table, c.chain, diff)
		}
		wantJ := []string{c.jump}
		if c.want == nil {
			wantJ = nil
		}
		if diff := cmp.Diff(wantJ, f.jumps(t, ns, c.table, c.base, c.chain)); diff != "" {
			t.Errorf("%s%s jumps (-want +got):\n%s", f.label, c.base, diff)
		}
	}
}

// assertIptables checks the whole IPv4 iptables-mode state.
func assertIptables(t *testing.T, ns *netnstest.NS, masq, fwd []string) {
	t.Helper()
	fam4.assertIptables(t, ns, masq, fwd)
}

// bothModes runs f as a subtest in iptables mode and in nftables mode.
func bothModes(t *testing.T, f func(t *testing.T, nft bool)) {
	for _, nft := range []bool{false, true} {
		name := "iptables"
		if nft {
			name = "nftables"
		}
		t.Run(name, func(t *testing.T) { f(t, nft) })
	}
}

// runRepairs checks that Run restores f's masquerade chain, flushed by
// hand, within its period.
func runRepairs(t *testing.T, f testFamily, d Desired, assert func(t *testing.T, ns *netnstest.NS)) {
	ns, m := newManager(t)
	if err := m.Set(d); err != nil {
		t.Fatal(err)
	}
	want := len(f.chainLines(t, ns, "nat", MasqChain))
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { m.Run(ctx, 20*time.Millisecond); close(done) }()
	defer func() { cancel(); <-done }()

	ns.MustRun(t, f.iptables, "-w", "-t", "nat", "-F", MasqChain)
	deadline := time.Now().Add(5 * time.Second)
	for len(f.chainLines(t, ns, "nat", MasqChain)) != want {
		if time.Now().After(deadline) {
			t.Fatalf("%schain not restored by Run: %v", f.label, f.chainLines(t, ns, "nat", MasqChain))
		}
		time.Sleep(10 * time.Millisecond)
	}
	assert(t, ns)
}

func nftTable(t testing.TB, ns *netnstest.NS) (string, bool) {
	t.Helper()
	out, err := ns.Run("nft", "list", "table", "ip", NFTTable)
	if err != nil {
		return "", false
	}
	return out, true
}

func mustCheck(t *testing.T, m *Manager, wantChanged bool) {
	t.Helper()
	changed, err := m.Check()
	if err != nil {
		t.Fatal(err)
	}
	if changed != wantChanged {
		t.Fatalf("Check changed=%v, want %v", changed, wantChanged)
	}
}

func TestIptablesChainsInOrder(t *testing.T) {
	ns, m := newManager(t)
	if err := m.Set(desired()); err != nil {
		t.Fatal(err)
	}
	assertIptables(t, ns, wantMasq, wantFwd)
	if _, ok := nftTable(t, ns); ok {
		t.Error("table ip weft exists in iptables mode")
	}
	mustCheck(t, m, false)
	// Set again is idempotent: still one jump each.
	if err := m.Set(desired()); err != nil {
		t.Fatal(err)
	}
	assertIptables(t, ns, wantMasq, wantFwd)
	// Rules other software adds around ours are not drift.
	ns.MustRun(t, "iptables", "-w", "-t", "nat", "-A", "POSTROUTING", "-s", "10.1.0.0/16", "-j", "MASQUERADE")
	ns.MustRun(t, "iptables", "-w", "-t", "nat", "-I", "POSTROUTING", "1", "-s", "10.2.0.0/16", "-j", "RETURN")
	ns.MustRun(t, "iptables", "-w", "-P", "FORWARD", "DROP")
	mustCheck(t, m, false)
}

func TestIptablesDrift(t *testing.T) {
	ns, m := newManager(t)
	if err := m.Set(desired()); err != nil {
		t.Fatal(err)
	}
	drifts := []struct {
		name string
		cmds [][]string
	}{
		{"masq chain flushed", [][]string{{"-t", "nat", "-F", MasqChain}}},
		{"forward chain flushed", [][]string{{"-F", FwdChain}}},
		{"masq rule deleted", [][]string{{"-t", "nat", "-D", MasqChain, "3"}}},
		{"masq rule duplicated", [][]string{{"-t", "nat", "-A", MasqChain, "-s", "172.30.19.0/24", "-d", "172.30.0.0/16", "-m", "comment", "--comment", MasqComment, "-j", "RETURN"}}},
		{"masq rules reordered", [][]string{
			{"-t", "nat", "-D", MasqChain, "1"},
			{"-t", "nat", "-A", MasqChain, "-m", "mark", "--mark", "0x4000/0x4000", "-m", "comment", "--comment", MasqComment, "-j", "RETURN"},
		}},
		{"forward rules reordered", [][]string{
			{"-D", FwdChain, "1"},
			{"-A", FwdChain, "-s", "172.30.0.0/16", "-m", "comment", "--comment", FwdComment, "-j", "ACCEPT"},
		}},
		{"masq jump deleted", [][]string{{"-t", "nat", "-D", "POSTROUTING", "-m", "comment", "--comment", MasqComment, "-j", MasqChain}}},
		{"masq jump duplicated", [][]string{{"-t", "nat", "-I", "POSTROUTING", "1", "-m", "comment", "--comment", MasqComment, "-j", MasqChain}}},
		{"forward jump duplicated", [][]string{{"-A", "FORWARD", "-m", "comment", "--comment", FwdComment, "-j", FwdChain}}},
		{"foreign jump added", [][]string{{"-t", "nat", "-A", "POSTROUTING", "-s", "10.0.0.0/8", "-j", MasqChain}}},
		{"masq chain deleted", [][]string{
			{"-t", "nat", "-D", "POSTROUTING", "-m", "comment", "--comment", MasqComment, "-j", MasqChain},
			{"-t", "nat", "-F", MasqChain},
			{"-t", "nat", "-X", MasqChain},
		}},
		{"weft table created by hand", nil},
	}
	for _, dr := range drifts {
		t.Run(dr.name, func(t *testing.T) {
			for _, c := range dr.cmds {
				ns.MustRun(t, append([]string{"iptables", "-w"}, c...)...)
			}
			if dr.cmds == nil {
				ns.MustRun(t, "nft", "add", "table", "ip", NFTTable)
			}
			mustCheck(t, m, true)
			assertIptables(t, ns, wantMasq, wantFwd)
			if _, ok := nftTable(t, ns); ok {
				t.Error("table ip weft survived the resync in iptables mode")
			}
			mustCheck(t, m, false)
		})
	}
}

// After swapping flanneld for weftd the kernel holds flanneld's chains and
// jumps; weft takes them over with exactly one jump of its own.
func TestIptablesAdoptsFlannelLeftovers(t *testing.T) {
	ns, m := newManager(t)
	for _, c := range [][]string{
		{"-t", "nat", "-N", MasqChain},
		{"-t", "nat", "-A", "POSTROUTING", "-m", "comment", "--comment", "flanneld masq", "-j", MasqChain},
		{"-t", "nat", "-A", MasqChain, "-s", "172.30.0.0/16", "-d", "172.30.0.0/16", "-m", "comment", "--comment", "flanneld masq", "-j", "RETURN"},
		{"-N", FwdChain},
		{"-A", "FORWARD", "-m", "comment", "--comment", "flanneld forward", "-j", FwdChain},
		{"-A", "FORWARD", "-m", "comment", "--comment", "flanneld forward", "-j", FwdChain},
	} {
		ns.MustRun(t, append([]string{"iptables", "-w"}, c...)...)
	}
	if err := m.Set(desired()); err != nil {
		t.Fatal(err)
	}
	assertIptables(t, ns, wantMasq, wantFwd)
}

func TestIptablesOptions(t *testing.T) {
	ns, m := newManager(t)
	d := desired()
	if err := m.Set(d); err != nil {
		t.Fatal(err)
	}

	d.RandomFully = false
	if err := m.Set(d); err != nil {
		t.Fatal(err)
	}
	noRF := make([]string, len(wantMasq))
	for i, l := range wantMasq {
		noRF[i] = strings.TrimSuffix(l, " --random-fully")
	}
	assertIptables(t, ns, noRF, wantFwd)
	mustCheck(t, m, false)

	d.RandomFully = true
	d.ForwardRules = false
	if err := m.Set(d); err != nil {
		t.Fatal(err)
	}
	assertIptables(t, ns, wantMasq, nil)
	// A FLANNEL-FWD recreated by hand is removed again.
	ns.MustRun(t, "iptables", "-w", "-N", FwdChain)
	mustCheck(t, m, true)
	assertIptables(t, ns, wantMasq, nil)

	d.ForwardRules = true
	d.IPMasq = false
	if err := m.Set(d); err != nil {
		t.Fatal(err)
	}
	assertIptables(t, ns, nil, wantFwd)
	mustCheck(t, m, false)

	d.ForwardRules = false
	if err := m.Set(d); err != nil {
		t.Fatal(err)
	}
	assertIptables(t, ns, nil, nil)
	mustCheck(t, m, false)

	// A new lease rewrites the chain for the new subnet.
	d = desired()
	d.Subnet = netip.MustParsePrefix("172.30.83.0/24")
	if err := m.Set(d); err != nil {
		t.Fatal(err)
	}
	moved := make([]string, len(wantMasq))
	for i, l := range wantMasq {
		moved[i] = strings.ReplaceAll(l, "172.30.19.0/24", "172.30.83.0/24")
	}
	assertIptables(t, ns, moved, wantFwd)
}

var (
	wantNFTMasq = []string{
		"type nat hook postrouting priority srcnat; policy accept;",
		`meta mark & 0x00004000 == 0x00004000 return comment "weftd masq"`,
		`ip saddr 172.30.19.0/24 ip daddr 172.30.0.0/16 return comment "weftd masq"`,
		`ip saddr 172.30.0.0/16 ip daddr 172.30.19.0/24 return comment "weftd masq"`,
		`ip saddr != 172.30.0.0/16 ip daddr 172.30.19.0/24 return comment "weftd masq"`,
		`ip saddr 172.30.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random comment "weftd masq"`,
		`ip saddr != 172.30.0.0/16 ip daddr 172.30.0.0/16 masquerade fully-random comment "weftd masq"`,
	}
	wantNFTFwd = []string{
		"type filter hook forward priority filter; policy accept;",
		`ip saddr 172.30.0.0/16 accept comment "weftd forward"`,
		`ip daddr 172.30.0.0/16 accept comment "weftd forward"`,
	}
)

func assertNFT(t *testing.T, ns *netnstest.NS, masq, fwd []string) {
	t.Helper()
	if diff := cmp.Diff(masq, fam4.nftChainLines(t, ns, NFTMasq)); diff != "" {
		t.Errorf("ip weft %s (-want +got):\n%s", NFTMasq, diff)
	}
	if diff := cmp.Diff(fwd, fam4.nftChainLines(t, ns, NFTFwd)); diff != "" {
		t.Errorf("ip weft %s (-want +got):\n%s", NFTFwd, diff)
	}
	// No iptables-mode object may remain.
	if l := fam4.chainLines(t, ns, "nat", MasqChain); l != nil {
		t.Errorf("nat %s still present: %v", MasqChain, l)
	}
	if l := fam4.chainLines(t, ns, "filter", FwdChain); l != nil {
		t.Errorf("filter %s still present: %v", FwdChain, l)
	}
	if j := fam4.jumps(t, ns, "nat", "POSTROUTING", MasqChain); j != nil {
		t.Errorf("POSTROUTING jumps remain: %v", j)
	}
	if j := fam4.jumps(t, ns, "filter", "FORWARD", FwdChain); j != nil {
		t.Errorf("FORWARD jumps remain: %v", j)
	}
}

func TestModeSwitch(t *testing.T) {
	ns, m := newManager(t)
	d := desired()
	if err := m.Set(d); err != nil {
		t.Fatal(err)
	}
	assertIptables(t, ns, wantMasq, wantFwd)

	d.NFTables = true
	if err := m.Set(d); err != nil {
		t.Fatal(err)
	}
	assertNFT(t, ns, wantNFTMasq, wantNFTFwd)
	mustCheck(t, m, false)

	d.NFTables = false
	if err := m.Set(d); err != nil {
		t.Fatal(err)
	}
	assertIptables(t, ns, wantMasq, wantFwd)
	if _, ok := nftTable(t, ns); ok {
		t.Error("table ip weft survived the switch to iptables mode")
	}
	mustCheck(t, m, false)
}

func TestNFTablesOptionsAndDrift(t *testing.T) {
	ns, m := newManager(t)
	d := desired()
	d.NFTables = true
	if err := m.Set(d); err != nil {
		t.Fatal(err)
	}
	assertNFT(t, ns, wantNFTMasq, wantNFTFwd)

	for _, dr := range []struct {
		name string
		cmd  []string
	}{
		{"masq chain flushed", []string{"nft", "flush", "chain", "ip", NFTTable, NFTMasq}},
		{"forward chain deleted", []string{"nft", "delete", "chain", "ip", NFTTable, NFTFwd}},
		{"rule duplicated", []string{"nft", "add", "rule", "ip", NFTTable, NFTFwd, "ip", "saddr", "172.30.0.0/16", "accept", "comment", `"weftd forward"`}},
		{"table deleted", []string{"nft", "delete", "table", "ip", NFTTable}},
		{"iptables chain recreated", []string{"iptables", "-w", "-t", "nat", "-N", MasqChain}},
	} {
		t.Run(dr.name, func(t *testing.T) {
			ns.MustRun(t, dr.cmd...)
			mustCheck(t, m, true)
			assertNFT(t, ns, wantNFTMasq, wantNFTFwd)
			mustCheck(t, m, false)
		})
	}

	d.RandomFully = false
	d.ForwardRules = false
	if err := m.Set(d); err != nil {
		t.Fatal(err)
	}
	noRF := make([]string, len(wantNFTMasq))
	for i, l := range wantNFTMasq {
		noRF[i] = strings.ReplaceAll(l, " fully-random", "")
	}
	assertNFT(t, ns, noRF, nil)

	d.IPMasq = false
	if err := m.Set(d); err != nil {
		t.Fatal(err)
	}
	if _, ok := nftTable(t, ns); ok {
		t.Error("table ip weft present with neither masquerade nor forward rules")
	}
	mustCheck(t, m, false)
}

func TestRunRepairs(t *testing.T) {
	runRepairs(t, fam4, desired(), func(t *testing.T, ns *netnstest.NS) { assertIptables(t, ns, wantMasq, wantFwd) })
}

func TestValidate(t *testing.T) {
	p := netip.MustParsePrefix
	for _, tc := range []struct {
		d    Desired
		want string
	}{
		{Desired{Subnet: p("172.30.19.0/24")}, "Network invalid Prefix: must be an IPv4 prefix"},
		{Desired{Network: p("fc00::/48"), Subnet: p("172.30.19.0/24")}, "Network fc00::/48"},
		{Desired{Network: p("172.30.0.0/16")}, "Subnet invalid Prefix"},
		{Desired{Network: p("172.30.0.0/16"), Subnet: p("10.1.0.0/24")}, "Subnet 10.1.0.0/24: must lie inside Network 172.30.0.0/16"},
		{Desired{Network: p("172.30.0.0/16"), Subnet: p("172.0.0.0/8")}, "Subnet 172.0.0.0/8: must lie inside"},
	} {
		err := tc.d.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%+v) = %v, want error containing %q", tc.d, err, tc.want)
		}
	}
	// Set refuses before touching anything.
	if err := New(slog.New(slog.DiscardHandler)).Set(Desired{}); err == nil {
		t.Error("Set(Desired{}) succeeded")
	}
}

// A restarted daemon finds its rules in place and starts no process: the
// second Manager's iptables-restore does not exist, so any fork would fail.
func TestRestartFindsRulesInPlace(t *testing.T) {
	ns, m := newManager(t)
	d := desired()
	if err := m.Set(d); err != nil {
		t.Fatal(err)
	}
	restarted := New(slog.New(slog.NewTextHandler(t.Output(), nil)), WithNetNS(int(ns.Fd())), WithIptablesRestore("/nonexistent/iptables-restore"))
	defer restarted.Close()
	if err := restarted.Set(d); err != nil {
		t.Fatalf("Set on rules already in place started iptables-restore: %v", err)
	}
	mustCheck(t, restarted, false)
	assertIptables(t, ns, wantMasq, wantFwd)

	// Anything different must be rewritten, i.e. must fork.
	for _, change := range []func(*Desired){
		func(d *Desired) { d.RandomFully = false },
		func(d *Desired) { d.Subnet = netip.MustParsePrefix("172.30.20.0/24") },
		func(d *Desired) { d.Network = netip.MustParsePrefix("172.16.0.0/12") },
		func(d *Desired) { d.ForwardRules = false },
	} {
		d2 := desired()
		change(&d2)
		if err := restarted.Set(d2); err == nil || !strings.Contains(err.Error(), "/nonexistent/iptables-restore") {
			t.Errorf("Set(%+v) = %v, want a failed rewrite", d2, err)
		}
	}
	// A duplicated jump is not "in place" either.
	ns.MustRun(t, "iptables", "-w", "-t", "nat", "-A", "POSTROUTING", "-m", "comment", "--comment", MasqComment, "-j", MasqChain)
	if err := restarted.Set(d); err == nil {
		t.Error("Set with a duplicated jump did not try to rewrite")
	}
	if err := m.Set(d); err != nil {
		t.Fatal(err)
	}
	assertIptables(t, ns, wantMasq, wantFwd)
}
