package dataplane

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/testutil/netnstest"
)

// otherGW is a gateway on eth1, the second interface addOtherLink gives the
// host namespace: somebody else's path to a peer's subnet.
var otherGW = netip.MustParseAddr("192.0.2.9")

// addOtherLink adds eth1 (192.0.2.1/24, to the switch namespace) to the lab
// host and returns its index.
func addOtherLink(t *testing.T, l *lab) int {
	t.Helper()
	must(t, netnstest.VethPair(l.ns, "eth1", l.sw, "eth1"))
	link, err := l.ns.Handle.LinkByName("eth1")
	must(t, err)
	must(t, l.ns.Handle.AddrAdd(link, &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix("192.0.2.1/24"))}))
	return link.Attrs().Index
}

// routesTo renders every main-table route to dst: what owns it and where it goes.
func routesTo(t *testing.T, h *netlink.Handle, dst netip.Prefix) []string {
	t.Helper()
	rs, err := h.RouteListFiltered(routeFamily(dst), &netlink.Route{Dst: ipNet(dst), Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
	must(t, err)
	var out []string
	for _, r := range rs {
		if r.Type == unix.RTN_BLACKHOLE {
			out = append(out, fmt.Sprintf("blackhole %s proto %d metric %d", r.Dst, r.Protocol, r.Priority))
			continue
		}
		dev := "?"
		if link, err := h.LinkByIndex(r.LinkIndex); err == nil {
			dev = link.Attrs().Name
		}
		out = append(out, fmt.Sprintf("%s via %s dev %s proto %d metric %d", r.Dst, r.Gw, dev, r.Protocol, r.Priority))
	}
	slices.Sort(out)
	return out
}

// addRoute adds a route of another owner (protocol proto) in the lab host.
func addRoute(t *testing.T, l *lab, r *netlink.Route, proto netlink.RouteProtocol) {
	t.Helper()
	r.Protocol, r.Table = proto, unix.RT_TABLE_MAIN
	if err := l.ns.Handle.RouteAdd(r); err != nil {
		t.Fatalf("add route %v: %v", r, err)
	}
}

// checkSkipped asserts that the backend reports exactly the peers want
// (subnet → reason).
func checkSkipped(t *testing.T, b Backend, want map[netip.Prefix]string) {
	t.Helper()
	got := map[netip.Prefix]string{}
	for _, s := range b.(skipReporter).skipped() {
		got[s.peer] = s.reason
		t.Logf("warning: %s", s)
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("skipped peers (-want +got):\n%s", d)
	}
}

// TestHostGWForeignRoutes: weft never replaces a route it does not own
// (issue 11 finding 12). A static route for a peer's subnet through another
// device, and a blackhole for another peer's, stay as they are and those
// peers are reported; flanneld's own host-gw routes (via the peer, dev
// eth0, proto boot) are taken over, at weft's metric or another one. A
// foreign route that appears between full passes makes a delta fail rather
// than be overwritten.
func TestHostGWForeignRoutes(t *testing.T) {
	l := newLab(t, hostAddr, swAddr)
	eth1 := addOtherLink(t, l)
	eth0 := l.eth0(t)
	p2, p3, p4, p5, p6 := hostgwPeer(2, publicIP(2)), hostgwPeer(3, publicIP(3)), hostgwPeer(4, publicIP(4)),
		hostgwPeer(5, publicIP(5)), hostgwPeer(6, publicIP(6))
	addRoute(t, l, &netlink.Route{Dst: ipNet(p2.Subnet), Gw: publicIP(2).AsSlice(), LinkIndex: eth0}, unix.RTPROT_BOOT)
	addRoute(t, l, &netlink.Route{Dst: ipNet(p3.Subnet), Gw: otherGW.AsSlice(), LinkIndex: eth1}, unix.RTPROT_STATIC)
	addRoute(t, l, &netlink.Route{Dst: ipNet(p4.Subnet), Gw: publicIP(4).AsSlice(), LinkIndex: eth0, Priority: 100}, unix.RTPROT_BOOT)
	addRoute(t, l, &netlink.Route{Dst: ipNet(p5.Subnet), Type: unix.RTN_BLACKHOLE}, unix.RTPROT_STATIC)

	b := l.backend(t, "host-gw", `{}`)
	ctx := context.Background()
	_, _, err := b.Init(ctx)
	must(t, err)
	must(t, b.Apply(ctx, snapshot(1, p2, p3, p4, p5)))
	if d := cmp.Diff(wantHostGW(p2, p4), kernelState(t, l.ns.Handle, "")); d != "" {
		t.Errorf("weft's routes (-want +got):\n%s", d)
	}
	for _, c := range []struct {
		dst  netip.Prefix
		want []string
	}{
		{p2.Subnet, []string{"10.128.2.0/24 via 100.64.0.3 dev eth0 proto 87 metric 0"}}, // flanneld's, adopted
		{p3.Subnet, []string{"10.128.3.0/24 via 192.0.2.9 dev eth1 proto 4 metric 0"}},   // the operator's, untouched
		{p4.Subnet, []string{"10.128.4.0/24 via 100.64.0.5 dev eth0 proto 87 metric 0"}}, // flanneld's at metric 100, taken over
		{p5.Subnet, []string{"blackhole 10.128.5.0/24 proto 4 metric 0"}},                // the operator's, untouched
	} {
		if d := cmp.Diff(c.want, routesTo(t, l.ns.Handle, c.dst)); d != "" {
			t.Errorf("routes to %s (-want +got):\n%s", c.dst, d)
		}
	}
	checkSkipped(t, b, map[netip.Prefix]string{p3.Subnet: SkipForeignRoute, p5.Subnet: SkipForeignRoute})

	// A route for p6 appears after the full pass: the delta that adds p6
	// must not overwrite it.
	addRoute(t, l, &netlink.Route{Dst: ipNet(p6.Subnet), Gw: otherGW.AsSlice(), LinkIndex: eth1}, unix.RTPROT_STATIC)
	if err := b.(deltaApplier).ApplyDelta(ctx, snapshot(1, p2, p3, p4, p5, p6)); err == nil {
		t.Errorf("delta over a foreign route: no error; want the exclusive add to fail")
	}
	must(t, b.Apply(ctx, snapshot(1, p2, p3, p4, p5, p6)))
	if d := cmp.Diff([]string{"10.128.6.0/24 via 192.0.2.9 dev eth1 proto 4 metric 0"}, routesTo(t, l.ns.Handle, p6.Subnet)); d != "" {
		t.Errorf("routes to %s (-want +got):\n%s", p6.Subnet, d)
	}
	checkSkipped(t, b, map[netip.Prefix]string{p3.Subnet: SkipForeignRoute, p5.Subnet: SkipForeignRoute, p6.Subnet: SkipForeignRoute})
	if d := cmp.Diff(wantHostGW(p2, p4), kernelState(t, l.ns.Handle, "")); d != "" {
		t.Errorf("weft's routes at the end (-want +got):\n%s", d)
	}
}

// TestVXLANForeignRoutes: the same on vxlan. flanneld's route on
// flannel.1 (proto boot) is the overlay's and taken over; a route of
// another owner for a peer's subnet stays, and that peer gets no route,
// neighbour or FDB entry; a delta adding a peer whose subnet another
// route took since the last full pass fails instead of overwriting it.
func TestVXLANForeignRoutes(t *testing.T) {
	l := newLab(t, hostAddr, swAddr)
	eth1 := addOtherLink(t, l)
	b := l.backend(t, "vxlan", `{}`)
	ctx := context.Background()
	_, _, err := b.Init(ctx)
	must(t, err)
	dev, err := l.ns.Handle.LinkByName("flannel.1")
	must(t, err)
	p2, p3, p4 := vxlanPeer(2, publicIP(2)), vxlanPeer(3, publicIP(3)), vxlanPeer(4, publicIP(4))
	addRoute(t, l, &netlink.Route{Dst: ipNet(p2.Subnet), Gw: p2.Subnet.Addr().AsSlice(), LinkIndex: dev.Attrs().Index,
		Flags: int(netlink.FLAG_ONLINK)}, unix.RTPROT_BOOT)
	addRoute(t, l, &netlink.Route{Dst: ipNet(p3.Subnet), Gw: otherGW.AsSlice(), LinkIndex: eth1}, unix.RTPROT_STATIC)

	must(t, b.Apply(ctx, snapshot(1, p2, p3)))
	if d := cmp.Diff(wantVXLAN(1, p2), kernelState(t, l.ns.Handle, "flannel.1")); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
	if d := cmp.Diff([]string{"10.128.3.0/24 via 192.0.2.9 dev eth1 proto 4 metric 0"}, routesTo(t, l.ns.Handle, p3.Subnet)); d != "" {
		t.Errorf("routes to %s (-want +got):\n%s", p3.Subnet, d)
	}
	checkSkipped(t, b, map[netip.Prefix]string{p3.Subnet: SkipForeignRoute})

	addRoute(t, l, &netlink.Route{Dst: ipNet(p4.Subnet), Gw: otherGW.AsSlice(), LinkIndex: eth1}, unix.RTPROT_STATIC)
	if err := b.(deltaApplier).ApplyDelta(ctx, snapshot(1, p2, p3, p4)); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Errorf("delta over a foreign route: err = %v; want the exclusive add to fail (file exists)", err)
	}
	must(t, b.Apply(ctx, snapshot(1, p2, p3, p4)))
	if d := cmp.Diff([]string{"10.128.4.0/24 via 192.0.2.9 dev eth1 proto 4 metric 0"}, routesTo(t, l.ns.Handle, p4.Subnet)); d != "" {
		t.Errorf("routes to %s (-want +got):\n%s", p4.Subnet, d)
	}
	if d := cmp.Diff(wantVXLAN(1, p2), kernelState(t, l.ns.Handle, "flannel.1")); d != "" {
		t.Errorf("at the end (-want +got):\n%s", d)
	}
	checkSkipped(t, b, map[netip.Prefix]string{p3.Subnet: SkipForeignRoute, p4.Subnet: SkipForeignRoute})
}

// TestHostGW6ForeignRoutes: the IPv6 half of host-gw leaves another
// owner's route for a peer's IPv6 subnet alone and reports the peer, and
// takes over flanneld's (via the peer's PublicIPv6 on eth0, proto boot).
func TestHostGW6ForeignRoutes(t *testing.T) {
	l := newLab6(t)
	eth0 := l.eth0(t)
	gw := func(i int) lease.Lease {
		p := hostgwPeer(i, publicIP(i))
		p.IPv6Subnet, p.Attrs.PublicIPv6 = peerSubnet6(i), publicIP6(i)
		return p
	}
	p2, p3 := gw(2), gw(3)
	addRoute(t, l, &netlink.Route{Dst: ipNet(p2.IPv6Subnet), Gw: publicIP6(2).AsSlice(), LinkIndex: eth0, Priority: v6Metric}, unix.RTPROT_BOOT)
	addRoute(t, l, &netlink.Route{Dst: ipNet(p3.IPv6Subnet), Gw: publicIP6(99).AsSlice(), LinkIndex: eth0, Priority: v6Metric}, unix.RTPROT_STATIC)
	b := l.dual(t, "host-gw", `{}`)
	ctx := context.Background()
	_, _, err := b.Init(ctx)
	must(t, err)
	must(t, b.Apply(ctx, snapshot6(1, p2, p3)))
	for _, c := range []struct {
		dst  netip.Prefix
		want []string
	}{
		{p2.IPv6Subnet, []string{fmt.Sprintf("%s via %s dev eth0 proto 87 metric 1024", p2.IPv6Subnet, publicIP6(2))}},
		{p3.IPv6Subnet, []string{fmt.Sprintf("%s via %s dev eth0 proto 4 metric 1024", p3.IPv6Subnet, publicIP6(99))}},
	} {
		if d := cmp.Diff(c.want, routesTo(t, l.ns.Handle, c.dst)); d != "" {
			t.Errorf("routes to %s (-want +got):\n%s", c.dst, d)
		}
	}
	checkSkipped(t, b, map[netip.Prefix]string{p3.IPv6Subnet: SkipForeignRoute})
}
