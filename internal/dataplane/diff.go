package dataplane

// Incremental applies (felix-style: desired AND actual kept in memory). A full
// apply dumps routes, neighbours and FDB entries and diffs them against the
// desired state: with 1,000 peers that is most of the cost of a single peer
// joining. When the loop knows that nothing but the snapshot changed since the
// last successful apply, the kernel still holds exactly what that apply
// wanted, so the difference between the two desired states is the whole
// work (see driver.go for what makes the next apply full again).

import (
	"context"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/rtnl"
)

// deltaApplier is a Backend that can apply a snapshot as the difference to
// the last one it applied successfully. ApplyDelta falls back to a full apply
// itself when it has no trustworthy baseline (first apply, last apply failed,
// device recreated, own subnet changed).
type deltaApplier interface {
	ApplyDelta(ctx context.Context, snap lease.Snapshot) error
}

// applyDiff writes what differs between old (which the kernel holds, as
// far as weft knows) and d, the state of a family whose neighbours and
// routes are of family, in the same order as a full pass: adds FDB,
// neighbour, route (its nexthop object just before it); deletes route,
// neighbour, FDB, nexthop. Each step goes to the
// kernel in batches on the backend's socket rt, so a bulk change (every peer
// leaving in one transaction) costs a few hundred sendmsg calls, not one
// round trip and one receive buffer per entry.
func applyDiff(ctx context.Context, rt *rtnl.Conn, family uint8, old, d *Desired, t *tally) syncStats {
	var st syncStats
	nhAdd, nhStale := diffNexthops(old, d)
	fdbAdd, fdbDel := diffMaps(old.fdb, d.fdb, func(_ MAC, a, b [16]byte) bool { return a == b })
	neighAdd, neighDel := diffMaps(old.neighs, d.neighs, func(_ [16]byte, a, b MAC) bool { return a == b })
	routeAdd, routeDel := diffMaps(old.routes, d.routes, func(k pfx16, a, b uint8) bool {
		return old.tmpls[a] == d.tmpls[b] && (!d.tmpls[b].gw || old.gws[k] == d.gws[k])
	})

	fb := rtnl.NewBatch(rt, func(mac MAC, err error) bool {
		dst, _ := d.FDBDst(mac)
		t.add(fmt.Errorf("set FDB entry %s dst %s: %w", mac, dst, err))
		return true
	})
	for _, mac := range fdbAdd {
		dst := d.addr(d.fdb[mac])
		fb.SetNeigh(mac, unix.AF_BRIDGE, d.Dev, dst, mac[:])
	}
	fb.Flush()
	st.Added += fb.OK()
	if ctx.Err() != nil {
		return st
	}
	nb := rtnl.NewBatch(rt, func(ip netip.Addr, err error) bool {
		mac, _ := d.Neigh(ip)
		t.add(fmt.Errorf("set neighbour %s lladdr %s: %w", ip, mac, err))
		return true
	})
	for _, k := range neighAdd {
		ip, mac := d.addr(k), d.neighs[k]
		nb.SetNeigh(ip, family, d.Dev, ip, mac[:])
	}
	nb.Flush()
	st.Added += nb.OK()
	if ctx.Err() != nil {
		return st
	}
	// A nexthop object goes in the route batch just before the route
	// through it (the kernel reads a batch in order): a join costs one
	// sendmsg less, and a bulk add's first routes do not wait for every
	// nexthop. Those whose route does not change follow the routes.
	var nhWrote []uint32
	rb := rtnl.NewBatch(rt, func(k deltaWrite, err error) bool {
		if k.nh != 0 {
			n, _ := d.nexthop(k.nh)
			t.add(fmt.Errorf("replace nexthop %s: %w", n, err))
		} else {
			w, _ := d.Route(k.dst)
			t.add(fmt.Errorf("write route %s: %w", w, err))
		}
		return true
	})
	for _, k := range routeAdd {
		dst, w := d.prefix(k), d.routeAt(k, d.routes[k])
		if n, ok := d.nexthop(w.NhID); ok && w.NhID != 0 {
			if o, had := old.nexthop(w.NhID); !had || o != n {
				rb.ReplaceNexthop(deltaWrite{nh: w.NhID}, n)
				nhWrote = append(nhWrote, w.NhID)
			}
		}
		// Only a route weft already holds is replaced. A new destination
		// is added exclusively: a route of another owner that appeared
		// since the last full pass makes it fail (EEXIST), and the full
		// pass that follows leaves that route alone.
		if _, ours := old.Route(dst); ours {
			rb.ReplaceRoute(deltaWrite{dst: dst}, family, rtnl.RouteSpec(w))
		} else {
			rb.AddRoute(deltaWrite{dst: dst}, family, rtnl.RouteSpec(w))
		}
	}
	if len(nhWrote) < len(nhAdd) {
		slices.Sort(nhWrote)
		for _, id := range nhAdd {
			if _, done := slices.BinarySearch(nhWrote, id); !done {
				n, _ := d.nexthop(id)
				rb.ReplaceNexthop(deltaWrite{nh: id}, n)
			}
		}
	}
	rb.Flush()
	st.Added += rb.OK()
	if ctx.Err() != nil {
		return st
	}

	// The keys of the deletes are the entries' own keys, named only when
	// a delete fails: a string built for each of a bulk leave's 15,000
	// deletes was garbage the collector had to chase while they ran.
	rd := rtnl.NewBatch(rt, func(dst netip.Prefix, err error) bool {
		o, _ := old.Route(dst)
		return t.addDelete("route", o, err)
	})
	for _, k := range routeDel {
		// A replace keeps the key (dst, metric); one at another metric
		// would survive it.
		dst, o := old.prefix(k), old.routeAt(k, old.routes[k])
		if w, ok := d.Route(dst); ok && w.Metric == o.Metric {
			continue
		}
		// Whatever its gateway: the kernel matches on destination, table,
		// metric and protocol.
		rd.DeleteRoute(dst, family, rtnl.Route{Dst: o.Dst, Table: unix.RT_TABLE_MAIN, Protocol: uint8(rtnl.ProtWeft), Priority: o.Metric})
	}
	rd.Flush()
	st.Deleted += rd.OK()
	nd := rtnl.NewBatch(rt, func(ip netip.Addr, err error) bool { return t.addDelete("neighbour", ip, err) })
	for _, k := range neighDel {
		if _, ok := d.neighs[k]; ok {
			continue // replaced above
		}
		ip := old.addr(k)
		nd.DeleteNeigh(ip, rtnl.Neigh{Family: family, Link: old.Dev, IP: ip})
	}
	nd.Flush()
	st.Deleted += nd.OK()
	fd := rtnl.NewBatch(rt, func(mac MAC, err error) bool {
		dst, _ := old.FDBDst(mac)
		return t.addDelete("FDB entry", fdbEntry{mac, dst}, err)
	})
	for _, mac := range fdbDel {
		// For a MAC that moved, the set above usually swapped the
		// destination in place and this finds nothing.
		dst := old.addr(old.fdb[mac])
		fd.DeleteNeigh(mac, rtnl.Neigh{Family: unix.AF_BRIDGE, Link: old.Dev, IP: dst, MAC: mac, MACLen: 6})
	}
	fd.Flush()
	st.Deleted += fd.OK()
	// Last: deleting a nexthop deletes the routes through it.
	_ = deleteNexthops(ctx, rt, nhStale, &st, t)()
	return st
}

// diffNexthops lists the nexthops d's routes go through that old's do
// not, or differently (to replace), and those old's go through and d's do
// not (to delete; a changed one is replaced, not deleted).
func diffNexthops(old, d *Desired) (add, stale []uint32) {
	kept := 0
	for id := range d.nexthopIDs() {
		n, _ := d.nexthop(id)
		o, had := old.nexthop(id)
		if had {
			kept++
		}
		if !had || o != n {
			add = append(add, id)
		}
	}
	if kept == old.nhCount {
		return add, nil // every one of old's is still gone through
	}
	for id := range old.nexthopIDs() {
		if _, ok := d.nexthop(id); !ok {
			stale = append(stale, id)
		}
	}
	return add, stale
}

// deltaWrite is the key of a request in applyDiff's route batch: the
// route to dst, or the nexthop object nh.
type deltaWrite struct {
	dst netip.Prefix
	nh  uint32
}

// fdbEntry names an FDB entry in messages.
type fdbEntry struct {
	mac MAC
	dst netip.Addr
}

func (e fdbEntry) String() string {
	return e.mac.String() + " dst " + e.dst.String()
}

// addDelete counts the failed delete of the entry what k, unless it failed
// only because the entry is already gone (the caller's batch then does
// not count it as failed either).
func (t *tally) addDelete(what string, k fmt.Stringer, err error) bool {
	if isGone(err) {
		return false
	}
	t.add(fmt.Errorf("delete stale %s %s: %w", what, k, err))
	return true
}

// routeDrift reports whether the deletion of route u removes a route weft
// wants (want is the desired state, nil or not yet rendered before the
// first apply). Deletions of routes weft no longer wants are the echoes of
// its own applies, not drift.
func routeDrift(want *Desired, u netlink.RouteUpdate) bool {
	if u.Type != unix.RTM_DELROUTE || u.Protocol != rtnl.ProtWeft {
		return false
	}
	if !want.rendered() {
		return true
	}
	w, ok := want.Route(prefixOf(u.Dst))
	return ok && u.Priority == w.Metric
}

// diffMaps lists the keys of cur that are missing from old or differ there
// (to add or replace), and the keys of old that are missing from cur or
// differ there (to delete, when the replace does not cover them). When one
// side is known equal by counting, its pass is skipped: a join walks the
// maps once, not twice.
func diffMaps[K comparable, V any](old, cur map[K]V, eq func(k K, a, b V) bool) (add, del []K) {
	same := 0
	if len(cur) >= len(old) {
		for k, v := range cur {
			if o, ok := old[k]; ok && eq(k, o, v) {
				same++
			} else {
				add = append(add, k)
			}
		}
		if same < len(old) {
			for k, o := range old {
				if v, ok := cur[k]; !ok || !eq(k, o, v) {
					del = append(del, k)
				}
			}
		}
		return add, del
	}
	for k, o := range old {
		if v, ok := cur[k]; ok && eq(k, o, v) {
			same++
		} else {
			del = append(del, k)
		}
	}
	if same < len(cur) {
		for k, v := range cur {
			if o, ok := old[k]; !ok || !eq(k, o, v) {
				add = append(add, k)
			}
		}
	}
	return add, del
}
