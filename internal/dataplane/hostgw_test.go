package dataplane

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/rtnl"
)

func wantHostGW(peers ...lease.Lease) []string {
	var out []string
	for _, p := range peers {
		out = append(out, fmt.Sprintf("route %s via %s dev eth0", p.Subnet, p.Attrs.PublicIP))
	}
	return sortStrings(out)
}

func TestHostGW(t *testing.T) {
	l := newLab(t, hostAddr, swAddr)
	b := l.backend(t, "host-gw", `{"Type":"host-gw"}`)
	ctx := context.Background()
	pub, mtu, err := b.Init(ctx)
	must(t, err)
	if pub.BackendType != "host-gw" || pub.BackendData != nil || mtu != 1500 {
		t.Errorf("Init = %+v, %d; want host-gw, no data, MTU 1500", pub, mtu)
	}
	p2, p3, p4 := hostgwPeer(2, publicIP(2)), hostgwPeer(3, publicIP(3)), hostgwPeer(4, publicIP(4))
	for _, s := range []struct {
		name string
		snap lease.Snapshot
		want []string
	}{
		{"two", snapshot(1, p2, p3), wantHostGW(p2, p3)},
		{"three", snapshot(1, p2, p3, p4), wantHostGW(p2, p3, p4)},
		{"moved", snapshot(1, p2, hostgwPeer(3, publicIP(30)), p4), wantHostGW(p2, hostgwPeer(3, publicIP(30)), p4)},
		{"one", snapshot(1, p4), wantHostGW(p4)},
		{"none", snapshot(1), nil},
	} {
		must(t, b.Apply(ctx, s.snap))
		if d := cmp.Diff(s.want, kernelState(t, l.ns.Handle, "flannel.1")); d != "" {
			t.Errorf("%s (-want +got):\n%s", s.name, d)
		}
	}
}

// TestHostGWUnreachable: a peer off the L2 segment is skipped and reported
// — Loop.Warnings names it, the skipped-peers hook counts it — while every
// other peer is programmed and the apply succeeds, so /readyz stays ready
// on every host (issue 11 finding 9; the apply failed before).
func TestHostGWUnreachable(t *testing.T) {
	l := newLab(t, hostAddr, swAddr)
	b := l.backend(t, "host-gw", `{}`)
	ctx := context.Background()
	_, _, err := b.Init(ctx)
	must(t, err)
	far := hostgwPeer(3, netip.MustParseAddr("198.51.100.7"))
	p2, p4 := hostgwPeer(2, publicIP(2)), hostgwPeer(4, publicIP(4))
	loop := NewLoop(b, 0, testLog(t))
	skipped := map[string]int{}
	loop.OnSkipped(func(reason string, n int) { skipped[reason] = n })
	if err := loop.apply(ctx, snapshot(1, p2, far, p4), true); err != nil {
		t.Fatalf("apply with one unreachable peer: %v; want nil (the others programmed, the bad one reported)", err)
	}
	if d := cmp.Diff(wantHostGW(p2, p4), kernelState(t, l.ns.Handle, "flannel.1")); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
	w := loop.Warnings()
	if len(w) != 1 || !strings.Contains(w[0], "10.128.3.0/24") || !strings.Contains(w[0], "198.51.100.7") || !strings.Contains(w[0], SkipUnreachable) {
		t.Errorf("Warnings() = %q; want one naming 10.128.3.0/24 at 198.51.100.7, unreachable", w)
	}
	if want := map[string]int{SkipInvalid: 0, SkipUnreachable: 1, SkipForeignRoute: 0}; !maps.Equal(skipped, want) {
		t.Errorf("skipped-peers hook: %v, want %v", skipped, want)
	}
	// A delta that adds the bad peer back succeeds too; fixing it clears the warning.
	must(t, loop.apply(ctx, snapshot(1, p2, far), false))
	if d := cmp.Diff(wantHostGW(p2), kernelState(t, l.ns.Handle, "flannel.1")); d != "" {
		t.Errorf("after a delta (-want +got):\n%s", d)
	}
	must(t, loop.apply(ctx, snapshot(1, p2, hostgwPeer(3, publicIP(3))), false))
	if w := loop.Warnings(); len(w) != 0 || skipped[SkipUnreachable] != 0 {
		t.Errorf("peer fixed: Warnings() = %q, skipped %v; want none", w, skipped)
	}
}

// TestRouteRefusedUnreachable: a route the kernel refuses because its
// gateway is off-link (the connected subnets changed after they were read)
// is listed in the tally as unreachable, not among its failures.
func TestRouteRefusedUnreachable(t *testing.T) {
	l := newLab(t, hostAddr, swAddr)
	rt := l.rtnl(t)
	w := routeWant{Dst: peerSubnet(3), Gw: netip.MustParseAddr("198.51.100.7"), Link: l.eth0(t)}
	tl := &tally{what: "test", peerRoutes: true}
	_, _, err := syncRoutes(context.Background(), rt, unix.AF_INET, routeList(nil), routesWanted(Route(w)), tl)
	must(t, err)
	if got := tl.unreachable; tl.err() != nil || len(got) != 1 || got[0].w != w || !isUnreachable(got[0].err) {
		t.Errorf("tally error %v, unreachable %v; want none, %v with ENETUNREACH", tl.err(), got, w)
	}
}

// TestHostGWRepair: a hand-deleted route comes back through the loop, and a
// stale weft route from a previous run is swept at start.
func TestHostGWRepair(t *testing.T) {
	l := newLab(t, hostAddr, swAddr)
	stale := &netlink.Route{Dst: ipNet(peerSubnet(9)), Gw: publicIP(9).AsSlice(), LinkIndex: l.eth0(t), Protocol: rtnl.ProtWeft}
	must(t, l.ns.Handle.RouteAdd(stale))
	b := l.backend(t, "host-gw", `{}`)
	_, _, err := b.Init(context.Background())
	must(t, err)
	peers := []lease.Lease{hostgwPeer(2, publicIP(2)), hostgwPeer(3, publicIP(3))}
	snaps, _ := runLoop(t, b, time.Minute)
	snaps <- snapshot(1, peers...)
	converged := func() (bool, string) {
		d := cmp.Diff(wantHostGW(peers...), kernelState(t, l.ns.Handle, "flannel.1"))
		return d == "", d
	}
	eventually(t, 5*time.Second, "initial apply (stale route swept)", converged)
	must(t, l.ns.Handle.RouteDel(&netlink.Route{Dst: ipNet(peers[1].Subnet), Table: unix.RT_TABLE_MAIN, Protocol: rtnl.ProtWeft}))
	took := eventually(t, time.Second, "deleted route restored", converged)
	t.Logf("restored in %v", took)
}

func TestAlloc(t *testing.T) {
	l := newLab(t, hostAddr, swAddr)
	b := l.backend(t, "alloc", `{}`)
	pub, mtu, err := b.Init(context.Background())
	must(t, err)
	if pub.BackendType != "alloc" || mtu != 1500 || b.Events() != nil {
		t.Errorf("Init = %+v %d", pub, mtu)
	}
	must(t, b.Apply(context.Background(), snapshot(1, hostgwPeer(2, publicIP(2)))))
	if got := kernelState(t, l.ns.Handle, "flannel.1"); len(got) != 0 {
		t.Errorf("alloc changed the kernel: %v", got)
	}
}
