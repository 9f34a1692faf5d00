package dataplane

// Which main-table routes weft may write over. A route is weft's when it
// carries rtnl.ProtWeft; every other route to a peer's destination belongs to
// somebody else (an operator, another daemon), and NLM_F_REPLACE would
// silently overwrite it when it has the same destination and metric. So
// each full pass also reads the routes of other owners to destinations of
// the overlay's subnet length, and a peer whose destination one of them
// holds is left out (reported, never programmed) — unless that route is the
// overlay's own: one on weft's device (flanneld's vxlan routes on
// flannel.1, proto boot), or one with exactly the gateway and device weft
// would write (flanneld's host-gw routes). Those are taken over, so that
// weftd replacing a running flanneld keeps the data path.

import (
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/rtnl"
)

// foreignRoutes are the main-table routes of other owners to destinations
// of the overlay's subnet length, by destination, as the last full pass read
// them (nil: none, the usual case).
type foreignRoutes map[netip.Prefix][]rtnl.Route

func newForeignRoutes(rs []rtnl.Route) foreignRoutes {
	if len(rs) == 0 {
		return nil
	}
	f := make(foreignRoutes, len(rs))
	for _, r := range rs {
		f[r.Dst] = append(f[r.Dst], r)
	}
	return f
}

// adoptable reports whether r, another owner's route to w.Dst, is the
// overlay's own and so weft's to take over: on weft's device dev (0: the
// backend has none), or through exactly w's gateway and device. A blackhole
// is taken over only by weft's own blackhole route.
func adoptable(r rtnl.Route, w routeWant, dev int) bool {
	typ := r.Type
	if typ == 0 {
		typ = unix.RTN_UNICAST
	}
	if w.Blackhole {
		return typ == unix.RTN_BLACKHOLE
	}
	if typ != unix.RTN_UNICAST || r.Other {
		return false
	}
	return (dev != 0 && r.Link == dev) || (r.Gw == w.Gw && r.Link == w.Link)
}

// conflict says why weft must leave w's destination alone ("" when it need
// not): a route of another owner to it that weft does not take over,
// whatever its metric — weft's route would win the traffic either way. For
// the own subnet's blackhole route only one at the same metric counts: the
// container bridge's connected route for that subnet is meant to sit in
// front of it.
func (f foreignRoutes) conflict(w routeWant, dev int) string {
	for _, r := range f[w.Dst] {
		if w.Blackhole && r.Priority != w.Metric {
			continue
		}
		if !adoptable(r, w, dev) {
			return fmt.Sprintf("the route %s is not weft's; left in place (weft would write %s)", r, w)
		}
	}
	return ""
}

// adopted appends to have the routes weft takes over at another metric
// than its own: a replace does not reach them, so syncRoutes deletes them
// as stale once weft's route is in. Those at weft's metric need nothing:
// the replace makes them weft's.
func (f foreignRoutes) adopted(have []rtnl.Route, want *Desired, dev int) []rtnl.Route {
	for dst, rs := range f {
		w, ok := want.Route(dst)
		if !ok || w.Blackhole {
			continue
		}
		for _, r := range rs {
			if r.Priority != w.Metric && adoptable(r, w, dev) {
				have = append(have, r)
			}
		}
	}
	return have
}
