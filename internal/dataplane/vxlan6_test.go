package dataplane

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netconf"
	"github.com/weft-net/weft/internal/rtnl"
	"github.com/weft-net/weft/internal/testutil/netnstest"
)

var (
	hostAddr6 = netip.MustParsePrefix("fd00:64::ffff:fffe/64")
	swAddr6   = netip.MustParsePrefix("fd00:64::ffff:fffd/64")
)

// enableIPv6 turns IPv6 on in a test namespace (forwarding too: a host
// routes its containers' traffic).
func enableIPv6(t testing.TB, ns *netnstest.NS) {
	t.Helper()
	ns.MustRun(t, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0", "net.ipv6.conf.default.disable_ipv6=0",
		"net.ipv6.conf.all.forwarding=1")
}

// addAddr6 puts a usable (no DAD) IPv6 address on a link of h.
func addAddr6(t testing.TB, h *netlink.Handle, dev string, p netip.Prefix) {
	t.Helper()
	l, err := h.LinkByName(dev)
	must(t, err)
	must(t, h.AddrAdd(l, &netlink.Addr{IPNet: ipNet(p), Flags: unix.IFA_F_NODAD}))
}

// newLab6 is newLab with an IPv6 underlay as well.
func newLab6(t testing.TB) *lab {
	t.Helper()
	l := newLab(t, hostAddr, swAddr)
	for _, x := range []struct {
		n *netnstest.NS
		a netip.Prefix
	}{{l.ns, hostAddr6}, {l.sw, swAddr6}} {
		enableIPv6(t, x.n)
		addAddr6(t, x.n.Handle, "eth0", x.a)
	}
	return l
}

func dualConf(typ, opts string) netconf.Config {
	c := netconfOf(typ, opts)
	c.EnableIPv4, c.EnableIPv6 = true, true
	return c
}

func (l *lab) dual(t testing.TB, typ, opts string) Backend {
	t.Helper()
	b, err := NewBackend(dualConf(typ, opts), l.host, l.handle(t), testLog(t))
	must(t, err)
	t.Cleanup(func() { b.Close() })
	return b
}

// peerSubnet6 is the i-th /64 of fc00::/48.
func peerSubnet6(i int) netip.Prefix {
	var a [16]byte
	a[0], a[6], a[7] = 0xfc, byte(i>>8), byte(i)
	return netip.PrefixFrom(netip.AddrFrom16(a), 64)
}

// publicIP6 is the i-th address of the fd00:64::/64 underlay.
func publicIP6(i int) netip.Addr {
	a := netip.MustParseAddr("fd00:64::").As16()
	a[14], a[15] = byte((i+1)>>8), byte(i+1)
	return netip.AddrFrom16(a)
}

func mac6(i int) net.HardwareAddr {
	return net.HardwareAddr{0x02, 0x56, byte(i >> 16), byte(i >> 8), byte(i), 0x01}
}

// dualPeer is a vxlan peer with an IPv4 and an IPv6 lease.
func dualPeer(i int, pub4, pub6 netip.Addr) lease.Lease {
	p := vxlanPeer(i, pub4)
	p.IPv6Subnet = peerSubnet6(i)
	p.Attrs.PublicIPv6 = pub6
	p.Attrs.BackendV6Data, _ = json.Marshal(VXLANLeaseData{VNI: 1, VtepMAC: mac6(i).String()})
	return p
}

func snapshot6(own int, peers ...lease.Lease) lease.Snapshot {
	s := snapshot(own, peers...)
	s.Own.IPv6Subnet = peerSubnet6(own)
	return s
}

// kernelState6 renders weft's IPv6 state: IPv6 proto-87 main-table routes,
// and the global addresses, permanent IPv6 neighbours and FDB entries of dev.
func kernelState6(t testing.TB, h *netlink.Handle, dev string) []string {
	t.Helper()
	return kernelStateOf(t, h, dev, netlink.FAMILY_V6)
}

// wantVXLAN6 renders the expected IPv6 state for own + peers on flannel-v6.1.
func wantVXLAN6(own int, peers ...lease.Lease) []string {
	out := []string{fmt.Sprintf("addr %s/128", peerSubnet6(own).Addr())}
	for _, p := range peers {
		var d VXLANLeaseData
		json.Unmarshal(p.Attrs.BackendV6Data, &d)
		gw := p.IPv6Subnet.Addr()
		out = append(out,
			fmt.Sprintf("route %s via %s dev flannel-v6.1 metric 1024 onlink", p.IPv6Subnet, gw),
			fmt.Sprintf("neigh %s lladdr %s dev flannel-v6.1 permanent", gw, d.VtepMAC),
			fmt.Sprintf("fdb %s dst %s dev flannel-v6.1 permanent", d.VtepMAC, p.Attrs.PublicIPv6))
	}
	slices.Sort(out)
	return out
}

func TestVXLAN6Device(t *testing.T) {
	l := newLab6(t)
	ctx := context.Background()
	b := l.dual(t, "vxlan", `{"Type":"vxlan"}`)
	pub, mtu, err := b.Init(ctx)
	must(t, err)
	if mtu != 1430 {
		t.Errorf("Init MTU = %d, want 1430 (the IPv6 device's, on a 1500 underlay)", mtu)
	}
	link, err := l.ns.Handle.LinkByName("flannel-v6.1")
	must(t, err)
	vx, ok := link.(*netlink.Vxlan)
	if !ok {
		t.Fatalf("flannel-v6.1 is %T, want vxlan", link)
	}
	got := map[string]any{
		"id": vx.VxlanId, "dstport": vx.Port, "learning": vx.Learning, "mtu": vx.MTU, "local": vx.SrcAddr.String(),
		"dev": vx.VtepDevIndex, "up": vx.Flags&net.FlagUp != 0,
	}
	want := map[string]any{
		"id": 1, "dstport": 8472, "learning": false, "mtu": 1430, "local": hostAddr6.Addr().String(),
		"dev": l.eth0(t), "up": true,
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("flannel-v6.1 properties (-want +got):\n%s", d)
	}
	v4, err := l.ns.Handle.LinkByName("flannel.1")
	must(t, err)
	if w := `{"VNI":1,"VtepMAC":"` + v4.Attrs().HardwareAddr.String() + `"}`; pub.BackendType != "vxlan" || string(pub.BackendData) != w {
		t.Errorf("Published = %s %s, want vxlan %s", pub.BackendType, pub.BackendData, w)
	}
	if w := `{"VNI":1,"VtepMAC":"` + vx.HardwareAddr.String() + `"}`; string(pub.BackendV6Data) != w {
		t.Errorf("Published.BackendV6Data = %s, want %s", pub.BackendV6Data, w)
	}

	must(t, b.Apply(ctx, snapshot6(1)))
	if d := cmp.Diff(wantVXLAN6(1), kernelState6(t, l.ns.Handle, "flannel-v6.1")); d != "" {
		t.Errorf("IPv6 state after empty apply (-want +got):\n%s", d)
	}
	if d := cmp.Diff(wantVXLAN(1), kernelState(t, l.ns.Handle, "flannel.1")); d != "" {
		t.Errorf("IPv4 state after empty apply (-want +got):\n%s", d)
	}

	// A restart reuses both devices and their MACs.
	must(t, b.Close())
	b2 := l.dual(t, "vxlan", `{"Type":"vxlan"}`)
	pub2, _, err := b2.Init(ctx)
	must(t, err)
	if d := cmp.Diff(pub, pub2); d != "" {
		t.Errorf("Published changed across a restart (-before +after):\n%s", d)
	}
	link2, _ := l.ns.Handle.LinkByName("flannel-v6.1")
	if link2.Attrs().Index != vx.Index {
		t.Errorf("flannel-v6.1 was recreated on restart (index %d → %d)", vx.Index, link2.Attrs().Index)
	}
}

func TestDualStackConfig(t *testing.T) {
	h := &netlink.Handle{}
	for _, typ := range []string{"vxlan", "host-gw", "Host-GW"} {
		b, err := NewBackend(dualConf(typ, `{}`), Host{}, h, nil)
		if err != nil {
			t.Errorf("NewBackend(%s, EnableIPv6): %v", typ, err)
			continue
		}
		must(t, b.Close()) // its rtnetlink socket, never used
	}
	for _, typ := range []string{"udp", "alloc", "bogus"} {
		_, err := NewBackend(dualConf(typ, `{}`), Host{}, h, nil)
		if err == nil {
			t.Errorf("NewBackend(%s, EnableIPv6) = nil error, want one (no IPv6 data path)", typ)
		}
	}
	v6only := dualConf("vxlan", `{}`)
	v6only.EnableIPv4 = false
	if _, err := NewBackend(v6only, Host{}, h, nil); err == nil {
		t.Errorf("NewBackend(IPv6 only) = nil error")
	}

	// No IPv6 address on the interface: Init says so.
	l := newLab(t, hostAddr, swAddr)
	b := l.dual(t, "vxlan", `{}`)
	if _, _, err := b.Init(context.Background()); err == nil {
		t.Errorf("Init without an IPv6 underlay address = nil error")
	} else {
		t.Log(err)
	}
}

// TestVXLAN6States applies a sequence of dual-stack states, in order and
// shuffled, with full applies and with deltas, and compares both families'
// whole kernel state after each.
func TestVXLAN6States(t *testing.T) {
	p := func(i int) lease.Lease { return dualPeer(i, publicIP(i), publicIP6(i)) }
	moved := dualPeer(2, publicIP(2), netip.MustParseAddr("fd00:64::99:99"))
	remac := p(3)
	remac.Attrs.BackendV6Data = json.RawMessage(`{"VNI":1,"VtepMAC":"02:56:ee:ee:ee:01"}`)
	v4only := vxlanPeer(6, publicIP(6)) // a peer without an IPv6 lease: IPv4 only
	noV6Data := p(7)
	noV6Data.Attrs.BackendV6Data = nil
	badV6MAC := p(8)
	badV6MAC.Attrs.BackendV6Data = json.RawMessage(`{"VNI":1,"VtepMAC":"zz"}`)
	selfV6 := dualPeer(9, publicIP(9), hostAddr6.Addr())
	badV6 := []lease.Lease{noV6Data, badV6MAC, selfV6}
	states := []struct {
		name  string
		snap  lease.Snapshot
		want4 []string
		want6 []string
	}{
		{"empty", snapshot6(1), wantVXLAN(1), wantVXLAN6(1)},
		{"one peer", snapshot6(1, p(2)), wantVXLAN(1, p(2)), wantVXLAN6(1, p(2))},
		{"three peers", snapshot6(1, p(2), p(3), p(4)), wantVXLAN(1, p(2), p(3), p(4)), wantVXLAN6(1, p(2), p(3), p(4))},
		{"peer moved host", snapshot6(1, moved, p(3), p(4)), wantVXLAN(1, moved, p(3), p(4)), wantVXLAN6(1, moved, p(3), p(4))},
		{"peer new v6 MAC", snapshot6(1, moved, remac, p(4)), wantVXLAN(1, moved, remac, p(4)), wantVXLAN6(1, moved, remac, p(4))},
		{"IPv4-only peer", snapshot6(1, p(2), v4only), wantVXLAN(1, p(2), v4only), wantVXLAN6(1, p(2))},
		{"bad IPv6 halves", snapshot6(1, append([]lease.Lease{p(2)}, badV6...)...),
			wantVXLAN(1, append([]lease.Lease{p(2)}, badV6...)...), wantVXLAN6(1, p(2))},
		{"own subnet changed", snapshot6(5, p(2), p(4)), wantVXLAN(5, p(2), p(4)), wantVXLAN6(5, p(2), p(4))},
		{"all gone", snapshot6(5), wantVXLAN(5), wantVXLAN6(5)},
	}
	l := newLab6(t)
	b := l.dual(t, "vxlan", `{}`)
	ctx := context.Background()
	_, _, err := b.Init(ctx)
	must(t, err)
	da := b.(deltaApplier)
	check := func(i int, delta bool) {
		t.Helper()
		s := states[i]
		apply := b.Apply
		if delta {
			apply = da.ApplyDelta
		}
		if err := apply(ctx, s.snap); err != nil {
			t.Fatalf("%s (delta %t): apply: %v", s.name, delta, err)
		}
		if d := cmp.Diff(s.want6, kernelState6(t, l.ns.Handle, "flannel-v6.1")); d != "" {
			t.Fatalf("%s (delta %t): IPv6 (-want +got):\n%s", s.name, delta, d)
		}
		if d := cmp.Diff(s.want4, kernelState(t, l.ns.Handle, "flannel.1")); d != "" {
			t.Fatalf("%s (delta %t): IPv4 (-want +got):\n%s", s.name, delta, d)
		}
	}
	for i := range states {
		check(i, false)
	}
	order := rand.Perm(len(states))
	t.Logf("shuffled order: %v", order)
	for _, i := range order {
		check(i, false)
	}
	for _, i := range order {
		check(i, true)
	}
	v6 := driverOf(b, 1)
	if v6.passes.delta == 0 {
		t.Errorf("no IPv6 apply went the delta path (passes %+v)", v6.passes)
	}
	t.Logf("IPv6 passes: %+v", v6.passes)
}

// TestVXLAN6Drift: a route, neighbour and FDB entry deleted by hand and a
// stale weft route are put right by the next full apply; correct entries
// are left alone.
func TestVXLAN6Drift(t *testing.T) {
	l := newLab6(t)
	b := l.dual(t, "vxlan", `{}`)
	ctx := context.Background()
	_, _, err := b.Init(ctx)
	must(t, err)
	peers := []lease.Lease{dualPeer(2, publicIP(2), publicIP6(2)), dualPeer(3, publicIP(3), publicIP6(3))}
	snap := snapshot6(1, peers...)
	must(t, b.Apply(ctx, snap))
	want := wantVXLAN6(1, peers...)
	if d := cmp.Diff(want, kernelState6(t, l.ns.Handle, "flannel-v6.1")); d != "" {
		t.Fatalf("(-want +got):\n%s", d)
	}
	h := l.ns.Handle
	dev, err := h.LinkByName("flannel-v6.1")
	must(t, err)
	must(t, h.RouteDel(&netlink.Route{Dst: ipNet(peers[0].IPv6Subnet), Table: unix.RT_TABLE_MAIN, Protocol: rtnl.ProtWeft, Family: netlink.FAMILY_V6, Priority: v6Metric}))
	must(t, h.NeighDel(&netlink.Neigh{LinkIndex: dev.Attrs().Index, Family: netlink.FAMILY_V6, IP: peers[1].IPv6Subnet.Addr().AsSlice()}))
	must(t, h.NeighDel(&netlink.Neigh{LinkIndex: dev.Attrs().Index, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF,
		State: netlink.NUD_PERMANENT, HardwareAddr: mac6(2), IP: publicIP6(2).AsSlice()}))
	// A leftover of a lease that no longer exists.
	must(t, h.RouteReplace((routeWant{Dst: peerSubnet6(77), Gw: peerSubnet6(77).Addr(), Link: dev.Attrs().Index, OnLink: true, Metric: v6Metric}).route()))
	if d := cmp.Diff(want, kernelState6(t, h, "flannel-v6.1")); d == "" {
		t.Fatal("damage did not show in the kernel state")
	}
	must(t, b.Apply(ctx, snap))
	if d := cmp.Diff(want, kernelState6(t, h, "flannel-v6.1")); d != "" {
		t.Errorf("after a full apply (-want +got):\n%s", d)
	}
}

// TestVXLAN6Repair runs the loop: hand-deleted IPv6 entries come back by
// netlink event, and a deleted flannel-v6.1 is recreated with its MAC and
// re-programmed.
func TestVXLAN6Repair(t *testing.T) {
	l := newLab6(t)
	b := l.dual(t, "vxlan", `{}`)
	_, _, err := b.Init(context.Background())
	must(t, err)
	peers := []lease.Lease{dualPeer(2, publicIP(2), publicIP6(2)), dualPeer(3, publicIP(3), publicIP6(3))}
	want := wantVXLAN6(1, peers...)
	want4 := wantVXLAN(1, peers...)
	snaps, _ := runLoop(t, b, time.Minute) // resync far away: repairs come from events
	snaps <- snapshot6(1, peers...)
	h := l.ns.Handle
	converged := func() (bool, string) {
		d := cmp.Diff(want, kernelState6(t, h, "flannel-v6.1")) + cmp.Diff(want4, kernelState(t, h, "flannel.1"))
		return d == "", d
	}
	eventually(t, 5*time.Second, "initial apply", converged)
	dev, _ := h.LinkByName("flannel-v6.1")
	oldMAC := dev.Attrs().HardwareAddr

	must(t, h.RouteDel(&netlink.Route{Dst: ipNet(peers[0].IPv6Subnet), Table: unix.RT_TABLE_MAIN, Protocol: rtnl.ProtWeft, Family: netlink.FAMILY_V6, Priority: v6Metric}))
	t.Logf("route restored in %v", eventually(t, time.Second, "deleted IPv6 route restored", converged))
	must(t, h.NeighDel(&netlink.Neigh{LinkIndex: dev.Attrs().Index, Family: netlink.FAMILY_V6, IP: peers[1].IPv6Subnet.Addr().AsSlice()}))
	t.Logf("neighbour restored in %v", eventually(t, time.Second, "deleted IPv6 neighbour restored", converged))
	must(t, h.NeighDel(&netlink.Neigh{LinkIndex: dev.Attrs().Index, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF,
		State: netlink.NUD_PERMANENT, HardwareAddr: mac6(3), IP: publicIP6(3).AsSlice()}))
	t.Logf("FDB entry restored in %v", eventually(t, time.Second, "deleted IPv6 FDB entry restored", converged))

	start := time.Now()
	must(t, h.LinkDel(dev))
	eventually(t, time.Second, "deleted flannel-v6.1 recreated and re-programmed", converged)
	t.Logf("device recreated and re-programmed in %v", time.Since(start))
	dev2, err := h.LinkByName("flannel-v6.1")
	must(t, err)
	if dev2.Attrs().HardwareAddr.String() != oldMAC.String() {
		t.Errorf("recreated device MAC = %s, want the published %s", dev2.Attrs().HardwareAddr, oldMAC)
	}
}

func TestHostGW6(t *testing.T) {
	l := newLab6(t)
	b := l.dual(t, "host-gw", `{}`)
	ctx := context.Background()
	pub, mtu, err := b.Init(ctx)
	must(t, err)
	if pub.BackendType != "host-gw" || pub.BackendData != nil || pub.BackendV6Data != nil || mtu != 1500 {
		t.Errorf("Init = %+v, %d; want host-gw, no data, MTU 1500", pub, mtu)
	}
	gw := func(i int, pub6 netip.Addr) lease.Lease {
		p := hostgwPeer(i, publicIP(i))
		p.IPv6Subnet, p.Attrs.PublicIPv6 = peerSubnet6(i), pub6
		return p
	}
	near, near2 := gw(2, publicIP6(2)), gw(3, publicIP6(3))
	far := gw(4, netip.MustParseAddr("2001:db8::4"))
	want := func(ps ...lease.Lease) []string {
		var out []string
		for _, p := range ps {
			out = append(out, fmt.Sprintf("route %s via %s dev eth0 metric 1024", p.IPv6Subnet, p.Attrs.PublicIPv6))
		}
		return sortStrings(out)
	}
	must(t, b.Apply(ctx, snapshot6(1, near, near2)))
	if d := cmp.Diff(want(near, near2), kernelState6(t, l.ns.Handle, "")); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
	// The off-link peer is reported, not an apply failure (issue 11 finding 9).
	must(t, b.(deltaApplier).ApplyDelta(ctx, snapshot6(1, near, far)))
	if s := b.(skipReporter).skipped(); len(s) != 1 || s[0].peer != peerSubnet6(4) || s[0].reason != SkipUnreachable ||
		!strings.Contains(s[0].msg, ErrPeerUnreachable.Error()) {
		t.Errorf("skipped = %v; want %s unreachable", s, peerSubnet6(4))
	}
	if d := cmp.Diff(want(near), kernelState6(t, l.ns.Handle, "")); d != "" {
		t.Errorf("after the off-link peer (-want +got):\n%s", d)
	}
	must(t, b.(deltaApplier).ApplyDelta(ctx, snapshot6(1, near2)))
	must(t, b.(deltaApplier).ApplyDelta(ctx, snapshot6(1, near)))
	if d := cmp.Diff(want(near), kernelState6(t, l.ns.Handle, "")); d != "" {
		t.Errorf("after deltas (-want +got):\n%s", d)
	}
}

// TestVXLAN6DirectRoutingBlackhole: with DirectRouting a peer whose
// PublicIPv6 is on the underlay's subnet gets a plain route via that
// address; -ip-blackhole-route adds a blackhole for the own IPv6 subnet.
func TestVXLAN6DirectRoutingBlackhole(t *testing.T) {
	l := newLab6(t)
	host := l.host
	host.BlackholeRoute = true
	b, err := NewBackend(dualConf("vxlan", `{"DirectRouting":true}`), host, l.handle(t), testLog(t))
	must(t, err)
	t.Cleanup(func() { b.Close() })
	ctx := context.Background()
	_, _, err = b.Init(ctx)
	must(t, err)
	near := dualPeer(2, publicIP(2), publicIP6(2))
	far := dualPeer(3, netip.MustParseAddr("198.51.100.3"), netip.MustParseAddr("2001:db8::3"))
	must(t, b.Apply(ctx, snapshot6(1, near, far)))
	want := sortStrings(append(wantVXLAN6(1, far),
		fmt.Sprintf("route %s via %s dev eth0 metric 1024", near.IPv6Subnet, publicIP6(2)),
		fmt.Sprintf("route blackhole %s metric 65536", peerSubnet6(1))))
	if d := cmp.Diff(want, kernelState6(t, l.ns.Handle, "flannel-v6.1")); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
	// Applying the same state again is a no-op that still succeeds.
	must(t, b.Apply(ctx, snapshot6(1, near, far)))
	if d := cmp.Diff(want, kernelState6(t, l.ns.Handle, "flannel-v6.1")); d != "" {
		t.Errorf("second apply (-want +got):\n%s", d)
	}
}

// TestDualStackRestartQuiet: a second daemon (new backend, new handle)
// applying the same dual-stack snapshot changes nothing in the kernel: no
// route, neighbour or link notification at all.
func TestDualStackRestartQuiet(t *testing.T) {
	l := newLab6(t)
	ctx := context.Background()
	peers := []lease.Lease{dualPeer(2, publicIP(2), publicIP6(2)), dualPeer(3, publicIP(3), publicIP6(3))}
	first := l.dual(t, "vxlan", `{}`)
	_, _, err := first.Init(ctx)
	must(t, err)
	must(t, first.Apply(ctx, snapshot6(1, peers...)))
	must(t, first.Close())
	// The kernel adds the local route of the device's IPv6 address from a
	// work queue, after the address itself: wait for it, or its late
	// notification would look like the restart's doing.
	own6 := snapshot6(1).Own.IPv6Subnet.Addr()
	eventually(t, 5*time.Second, "local route of "+own6.String(), func() (bool, string) {
		rs, err := l.ns.Handle.RouteListFiltered(netlink.FAMILY_V6, &netlink.Route{Table: unix.RT_TABLE_LOCAL}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return false, err.Error()
		}
		for _, r := range rs {
			if r.Dst != nil && r.Dst.IP.Equal(own6.AsSlice()) {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%d local routes, none to %s", len(rs), own6)
	})

	done := make(chan struct{})
	defer close(done)
	rch := make(chan netlink.RouteUpdate, 1000)
	nch := make(chan netlink.NeighUpdate, 1000)
	lch := make(chan netlink.LinkUpdate, 1000)
	fd := l.ns.Fd()
	must(t, netlink.RouteSubscribeWithOptions(rch, done, netlink.RouteSubscribeOptions{Namespace: &fd}))
	must(t, netlink.NeighSubscribeWithOptions(nch, done, netlink.NeighSubscribeOptions{Namespace: &fd}))
	must(t, netlink.LinkSubscribeWithOptions(lch, done, netlink.LinkSubscribeOptions{Namespace: &fd}))

	second := l.dual(t, "vxlan", `{}`)
	_, _, err = second.Init(ctx)
	must(t, err)
	must(t, second.Apply(ctx, snapshot6(1, peers...)))
	if d := cmp.Diff(wantVXLAN6(1, peers...), kernelState6(t, l.ns.Handle, "flannel-v6.1")); d != "" {
		t.Errorf("after restart (-want +got):\n%s", d)
	}
	// A marker change made after the apply: once its notification is read,
	// every notification the apply caused has been read too.
	must(t, l.ns.Handle.RouteAdd(&netlink.Route{Dst: ipNet(netip.MustParsePrefix("2001:db8:ffff::/48")), Gw: swAddr6.Addr().AsSlice(), LinkIndex: l.eth0(t)}))
	var events []string
	deadline := time.After(5 * time.Second)
	for marker := false; !marker; {
		select {
		case u := <-rch:
			if u.Dst != nil && u.Dst.String() == "2001:db8:ffff::/48" {
				marker = true
				continue
			}
			events = append(events, fmt.Sprintf("route %d %s", u.Type, u.Dst))
		case u := <-nch:
			events = append(events, fmt.Sprintf("neigh %d %s %s", u.Type, u.IP, u.HardwareAddr))
		case u := <-lch:
			events = append(events, "link "+u.Attrs().Name)
		case <-deadline:
			t.Fatal("marker route notification not seen within 5 s")
		}
	}
	if len(events) > 0 {
		t.Errorf("a restart with the same leases changed the kernel: %q", events)
	}
}
