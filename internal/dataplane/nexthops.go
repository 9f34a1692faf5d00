package dataplane

// Kernel nexthop objects for peer routes (issue 12). A route written with
// its gateway and device (`<peer subnet> via <peer subnet address> dev
// flannel.1 onlink`) gets its own fib_info, and the kernel's fib_info hash
// leaves out the gateway: every weft vxlan route lands in one bucket and
// each insert walks all the others, so installing N peers cost O(N²) in
// the kernel (22–24 s for 10,000 routes with `ip -batch`). A route through
// a nexthop object (`ip nexthop add id I via … dev flannel.1 onlink` +
// `ip route add … nhid I`) shares no such bucket: 1.7 s.
//
// The id scheme: a peer's nexthop id is its IPv4 subnet's network address
// as a big-endian uint32 (10.1.2.0/24 → 0x0a010200 = 167838208), unique
// per subnet and stable across restarts, so a restarted weftd finds its
// nexthops and a lease's nexthop is the same on every pass. Weft's
// nexthops carry proto 87 (rtnl.ProtWeft) like its routes: a full pass
// deletes weft's nexthops no peer asks for and never touches another
// owner's — a peer whose id another owner's nexthop holds keeps a plain
// `via` route. Only IPv4 vxlan peers reached through the device use them
// (not DirectRouting's direct routes, not IPv6, not host-gw yet). A kernel
// without nexthop objects (< 5.3, or one refusing to make them) is found
// by a probe at Init and keeps the plain routes.

import (
	"cmp"
	"context"
	"fmt"
	"iter"
	"math/bits"
	"net/netip"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/rtnl"
)

// nexthopID is the nexthop id of the peer subnet sub (0: none — the kernel
// reads id 0 as "pick one", and 0.0.0.0 is no peer's subnet).
func nexthopID(sub netip.Prefix) uint32 {
	if !sub.Addr().Is4() {
		return 0
	}
	a := sub.Masked().Addr().As4()
	return uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
}

// viaNexthop returns w sent through its nexthop object when the facts
// allow it.
func viaNexthop(w Route, f Facts) Route {
	if !f.Nexthops || w.Blackhole {
		return w
	}
	id := nexthopID(w.Dst)
	if id == 0 {
		return w
	}
	if _, taken := f.ForeignNH[id]; taken {
		return w
	}
	w.NhID = id
	return w
}

// nexthopMatches reports whether the dumped nexthop n is what w asks for.
func nexthopMatches(w, n rtnl.Nexthop) bool {
	return n.Gw == w.Gw && n.Link == w.Link && n.OnLink == w.OnLink && n.Protocol == uint8(rtnl.ProtWeft) && !n.Other
}

// foreignNexthops dumps the nexthop objects and returns the ids of every
// other owner's (weft's are read before the routes are synced: readNexthops).
func foreignNexthops(c *rtnl.Conn) (foreign map[uint32]struct{}, err error) {
	_, err = rtnl.RetryDump(func() (struct{}, error) {
		foreign = nil
		return struct{}{}, c.DumpNexthops(func(n rtnl.Nexthop) {
			if n.Protocol != uint8(rtnl.ProtWeft) {
				if foreign == nil {
					foreign = make(map[uint32]struct{})
				}
				foreign[n.ID] = struct{}{}
			}
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list nexthop objects: %w", err)
	}
	return foreign, nil
}

// nexthopPlan is what a full pass read of weft's nexthop objects of one
// family: the wanted ids the kernel holds as wanted (ok, sorted; 4 bytes
// each, not a copy of every nexthop: that was 2 MB at issue 12's 20,000
// peers) and the stale ones. The missing and different ones are written by
// syncRoutes, each in the batch of the route through it and just before
// it, so that the first routes go in at once rather than after every
// nexthop of the pass; those whose route needs no write follow the routes
// (rest).
type nexthopPlan struct {
	want  *Desired
	ok    []uint32 // sorted
	wrote []uint32 // written before their route
	stale []uint32
}

// readNexthops dumps weft's nexthops of family and plans what makes them
// equal to those want's routes go through (nexthopPlan); it writes nothing.
func readNexthops(c *rtnl.Conn, family uint8, want *Desired) (*nexthopPlan, error) {
	p := &nexthopPlan{want: want}
	_, err := rtnl.RetryDump(func() (struct{}, error) {
		p.stale, p.ok = p.stale[:0], p.ok[:0]
		return struct{}{}, c.DumpNexthops(func(n rtnl.Nexthop) {
			if n.Protocol != uint8(rtnl.ProtWeft) || n.Family != family {
				return
			}
			w, wanted := want.nexthop(n.ID)
			switch {
			case !wanted:
				p.stale = append(p.stale, n.ID)
			case nexthopMatches(w, n):
				p.ok = append(p.ok, n.ID)
			}
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list nexthop objects: %w", err)
	}
	p.ok = sortedSet(p.ok, cmp.Compare[uint32])
	return p, nil
}

// routeWrite is the key of a request in syncRoutes' batch: the route w,
// or (nh) the nexthop object w goes through.
type routeWrite struct {
	w  routeWant
	nh bool
}

// before queues the nexthop the route w goes through when the kernel lacks
// it or holds a different one: in the same batch and before w, so that the
// kernel has made it when it reads w (it handles a batch's requests in
// order).
func (p *nexthopPlan) before(b *rtnl.Batch[routeWrite], w routeWant) {
	if p == nil || w.NhID == 0 {
		return
	}
	n, wanted := p.want.nexthop(w.NhID)
	if !wanted {
		return
	}
	if _, found := slices.BinarySearch(p.ok, w.NhID); found {
		return
	}
	b.ReplaceNexthop(routeWrite{w: w, nh: true}, n)
	p.wrote = append(p.wrote, w.NhID)
}

// rest queues the wanted nexthops neither held nor written before a route:
// those whose route was already right (a peer's gateway changed, the route
// through the id did not).
func (p *nexthopPlan) rest(ctx context.Context, b *rtnl.Batch[routeWrite]) error {
	if p == nil || len(p.ok)+len(p.wrote) >= p.want.nhCount {
		return nil
	}
	p.wrote = sortedSet(p.wrote, cmp.Compare[uint32])
	for id := range p.want.nexthopIDs() {
		if _, found := slices.BinarySearch(p.ok, id); found {
			continue
		}
		if _, found := slices.BinarySearch(p.wrote, id); found {
			continue
		}
		if b.Pending() == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
		if n, ok := p.want.nexthop(id); ok {
			b.ReplaceNexthop(routeWrite{w: routeWant{NhID: id}, nh: true}, n)
		}
	}
	return nil
}

// deleteStale returns the delete of the stale nexthops, which the caller
// runs after the routes through them are gone or moved (deleting a nexthop
// deletes its routes).
func (p *nexthopPlan) deleteStale(ctx context.Context, c *rtnl.Conn, st *syncStats, t *tally) func() error {
	return deleteNexthops(ctx, c, p.stale, st, t)
}

// deleteNexthops is the stale-delete step of a full pass and applyDiff:
// "already gone" counts as success.
func deleteNexthops(ctx context.Context, c *rtnl.Conn, ids []uint32, st *syncStats, t *tally) func() error {
	return func() error {
		if len(ids) == 0 {
			return nil
		}
		d := rtnl.NewBatch(c, func(id uint32, err error) bool {
			if isGone(err) {
				return false
			}
			t.add(fmt.Errorf("delete stale nexthop id %d: %w", id, err))
			return true
		})
		for _, id := range ids {
			if d.Pending() == 0 && ctx.Err() != nil {
				return ctx.Err()
			}
			d.DeleteNexthop(id, id)
		}
		d.Flush()
		st.Deleted += d.OK()
		return nil
	}
}

// nexthopDrift reports whether the nexthop notification u removes a
// nexthop weft wants, one the routes of want go through (want nil or
// without routes: before the first apply). The kernel sends no route
// notification for the routes a removed nexthop takes with it, so this is
// the only sign of their loss.
func nexthopDrift(want *Desired, u rtnl.NexthopUpdate) bool {
	if !u.Deleted || u.Protocol != uint8(rtnl.ProtWeft) {
		return false
	}
	if !want.rendered() {
		return true
	}
	_, ok := want.nexthop(u.ID)
	return ok
}

// nexthop is the nexthop object of id that d's routes go through: the
// route to the id's address (nexthopID) says it all, found at one of the
// prefix lengths of d's routes through nexthops (one in practice: the
// overlay's subnet length). Only IPv4 routes go through nexthops.
func (d *Desired) nexthop(id uint32) (rtnl.Nexthop, bool) {
	if d == nil || d.Family != unix.AF_INET || d.nhCount == 0 || id == 0 {
		return rtnl.Nexthop{}, false
	}
	a := netip.AddrFrom4([4]byte{byte(id >> 24), byte(id >> 16), byte(id >> 8), byte(id)}).As16()
	for lens := d.nhLens; lens != 0; lens &= lens - 1 {
		k := pfx16{a: a, bits: uint8(bits.TrailingZeros64(lens))}
		if i, ok := d.routes[k]; ok && d.tmpls[i].viaNH {
			return nexthopOf(d.routeAt(k, i)), true
		}
	}
	return rtnl.Nexthop{}, false
}

// nexthopIDs are the ids of the nexthops d's routes go through.
func (d *Desired) nexthopIDs() iter.Seq[uint32] {
	return func(yield func(uint32) bool) {
		if d == nil || d.nhCount == 0 {
			return
		}
		for k, i := range d.routes {
			if d.tmpls[i].viaNH && !yield(nexthopID(d.prefix(k))) {
				return
			}
		}
	}
}

// nexthopObjects are the nexthop objects d's routes go through, by id
// (nil when d has none to go through).
func (d *Desired) nexthopObjects() map[uint32]rtnl.Nexthop {
	if d.nhCount == 0 {
		return nil
	}
	m := make(map[uint32]rtnl.Nexthop, d.nhCount)
	for id := range d.nexthopIDs() {
		if n, ok := d.nexthop(id); ok {
			m[id] = n
		}
	}
	return m
}
