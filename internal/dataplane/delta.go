package dataplane

// Incremental applies (felix-style: desired AND actual kept in memory). A full
// apply dumps routes, neighbours and FDB entries and diffs them against the
// desired state: with 1,000 peers that is most of the cost of a single peer
// joining. When the loop knows that nothing but the snapshot changed since the
// last successful apply, the kernel still holds exactly what that apply
// wanted, so the difference between the two desired states is the whole
// work. Everything that can break that assumption — the first apply, a kernel
// event, a failure, the periodic resync, a recreated device — makes the next
// apply a full one again, so the loop stays level-triggered.

import (
	"context"
	"net/netip"

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

// delRoute deletes weft's route to dst at metric, whatever its gateway: the
// kernel matches on destination, table, metric and protocol.
func delRoute(h *netlink.Handle, w routeWant) error {
	err := h.RouteDel(&netlink.Route{
		Dst:      ipNet(w.Dst),
		Protocol: rtnl.ProtWeft,
		Table:    unix.RT_TABLE_MAIN,
		Priority: w.Metric,
		Family:   routeFamily(w.Dst),
	})
	if err != nil && !isGone(err) {
		return err
	}
	return nil
}

// routeDrift reports whether the deletion of route u removes a route weft
// wants (routes is the desired set, nil before the first apply). Deletions of
// routes weft no longer wants are the echoes of its own applies, not drift.
func routeDrift(routes map[netip.Prefix]routeWant, u netlink.RouteUpdate) bool {
	if u.Type != unix.RTM_DELROUTE || u.Protocol != rtnl.ProtWeft {
		return false
	}
	if routes == nil {
		return true
	}
	w, ok := routes[prefixOf(u.Dst)]
	return ok && u.Priority == w.Metric
}

// diffMaps lists the keys of cur that are missing from old or differ there
// (to add or replace), and the keys of old that are missing from cur or
// differ there (to delete, when the replace does not cover them). When one
// side is known equal by counting, its pass is skipped: a join walks the
// maps once, not twice.
func diffMaps[K comparable, V any](old, cur map[K]V, eq func(a, b V) bool) (add, del []K) {
	same := 0
	if len(cur) >= len(old) {
		for k, v := range cur {
			if o, ok := old[k]; ok && eq(o, v) {
				same++
			} else {
				add = append(add, k)
			}
		}
		if same < len(old) {
			for k, o := range old {
				if v, ok := cur[k]; !ok || !eq(o, v) {
					del = append(del, k)
				}
			}
		}
		return add, del
	}
	for k, o := range old {
		if v, ok := cur[k]; ok && eq(o, v) {
			same++
		} else {
			del = append(del, k)
		}
	}
	if same < len(cur) {
		for k, v := range cur {
			if o, ok := old[k]; !ok || !eq(o, v) {
				add = append(add, k)
			}
		}
	}
	return add, del
}
