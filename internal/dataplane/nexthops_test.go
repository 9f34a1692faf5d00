package dataplane

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/lease"
)

// TestVXLANNexthops: on a kernel with nexthop objects, each IPv4 vxlan
// peer's route goes through a proto 87 nexthop whose id is the peer
// subnet's address; a plain route already there (flanneld's, proto boot) is
// replaced in place, also where weft's nexthop for it survived a swap to
// flanneld unused; a stale weft nexthop goes; a peer whose id another
// owner's nexthop holds keeps a plain via route and that nexthop is left
// alone; a nexthop deleted by hand (which silently takes its route along)
// is restored from the nexthop notification; a peer that leaves takes its
// nexthop with it.
func TestVXLANNexthops(t *testing.T) {
	l := newLab(t, hostAddr, swAddr)
	if ok, err := l.rtnl(t).ProbeNexthops(); !ok {
		t.Skipf("this kernel makes no nexthop objects (probe error: %v)", err)
	}
	b := l.backend(t, "vxlan", `{}`)
	_, _, err := b.Init(context.Background())
	must(t, err)
	peers := []lease.Lease{vxlanPeer(2, publicIP(2)), vxlanPeer(3, publicIP(3)), vxlanPeer(4, publicIP(4))}
	id := func(i int) string { return fmt.Sprint(nexthopID(peerSubnet(i))) }
	ns := l.ns
	ns.MustRun(t, "ip", "route", "add", peerSubnet(2).String(), "via", peerSubnet(2).Addr().String(), "dev", "flannel.1", "onlink", "proto", "boot")
	ns.MustRun(t, "ip", "nexthop", "add", "id", id(9), "via", peerSubnet(9).Addr().String(), "dev", "flannel.1", "onlink", "proto", "87")
	// Peer 4 as a weftd → flanneld swap leaves it: weft's nexthop unused,
	// flanneld's via route in its place.
	ns.MustRun(t, "ip", "nexthop", "add", "id", id(4), "via", peerSubnet(4).Addr().String(), "dev", "flannel.1", "onlink", "proto", "87")
	ns.MustRun(t, "ip", "route", "add", peerSubnet(4).String(), "via", peerSubnet(4).Addr().String(), "dev", "flannel.1", "onlink", "proto", "boot")
	ns.MustRun(t, "ip", "nexthop", "add", "id", id(3), "via", "10.99.0.1", "dev", "flannel.1", "onlink", "proto", "static")

	snaps, _ := runLoop(t, b, time.Minute) // resync far away: repairs must come from events
	snaps <- snapshot(1, peers...)
	want := wantVXLAN(1, peers...)
	converged := func() (bool, string) {
		d := cmp.Diff(want, kernelState(t, ns.Handle, "flannel.1"))
		return d == "", d
	}
	eventually(t, 5*time.Second, "initial apply", converged)
	nexthops := func() string { return ns.MustRun(t, "ip", "nexthop", "show") }
	routeOf := func(i int) string { return ns.MustRun(t, "ip", "route", "show", peerSubnet(i).String()) }
	for _, i := range []int{2, 4} {
		if r := routeOf(i); !strings.Contains(r, "nhid "+id(i)+" via "+peerSubnet(i).Addr().String()+" dev flannel.1 proto 87") {
			t.Errorf("peer %d's route is %q, want it through nexthop %s with proto 87", i, r, id(i))
		}
		if !strings.Contains(nexthops(), "id "+id(i)+" via "+peerSubnet(i).Addr().String()+" dev flannel.1 scope link proto 87 onlink") {
			t.Errorf("no nexthop %s for peer %d:\n%s", id(i), i, nexthops())
		}
	}
	if r := routeOf(3); strings.Contains(r, "nhid") || !strings.Contains(r, "via "+peerSubnet(3).Addr().String()) {
		t.Errorf("peer 3's id is another owner's nexthop: route %q, want a plain via route", r)
	}
	if nh := nexthops(); !strings.Contains(nh, "id "+id(3)+" via 10.99.0.1") || strings.Contains(nh, "id "+id(9)+" ") {
		t.Errorf("nexthops:\n%s\nwant the foreign id %s kept and weft's stale id %s gone", nh, id(3), id(9))
	}

	ns.MustRun(t, "ip", "nexthop", "del", "id", id(4))
	took := eventually(t, time.Second, "deleted nexthop and its route restored", converged)
	t.Logf("nexthop restored in %v", took)

	snaps <- snapshot(1, peers[:2]...)
	want = wantVXLAN(1, peers[:2]...)
	eventually(t, 2*time.Second, "peer 4 left", converged)
	if nh := nexthops(); strings.Contains(nh, "id "+id(4)+" ") {
		t.Errorf("peer 4 left but its nexthop stays:\n%s", nh)
	}
	rs, err := ns.Handle.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	must(t, err)
	for _, r := range rs {
		if r.Dst != nil && r.Dst.String() == peerSubnet(2).String() && r.Protocol != 87 {
			t.Errorf("flanneld's route to peer 2 was not taken over: %v", r)
		}
	}
}

// TestVXLANNexthopFallback: where the probe finds no nexthop objects (forced
// here: this kernel has them), the same peers get plain `via … onlink`
// routes and the kernel holds no nexthop; a join, a leave and a route
// deleted by hand are handled as on any kernel.
func TestVXLANNexthopFallback(t *testing.T) {
	l := newLab(t, hostAddr, swAddr)
	b := l.backend(t, "vxlan", `{}`)
	b.(*backend).noNexthops = true
	_, _, err := b.Init(context.Background())
	must(t, err)
	ns := l.ns
	peers := []lease.Lease{vxlanPeer(2, publicIP(2)), vxlanPeer(3, publicIP(3))}
	snaps, _ := runLoop(t, b, time.Minute) // resync far away: the repair must come from the route event
	var want []string
	converged := func() (bool, string) {
		d := cmp.Diff(want, kernelState(t, ns.Handle, "flannel.1"))
		return d == "", d
	}
	plain := func(what string) {
		t.Helper()
		if nh := ns.MustRun(t, "ip", "nexthop", "show"); strings.TrimSpace(nh) != "" {
			t.Errorf("%s: nexthop objects on the fallback path:\n%s", what, nh)
		}
		for _, r := range strings.Split(strings.TrimSpace(ns.MustRun(t, "ip", "route", "show", "proto", "87")), "\n") {
			if strings.Contains(r, "nhid") || !strings.Contains(r, " onlink") {
				t.Errorf("%s: route %q, want a plain via … onlink route", what, r)
			}
		}
	}

	snaps <- snapshot(1, peers...)
	want = wantVXLAN(1, peers...)
	eventually(t, 5*time.Second, "initial apply", converged)
	plain("initial apply")

	peers = []lease.Lease{peers[0], vxlanPeer(4, publicIP(4))}
	snaps <- snapshot(1, peers...)
	want = wantVXLAN(1, peers...)
	eventually(t, 2*time.Second, "peer 3 left, peer 4 joined", converged)
	plain("delta")

	ns.MustRun(t, "ip", "route", "del", peerSubnet(4).String())
	eventually(t, time.Second, "deleted route restored", converged)
	plain("repair")
}
