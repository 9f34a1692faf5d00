package rules

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netconf"
	"github.com/weft-net/weft/internal/testutil/netnstest"
)

// peer is a lease with the given PublicIP (and PublicIPv6, "" for none).
func peer(pub, pub6 string) *lease.Lease {
	l := &lease.Lease{Attrs: lease.Attrs{PublicIP: netip.MustParseAddr(pub), BackendType: "vxlan"}}
	if pub6 != "" {
		l.Attrs.PublicIPv6 = netip.MustParseAddr(pub6)
	}
	return l
}

func guarded(nft bool) Desired {
	d := desired()
	d.NFTables = nft
	d.EncapPorts = []uint16{8472}
	return d
}

// guardSet returns the elements of a set of table inet weft-guard, sorted,
// and whether the set exists.
func guardSet(t testing.TB, ns *netnstest.NS, name string) ([]string, bool) {
	t.Helper()
	out, err := ns.Run("nft", "-j", "list", "set", "inet", GuardTable, name)
	if err != nil {
		return nil, false
	}
	var doc struct {
		Nftables []struct {
			Set *struct {
				Elem []json.RawMessage `json:"elem"`
			} `json:"set"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("parse nft -j list set %s: %v\n%s", name, err, out)
	}
	elems := []string{}
	for _, o := range doc.Nftables {
		if o.Set == nil {
			continue
		}
		for _, e := range o.Set.Elem {
			var s string
			var n int
			if json.Unmarshal(e, &s) == nil {
				elems = append(elems, s)
			} else if json.Unmarshal(e, &n) == nil {
				elems = append(elems, strconv.Itoa(n))
			} else {
				t.Fatalf("set %s: element %s", name, e)
			}
		}
	}
	slices.Sort(elems)
	return elems, true
}

// assertPeers checks the guard's peer sets (nil: the set is absent).
func assertPeers(t *testing.T, ns *netnstest.NS, want4, want6 []string) {
	t.Helper()
	for _, x := range []struct {
		set  string
		want []string
	}{{guardPeers4, want4}, {guardPeers6, want6}} {
		got, ok := guardSet(t, ns, x.set)
		if !ok {
			got = nil
		}
		if diff := cmp.Diff(x.want, got); diff != "" {
			t.Errorf("set inet %s %s (-want +got):\n%s", GuardTable, x.set, diff)
		}
	}
}

// guardDrops is the packets count of the guard's counter.
func guardDrops(t testing.TB, ns *netnstest.NS) uint64 {
	t.Helper()
	out := ns.MustRun(t, "nft", "-j", "list", "counter", "inet", GuardTable, GuardCounter)
	var doc struct {
		Nftables []struct {
			Counter *struct {
				Packets uint64 `json:"packets"`
			} `json:"counter"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("parse counter: %v\n%s", err, out)
	}
	for _, o := range doc.Nftables {
		if o.Counter != nil {
			return o.Counter.Packets
		}
	}
	t.Fatalf("no counter in %s", out)
	return 0
}

// The guard's chain, as nft prints it (written out, not rendered by the code
// under test).
var wantGuardChain = []string{
	`udp dport @encap-ports ip saddr != @peers4 counter name "dropped" drop`,
	`udp dport @encap-ports ip6 saddr != @peers6 counter name "dropped" drop`,
}

func guardChainLines(t testing.TB, ns *netnstest.NS) []string {
	t.Helper()
	out, err := ns.Run("nft", "list", "chain", "inet", GuardTable, GuardChain)
	if err != nil {
		return nil
	}
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(l)
		if l == "" || l == "}" || strings.HasPrefix(l, "table ") || strings.HasPrefix(l, "chain ") || strings.HasPrefix(l, "type ") {
			continue
		}
		lines = append(lines, l)
	}
	return lines
}

func TestEncapPorts(t *testing.T) {
	for _, c := range []struct {
		config string
		want   []uint16
	}{
		{`{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}`, []uint16{8472}},
		{`{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan","Port":4789}}`, []uint16{4789}},
		{`{"Network":"10.0.0.0/8","Backend":{"Type":"udp"}}`, []uint16{8285}},
		{`{"Network":"10.0.0.0/8","Backend":{"Type":"udp","Port":9000}}`, []uint16{9000}},
		{`{"Network":"10.0.0.0/8","Backend":{"Type":"wireguard"}}`, []uint16{51820}},
		{`{"Network":"10.0.0.0/8","EnableIPv6":true,"IPv6Network":"fd00::/48","Backend":{"Type":"wireguard"}}`, []uint16{51820, 51821}},
		{`{"Network":"10.0.0.0/8","EnableIPv6":true,"IPv6Network":"fd00::/48","Backend":{"Type":"wireguard","Mode":"auto"}}`, []uint16{51820}},
		{`{"Network":"10.0.0.0/8","Backend":{"Type":"host-gw"}}`, nil},
		{`{"Network":"10.0.0.0/8","Backend":{"Type":"alloc"}}`, nil},
	} {
		cfg, _, err := netconf.Parse([]byte(c.config))
		if err != nil {
			t.Fatalf("%s: %v", c.config, err)
		}
		got, err := EncapPorts(cfg)
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("EncapPorts(%s) = %v, %v; want %v", c.config, got, err, c.want)
		}
	}
}

// The set holds exactly the peers, follows joins and leaves, and the mode's
// own rules are untouched, in both modes.
func TestGuardPeers(t *testing.T) {
	bothModes(t, func(t *testing.T, nft bool) {
		ns, m := newManager(t)
		if err := m.Set(guarded(nft)); err != nil {
			t.Fatal(err)
		}
		a, b, c := peer("10.99.0.2", ""), peer("10.99.0.3", ""), peer("10.99.0.4", "")
		if err := m.SetPeers([]*lease.Lease{a, b}); err != nil {
			t.Fatal(err)
		}
		assertPeers(t, ns, []string{"10.99.0.2", "10.99.0.3"}, []string{})
		if ports, _ := guardSet(t, ns, guardPorts); !slices.Equal(ports, []string{"8472"}) {
			t.Errorf("set %s = %v, want [8472]", guardPorts, ports)
		}
		if diff := cmp.Diff(wantGuardChain, guardChainLines(t, ns)); diff != "" {
			t.Errorf("chain inet %s %s (-want +got):\n%s", GuardTable, GuardChain, diff)
		}
		if err := m.SetPeers([]*lease.Lease{a, b, c}); err != nil { // join
			t.Fatal(err)
		}
		assertPeers(t, ns, []string{"10.99.0.2", "10.99.0.3", "10.99.0.4"}, []string{})
		if err := m.SetPeers([]*lease.Lease{b, c, peer("10.99.0.4", "")}); err != nil { // leave, and two leases naming one address
			t.Fatal(err)
		}
		assertPeers(t, ns, []string{"10.99.0.3", "10.99.0.4"}, []string{})
		mustCheck(t, m, false)
		if nft {
			if _, ok := nftTable(t, ns); !ok {
				t.Error("table ip weft missing next to the guard")
			}
		} else {
			assertIptables(t, ns, wantMasq, wantFwd)
		}
		if err := m.SetPeers(nil); err != nil { // every peer gone: the guard stays, empty
			t.Fatal(err)
		}
		assertPeers(t, ns, []string{}, []string{})
	})
}

// Dual-stack: the peers' PublicIPv6 go into peers6; IPv4-only networks
// leave it empty even when leases carry an IPv6 address.
func TestGuardIPv6(t *testing.T) {
	bothModes(t, func(t *testing.T, nft bool) {
		ns, m := newManager(t)
		d := desired6()
		d.NFTables, d.EncapPorts = nft, []uint16{8472}
		if err := m.Set(d); err != nil {
			t.Fatal(err)
		}
		peers := []*lease.Lease{peer("10.99.0.2", "fd99::2"), peer("10.99.0.3", "")}
		if err := m.SetPeers(peers); err != nil {
			t.Fatal(err)
		}
		assertPeers(t, ns, []string{"10.99.0.2", "10.99.0.3"}, []string{"fd99::2"})
		if err := m.SetPeers(append(peers, peer("10.99.0.4", "fd99::4"))); err != nil {
			t.Fatal(err)
		}
		assertPeers(t, ns, []string{"10.99.0.2", "10.99.0.3", "10.99.0.4"}, []string{"fd99::2", "fd99::4"})
		mustCheck(t, m, false)

		d.IPv6Network, d.IPv6Subnet = netip.Prefix{}, netip.Prefix{} // IPv6 turned off
		if err := m.Set(d); err != nil {
			t.Fatal(err)
		}
		assertPeers(t, ns, []string{"10.99.0.2", "10.99.0.3", "10.99.0.4"}, []string{})
	})
}

// Check repairs a deleted table, chain or set, a deleted or foreign element
// and a foreign rule; an intact guard costs no rewrite.
func TestGuardRepair(t *testing.T) {
	ns, m := newManager(t)
	if err := m.Set(guarded(true)); err != nil {
		t.Fatal(err)
	}
	peers := []*lease.Lease{peer("10.99.0.2", ""), peer("10.99.0.3", "")}
	if err := m.SetPeers(peers); err != nil {
		t.Fatal(err)
	}
	mustCheck(t, m, false)
	want := []string{"10.99.0.2", "10.99.0.3"}
	for _, c := range []struct {
		name string
		cmd  []string
	}{
		{"table deleted", []string{"nft", "delete", "table", "inet", GuardTable}},
		{"chain flushed", []string{"nft", "flush", "chain", "inet", GuardTable, GuardChain}},
		{"chain deleted", []string{"nft", "delete", "chain", "inet", GuardTable, GuardChain}},
		{"set flushed", []string{"nft", "flush", "set", "inet", GuardTable, guardPeers4}},
		{"element deleted", []string{"nft", "delete", "element", "inet", GuardTable, guardPeers4, "{ 10.99.0.2 }"}},
		{"stranger added", []string{"nft", "add", "element", "inet", GuardTable, guardPeers4, "{ 10.66.6.6 }"}},
		{"port changed", []string{"nft", "add", "element", "inet", GuardTable, guardPorts, "{ 53 }"}},
		{"accept rule inserted", []string{"nft", "insert", "rule", "inet", GuardTable, GuardChain, "accept"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ns.MustRun(t, c.cmd...)
			mustCheck(t, m, true)
			assertPeers(t, ns, want, []string{})
			if diff := cmp.Diff(wantGuardChain, guardChainLines(t, ns)); diff != "" {
				t.Errorf("chain (-want +got):\n%s", diff)
			}
			if ports, _ := guardSet(t, ns, guardPorts); !slices.Equal(ports, []string{"8472"}) {
				t.Errorf("set %s = %v, want [8472]", guardPorts, ports)
			}
			mustCheck(t, m, false)
		})
	}
}

// Until the peers are known (a restart, before the first snapshot) a guard
// left by the previous run is kept as it is, not flushed; the first peers
// then make it exact.
func TestGuardKeptUntilPeersKnown(t *testing.T) {
	ns, m := newManager(t)
	if err := m.Set(guarded(false)); err != nil {
		t.Fatal(err)
	}
	if _, ok := guardSet(t, ns, guardPeers4); ok {
		t.Fatal("guard written before the peers are known: its empty set would drop every peer")
	}
	if err := m.SetPeers([]*lease.Lease{peer("10.99.0.2", ""), peer("10.99.0.3", "")}); err != nil {
		t.Fatal(err)
	}
	m.Close()

	restarted := New(m.log, WithNetNS(int(ns.Fd())))
	t.Cleanup(func() { restarted.Close() })
	if err := restarted.Set(guarded(false)); err != nil {
		t.Fatal(err)
	}
	mustCheck(t, restarted, false)
	assertPeers(t, ns, []string{"10.99.0.2", "10.99.0.3"}, []string{})
	if err := restarted.SetPeers([]*lease.Lease{peer("10.99.0.3", "")}); err != nil {
		t.Fatal(err)
	}
	assertPeers(t, ns, []string{"10.99.0.3"}, []string{})
}

// A backend without encapsulation (host-gw, alloc) has no guard; switching
// to one removes it.
func TestGuardRemovedWithoutPort(t *testing.T) {
	bothModes(t, func(t *testing.T, nft bool) {
		ns, m := newManager(t)
		if err := m.Set(guarded(nft)); err != nil {
			t.Fatal(err)
		}
		if err := m.SetPeers([]*lease.Lease{peer("10.99.0.2", "")}); err != nil {
			t.Fatal(err)
		}
		assertPeers(t, ns, []string{"10.99.0.2"}, []string{})
		d := guarded(nft)
		d.EncapPorts = nil
		if err := m.Set(d); err != nil {
			t.Fatal(err)
		}
		if _, err := ns.Run("nft", "list", "table", "inet", GuardTable); err == nil {
			t.Fatal("table inet weft-guard still present with no encapsulation port")
		}
		mustCheck(t, m, false)
		if err := m.SetPeers([]*lease.Lease{peer("10.99.0.3", "")}); err != nil {
			t.Fatal(err)
		}
		if _, err := ns.Run("nft", "list", "table", "inet", GuardTable); err == nil {
			t.Fatal("SetPeers wrote a guard with no encapsulation port")
		}
	})
}

// Run applies the peers handed over by OfferPeers (the daemon's relay never
// waits for the kernel).
func TestGuardOfferPeers(t *testing.T) {
	ns, m := newManager(t)
	if err := m.Set(guarded(true)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { m.Run(ctx, time.Hour); close(done) }()
	defer func() { cancel(); <-done }()
	m.OfferPeers([]*lease.Lease{peer("10.99.0.9", "")}) // replaced before Run may read it
	m.OfferPeers([]*lease.Lease{peer("10.99.0.2", ""), peer("10.99.0.3", "")})
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, _ := guardSet(t, ns, guardPeers4)
		if slices.Equal(got, []string{"10.99.0.2", "10.99.0.3"}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("peers4 = %v after OfferPeers, want [10.99.0.2 10.99.0.3]", got)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// vxlanFrame is a hand-made VXLAN packet (the UDP payload): VNI 1, an
// Ethernet frame to dstMAC carrying an IPv4/UDP packet src:5555 → dst:dport
// with payload.
func vxlanFrame(dstMAC net.HardwareAddr, src, dst netip.Addr, dport uint16, payload []byte) []byte {
	b := []byte{0x08, 0, 0, 0, 0, 0, 1, 0} // flags: VNI present; VNI 1
	b = append(b, dstMAC...)
	b = append(b, 0x02, 0, 0, 0, 0, 0x99, 0x08, 0x00) // source MAC, EtherType IPv4
	ip := make([]byte, 20)
	ip[0], ip[8], ip[9] = 0x45, 64, unix.IPPROTO_UDP
	binary.BigEndian.PutUint16(ip[2:], uint16(20+8+len(payload)))
	s4, d4 := src.As4(), dst.As4()
	copy(ip[12:], s4[:])
	copy(ip[16:], d4[:])
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	udp := make([]byte, 8) // checksum 0: none, allowed for IPv4
	binary.BigEndian.PutUint16(udp[0:], 5555)
	binary.BigEndian.PutUint16(udp[2:], dport)
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload)))
	return append(append(append(b, ip...), udp...), payload...)
}

// The attack of finding 5: a namespace with an address that is no peer's
// sends a hand-made VXLAN frame to the host's vxlan port; the host must not
// receive the inner packet, and the drop is counted. The same frame from
// the peer's address is delivered. The host's vxlan device is made as weft
// makes flannel.1 (VNI 1, dstport 8472, nolearning, local address on the
// underlay interface).
func TestGuardDropsStrangersVXLAN(t *testing.T) {
	host := netnstest.New(t, "ghst")
	out := netnstest.New(t, "gout")
	if err := netnstest.VethPair(host, "eth0", out, "eth0"); err != nil {
		t.Fatal(err)
	}
	host.MustRun(t, "ip", "addr", "add", "10.99.0.1/24", "dev", "eth0")
	out.MustRun(t, "ip", "addr", "add", "10.99.0.2/24", "dev", "eth0") // the peer
	out.MustRun(t, "ip", "addr", "add", "10.99.0.3/24", "dev", "eth0") // the stranger
	host.MustRun(t, "ip", "link", "add", "flannel.1", "type", "vxlan", "id", "1", "local", "10.99.0.1",
		"dev", "eth0", "dstport", "8472", "nolearning")
	host.MustRun(t, "ip", "addr", "add", "172.30.19.0/32", "dev", "flannel.1")
	host.MustRun(t, "ip", "link", "set", "flannel.1", "up")
	host.MustRun(t, "ip", "route", "add", "172.30.83.0/24", "via", "172.30.83.0", "dev", "flannel.1", "onlink")
	link, err := host.Handle.LinkByName("flannel.1")
	if err != nil {
		t.Fatal(err)
	}
	mac := link.Attrs().HardwareAddr

	// The container side: a listener on the host's overlay address.
	var ln *net.UDPConn
	if err := host.Do(func() (err error) {
		ln, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(172, 30, 19, 0), Port: 9999})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	received := func(within time.Duration) string {
		ln.SetReadDeadline(time.Now().Add(within))
		buf := make([]byte, 100)
		n, _, err := ln.ReadFromUDP(buf)
		if err != nil {
			return ""
		}
		return string(buf[:n])
	}
	send := func(from string, payload string) {
		t.Helper()
		err := out.Do(func() error {
			c, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.ParseIP(from)}, &net.UDPAddr{IP: net.IPv4(10, 99, 0, 1), Port: 8472})
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = c.Write(vxlanFrame(mac, netip.MustParseAddr("172.30.83.5"), netip.MustParseAddr("172.30.19.0"), 9999, []byte(payload)))
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}

	var hooked uint64
	m := New(slog.New(slog.NewTextHandler(t.Output(), nil)), WithNetNS(int(host.Fd())),
		WithGuardDropHook(func(n uint64) { hooked += n }))
	t.Cleanup(func() { m.Close() })
	if err := m.Set(guarded(true)); err != nil {
		t.Fatal(err)
	}
	if err := m.SetPeers([]*lease.Lease{peer("10.99.0.2", "")}); err != nil {
		t.Fatal(err)
	}

	send("10.99.0.3", "from a stranger")
	if got := received(300 * time.Millisecond); got != "" {
		t.Fatalf("the host received %q, decapsulated from a VXLAN frame sent by 10.99.0.3, which holds no lease", got)
	}
	if n := guardDrops(t, host); n != 1 {
		t.Errorf("guard counter = %d packets, want 1", n)
	}
	mustCheck(t, m, false)
	if hooked != 1 {
		t.Errorf("drop hook reported %d packets, want 1", hooked)
	}
	send("10.99.0.2", "from the peer")
	if got := received(5 * time.Second); got != "from the peer" {
		t.Fatalf("the host received %q from the peer 10.99.0.2, want %q", got, "from the peer")
	}
	if n := guardDrops(t, host); n != 1 {
		t.Errorf("guard counter = %d packets after the peer's frame, want still 1", n)
	}
}

// The difference between two snapshots, as the peer sets receive it: a
// join, a leave, a lease rewritten in place (same subnet, new pointer, new
// PublicIP), two leases naming one address, and IPv6 turned on.
func TestPeerAddrsUpdate(t *testing.T) {
	mk := func(subnet, pub, pub6 string) *lease.Lease {
		l := peer(pub, pub6)
		l.Subnet = netip.MustParsePrefix(subnet)
		return l
	}
	a := mk("172.30.1.0/24", "10.0.0.1", "fd00::1")
	b := mk("172.30.2.0/24", "10.0.0.2", "")
	c := mk("172.30.3.0/24", "10.0.0.3", "")
	c2 := mk("172.30.3.0/24", "10.0.0.33", "")
	d := mk("172.30.4.0/24", "10.0.0.2", "") // b's address too
	render := func(keys [][16]byte, f int) []string {
		out := []string{}
		for _, k := range keys {
			if f == 0 {
				out = append(out, netip.AddrFrom4([4]byte(k[:4])).String())
			} else {
				out = append(out, netip.AddrFrom16(k).String())
			}
		}
		slices.Sort(out)
		return out
	}
	var p peerAddrs
	for _, step := range []struct {
		name     string
		peers    []*lease.Lease
		six      bool
		add, del []string
		add6, n4 int
	}{
		{"first", []*lease.Lease{a, b}, false, []string{"10.0.0.1", "10.0.0.2"}, []string{}, 0, 2},
		{"join", []*lease.Lease{a, b, c}, false, []string{"10.0.0.3"}, []string{}, 0, 3},
		{"same again", []*lease.Lease{a, b, c}, false, []string{}, []string{}, 0, 3},
		{"rewritten in place", []*lease.Lease{a, b, c2}, false, []string{"10.0.0.33"}, []string{"10.0.0.3"}, 0, 3},
		{"second lease on an address", []*lease.Lease{a, b, c2, d}, false, []string{}, []string{}, 0, 3},
		{"one of two leaves", []*lease.Lease{a, c2, d}, false, []string{}, []string{}, 0, 3},
		{"leave", []*lease.Lease{c2, d}, false, []string{}, []string{"10.0.0.1"}, 0, 2},
		{"IPv6 on", []*lease.Lease{a, c2, d}, true, []string{"10.0.0.1", "10.0.0.2", "10.0.0.33"}, []string{}, 1, 3},
	} {
		p.update(step.peers, step.six)
		if diff := cmp.Diff(step.add, render(p.add[0], 0)); diff != "" {
			t.Errorf("%s: IPv4 added (-want +got):\n%s", step.name, diff)
		}
		if diff := cmp.Diff(step.del, render(p.del[0], 0)); diff != "" {
			t.Errorf("%s: IPv4 deleted (-want +got):\n%s", step.name, diff)
		}
		if len(p.add[1]) != step.add6 || len(p.count[0]) != step.n4 {
			t.Errorf("%s: %d IPv6 added, %d IPv4 held; want %d, %d", step.name, len(p.add[1]), len(p.count[0]), step.add6, step.n4)
		}
	}
}
