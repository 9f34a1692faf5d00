package dataplane

// The driver: the one piece of code that makes the kernel hold a Desired,
// for every backend and family. A full pass reads the device's address,
// weft's routes of the family, the device's neighbours and FDB entries, and
// writes the differences (kernel.go, neigh.go); a delta — only the snapshot
// changed since the last successful apply — writes the difference between
// the two desired states and reads nothing (diff.go), going peer by peer
// when few peers changed. Everything that can make the kernel differ from
// the last apply's state (the first apply, a kernel event, a failure, the
// periodic resync, a recreated device) makes the next apply full.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/rtnl"
)

// device is a backend's kernel link (vxlan, TUN). The driver's full pass
// ensures it before reading anything on it.
type device interface {
	// ensure makes the device exist, match what the backend needs and be
	// up. created reports that it was (re)created, in which case the
	// kernel dropped every route, neighbour and FDB entry on it.
	ensure(host Host) (created bool, err error)
	// index is the device's index as last ensured (0: none yet); the
	// watcher's filters read it from their goroutines.
	index() int32
	link() netlink.Link
}

// driver applies one family of one backend. Only the loop goroutine (and
// Init before it) touches its fields but want, which the watcher's filters
// read under wantMu.
type driver struct {
	spec spec
	dev  device // nil: routes only (host-gw)
	host Host
	h    *netlink.Handle
	rt   *rtnl.Conn
	log  *slog.Logger
	// before runs after the desired state is computed and before any route
	// is written: a userspace engine's peer table goes in before the route
	// that sends it traffic. It returns the peers it left out.
	before func(snap lease.Snapshot, d *Desired) []skippedPeer
	what   string // "<label> apply", built once
	// nexthops: the peer routes go through kernel nexthop objects, whose
	// full pass reads and syncs weft's (nexthops.go); set at setup.
	nexthops bool

	// applied is the desired state of the last successful apply (nil:
	// none, or the last apply failed), the baseline of a delta, and
	// appliedPeers the snapshot peers it was computed for.
	applied      *Desired
	appliedPeers []*lease.Lease
	// passes counts successful full and delta applies (and the deltas that
	// went peer by peer), for tests.
	passes struct{ full, delta, incremental int }
	// facts are what the last full pass read.
	facts Facts
	notes peerNotes
	// want is the desired state of the current or last apply, for the
	// watcher's filters: removing what is not wanted is weft's own doing.
	want   atomic.Pointer[Desired]
	wantMu sync.RWMutex // held by the loop while it changes want's maps in place
}

func newDriver(s spec, dev device, host Host, h *netlink.Handle, rt *rtnl.Conn, log *slog.Logger) *driver {
	return &driver{spec: s, dev: dev, host: host, h: h, rt: rt, log: log, what: s.label + " apply"}
}

func (v *driver) devIndex() int {
	if v.dev == nil {
		return 0
	}
	return int(v.dev.index())
}

// maxIncremental bounds the peers a delta updates one by one; beyond it,
// rebuilding the desired state costs no more.
func maxIncremental(peers int) int { return 16 + peers/8 }

// apply is one apply of the family for snap: full, or a delta from the last
// successful apply when full is false and there is one.
func (v *driver) apply(ctx context.Context, snap lease.Snapshot, full bool) error {
	// A delta trusts the device as the last apply left it: its removal,
	// recreation or going down is a link event, which makes the next apply
	// full, and until then writes to the old index fail, which does too.
	var created bool
	if v.dev != nil && (full || v.applied == nil || v.dev.link() == nil) {
		var err error
		if created, err = v.dev.ensure(v.host); err != nil {
			v.applied = nil
			return err
		}
	}
	dev := v.devIndex()
	own := v.spec.own(snap)
	prev := v.applied
	// Until this apply succeeds nothing is known about the kernel.
	v.applied = nil
	if created || prev == nil || prev.Dev != dev || prev.Own != own {
		full = true
	}
	// A route the kernel refuses for want of a path to its gateway (a
	// direct or host-gw route whose connected subnet went away since it was
	// read) is that peer's problem, not the apply's (noted below).
	t := &tally{what: v.what, peerRoutes: true}
	v.notes.begin()
	defer v.notes.end()
	var (
		st     syncStats
		d      *Desired
		errBuf [8]error // a delta allocates no error slice
		errs   = errBuf[:0]
	)
	if full {
		var fe []error
		d, st, fe = v.applyFull(ctx, snap, dev, t)
		errs = append(errs, fe...)
	} else {
		var err error
		d, st, err = v.applyDelta(ctx, snap, prev, t)
		errs = append(errs, err)
	}
	if d != nil {
		for _, s := range d.Skipped {
			v.notes.noteAs(v.log, s.peer, s.reason, s.msg)
		}
	}
	if st != (syncStats{}) {
		v.log.Debug(v.spec.label+" dataplane changed", "full", full, "peers", len(snap.Peers), "added", st.Added, "replaced", st.Replaced, "deleted", st.Deleted)
	}
	errs = append(errs, t.err())
	for _, r := range t.unreachable {
		v.notes.noteAs(v.log, r.w.Dst, SkipUnreachable, v.unreachable(r.w, r.err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("dataplane: %w", err)
	}
	// After a refusal the kernel holds less than d: the next apply reads
	// it again rather than writing a delta from d.
	if len(t.unreachable) == 0 {
		v.applied, v.appliedPeers = d, snap.Peers
	}
	if full {
		v.passes.full++
	} else {
		v.passes.delta++
	}
	return nil
}

// unreachable says why the kernel refused the route w to a peer.
func (v *driver) unreachable(w Route, err error) string {
	return fmt.Sprintf("%s peer %s via %s: route %s refused: %v", v.spec.label, w.Dst, v.host.IfaceName, w, err)
}

// applyFull reads the device's address, the family's routes, neighbours
// and FDB entries and makes them equal to what snap asks for. It returns
// the desired state (nil when it could not even be computed).
func (v *driver) applyFull(ctx context.Context, snap lease.Snapshot, dev int, t *tally) (*Desired, syncStats, []error) {
	var (
		st   syncStats
		errs []error
		own  = v.spec.own(snap)
	)
	if v.dev != nil && v.spec.addr {
		var addr netip.Prefix // a host route of own's first address
		if own.IsValid() {
			addr = netip.PrefixFrom(own.Addr(), own.Addr().BitLen())
		}
		// The address first: changing it can make the kernel drop routes,
		// and the route dump below must see the result.
		v.publishAddr(own, dev, addr)
		var err error
		st, err = syncAddrs(v.h, v.spec.family, v.dev.link(), addr, t)
		errs = append(errs, err)
	}
	have, err := readMainRoutesFor(v.rt, v.spec.family, v.host.IfaceIndex, own.Bits(), false)
	if err != nil {
		return nil, st, append(errs, err)
	}
	var foreignNH map[uint32]struct{}
	if v.nexthops {
		if foreignNH, err = foreignNexthops(v.rt); err != nil {
			return nil, st, append(errs, err)
		}
	}
	v.facts = Facts{Dev: dev, Connected: have.connected, Foreign: newForeignRoutes(have.foreign), Nexthops: v.nexthops, ForeignNH: foreignNH}
	d := v.renderInPlace(snap)
	if v.before != nil {
		d.Skipped = append(d.Skipped, v.before(snap, d)...)
	}
	weft := weftRoutes(v.rt, v.spec.family, v.facts.Foreign.adopted(nil, d, dev))
	if dev != 0 {
		errs = append(errs, syncDevice(ctx, v.rt, d, weft, v.nexthops, &st, t)...)
	} else {
		rs, del, err := syncRoutes(ctx, v.rt, v.spec.family, weft, d, t)
		errs = append(errs, err)
		if del != nil && err == nil {
			errs = append(errs, del())
		}
		st.plus(*rs)
	}
	return d, st, errs
}

// renderInPlace refills the published desired state from snap and the
// facts of the last full pass, in place under wantMu when there is one.
func (v *driver) renderInPlace(snap lease.Snapshot) *Desired {
	cur := v.want.Load()
	if !cur.rendered() {
		d := v.spec.render(snap, v.facts, nil)
		v.want.Store(d)
		return d
	}
	v.wantMu.Lock()
	defer v.wantMu.Unlock()
	return v.spec.render(snap, v.facts, cur)
}

// publishAddr makes the published desired state ask for device address
// addr before a full pass changes it: the removals that change causes are
// echoes, not drift.
func (v *driver) publishAddr(own netip.Prefix, dev int, addr netip.Prefix) {
	if cur := v.want.Load(); cur == nil {
		v.want.Store(&Desired{Family: v.spec.family, Own: own, Dev: dev, Addr: addr})
	} else if cur.Addr != addr {
		v.wantMu.Lock()
		cur.Addr = addr
		v.wantMu.Unlock()
	}
}

// applyDelta goes peer by peer when few peers changed (applyIncremental),
// else diffs a freshly rendered state against prev.
func (v *driver) applyDelta(ctx context.Context, snap lease.Snapshot, prev *Desired, t *tally) (*Desired, syncStats, error) {
	if old, cur, ok := v.applyIncremental(prev, snap); ok {
		v.passes.incremental++
		if v.before != nil {
			prev.Skipped = append(prev.Skipped[:0], v.before(snap, prev)...)
		}
		st := applyDiff(ctx, v.rt, v.spec.family, old, cur, t)
		return prev, st, ctx.Err()
	}
	f := v.facts
	f.Dev = prev.Dev
	d := v.spec.render(snap, f, nil) // prev is the baseline of the diff
	if v.before != nil {
		d.Skipped = append(d.Skipped, v.before(snap, d)...)
	}
	// Published before any write, so that the watcher recognises the
	// deletions this apply causes as its own.
	v.want.Store(d)
	st := applyDiff(ctx, v.rt, v.spec.family, prev, d, t)
	return d, st, ctx.Err()
}

// applyIncremental turns prev — the state the kernel holds, for the peers
// v.appliedPeers — into the state snap asks for by touching only the peers
// that changed, and returns the entries those peers had (old) and now want
// (cur) for applyDiff. It declines (ok false) whenever the result might
// differ from what render would compute: skipped peers in either state, a
// MAC that collides, a spec whose peers depend on each other, or too many
// changes.
func (v *driver) applyIncremental(prev *Desired, snap lease.Snapshot) (old, cur *Desired, ok bool) {
	if len(prev.Skipped) > 0 || v.spec.orderDependent {
		return nil, nil, false
	}
	prevPeers := v.appliedPeers
	limit := maxIncremental(len(snap.Peers))
	var gone, came []*lease.Lease
	i, j := 0, 0
	for i < len(prevPeers) || j < len(snap.Peers) {
		if i < len(prevPeers) && j < len(snap.Peers) && prevPeers[i] == snap.Peers[j] {
			i++ // the same lease: the manager shares unchanged ones
			j++
			continue
		}
		c := 0
		switch {
		case i == len(prevPeers):
			c = 1
		case j == len(snap.Peers):
			c = -1
		default:
			c = lease.ComparePeers(prevPeers[i], snap.Peers[j])
		}
		switch {
		case c < 0:
			gone = append(gone, prevPeers[i])
			i++
		case c > 0:
			came = append(came, snap.Peers[j])
			j++
		default:
			if !samePeer(prevPeers[i], snap.Peers[j]) {
				gone = append(gone, prevPeers[i])
				came = append(came, snap.Peers[j])
			}
			i++
			j++
		}
		if len(gone)+len(came) > limit {
			return nil, nil, false
		}
	}
	f := v.facts
	f.Dev = prev.Dev
	old = newDesired(prev.Family, prev.Device, prev.Own, prev.Dev, len(gone))
	cur = newDesired(prev.Family, prev.Device, prev.Own, prev.Dev, len(came))
	olds := make([]PeerEntries, 0, len(gone))
	for _, p := range gone {
		e, skip, why := v.spec.peer(p, prev.Own, f)
		if skip {
			continue
		}
		if why != "" {
			return nil, nil, false // prev had no skipped peer: cannot happen
		}
		old.add(e)
		olds = append(olds, e)
	}
	news := make([]PeerEntries, 0, len(came))
	for _, p := range came {
		e, skip, why := v.spec.peer(p, prev.Own, f)
		if skip {
			continue
		}
		if why != "" || f.Foreign.conflict(e.Route, prev.Dev) != "" {
			return nil, nil, false // render will note it
		}
		if e.MAC != nil {
			m := MAC(e.MAC)
			if _, dup := cur.FDBDst(m); dup {
				return nil, nil, false
			}
			if _, taken := prev.FDBDst(m); taken {
				if _, leaving := old.FDBDst(m); !leaving {
					return nil, nil, false
				}
			}
		}
		if _, taken := prev.Route(e.Route.Dst); taken {
			if _, leaving := old.Route(e.Route.Dst); !leaving {
				return nil, nil, false // the blackhole or a static route
			}
		}
		cur.add(e)
		news = append(news, e)
	}
	// The watcher must see the new state before any write, so that the
	// deletions this apply causes are recognised as weft's own.
	v.wantMu.Lock()
	for _, e := range olds {
		prev.remove(e)
	}
	for _, e := range news {
		prev.add(e)
	}
	v.wantMu.Unlock()
	return old, cur, true
}

// samePeer reports whether two leases for one subnet ask for the same
// entries.
func samePeer(a, b *lease.Lease) bool {
	return a.Subnet == b.Subnet && a.IPv6Subnet == b.IPv6Subnet && a.ModRevision == b.ModRevision &&
		a.Attrs.PublicIP == b.Attrs.PublicIP && a.Attrs.PublicIPv6 == b.Attrs.PublicIPv6 &&
		a.Attrs.BackendType == b.Attrs.BackendType &&
		bytes.Equal(a.Attrs.BackendData, b.Attrs.BackendData) && bytes.Equal(a.Attrs.BackendV6Data, b.Attrs.BackendV6Data)
}

// watchFilter is what the driver contributes to its backend's watcher:
// changes to the device or the underlay interface, removals of what the
// desired state in v.want asks for and, when the spec depends on them,
// changes of the underlay's connected routes.
func (v *driver) watchFilter() watchFilter {
	iface := v.host.IfaceIndex
	family := v.spec.family
	return watchFilter{
		link: func(u netlink.LinkUpdate) bool {
			idx := int32(u.Attrs().Index)
			if int(idx) == iface && (u.Header.Type == unix.RTM_DELLINK || v.dev == nil) {
				return true
			}
			if v.dev == nil {
				return false
			}
			if u.Header.Type == unix.RTM_DELLINK {
				return idx == v.dev.index()
			}
			// A device of our name that is not the one we know (recreated
			// by hand), or ours gone down.
			if u.Attrs().Name == v.spec.device {
				return idx != v.dev.index() || u.Attrs().Flags&net.FlagUp == 0
			}
			return false
		},
		// Only removals of what weft wants are drift: the removals weft's
		// own applies make (peers that left, stale entries) are not, or a
		// leave would cost a second, full apply.
		route: func(u netlink.RouteUpdate) bool {
			if u.Family != int(family) {
				return false
			}
			if v.spec.usesConnected && u.LinkIndex == iface && u.Gw == nil &&
				u.Protocol != rtnl.ProtWeft && u.Table == unix.RT_TABLE_MAIN {
				return true // the connected subnets that decide reachability changed
			}
			v.wantMu.RLock()
			defer v.wantMu.RUnlock()
			return routeDrift(v.want.Load(), u)
		},
		nexthop: v.nexthopFilter(),
		neigh: func(u netlink.NeighUpdate) bool {
			if v.dev == nil || u.Type != unix.RTM_DELNEIGH || int32(u.LinkIndex) != v.dev.index() {
				return false
			}
			v.wantMu.RLock()
			defer v.wantMu.RUnlock()
			d := v.want.Load()
			switch {
			case !d.rendered():
				return true
			case u.Family == unix.AF_BRIDGE:
				if len(u.HardwareAddr) != 6 {
					return false
				}
				dst, ok := d.FDBDst(MAC(u.HardwareAddr))
				return ok && dst == addrOf(u.IP)
			default:
				_, ok := d.Neigh(addrOf(u.IP))
				return ok
			}
		},
		addr: func(u netlink.AddrUpdate) bool {
			if v.dev == nil || u.NewAddr || int32(u.LinkIndex) != v.dev.index() {
				return false
			}
			v.wantMu.RLock()
			defer v.wantMu.RUnlock()
			d := v.want.Load()
			return d == nil || prefixOf(&u.LinkAddress) == d.Addr
		},
	}
}

// nexthopFilter is the driver's filter of nexthop notifications (nil when
// its routes use none).
func (v *driver) nexthopFilter() func(rtnl.NexthopUpdate) bool {
	if !v.nexthops {
		return nil
	}
	return func(u rtnl.NexthopUpdate) bool {
		v.wantMu.RLock()
		defer v.wantMu.RUnlock()
		return nexthopDrift(v.want.Load(), u)
	}
}
