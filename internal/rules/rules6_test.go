package rules

import (
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/weft-net/weft/internal/testutil/netnstest"
)

func desired6() Desired {
	d := desired()
	d.IPv6Network = netip.MustParsePrefix("fc00:ab::/48")
	d.IPv6Subnet = netip.MustParsePrefix("fc00:ab:0:13::/64")
	return d
}

// The IPv6 chains as flanneld's order gives them, with ff00::/8 as the
// multicast exception (written out, not rendered by the code under test).
var (
	wantMasq6 = []string{
		"-N FLANNEL-POSTRTG",
		`-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "weftd masq" -j RETURN`,
		`-A FLANNEL-POSTRTG -s fc00:ab:0:13::/64 -d fc00:ab::/48 -m comment --comment "weftd masq" -j RETURN`,
		`-A FLANNEL-POSTRTG -s fc00:ab::/48 -d fc00:ab:0:13::/64 -m comment --comment "weftd masq" -j RETURN`,
		`-A FLANNEL-POSTRTG ! -s fc00:ab::/48 -d fc00:ab:0:13::/64 -m comment --comment "weftd masq" -j RETURN`,
		`-A FLANNEL-POSTRTG -s fc00:ab::/48 ! -d ff00::/8 -m comment --comment "weftd masq" -j MASQUERADE --random-fully`,
		`-A FLANNEL-POSTRTG ! -s fc00:ab::/48 -d fc00:ab::/48 -m comment --comment "weftd masq" -j MASQUERADE --random-fully`,
	}
	wantFwd6 = []string{
		"-N FLANNEL-FWD",
		`-A FLANNEL-FWD -s fc00:ab::/48 -m comment --comment "weftd forward" -j ACCEPT`,
		`-A FLANNEL-FWD -d fc00:ab::/48 -m comment --comment "weftd forward" -j ACCEPT`,
	}
	wantNFTMasq6 = []string{
		"type nat hook postrouting priority srcnat; policy accept;",
		`meta mark & 0x00004000 == 0x00004000 return comment "weftd masq"`,
		`ip6 saddr fc00:ab:0:13::/64 ip6 daddr fc00:ab::/48 return comment "weftd masq"`,
		`ip6 saddr fc00:ab::/48 ip6 daddr fc00:ab:0:13::/64 return comment "weftd masq"`,
		`ip6 saddr != fc00:ab::/48 ip6 daddr fc00:ab:0:13::/64 return comment "weftd masq"`,
		`ip6 saddr fc00:ab::/48 ip6 daddr != ff00::/8 masquerade fully-random comment "weftd masq"`,
		`ip6 saddr != fc00:ab::/48 ip6 daddr fc00:ab::/48 masquerade fully-random comment "weftd masq"`,
	}
	wantNFTFwd6 = []string{
		"type filter hook forward priority filter; policy accept;",
		`ip6 saddr fc00:ab::/48 accept comment "weftd forward"`,
		`ip6 daddr fc00:ab::/48 accept comment "weftd forward"`,
	}
)

func nftTable6(t testing.TB, ns *netnstest.NS) bool {
	t.Helper()
	_, err := ns.Run("nft", "list", "table", "ip6", NFTTable)
	return err == nil
}

// assertIP6tables checks the whole IPv6 iptables-mode state (nil = absent)
// and that no table ip6 weft exists.
func assertIP6tables(t *testing.T, ns *netnstest.NS, masq, fwd []string) {
	t.Helper()
	fam6.assertIptables(t, ns, masq, fwd)
	if nftTable6(t, ns) {
		t.Error("table ip6 weft exists in iptables mode")
	}
}

// assertNFT6 checks table ip6 weft (nil chains = absent) and that no IPv6
// iptables-mode object remains.
func assertNFT6(t *testing.T, ns *netnstest.NS, masq, fwd []string) {
	t.Helper()
	if diff := cmp.Diff(masq, fam6.nftChainLines(t, ns, NFTMasq)); diff != "" {
		t.Errorf("ip6 weft %s (-want +got):\n%s", NFTMasq, diff)
	}
	if diff := cmp.Diff(fwd, fam6.nftChainLines(t, ns, NFTFwd)); diff != "" {
		t.Errorf("ip6 weft %s (-want +got):\n%s", NFTFwd, diff)
	}
	if masq == nil && fwd == nil && nftTable6(t, ns) {
		t.Error("table ip6 weft present, want none")
	}
	for _, x := range [][3]string{{"nat", "POSTROUTING", MasqChain}, {"filter", "FORWARD", FwdChain}} {
		if l := fam6.chainLines(t, ns, x[0], x[2]); l != nil {
			t.Errorf("ip6 %s %s still present: %v", x[0], x[2], l)
		}
		if j := fam6.jumps(t, ns, x[0], x[1], x[2]); j != nil {
			t.Errorf("ip6 %s jumps remain: %v", x[1], j)
		}
	}
}

func TestIP6tablesChainsInOrder(t *testing.T) {
	ns, m := newManager(t)
	if err := m.Set(desired6()); err != nil {
		t.Fatal(err)
	}
	assertIP6tables(t, ns, wantMasq6, wantFwd6)
	assertIptables(t, ns, wantMasq, wantFwd) // the IPv4 side is unchanged
	mustCheck(t, m, false)
	if err := m.Set(desired6()); err != nil {
		t.Fatal(err)
	}
	assertIP6tables(t, ns, wantMasq6, wantFwd6)
	// Foreign IPv6 rules around ours are not drift.
	ns.MustRun(t, "ip6tables", "-w", "-t", "nat", "-I", "POSTROUTING", "1", "-s", "fd00:1::/64", "-j", "RETURN")
	ns.MustRun(t, "ip6tables", "-w", "-P", "FORWARD", "DROP")
	mustCheck(t, m, false)
	if got, _ := IP6tablesRules(desired()); got != nil {
		t.Errorf("IP6tablesRules without IPv6 = %v, want nil", got)
	}
}

func TestIP6tablesDrift(t *testing.T) {
	ns, m := newManager(t)
	if err := m.Set(desired6()); err != nil {
		t.Fatal(err)
	}
	for _, dr := range []struct {
		name string
		cmds [][]string
	}{
		{"masq chain flushed", [][]string{{"-t", "nat", "-F", MasqChain}}},
		{"forward chain flushed", [][]string{{"-F", FwdChain}}},
		{"masq rule deleted", [][]string{{"-t", "nat", "-D", MasqChain, "5"}}},
		{"masq rule duplicated", [][]string{{"-t", "nat", "-A", MasqChain, "-s", "fc00:ab:0:13::/64", "-d", "fc00:ab::/48", "-m", "comment", "--comment", MasqComment, "-j", "RETURN"}}},
		{"forward rules reordered", [][]string{
			{"-D", FwdChain, "1"},
			{"-A", FwdChain, "-s", "fc00:ab::/48", "-m", "comment", "--comment", FwdComment, "-j", "ACCEPT"},
		}},
		{"masq jump deleted", [][]string{{"-t", "nat", "-D", "POSTROUTING", "-m", "comment", "--comment", MasqComment, "-j", MasqChain}}},
		{"forward jump duplicated", [][]string{{"-A", "FORWARD", "-m", "comment", "--comment", FwdComment, "-j", FwdChain}}},
		{"forward chain deleted", [][]string{
			{"-D", "FORWARD", "-m", "comment", "--comment", FwdComment, "-j", FwdChain},
			{"-F", FwdChain},
			{"-X", FwdChain},
		}},
	} {
		t.Run(dr.name, func(t *testing.T) {
			for _, c := range dr.cmds {
				ns.MustRun(t, append([]string{"ip6tables", "-w"}, c...)...)
			}
			mustCheck(t, m, true)
			assertIP6tables(t, ns, wantMasq6, wantFwd6)
			assertIptables(t, ns, wantMasq, wantFwd)
			mustCheck(t, m, false)
		})
	}
	// A table ip6 weft made by hand in iptables mode is removed.
	ns.MustRun(t, "nft", "add", "table", "ip6", NFTTable)
	mustCheck(t, m, true)
	assertIP6tables(t, ns, wantMasq6, wantFwd6)
}

// Run repairs `ip6tables -F FLANNEL-POSTRTG` within its period.
func TestRunRepairsIPv6(t *testing.T) {
	runRepairs(t, fam6, desired6(), func(t *testing.T, ns *netnstest.NS) { assertIP6tables(t, ns, wantMasq6, wantFwd6) })
}

func TestModeSwitchIPv6(t *testing.T) {
	ns, m := newManager(t)
	d := desired6()
	if err := m.Set(d); err != nil {
		t.Fatal(err)
	}
	assertIP6tables(t, ns, wantMasq6, wantFwd6)

	d.NFTables = true
	if err := m.Set(d); err != nil {
		t.Fatal(err)
	}
	assertNFT6(t, ns, wantNFTMasq6, wantNFTFwd6)
	assertNFT(t, ns, wantNFTMasq, wantNFTFwd)
	mustCheck(t, m, false)

	// Drift of table ip6 weft is repaired.
	for _, cmd := range [][]string{
		{"nft", "flush", "chain", "ip6", NFTTable, NFTMasq},
		{"nft", "add", "rule", "ip6", NFTTable, NFTFwd, "ip6", "saddr", "fc00:ab::/48", "accept", "comment", `"weftd forward"`},
		{"nft", "delete", "table", "ip6", NFTTable},
		{"ip6tables", "-w", "-N", FwdChain},
	} {
		ns.MustRun(t, cmd...)
		mustCheck(t, m, true)
		assertNFT6(t, ns, wantNFTMasq6, wantNFTFwd6)
		mustCheck(t, m, false)
	}

	d.NFTables = false
	if err := m.Set(d); err != nil {
		t.Fatal(err)
	}
	assertIP6tables(t, ns, wantMasq6, wantFwd6)
	assertIptables(t, ns, wantMasq, wantFwd)
	mustCheck(t, m, false)
}

// Turning IPv6 off removes every IPv6 object, in both modes, and a restarted
// daemon without IPv6 removes the leftovers of one that had it.
func TestIPv6Off(t *testing.T) {
	bothModes(t, func(t *testing.T, nft bool) {
		ns, m := newManager(t)
		d := desired6()
		d.NFTables = nft
		if err := m.Set(d); err != nil {
			t.Fatal(err)
		}
		d4 := desired()
		d4.NFTables = nft
		if err := m.Set(d4); err != nil {
			t.Fatal(err)
		}
		assertIP6tables(t, ns, nil, nil)
		assertNFT6(t, ns, nil, nil)
		if nft {
			assertNFT(t, ns, wantNFTMasq, wantNFTFwd)
		} else {
			assertIptables(t, ns, wantMasq, wantFwd)
		}
		mustCheck(t, m, false)
		// IPv6 objects made by hand while IPv6 is off are drift.
		if nft {
			ns.MustRun(t, "nft", "add", "table", "ip6", NFTTable)
		} else {
			ns.MustRun(t, "ip6tables", "-w", "-t", "nat", "-N", MasqChain)
		}
		mustCheck(t, m, true)
		assertIP6tables(t, ns, nil, nil)
		assertNFT6(t, ns, nil, nil)

		// Back on, then a fresh Manager (a restart) without IPv6.
		if err := m.Set(d); err != nil {
			t.Fatal(err)
		}
		restarted := New(slog.New(slog.NewTextHandler(t.Output(), nil)), WithNetNS(int(ns.Fd())))
		defer restarted.Close()
		if err := restarted.Set(d4); err != nil {
			t.Fatal(err)
		}
		assertIP6tables(t, ns, nil, nil)
		assertNFT6(t, ns, nil, nil)
	})
}

// The raw fast path of Check covers the ip6 family: IPv6 drift leaves it.
func TestCheckFastPathIPv6(t *testing.T) {
	bothModes(t, func(t *testing.T, nft bool) {
		ns, m := newManager(t)
		d := desired6()
		d.NFTables = nft
		if err := m.Set(d); err != nil {
			t.Fatal(err)
		}
		mustCheck(t, m, false)
		hits := m.fast.hits
		mustCheck(t, m, false)
		if m.fast.hits != hits+1 {
			t.Fatalf("second check did not take the fast path (hits %d → %d)", hits, m.fast.hits)
		}
		if nft {
			ns.MustRun(t, "nft", "flush", "chain", "ip6", NFTTable, NFTMasq)
		} else {
			ns.MustRun(t, "ip6tables", "-w", "-t", "nat", "-F", MasqChain)
		}
		mustCheck(t, m, true)
		if nft {
			assertNFT6(t, ns, wantNFTMasq6, wantNFTFwd6)
		} else {
			assertIP6tables(t, ns, wantMasq6, wantFwd6)
		}
		mustCheck(t, m, false)
		hits = m.fast.hits
		mustCheck(t, m, false)
		if m.fast.hits != hits+1 {
			t.Errorf("fast path not taken after the repair (hits %d → %d)", hits, m.fast.hits)
		}
		// An IPv6 object appearing while IPv6 is off is seen as well.
		d4 := desired()
		d4.NFTables = nft
		if err := m.Set(d4); err != nil {
			t.Fatal(err)
		}
		mustCheck(t, m, false)
		mustCheck(t, m, false)
		ns.MustRun(t, "ip6tables", "-w", "-N", FwdChain)
		mustCheck(t, m, true)
		assertIP6tables(t, ns, nil, nil)
	})
}

// A restarted dual-stack daemon finds both families in place and starts no
// process; an IPv6 change must rewrite, i.e. start ip6tables-restore.
func TestRestartFindsIPv6RulesInPlace(t *testing.T) {
	ns, m := newManager(t)
	d := desired6()
	if err := m.Set(d); err != nil {
		t.Fatal(err)
	}
	restarted := New(slog.New(slog.NewTextHandler(t.Output(), nil)), WithNetNS(int(ns.Fd())),
		WithIptablesRestore("/nonexistent/iptables-restore"), WithIP6tablesRestore("/nonexistent/ip6tables-restore"))
	defer restarted.Close()
	if err := restarted.Set(d); err != nil {
		t.Fatalf("Set on rules already in place started a restore: %v", err)
	}
	mustCheck(t, restarted, false)
	for _, change := range []func(*Desired){
		func(d *Desired) { d.IPv6Subnet = netip.MustParsePrefix("fc00:ab:0:14::/64") },
		func(d *Desired) { d.IPv6Network = netip.MustParsePrefix("fc00:ab::/47") },
		func(d *Desired) { d.IPv6Network, d.IPv6Subnet = netip.Prefix{}, netip.Prefix{} },
	} {
		d2 := desired6()
		change(&d2)
		if err := restarted.Set(d2); err == nil || !strings.Contains(err.Error(), "/nonexistent/ip6tables-restore") {
			t.Errorf("Set(%+v) = %v, want a failed ip6tables rewrite", d2, err)
		}
	}
	if err := m.Set(d); err != nil {
		t.Fatal(err)
	}
	assertIP6tables(t, ns, wantMasq6, wantFwd6)
}

func TestValidateIPv6(t *testing.T) {
	p := netip.MustParsePrefix
	base := desired()
	for _, tc := range []struct {
		net6, sub6 netip.Prefix
		want       string
	}{
		{p("fc00:ab::/48"), netip.Prefix{}, "IPv6Subnet invalid Prefix: must be an IPv6 prefix"},
		{netip.Prefix{}, p("fc00:ab:0:13::/64"), "IPv6Network invalid Prefix: must be an IPv6 prefix"},
		{p("10.0.0.0/8"), p("fc00:ab:0:13::/64"), "IPv6Network 10.0.0.0/8: must be an IPv6 prefix"},
		{p("::ffff:10.0.0.0/104"), p("::ffff:10.0.0.0/120"), "IPv6Network ::ffff:10.0.0.0/104: must be an IPv6 prefix"},
		{p("fc00:ab::/48"), p("fc00:ac::/64"), "IPv6Subnet fc00:ac::/64: must lie inside IPv6Network fc00:ab::/48"},
		{p("fc00:ab::/48"), p("fc00::/16"), "IPv6Subnet fc00::/16: must lie inside"},
	} {
		d := base
		d.IPv6Network, d.IPv6Subnet = tc.net6, tc.sub6
		if err := d.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%v, %v) = %v, want error containing %q", tc.net6, tc.sub6, err, tc.want)
		}
	}
	if err := desired6().Validate(); err != nil {
		t.Errorf("Validate(dual-stack) = %v", err)
	}
}
