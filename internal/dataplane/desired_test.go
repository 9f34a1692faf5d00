package dataplane

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netconf"
	"github.com/weft-net/weft/internal/rtnl"
)

// TestRender: each backend's desired state as a table, with no kernel:
// what a snapshot asks of the kernel, and which peers are left out and why.
func TestRender(t *testing.T) {
	const dev, iface = 7, 2
	host := Host{IfaceName: "eth0", IfaceIndex: iface, IfaceAddr: publicIP(0), PublicIP: publicIP(0), BlackholeRoute: true}
	underlay := []netip.Prefix{netip.MustParsePrefix("100.64.0.0/16")}
	own := peerSubnet(1)
	good2, good3 := vxlanPeer(2, publicIP(2)), vxlanPeer(3, publicIP(3))
	dupMAC := vxlanPeer(4, publicIP(4))
	dupMAC.Attrs.BackendData = good2.Attrs.BackendData
	wrongType := hostgwPeer(5, publicIP(5))
	far := hostgwPeer(6, netip.MustParseAddr("198.51.100.6"))
	onlink := func(i int) Route {
		return Route{Dst: peerSubnet(i), Gw: peerSubnet(i).Addr(), Link: dev, OnLink: true}
	}
	blackhole := Route{Dst: own, Blackhole: true, Metric: blackholeMetric}
	foreign := []rtnl.Route{{Dst: peerSubnet(3), Gw: netip.MustParseAddr("100.64.9.9"), Link: iface, Type: unix.RTN_UNICAST}}

	for _, c := range []struct {
		name    string
		cfg     netconf.Config
		peers   []lease.Lease
		foreign []rtnl.Route
		want    flatDesired
		skipped map[netip.Prefix]string // reason by peer
	}{{
		name:  "vxlan",
		cfg:   netconfOf("vxlan", `{}`),
		peers: []lease.Lease{good2, good3, dupMAC, wrongType},
		want: flatDesired{
			Family: unix.AF_INET, Device: "flannel.1", Own: own, Dev: dev, Addr: netip.PrefixFrom(own.Addr(), 32),
			Routes: map[netip.Prefix]Route{peerSubnet(2): onlink(2), peerSubnet(3): onlink(3), own: blackhole},
			Neighs: map[netip.Addr]MAC{peerSubnet(2).Addr(): MAC(mac(2)), peerSubnet(3).Addr(): MAC(mac(3))},
			FDB:    map[[6]byte]netip.Addr{[6]byte(mac(2)): publicIP(2), [6]byte(mac(3)): publicIP(3)},
		},
		skipped: map[netip.Prefix]string{peerSubnet(4): SkipInvalid, peerSubnet(5): SkipInvalid},
	}, {
		name:    "vxlan, a foreign route holds a peer's subnet",
		cfg:     netconfOf("vxlan", `{}`),
		peers:   []lease.Lease{good2, good3},
		foreign: foreign,
		want: flatDesired{
			Family: unix.AF_INET, Device: "flannel.1", Own: own, Dev: dev, Addr: netip.PrefixFrom(own.Addr(), 32),
			Routes: map[netip.Prefix]Route{peerSubnet(2): onlink(2), own: blackhole},
			Neighs: map[netip.Addr]MAC{peerSubnet(2).Addr(): MAC(mac(2))},
			FDB:    map[[6]byte]netip.Addr{[6]byte(mac(2)): publicIP(2)},
		},
		skipped: map[netip.Prefix]string{peerSubnet(3): SkipForeignRoute},
	}, {
		name:  "vxlan DirectRouting: on-segment peers get a direct route",
		cfg:   netconfOf("vxlan", `{"DirectRouting":true}`),
		peers: []lease.Lease{good2, vxlanPeer(7, netip.MustParseAddr("198.51.100.7"))},
		want: flatDesired{
			Family: unix.AF_INET, Device: "flannel.1", Own: own, Dev: dev, Addr: netip.PrefixFrom(own.Addr(), 32),
			Routes: map[netip.Prefix]Route{peerSubnet(2): {Dst: peerSubnet(2), Gw: publicIP(2), Link: iface}, peerSubnet(7): onlink(7), own: blackhole},
			Neighs: map[netip.Addr]MAC{peerSubnet(7).Addr(): MAC(mac(7))},
			FDB:    map[[6]byte]netip.Addr{[6]byte(mac(7)): netip.MustParseAddr("198.51.100.7")},
		},
	}, {
		name:  "host-gw",
		cfg:   netconfOf("host-gw", `{}`),
		peers: []lease.Lease{hostgwPeer(2, publicIP(2)), far, good3},
		want: flatDesired{
			Family: unix.AF_INET, Own: own, Dev: dev,
			Routes: map[netip.Prefix]Route{peerSubnet(2): {Dst: peerSubnet(2), Gw: publicIP(2), Link: iface}, own: blackhole},
			Neighs: map[netip.Addr]MAC{}, FDB: map[[6]byte]netip.Addr{},
		},
		skipped: map[netip.Prefix]string{peerSubnet(6): SkipUnreachable, peerSubnet(3): SkipInvalid},
	}, {
		name:  "udp: peers are the engine's, not the kernel's",
		cfg:   netconf.Config{BackendType: "udp", Network: netip.MustParsePrefix("10.0.0.0/8")},
		peers: []lease.Lease{good2},
		want: flatDesired{
			Family: unix.AF_INET, Device: UDPDeviceName, Own: own, Dev: dev, Addr: netip.PrefixFrom(own.Addr(), 32),
			Routes: map[netip.Prefix]Route{netip.MustParsePrefix("10.0.0.0/8"): {Dst: netip.MustParsePrefix("10.0.0.0/8"), Link: dev}, own: blackhole},
			Neighs: map[netip.Addr]MAC{}, FDB: map[[6]byte]netip.Addr{},
		},
	}} {
		t.Run(c.name, func(t *testing.T) {
			ds, err := Render(c.cfg, host, snapshot(1, c.peers...), func(uint8) Facts { return NewFacts(dev, underlay, c.foreign) })
			must(t, err)
			if len(ds) != 1 {
				t.Fatalf("Render: %d families, want 1", len(ds))
			}
			got := flatten(ds[0])
			skipped := map[netip.Prefix]string{}
			for _, s := range got.Skipped {
				skipped[s.peer] = s.reason
				if s.msg == "" {
					t.Errorf("peer %s skipped (%s) without a reason", s.peer, s.reason)
				}
			}
			got.Skipped = nil
			if d := cmp.Diff(c.want, got, cmpopts.IgnoreFields(flatDesired{}, "NH", "NHCounted"), cmpopts.EquateEmpty(), cmpopts.EquateComparable(netip.Prefix{}, netip.Addr{})); d != "" {
				t.Errorf("desired state (-want +got):\n%s", d)
			}
			if d := cmp.Diff(c.skipped, skipped, cmpopts.EquateEmpty()); d != "" {
				t.Errorf("skipped peers (-want +got):\n%s", d)
			}
		})
	}
}

// TestRenderChoices: the config decides the families and the errors.
func TestRenderChoices(t *testing.T) {
	host := Host{IfaceName: "eth0", IfaceIndex: 2, IfaceAddr: publicIP(0), PublicIP: publicIP(0)}
	dual := netconfOf("host-gw", `{}`)
	dual.EnableIPv4, dual.EnableIPv6 = true, true
	ds, err := Render(dual, host, snapshot(1), nil)
	must(t, err)
	if len(ds) != 2 || ds[0].Family != unix.AF_INET || ds[1].Family != unix.AF_INET6 {
		t.Errorf("dual-stack host-gw: %d families, want IPv4 then IPv6", len(ds))
	}
	ds, err = Render(netconfOf("alloc", `{}`), host, snapshot(1), nil)
	if err != nil || len(ds) != 0 {
		t.Errorf("alloc: %d families, %v; want none, nil", len(ds), err)
	}
	if _, err := Render(netconfOf("vxlan", `{"VNI":"x"}`), host, snapshot(1), nil); err == nil {
		t.Error("vxlan with a malformed VNI: no error")
	}
	if _, err := Render(netconfOf("nope", `{}`), host, snapshot(1), nil); err == nil || !strings.Contains(err.Error(), "vxlan") {
		t.Errorf("unknown backend: %v, want an error listing the supported ones", err)
	}
}

// TestDesiredEntries: a state keeps only its family's addresses; lookups
// of the other family's (a kernel notification about an IPv6 link-local
// neighbour on flannel.1) find nothing, and the nexthops counted follow
// the routes that go through them.
func TestDesiredEntries(t *testing.T) {
	mac1 := MAC{0x0e, 1, 2, 3, 4, 5}
	d6 := newDesired(unix.AF_INET6, "flannel-v6.1", netip.MustParsePrefix("fd00:1::/64"), 7, 1)
	sub6 := netip.MustParsePrefix("fd00:2::/64")
	w6 := Route{Dst: sub6, Gw: sub6.Addr(), Link: 7, OnLink: true, Metric: v6Metric}
	d6.add(PeerEntries{Route: w6, MAC: mac1[:], Dst: netip.MustParseAddr("2001:db8::2")})
	if r, ok := d6.Route(sub6); !ok || r != w6 {
		t.Errorf("IPv6 route %s: %v, %t; want %v", sub6, r, ok, w6)
	}
	if m, ok := d6.Neigh(sub6.Addr()); !ok || m != mac1 {
		t.Errorf("IPv6 neighbour: %s, %t; want %s", m, ok, mac1)
	}
	if dst, ok := d6.FDBDst(mac1); !ok || dst != netip.MustParseAddr("2001:db8::2") {
		t.Errorf("IPv6 FDB entry: %s, %t", dst, ok)
	}
	if _, ok := d6.Neigh(netip.MustParseAddr("10.0.0.1")); ok {
		t.Error("an IPv4 neighbour found in an IPv6 state")
	}
	d6.remove(PeerEntries{Route: w6, MAC: mac1[:], Dst: netip.MustParseAddr("2001:db8::2")})
	if d6.NumRoutes()+d6.NumNeighs()+d6.NumFDB() != 0 {
		t.Errorf("after remove: %d routes, %d neighbours, %d FDB entries; want none", d6.NumRoutes(), d6.NumNeighs(), d6.NumFDB())
	}

	d4 := newDesired(unix.AF_INET, "flannel.1", peerSubnet(1), 7, 1)
	sub := peerSubnet(2)
	w := Route{Dst: sub, Gw: sub.Addr(), Link: 7, OnLink: true, NhID: nexthopID(sub)}
	d4.setRoute(w)
	if _, ok := d4.Neigh(netip.MustParseAddr("fe80::1")); ok {
		t.Error("an IPv6 neighbour found in an IPv4 state")
	}
	if _, ok := d4.Route(netip.PrefixFrom(netip.AddrFrom16(sub.Addr().As16()), 120)); ok {
		t.Error("an IPv4-mapped IPv6 route found in an IPv4 state")
	}
	if n, ok := d4.nexthop(w.NhID); !ok || d4.nhCount != 1 || n != nexthopOf(w) {
		t.Errorf("nexthop %d: %v, %t, %d counted; want %v, 1 counted", w.NhID, n, ok, d4.nhCount, nexthopOf(w))
	}
	w.NhID = 0 // the same destination, now a plain route
	d4.setRoute(w)
	if _, ok := d4.nexthop(nexthopID(sub)); ok || d4.nhCount != 0 || d4.nhLens != 0 {
		t.Errorf("after the route left its nexthop: %d counted, lengths %b; want none", d4.nhCount, d4.nhLens)
	}
	if r, ok := d4.Route(sub); !ok || r != w {
		t.Errorf("IPv4 route %s: %v, %t; want %v", sub, r, ok, w)
	}
	bh := Route{Dst: peerSubnet(1), Blackhole: true, Metric: blackholeMetric}
	d4.setRoute(bh)
	if r, ok := d4.Route(bh.Dst); !ok || r != bh || len(d4.tmpls) != 3 {
		t.Errorf("blackhole route: %v, %t (%d kinds of route); want %v (3 kinds)", r, ok, len(d4.tmpls), bh)
	}
}
