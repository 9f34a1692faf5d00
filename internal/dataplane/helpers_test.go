package dataplane

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netconf"
	"github.com/weft-net/weft/internal/rtnl"
	"github.com/weft-net/weft/internal/testutil/netnstest"
)

func testLog(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
	}
	return slog.New(slog.DiscardHandler)
}

// lab is one "host" namespace whose eth0 sits on an underlay shared with a
// second namespace (the rest of the L2 segment).
type lab struct {
	ns    *netnstest.NS
	sw    *netnstest.NS
	host  Host
	under netip.Prefix
}

// newLab makes a host namespace with eth0 = addr on a veth to a switch
// namespace holding swAddr.
func newLab(t testing.TB, addr, swAddr netip.Prefix) *lab {
	t.Helper()
	ns := netnstest.New(t, "dph")
	sw := netnstest.New(t, "dps")
	if err := netnstest.VethPair(ns, "eth0", sw, "eth0"); err != nil {
		t.Fatal(err)
	}
	for _, x := range []struct {
		n *netnstest.NS
		a netip.Prefix
	}{{ns, addr}, {sw, swAddr}} {
		l, err := x.n.Handle.LinkByName("eth0")
		if err != nil {
			t.Fatal(err)
		}
		if err := x.n.Handle.AddrAdd(l, &netlink.Addr{IPNet: ipNet(x.a)}); err != nil {
			t.Fatalf("add %s in %s: %v", x.a, x.n.Name, err)
		}
	}
	fd := ns.Fd()
	return &lab{ns: ns, sw: sw, under: addr.Masked(), host: Host{IfaceName: "eth0", IfaceAddr: addr.Addr(), NetNS: &fd}}
}

// handle opens a fresh netlink handle in the lab namespace, like a new daemon would.
func (l *lab) handle(t testing.TB) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandleAt(l.ns.Fd())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// rtnl opens an rtnetlink socket in the lab namespace, as NewBackend does.
func (l *lab) rtnl(t testing.TB) *rtnl.Conn {
	t.Helper()
	rt, err := rtnl.Open(l.host.NetNS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rt.Close)
	return rt
}

func (l *lab) backend(t testing.TB, typ, opts string) Backend {
	t.Helper()
	return l.backendHost(t, typ, opts, l.host)
}

func (l *lab) backendHost(t testing.TB, typ, opts string, host Host) Backend {
	t.Helper()
	cfg := netconf.Config{BackendType: typ, Backend: json.RawMessage(opts)}
	b, err := NewBackend(cfg, host, l.handle(t), testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// runLoop runs a Loop over b until the test ends; send snapshots on the channel.
func runLoop(t testing.TB, b Backend, resync time.Duration) (chan<- lease.Snapshot, *Loop) {
	t.Helper()
	ch := make(chan lease.Snapshot, 16)
	l := NewLoop(b, resync, testLog(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx, ch) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("loop: %v", err)
		}
	})
	return ch, l
}

func mac(i int) net.HardwareAddr {
	return net.HardwareAddr{0x02, 0x57, byte(i >> 16), byte(i >> 8), byte(i), 0x01}
}

// peerSubnet is the i-th /24 of 10.128.0.0/9 (room for 32,768 peers).
func peerSubnet(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(128 + i>>8), byte(i), 0}), 24)
}

func vxlanPeer(i int, public netip.Addr) lease.Lease {
	data, _ := json.Marshal(VXLANLeaseData{VNI: 1, VtepMAC: mac(i).String()})
	return lease.Lease{Subnet: peerSubnet(i), Attrs: lease.Attrs{PublicIP: public, BackendType: "vxlan", BackendData: data}}
}

func hostgwPeer(i int, public netip.Addr) lease.Lease {
	return lease.Lease{Subnet: peerSubnet(i), Attrs: lease.Attrs{PublicIP: public, BackendType: "host-gw"}}
}

// publicIP returns the i-th address of the 100.64.0.0/16 underlay used by
// the larger tests (host-gw needs peers on the connected subnet).
func publicIP(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{100, 64, byte((i + 1) >> 8), byte(i + 1)})
}

func snapshot(own int, peers ...lease.Lease) lease.Snapshot {
	ps := make([]*lease.Lease, len(peers))
	for i := range peers {
		ps[i] = &peers[i]
	}
	slices.SortFunc(ps, lease.ComparePeers)
	return lease.Snapshot{Own: lease.Lease{Subnet: peerSubnet(own)}, Peers: ps}
}

// values copies a snapshot's peers out.
func values(ps []*lease.Lease) []lease.Lease {
	out := make([]lease.Lease, len(ps))
	for i, p := range ps {
		out[i] = *p
	}
	return out
}

// kernelState renders what weft owns in the namespace as sorted text lines,
// so a test compares whole states with cmp.Diff (Tailscale-style).
func kernelState(t testing.TB, h *netlink.Handle, dev string) []string {
	t.Helper()
	return kernelStateOf(t, h, dev, netlink.FAMILY_V4)
}

// kernelStateOf is kernelState for one family: IPv6 routes name their
// metric (the kernel gives every IPv6 route one), and the device's IPv6
// link-local address is left out.
func kernelStateOf(t testing.TB, h *netlink.Handle, dev string, family int) []string {
	t.Helper()
	var out []string
	links, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	names := map[int]string{}
	var vx netlink.Link
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
		if l.Attrs().Name == dev {
			vx = l
		}
	}
	routes, err := h.RouteListFiltered(family, &netlink.Route{Protocol: rtnl.ProtWeft, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if r.Type == unix.RTN_BLACKHOLE {
			out = append(out, fmt.Sprintf("route blackhole %s metric %d", r.Dst, r.Priority))
			continue
		}
		s := fmt.Sprintf("route %s via %s dev %s", r.Dst, r.Gw, names[r.LinkIndex])
		if family == netlink.FAMILY_V6 {
			s += fmt.Sprintf(" metric %d", r.Priority)
		}
		if r.Flags&int(netlink.FLAG_ONLINK) != 0 {
			s += " onlink"
		}
		out = append(out, s)
	}
	if vx != nil {
		addrs, err := h.AddrList(vx, family)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range addrs {
			if family == netlink.FAMILY_V4 || a.Scope == unix.RT_SCOPE_UNIVERSE {
				out = append(out, "addr "+a.IPNet.String())
			}
		}
		ns, err := h.NeighList(vx.Attrs().Index, family)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range ns {
			if n.State&netlink.NUD_PERMANENT != 0 {
				out = append(out, fmt.Sprintf("neigh %s lladdr %s dev %s permanent", n.IP, n.HardwareAddr, dev))
			}
		}
		fdb, err := h.NeighList(vx.Attrs().Index, unix.AF_BRIDGE)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range fdb {
			perm := ""
			if n.State&netlink.NUD_PERMANENT != 0 {
				perm = " permanent"
			}
			out = append(out, fmt.Sprintf("fdb %s dst %s dev %s%s", n.HardwareAddr, n.IP, dev, perm))
		}
	}
	slices.Sort(out)
	return out
}

// wantVXLAN renders the expected state for own + peers on flannel.1.
func wantVXLAN(own int, peers ...lease.Lease) []string {
	out := []string{fmt.Sprintf("addr %s/32", peerSubnet(own).Addr())}
	for _, p := range peers {
		var d VXLANLeaseData
		json.Unmarshal(p.Attrs.BackendData, &d)
		gw := p.Subnet.Addr()
		out = append(out,
			fmt.Sprintf("route %s via %s dev flannel.1 onlink", p.Subnet, gw),
			fmt.Sprintf("neigh %s lladdr %s dev flannel.1 permanent", gw, d.VtepMAC),
			fmt.Sprintf("fdb %s dst %s dev flannel.1 permanent", d.VtepMAC, p.Attrs.PublicIP))
	}
	slices.Sort(out)
	return out
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, within time.Duration, what string, cond func() (bool, string)) time.Duration {
	t.Helper()
	start := time.Now()
	var last string
	for {
		ok, s := cond()
		if ok {
			return time.Since(start)
		}
		last = s
		if time.Since(start) > within {
			t.Fatalf("%s: not true within %v; last: %s", what, within, last)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func lines(s []string) string { return strings.Join(s, "\n") }

func sortStrings(s []string) []string {
	slices.Sort(s)
	return s
}

func netconfOf(typ, opts string) netconf.Config {
	return netconf.Config{BackendType: typ, Backend: json.RawMessage(opts)}
}

// startBackend builds the backend of cfg on eth0 of the host namespace ns,
// initialises it (its MTU must be wantMTU) and runs a loop for it; snapshots
// go to the returned channel. Everything is closed when the test ends.
func startBackend(t *testing.T, ns *netnstest.NS, cfg netconf.Config, wantMTU int) (Backend, Published, chan<- lease.Snapshot) {
	t.Helper()
	h, err := netlink.NewHandleAt(ns.Fd())
	must(t, err)
	t.Cleanup(h.Close)
	fd := ns.Fd()
	be, err := NewBackend(cfg, Host{IfaceName: "eth0", NetNS: &fd}, h, testLog(t))
	must(t, err)
	t.Cleanup(func() { be.Close() })
	pub, mtu, err := be.Init(context.Background())
	must(t, err)
	if mtu != wantMTU {
		t.Errorf("%s backend (IPv6 %t): MTU %d, want %d", cfg.BackendType, cfg.EnableIPv6, mtu, wantMTU)
	}
	ch, _ := runLoop(t, be, time.Minute)
	return be, pub, ch
}

// driverOf is the driver of family i (0: IPv4, 1: IPv6) of b.
func driverOf(b Backend, i int) *driver {
	return b.(*backend).drivers[i]
}

// flatDesired is a Desired with its entries as maps, for comparing desired
// states whatever the order their route kinds were met in (entries.go).
type flatDesired struct {
	Family   uint8
	Device   string
	Own      netip.Prefix
	Dev      int
	Addr     netip.Prefix
	Routes   map[netip.Prefix]Route
	Neighs   map[netip.Addr]MAC
	FDB      map[[6]byte]netip.Addr
	Nexthops map[uint32]rtnl.Nexthop
	// NH are the nexthops the routes go through, and NHCounted how many
	// d counted (it keeps the count as routes come and go).
	NH        map[uint32]rtnl.Nexthop
	NHCounted int
	Skipped   []skippedPeer
}

func flatten(d *Desired) flatDesired {
	f := flatDesired{
		Family: d.Family, Device: d.Device, Own: d.Own, Dev: d.Dev, Addr: d.Addr,
		Routes: map[netip.Prefix]Route{}, Neighs: map[netip.Addr]MAC{}, FDB: map[[6]byte]netip.Addr{},
		Nexthops: d.Nexthops, NH: d.nexthopObjects(), NHCounted: d.nhCount, Skipped: d.Skipped,
	}
	for r := range d.Routes() {
		f.Routes[r.Dst] = r
	}
	for ip, mac := range d.Neighs() {
		f.Neighs[ip] = mac
	}
	for mac, dst := range d.FDB() {
		f.FDB[mac] = dst
	}
	return f
}

// routesWanted is a desired state of the routes ws only.
func routesWanted(ws ...Route) *Desired {
	d := newDesired(unix.AF_INET, "", netip.Prefix{}, 0, len(ws))
	for _, w := range ws {
		d.setRoute(w)
	}
	return d
}

// Helpers the tests use, not weftd: the routes a test writes or reads
// itself, as weftd would.

// readMainRoutes is readMainRoutesFor keeping weft's routes and the
// connected subnets only.
func readMainRoutes(c *rtnl.Conn, family uint8, ifaceIndex int) (mainRoutes, error) {
	return readMainRoutesFor(c, family, ifaceIndex, -1, true)
}

// route is w as a netlink route, for a test that writes it itself.
func (w routeWant) route() *netlink.Route {
	r := &netlink.Route{
		Dst:       ipNet(w.Dst),
		Protocol:  rtnl.ProtWeft,
		Table:     unix.RT_TABLE_MAIN,
		Priority:  w.Metric,
		LinkIndex: w.Link,
		Family:    routeFamily(w.Dst),
	}
	if w.Gw.IsValid() {
		r.Gw = w.Gw.AsSlice()
	}
	if w.OnLink {
		r.Flags = int(netlink.FLAG_ONLINK)
	}
	if w.Blackhole {
		r.Type = unix.RTN_BLACKHOLE
	}
	return r
}

// routeFamily is the netlink family of a route to dst.
func routeFamily(dst netip.Prefix) int {
	if dst.Addr().Is6() {
		return netlink.FAMILY_V6
	}
	return netlink.FAMILY_V4
}

// routeList is the source of routes already read.
func routeList(rs []rtnl.Route) routeSource {
	return func(fn func(rtnl.Route)) error {
		for _, r := range rs {
			fn(r)
		}
		return nil
	}
}
