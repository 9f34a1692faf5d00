package dataplane

// The drivers below keep desired and actual apart (felix-style): the caller
// computes the whole desired set from a snapshot, each sync lists once what
// weft could own in the kernel, adds what is missing, replaces what differs
// and deletes what is stale. A correct entry is never touched, so a restart
// that re-applies the same leases changes nothing (no packet loss). Failures
// are counted, not fatal: the rest of the batch still goes in and the next
// apply retries whatever is still wrong.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/rtnl"
)

// blackholeMetric keeps the -ip-blackhole-route route behind the bridge's own
// connected route (metric 0) for the same subnet: it only catches traffic
// when no container bridge claims the subnet.
const blackholeMetric = 1 << 16

// v6Metric is the metric the kernel gives an IPv6 route added without one.
// Weft's IPv6 routes carry it explicitly, so that what a dump reports
// compares equal to what was asked and a delete names the same route.
const v6Metric = 1024

// ctxCheckEvery bounds how many kernel calls run between context checks, so
// a shutdown does not wait for a 15,000-call batch.
const ctxCheckEvery = 512

// tally collects the failures of one batch: the first error and a count.
type tally struct {
	what  string
	n     int
	first error
	// peerRoutes, when set, says that the kernel refusing a route because
	// its gateway is not reachable from its device is a fact about that
	// peer (the caller reports it), not a failure of the apply: such
	// routes go to unreachable instead.
	peerRoutes  bool
	unreachable []refusedRoute
}

// refusedRoute is a route the kernel refused, and its answer.
type refusedRoute struct {
	w   routeWant
	err error
}

// isUnreachable reports whether the kernel refused a route because its
// gateway is not on a subnet connected to its device (IPv4: ENETUNREACH
// "Nexthop has invalid gateway"; IPv6: EHOSTUNREACH).
func isUnreachable(err error) bool {
	return errors.Is(err, unix.ENETUNREACH) || errors.Is(err, unix.EHOSTUNREACH)
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
type routeWant rtnl.RouteSpec

func (w routeWant) matches(r rtnl.Route) bool {
	typ := r.Type
	if typ == 0 {
		typ = unix.RTN_UNICAST
	}
	if w.Blackhole {
		return typ == unix.RTN_BLACKHOLE && r.Priority == w.Metric
	}
	if w.NhID != 0 || r.NhID != 0 {
		// The nexthop object holds gateway, device and onlink; a plain
		// route (an older weftd's, flanneld's) is replaced in place.
		return typ == unix.RTN_UNICAST && r.NhID == w.NhID && r.Priority == w.Metric && !r.Other
	}
	return typ == unix.RTN_UNICAST &&
		r.Gw == w.Gw &&
		r.Link == w.Link &&
		(r.Flags&unix.RTNH_F_ONLINK != 0) == w.OnLink &&
		r.Priority == w.Metric &&
		!r.Other
}

func (w routeWant) String() string {
	if w.Blackhole {
		return fmt.Sprintf("blackhole %s metric %d", w.Dst, w.Metric)
	}
	s := fmt.Sprintf("%s via %s dev #%d", w.Dst, w.Gw, w.Link)
	if w.NhID != 0 {
		s = fmt.Sprintf("%s nhid %d via %s dev #%d", w.Dst, w.NhID, w.Gw, w.Link)
	}
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

// mainRoutes is what one dump of the main table (one family) tells an apply: weft's
// own routes, and the subnets directly connected to the underlay interface
// (for "is this peer on my L2 segment" checks). One dump per apply, never
// one per peer (flannel's host-gw dumped the table once per lease).
type mainRoutes struct {
	weft      []rtnl.Route
	connected []netip.Prefix
	// foreign are the routes of other owners (not rtnl.ProtWeft) whose
	// destination has the overlay's subnet length: the ones a peer route
	// could collide with (see foreignRoutes).
	foreign []rtnl.Route
}

// readMainRoutesFor dumps the main table of family (AF_INET or AF_INET6)
// only (the kernel filters it: on a host with a large local table, e.g.
// kube-proxy's IPVS addresses, none of that is sent) and keeps the
// underlay's connected subnets, the routes of other owners to destinations
// of peerBits bits (the subnet length of the overlay; -1: none), and
// weft's own only when weft is true (a full pass reads those as it syncs
// them: weftRoutes).
func readMainRoutesFor(c *rtnl.Conn, family uint8, ifaceIndex, peerBits int, weft bool) (mainRoutes, error) {
	var m mainRoutes
	last := &lastWeftRoutes[0]
	if family == unix.AF_INET6 {
		last = &lastWeftRoutes[1]
	}
	if weft {
		// Sized from the last dump: one allocation, not a doubling series.
		m.weft = make([]rtnl.Route, 0, int(last.Load())+16)
	}
	_, err := rtnl.RetryDump(func() (struct{}, error) {
		m.weft, m.connected, m.foreign = m.weft[:0], m.connected[:0], m.foreign[:0]
		return struct{}{}, c.DumpRoutes(family, func(r rtnl.Route) {
			if r.Protocol == uint8(rtnl.ProtWeft) {
				if weft {
					m.weft = append(m.weft, r)
				}
				return
			}
			if r.Dst.Bits() == peerBits {
				m.foreign = append(m.foreign, r)
			}
			if r.Link == ifaceIndex && ifaceIndex != 0 && !r.Gw.IsValid() && r.Type == unix.RTN_UNICAST &&
				connectedRoute(family, r) {
				m.connected = append(m.connected, r.Dst)
			}
		})
	})
	if err != nil {
		return m, fmt.Errorf("list %s main-table routes: %w", famName(family), err)
	}
	if weft {
		last.Store(int64(len(m.weft)))
	}
	return m, nil
}

// routeSource is one pass over routes of the main table, each handed to
// fn; a source that dumps the kernel fails with netlink.ErrDumpInterrupted
// when the dump was interrupted, and is then run again from the start
// (rtnl.RetryDump).
type routeSource func(fn func(rtnl.Route)) error

// weftRoutes is the source of weft's routes of family in the kernel, read
// as they are dumped, then extra (routes of others weft takes over).
//
// Why not a slice read beforehand: at 20,000 peers weft's routes as
// rtnl.Route values were 1.9 MB (2.6 MB grown by appends on a first pass)
// held through the whole full pass, the periodic resync's largest
// transient and so weftd's peak heap (issue 12). The dump is read a second
// time for it (the first gives the facts the desired state depends on): at
// 20,000 routes that costs the kernel ~16 ms, once per full pass.
func weftRoutes(c *rtnl.Conn, family uint8, extra []rtnl.Route) routeSource {
	return func(fn func(rtnl.Route)) error {
		err := c.DumpRoutes(family, func(r rtnl.Route) {
			if r.Protocol == uint8(rtnl.ProtWeft) {
				fn(r)
			}
		})
		if err != nil {
			return fmt.Errorf("list %s main-table routes: %w", famName(family), err)
		}
		for _, r := range extra {
			fn(r)
		}
		return nil
	}
}

// connectedRoute reports whether r, a gateway-less unicast route out of the
// underlay interface, is a subnet connected to it. An IPv4 one has link
// scope; an IPv6 route has no link scope, so there it is any such route
// that is not link-local and has no next hop weft never sets.
func connectedRoute(family uint8, r rtnl.Route) bool {
	if family == unix.AF_INET6 {
		return !r.Dst.Addr().IsLinkLocalUnicast() && !r.Other
	}
	return r.Scope == unix.RT_SCOPE_LINK
}

// famName names an address family in messages.
func famName(family uint8) string {
	if family == unix.AF_INET6 {
		return "IPv6"
	}
	return "IPv4"
}

// lastWeftRoutes is how many weft routes the last main-table dump found,
// IPv4 [0] and IPv6 [1] apart so that a dual-stack apply sizes each right.
var lastWeftRoutes [2]atomic.Int64

// scratch is the per-sync working memory, pooled so that a resync with
// nothing to do allocates (almost) nothing.
type scratch struct {
	dsts  []netip.Prefix
	addrs []netip.Addr
	macs  [][6]byte
}

var scratchPool = sync.Pool{New: func() any { return &scratch{} }}

func getScratch() *scratch { return scratchPool.Get().(*scratch) }

func putScratch(s *scratch) {
	s.dsts, s.addrs, s.macs = s.dsts[:0], s.addrs[:0], s.macs[:0]
	scratchPool.Put(s)
}

// syncRoutes makes the main-table routes of family carrying rtnl.ProtWeft
// (have: weftRoutes, or the tests' routeList) equal to want's
// routes (nil: none): only the differences are written.
//
// want is read where it is: a copy of it as a slice, indexed to match the
// kernel's routes, was a full pass's largest transient besides the dumps
// (1.8 MB and a 20,000-entry index at issue 12's scale). The routes found
// as wanted are remembered by destination, 32 bytes each.
func syncRoutes(ctx context.Context, c *rtnl.Conn, family uint8, have routeSource, want *Desired, t *tally) (*syncStats, func() error, error) {
	return syncRoutesVia(ctx, c, family, have, want, nil, t)
}

// syncRoutesVia is syncRoutes that also writes the nexthop objects nh
// plans, each just before the first route through it (nexthopPlan); nil:
// none.
func syncRoutesVia(ctx context.Context, c *rtnl.Conn, family uint8, have routeSource, want *Desired, nh *nexthopPlan, t *tally) (*syncStats, func() error, error) {
	st := &syncStats{}
	sc := getScratch()
	defer putScratch(sc)
	// Sized once for the routes found as wanted: the pool is empty after
	// the collections of an idle resync interval, and growing from nothing
	// by doubling was twice the final size in garbage each pass (issue 12).
	sc.dsts = slices.Grow(sc.dsts[:0], want.NumRoutes())
	var stale []rtnl.Route
	_, err := rtnl.RetryDump(func() (struct{}, error) {
		sc.dsts, stale = sc.dsts[:0], stale[:0]
		return struct{}{}, have(func(r rtnl.Route) {
			w, found := want.Route(r.Dst)
			if found && w.matches(r) {
				sc.dsts = append(sc.dsts, r.Dst)
				return
			}
			// A wanted destination whose route differs is replaced in
			// place below (same key: dst, metric, table); one at another
			// metric would survive that replace, so it is stale.
			if !found || r.Priority != w.Metric {
				stale = append(stale, r)
			}
		})
	})
	if err != nil {
		return st, nil, err
	}
	present := sortedSet(sc.dsts, netip.Prefix.Compare)
	// Add and replace before deleting, so that traffic moves to the new
	// route rather than through a gap.
	b := rtnl.NewBatch(c, func(k routeWrite, err error) bool {
		if k.nh {
			n, _ := nh.want.nexthop(k.w.NhID)
			t.add(fmt.Errorf("replace nexthop %s: %w", n, err))
			return true
		}
		if t.peerRoutes && isUnreachable(err) {
			t.unreachable = append(t.unreachable, refusedRoute{k.w, err})
			return true
		}
		t.add(fmt.Errorf("replace route %s: %w", k.w, err))
		return true
	})
	if len(present) < want.NumRoutes() {
		for w := range want.Routes() {
			if _, found := slices.BinarySearchFunc(present, w.Dst, netip.Prefix.Compare); found {
				continue
			}
			if b.Pending() == 0 && ctx.Err() != nil {
				return st, nil, ctx.Err()
			}
			nh.before(b, w)
			b.ReplaceRoute(routeWrite{w: w}, family, rtnl.RouteSpec(w))
		}
	}
	if err := nh.rest(ctx, b); err != nil {
		return st, nil, err
	}
	b.Flush()
	st.Added = b.OK()
	del := func() error {
		d := rtnl.NewBatch(c, func(i int, err error) bool {
			if isGone(err) {
				return false
			}
			t.add(fmt.Errorf("delete stale route %s: %w", stale[i].Dst, err))
			return true
		})
		for i, r := range stale {
			if d.Pending() == 0 && ctx.Err() != nil {
				return ctx.Err()
			}
			d.DeleteRoute(i, family, r)
		}
		d.Flush()
		st.Deleted += d.OK()
		return nil
	}
	return st, del, nil
}

func coveredBy(ps []netip.Prefix, a netip.Addr) bool {
	return slices.ContainsFunc(ps, func(p netip.Prefix) bool { return p.Contains(a) })
}

// sortedSet sorts s and drops duplicates, for membership by binary search.
func sortedSet[T any](s []T, cmp func(a, b T) int) []T {
	slices.SortFunc(s, cmp)
	return slices.CompactFunc(s, func(a, b T) bool { return cmp(a, b) == 0 })
}

func cmpMAC(a, b [6]byte) int { return bytes.Compare(a[:], b[:]) }
