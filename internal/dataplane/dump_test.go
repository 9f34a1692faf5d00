package dataplane

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/rtnl"
)

// TestRawDumpMatchesNetlink: the raw dumps (several kernel chunks: 700 peers)
// see exactly what vishvananda's list functions see, foreign entries
// included, and the kernel's filters drop nothing weft needs.
func TestRawDumpMatchesNetlink(t *testing.T) {
	l := newLab(t, hostAddr, swAddr)
	ctx := context.Background()
	b := l.backend(t, "vxlan", `{}`)
	_, _, err := b.Init(ctx)
	must(t, err)
	peers := make([]lease.Lease, 700)
	for i := range peers {
		peers[i] = vxlanPeer(i+2, publicIP(i+2))
	}
	must(t, b.Apply(ctx, snapshot(1, peers...)))
	h := l.ns.Handle
	dev, err := h.LinkByName("flannel.1")
	must(t, err)
	link := dev.Attrs().Index
	eth0 := l.eth0(t)
	// Foreign entries: a route of another protocol, a dynamic neighbour, a
	// permanent FDB entry with its own port and VNI.
	must(t, h.RouteAdd(&netlink.Route{Dst: ipNet(netip.MustParsePrefix("192.0.2.0/24")), Gw: net.ParseIP("100.64.255.253"), LinkIndex: eth0}))
	must(t, h.NeighSet(&netlink.Neigh{LinkIndex: eth0, Family: netlink.FAMILY_V4, State: netlink.NUD_REACHABLE,
		IP: net.ParseIP("100.64.255.252"), HardwareAddr: mac(90000)}))
	must(t, h.NeighAppend(&netlink.Neigh{LinkIndex: link, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT,
		Flags: netlink.NTF_SELF, IP: net.ParseIP("100.64.255.251"), HardwareAddr: mac(90001), VNI: 77}))

	// Routes: the main table, as netlink lists it.
	rt := l.rtnl(t)
	m, err := readMainRoutes(rt, unix.AF_INET, eth0)
	must(t, err)
	var got, want []string
	for _, r := range m.weft {
		got = append(got, fmt.Sprintf("%s gw=%s dev=%d prio=%d flags=%d type=%d", r.Dst, r.Gw, r.Link, r.Priority, r.Flags, r.Type))
	}
	for _, p := range m.connected {
		got = append(got, "connected "+p.String())
	}
	rs, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	must(t, err)
	for _, r := range rs {
		switch {
		case r.Protocol == rtnl.ProtWeft:
			want = append(want, fmt.Sprintf("%s gw=%s dev=%d prio=%d flags=%d type=%d", prefixOf(r.Dst), addrOf(r.Gw), r.LinkIndex, r.Priority, r.Flags, r.Type))
		case r.LinkIndex == eth0 && r.Gw == nil && r.Scope == netlink.SCOPE_LINK && r.Type == unix.RTN_UNICAST:
			want = append(want, "connected "+prefixOf(r.Dst).String())
		}
	}
	if len(m.weft) != 700 || len(m.connected) != 1 {
		t.Errorf("readMainRoutes: %d weft routes, %d connected; want 700, 1", len(m.weft), len(m.connected))
	}
	if d := cmp.Diff(sortStrings(want), sortStrings(got)); d != "" {
		t.Errorf("routes (-netlink +raw):\n%s", d)
	}

	// Neighbours and FDB entries of every device, raw against netlink.
	for _, c := range []struct {
		family uint8
		link   int
	}{{unix.AF_INET, link}, {unix.AF_INET, eth0}, {unix.AF_BRIDGE, link}} {
		var raw []string
		add := func(n rtnl.Neigh) {
			raw = append(raw, fmt.Sprintf("%s %s state=%#x vni=%d", n.IP, net.HardwareAddr(n.MAC[:n.MACLen]), n.State, n.VNI))
		}
		if c.family == unix.AF_BRIDGE {
			must(t, rt.DumpFDB(c.link, add))
		} else {
			must(t, rt.DumpNeighs(c.family, c.link, add))
		}
		ns, err := h.NeighList(c.link, int(c.family))
		must(t, err)
		var nl []string
		for _, n := range ns {
			nl = append(nl, fmt.Sprintf("%s %s state=%#x vni=%d", addrOf(n.IP), n.HardwareAddr, n.State, n.VNI))
		}
		if len(raw) == 0 {
			t.Errorf("family %d dev #%d: raw dump found %d entries", c.family, c.link, len(raw))
		}
		if d := cmp.Diff(sortStrings(nl), sortStrings(raw)); d != "" {
			t.Errorf("family %d dev #%d (-netlink +raw):\n%s", c.family, c.link, d)
		}
	}

	// A resync removes the foreign FDB entry (its VNI must be sent back for
	// the kernel to find that remote) and leaves the rest alone.
	must(t, b.Apply(ctx, snapshot(1, peers...)))
	if d := cmp.Diff(wantVXLAN(1, peers...), kernelState(t, h, "flannel.1")); d != "" {
		t.Errorf("after resync (-want +got):\n%s", d)
	}
}

// TestBatchFailures: a batch reports each failed request by its key and
// still applies the others around it, across batch boundaries.
func TestBatchFailures(t *testing.T) {
	l := newLab(t, hostAddr, swAddr)
	rt := l.rtnl(t)
	eth0 := l.eth0(t)
	want := routesWanted()
	for i := range 150 {
		w := routeWant{Dst: peerSubnet(i + 2), Gw: netip.MustParseAddr("100.64.255.254"), Link: eth0}
		if i%50 == 7 {
			w.Link = 999999 // no such device: ENODEV
		}
		want.setRoute(w)
	}
	tl := &tally{what: "test"}
	st, del, err := syncRoutes(context.Background(), rt, unix.AF_INET, routeList(nil), want, tl)
	must(t, err)
	must(t, del())
	if st.Added != 147 || tl.n != 3 {
		t.Errorf("added %d, failed %d; want 147, 3 (first: %v)", st.Added, tl.n, tl.first)
	}
	// Routes are written in the map's order: the first failure is any of the three.
	if tl.first == nil || !slices.ContainsFunc([]string{"10.128.9.0/24", "10.128.59.0/24", "10.128.109.0/24"}, func(r string) bool { return strings.Contains(tl.first.Error(), r) }) {
		t.Errorf("first failure %v does not name a refused route (10.128.9.0/24, 10.128.59.0/24 or 10.128.109.0/24)", tl.first)
	}
	m, err := readMainRoutes(rt, unix.AF_INET, eth0)
	must(t, err)
	if len(m.weft) != 147 {
		t.Errorf("kernel holds %d weft routes, want 147", len(m.weft))
	}
	// Now all of them are stale: deleted in batches, none left.
	tl = &tally{what: "test"}
	st, del, err = syncRoutes(context.Background(), rt, unix.AF_INET, routeList(m.weft), nil, tl)
	must(t, err)
	must(t, del())
	if st.Deleted != 147 || tl.n != 0 {
		t.Errorf("deleted %d, failed %d (%v); want 147, 0", st.Deleted, tl.n, tl.first)
	}
	if m, _ = readMainRoutes(rt, unix.AF_INET, eth0); len(m.weft) != 0 {
		t.Errorf("%d weft routes left", len(m.weft))
	}
}

// TestRTNLSocket: the backend's own rtnetlink socket works in the namespace
// it was opened for, is shared by the halves of a dual-stack backend, and
// after Close fails every dump and write with an error instead of using a
// closed (possibly reused) descriptor.
func TestRTNLSocket(t *testing.T) {
	l := newLab(t, hostAddr, swAddr)
	eth0 := l.eth0(t)
	rt := l.rtnl(t)
	m, err := readMainRoutes(rt, unix.AF_INET, eth0)
	must(t, err)
	if len(m.connected) != 1 || m.connected[0] != l.under {
		t.Errorf("connected routes on eth0 = %v, want [%s] (the lab namespace's)", m.connected, l.under)
	}

	rt.Close()
	rt.Close() // idempotent: both halves of a dual-stack backend close it
	if _, err := readMainRoutes(rt, unix.AF_INET, eth0); !errors.Is(err, rtnl.ErrClosed) {
		t.Errorf("dump after close: %v, want %v", err, rtnl.ErrClosed)
	}
	tl := &tally{what: "test"}
	st, _, err := syncRoutes(context.Background(), rt, unix.AF_INET, routeList(nil), routesWanted(Route{Dst: peerSubnet(2), Gw: l.under.Addr().Next().Next(), Link: eth0}), tl)
	must(t, err)
	if st.Added != 0 || tl.n != 1 || !errors.Is(tl.first, rtnl.ErrClosed) {
		t.Errorf("write after close: added %d, failed %d (%v); want 0, 1 with %v", st.Added, tl.n, tl.first, rtnl.ErrClosed)
	}

	// One socket for every family of a backend (its drivers share it),
	// closed by the backend's Close.
	b := l.dual(t, "host-gw", `{}`)
	bb := b.(*backend)
	if bb.rt == nil {
		t.Fatal("the dual-stack backend opened no socket")
	}
	must(t, b.Close())
	if err := bb.rt.DumpRoutes(unix.AF_INET, func(rtnl.Route) {}); !errors.Is(err, rtnl.ErrClosed) {
		t.Errorf("dump after the backend's Close: %v, want %v", err, rtnl.ErrClosed)
	}
}
