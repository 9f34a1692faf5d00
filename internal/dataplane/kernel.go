package dataplane

// The drivers below keep desired and actual apart (felix-style): the caller
// computes the whole desired set from a snapshot, each sync lists once what
// weft could own in the kernel, adds what is missing, replaces what differs
// and deletes what is stale. A correct entry is never touched, so a restart
// that re-applies the same leases changes nothing (no packet loss). Failures
// are counted, not fatal: the rest of the batch still goes in and the next
// apply retries whatever is still wrong.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// RTProtWeft is the route protocol number on every route weft installs
// (`ip route show proto 87`). It is how weft recognises its own routes after a
// restart, to remove leftovers of leases that no longer exist, without ever
// touching routes somebody else made. 87 is 0x57, ASCII 'W'; it is not in
// iproute2's rt_protos (0-4 kernel, 8-18 routing daemons, 42 babel, 99 openr,
// 186-192 bgp/isis/ospf/rip/eigrp) nor used by felix (80) or bird (12).
const RTProtWeft netlink.RouteProtocol = 87

// blackholeMetric keeps the -ip-blackhole-route route behind the bridge's own
// connected route (metric 0) for the same subnet: it only catches traffic
// when no container bridge claims the subnet.
const blackholeMetric = 1 << 16

// ctxCheckEvery bounds how many kernel calls run between context checks, so
// a shutdown does not wait for a 15,000-call batch.
const ctxCheckEvery = 512

// tally collects the failures of one batch: the first error and a count.
type tally struct {
	what  string
	n     int
	first error
}

func (t *tally) add(err error) {
	if err == nil {
		return
	}
	t.n++
	if t.first == nil {
		t.first = err
	}
}

func (t *tally) err() error {
	switch t.n {
	case 0:
		return nil
	case 1:
		return t.first
	}
	return fmt.Errorf("%s: %d changes failed, first: %w", t.what, t.n, t.first)
}

// isGone reports whether a delete failed only because the object is already
// gone, which is what the delete wanted.
func isGone(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH)
}

// dump retries a netlink dump the kernel interrupted (the table changed while
// it was being read), like CNI's netlinksafe: a partial dump would make a
// sync delete or re-add entries that are fine.
func dump[T any](f func() (T, error)) (T, error) {
	var (
		v   T
		err error
	)
	for range 5 {
		v, err = f()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return v, err
}

func prefixOf(n *net.IPNet) netip.Prefix {
	if n == nil {
		return netip.Prefix{}
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones)
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func addrOf(ip net.IP) netip.Addr {
	if v4 := ip.To4(); v4 != nil {
		ip = v4
	}
	a, _ := netip.AddrFromSlice(ip)
	return a
}

// routeWant is one route weft wants in the main table.
type routeWant struct {
	Dst       netip.Prefix
	Gw        netip.Addr // zero for a blackhole route
	Link      int        // 0 for a blackhole route
	OnLink    bool
	Blackhole bool
	Metric    int
}

func (w routeWant) route() *netlink.Route {
	r := &netlink.Route{
		Dst:       ipNet(w.Dst),
		Protocol:  RTProtWeft,
		Table:     unix.RT_TABLE_MAIN,
		Priority:  w.Metric,
		LinkIndex: w.Link,
		Family:    netlink.FAMILY_V4,
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

func (w routeWant) matches(r netlink.Route) bool {
	typ := r.Type
	if typ == 0 {
		typ = unix.RTN_UNICAST
	}
	if w.Blackhole {
		return typ == unix.RTN_BLACKHOLE && r.Priority == w.Metric
	}
	return typ == unix.RTN_UNICAST &&
		addrOf(r.Gw) == w.Gw &&
		r.LinkIndex == w.Link &&
		(r.Flags&int(netlink.FLAG_ONLINK) != 0) == w.OnLink &&
		r.Priority == w.Metric &&
		len(r.MultiPath) == 0
}

func (w routeWant) String() string {
	if w.Blackhole {
		return fmt.Sprintf("blackhole %s metric %d", w.Dst, w.Metric)
	}
	s := fmt.Sprintf("%s via %s dev #%d", w.Dst, w.Gw, w.Link)
	if w.OnLink {
		s += " onlink"
	}
	return s
}

// syncStats counts what a sync changed, for logs and tests.
type syncStats struct{ Added, Replaced, Deleted int }

func (s *syncStats) plus(o syncStats) {
	s.Added += o.Added
	s.Replaced += o.Replaced
	s.Deleted += o.Deleted
}

// mainRoutes is what one dump of the IPv4 main table tells an apply: weft's
// own routes, and the subnets directly connected to the underlay interface
// (for "is this peer on my L2 segment" checks). One dump per apply, never
// one per peer (flannel's host-gw dumped the table once per lease).
type mainRoutes struct {
	weft      []netlink.Route
	connected []netip.Prefix
}

func readMainRoutes(h *netlink.Handle, ifaceIndex int) (mainRoutes, error) {
	var m mainRoutes
	_, err := dump(func() (struct{}, error) {
		m = mainRoutes{}
		err := h.RouteListFilteredIter(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE,
			func(r netlink.Route) bool {
				switch {
				case r.Protocol == RTProtWeft:
					m.weft = append(m.weft, r)
				case r.LinkIndex == ifaceIndex && ifaceIndex != 0 && r.Gw == nil && r.Scope == netlink.SCOPE_LINK &&
					r.Dst != nil && r.Type == unix.RTN_UNICAST:
					m.connected = append(m.connected, prefixOf(r.Dst))
				}
				return true
			})
		return struct{}{}, err
	})
	if err != nil {
		return m, fmt.Errorf("list IPv4 main-table routes: %w", err)
	}
	return m, nil
}

// syncRoutes makes the IPv4 main-table routes carrying RTProtWeft (have,
// from readMainRoutes) equal to want: only the differences are written.
func syncRoutes(ctx context.Context, h *netlink.Handle, have []netlink.Route, want []routeWant, t *tally) (*syncStats, func() error, error) {
	st := &syncStats{}
	wantBy := make(map[netip.Prefix]int, len(want))
	for i, w := range want {
		wantBy[w.Dst] = i
	}
	ok := make([]bool, len(want))
	var stale []netlink.Route
	for _, r := range have {
		i, found := wantBy[prefixOf(r.Dst)]
		if found && !ok[i] && want[i].matches(r) {
			ok[i] = true
			continue
		}
		// A wanted destination whose route differs is replaced in place
		// below (same key: dst, metric, table); one at another metric
		// would survive that replace, so it is stale.
		if !found || r.Priority != want[i].Metric {
			stale = append(stale, r)
		}
	}
	calls := 0
	// Add and replace before deleting, so that traffic moves to the new
	// route rather than through a gap.
	for i, w := range want {
		if ok[i] {
			continue
		}
		if calls++; calls%ctxCheckEvery == 0 && ctx.Err() != nil {
			return st, nil, ctx.Err()
		}
		if err := h.RouteReplace(w.route()); err != nil {
			t.add(fmt.Errorf("replace route %s: %w", w, err))
			continue
		}
		st.Added++
	}
	del := deleteStale(ctx, stale, &calls, st, t, h.RouteDel,
		func(r *netlink.Route) string { return fmt.Sprintf("route %s", r.Dst) })
	return st, del, nil
}

// deleteStale is the last step of a sync, returned for the caller to run
// after every add (deletes go in reverse dependency order): remove each stale
// item, count "already gone" as success, and collect other failures in t so
// that the item is retried by the next pass.
func deleteStale[T any](ctx context.Context, stale []T, calls *int, st *syncStats, t *tally, del func(*T) error, what func(*T) string) func() error {
	return func() error {
		for i := range stale {
			if *calls++; *calls%ctxCheckEvery == 0 && ctx.Err() != nil {
				return ctx.Err()
			}
			if err := del(&stale[i]); err != nil && !isGone(err) {
				t.add(fmt.Errorf("delete stale %s: %w", what(&stale[i]), err))
				continue
			}
			st.Deleted++
		}
		return nil
	}
}

func coveredBy(ps []netip.Prefix, a netip.Addr) bool {
	return slices.ContainsFunc(ps, func(p netip.Prefix) bool { return p.Contains(a) })
}

// syncNeighs makes the permanent IPv4 neighbours on link equal to want
// (address → MAC). Dynamic entries the kernel made are left alone unless
// their address is wanted, in which case the permanent entry replaces them.
func syncNeighs(ctx context.Context, h *netlink.Handle, link int, want map[netip.Addr]net.HardwareAddr, t *tally) (*syncStats, func() error, error) {
	st := &syncStats{}
	have, err := dump(func() ([]netlink.Neigh, error) { return h.NeighList(link, netlink.FAMILY_V4) })
	if err != nil {
		return st, nil, fmt.Errorf("list neighbours on #%d: %w", link, err)
	}
	ok := make(map[netip.Addr]bool, len(want))
	var stale []netlink.Neigh
	for _, n := range have {
		ip := addrOf(n.IP)
		mac, wanted := want[ip]
		perm := n.State&netlink.NUD_PERMANENT != 0
		switch {
		case wanted && perm && slices.Equal(n.HardwareAddr, mac):
			ok[ip] = true
		case !wanted && perm:
			stale = append(stale, n)
		}
	}
	calls := 0
	for ip, mac := range want {
		if ok[ip] {
			continue
		}
		if calls++; calls%ctxCheckEvery == 0 && ctx.Err() != nil {
			return st, nil, ctx.Err()
		}
		err := h.NeighSet(&netlink.Neigh{
			LinkIndex:    link,
			Family:       netlink.FAMILY_V4,
			State:        netlink.NUD_PERMANENT,
			Type:         unix.RTN_UNICAST,
			IP:           ip.AsSlice(),
			HardwareAddr: mac,
		})
		if err != nil {
			t.add(fmt.Errorf("set neighbour %s lladdr %s: %w", ip, mac, err))
			continue
		}
		st.Added++
	}
	del := deleteStale(ctx, stale, &calls, st, t, h.NeighDel,
		func(n *netlink.Neigh) string { return fmt.Sprintf("neighbour %s", n.IP) })
	return st, del, nil
}

// syncFDB makes the permanent forwarding entries of the vxlan device link
// equal to want (VTEP MAC → underlay destination).
func syncFDB(ctx context.Context, h *netlink.Handle, link int, want map[[6]byte]netip.Addr, t *tally) (*syncStats, func() error, error) {
	st := &syncStats{}
	have, err := dump(func() ([]netlink.Neigh, error) { return h.NeighList(link, unix.AF_BRIDGE) })
	if err != nil {
		return st, nil, fmt.Errorf("list FDB entries on #%d: %w", link, err)
	}
	ok := make(map[[6]byte]bool, len(want))
	var stale []netlink.Neigh
	for _, n := range have {
		if n.State&netlink.NUD_PERMANENT == 0 || len(n.HardwareAddr) != 6 {
			continue // learned entries (Learning on) belong to the kernel
		}
		mac := [6]byte(n.HardwareAddr)
		dst, wanted := want[mac]
		if wanted && !ok[mac] && addrOf(n.IP) == dst {
			ok[mac] = true
			continue
		}
		stale = append(stale, n)
	}
	calls := 0
	// Replace first: on an existing MAC the kernel swaps its destination in
	// place, so the stale delete that follows is usually already done.
	for mac, dst := range want {
		if ok[mac] {
			continue
		}
		if calls++; calls%ctxCheckEvery == 0 && ctx.Err() != nil {
			return st, nil, ctx.Err()
		}
		err := h.NeighSet(&netlink.Neigh{
			LinkIndex:    link,
			Family:       unix.AF_BRIDGE,
			State:        netlink.NUD_PERMANENT,
			Flags:        netlink.NTF_SELF,
			IP:           dst.AsSlice(),
			HardwareAddr: net.HardwareAddr(mac[:]),
		})
		if err != nil {
			t.add(fmt.Errorf("set FDB entry %s dst %s: %w", net.HardwareAddr(mac[:]), dst, err))
			continue
		}
		st.Added++
	}
	// After the replace above a delete is often ENOENT (success): the
	// kernel already swapped the destination of this MAC in place.
	del := deleteStale(ctx, stale, &calls, st, t,
		func(n *netlink.Neigh) error {
			e := *n
			e.Family = unix.AF_BRIDGE
			e.Flags |= netlink.NTF_SELF
			return h.NeighDel(&e)
		},
		func(n *netlink.Neigh) string { return fmt.Sprintf("FDB entry %s dst %s", n.HardwareAddr, n.IP) })
	return st, del, nil
}

// syncAddrs makes the IPv4 addresses on link exactly want (zero = none).
// Anything else — e.g. the /16 that flannel before 0.7.0 put on flannel.1,
// whose connected route swallowed the whole overlay — is removed. The new
// address goes on before old ones come off: removing a device's last IPv4
// address makes the kernel flush every route through it.
func syncAddrs(h *netlink.Handle, link netlink.Link, want netip.Prefix, t *tally) (syncStats, error) {
	var st syncStats
	have, err := dump(func() ([]netlink.Addr, error) { return h.AddrList(link, netlink.FAMILY_V4) })
	if err != nil {
		return st, fmt.Errorf("list addresses on %s: %w", link.Attrs().Name, err)
	}
	found := false
	for _, a := range have {
		found = found || (want.IsValid() && prefixOf(a.IPNet) == want)
	}
	if want.IsValid() && !found {
		if err := h.AddrAdd(link, &netlink.Addr{IPNet: ipNet(want)}); err != nil && !errors.Is(err, unix.EEXIST) {
			t.add(fmt.Errorf("add address %s to %s: %w", want, link.Attrs().Name, err))
		} else {
			st.Added++
		}
	}
	for _, a := range have {
		if want.IsValid() && prefixOf(a.IPNet) == want {
			continue
		}
		if err := h.AddrDel(link, &a); err != nil && !isGone(err) && !errors.Is(err, unix.EADDRNOTAVAIL) {
			t.add(fmt.Errorf("delete address %s from %s: %w", a.IPNet, link.Attrs().Name, err))
			continue
		}
		st.Deleted++
	}
	return st, nil
}
