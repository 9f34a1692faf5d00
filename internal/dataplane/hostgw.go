package dataplane

// The host-gw backend: no encapsulation, one route per peer,
//
//	<peer subnet> via <peer PublicIP> dev <iface>
//
// which only works when every peer is on this host's L2 segment. A peer that
// is not (no connected route on the interface covers its address) cannot be
// served by host-gw at all; it is reported by name, once, and every other
// peer is still programmed.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync/atomic"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netconf"
	"github.com/weft-net/weft/internal/rtnl"
)

// ErrPeerUnreachable marks a peer host-gw cannot route to: its PublicIP is
// not on a subnet directly connected to the chosen interface.
var ErrPeerUnreachable = errors.New("peer is not directly reachable (host-gw needs every host on one L2 segment)")

// hostGWRoutes is what the IPv4 and IPv6 halves of host-gw share: one route
// per peer out of the underlay interface, written by a full pass (the main
// table read once) or as the difference to the last successful apply.
type hostGWRoutes struct {
	fam   hostGWFamily
	host  Host
	h     *netlink.Handle
	rt    *rtnl.Conn // dumps and batched writes; closed by Close (shared by dual-stack halves)
	log   *slog.Logger
	w     *watcher
	notes peerNotes

	// applied is the desired route set of the last successful apply (nil:
	// none, or it failed), the baseline of a delta; connected is what the
	// last full pass read. want is what the current apply wants, for the
	// watcher's filter (see vxlanBackend).
	applied    map[netip.Prefix]routeWant
	appliedOwn netip.Prefix
	connected  []netip.Prefix
	foreign    foreignRoutes // other owners' routes the last full pass read
	want       atomic.Pointer[map[netip.Prefix]routeWant]
}

// hostGWFamily is what differs between the two halves of host-gw.
type hostGWFamily struct {
	family uint8
	label  string // "host-gw" or "host-gw IPv6", in messages
	what   string // label + " apply", built once
	metric int    // of every peer route
	own    func(snap lease.Snapshot) netip.Prefix
	// peer gives a peer's subnet and gateway (its public address of the
	// family); skip is true for a peer with nothing of this family, err
	// says why a peer cannot be programmed (noted under sub).
	peer func(p *lease.Lease, own netip.Prefix, host Host) (sub netip.Prefix, gw netip.Addr, skip bool, err error)
}

type hostGWBackend struct{ hostGWRoutes }

var hostGW4 = hostGWFamily{
	family: unix.AF_INET,
	label:  netconf.BackendHostGW,
	what:   "host-gw apply",
	own:    func(snap lease.Snapshot) netip.Prefix { return snap.Own.Subnet.Masked() },
	peer: func(p *lease.Lease, own netip.Prefix, host Host) (netip.Prefix, netip.Addr, bool, error) {
		if err := checkPeer(p, own, host); err != nil {
			return p.Subnet, netip.Addr{}, false, err
		}
		return p.Subnet.Masked(), p.Attrs.PublicIP, false, nil
	},
}

func newHostGW(host Host, h *netlink.Handle, rt *rtnl.Conn, log *slog.Logger) *hostGWBackend {
	return &hostGWBackend{hostGWRoutes{fam: hostGW4, host: host, h: h, rt: rt, log: log, w: newWatcher(host.NetNS, log)}}
}

func (b *hostGWBackend) Init(ctx context.Context) (Published, int, error) {
	host, _, err := resolveHost(b.h, b.host)
	if err != nil {
		return Published{}, 0, err
	}
	b.host = host
	b.w.start(watchFilter{
		link: func(u netlink.LinkUpdate) bool {
			return u.Attrs().Index == b.host.IfaceIndex
		},
		route: func(u netlink.RouteUpdate) bool {
			// Ours removed, or the connected routes that decide which peers
			// are reachable changed.
			return b.drift(u) || (u.LinkIndex == b.host.IfaceIndex && u.Scope == netlink.SCOPE_LINK)
		},
	})
	return Published{BackendType: netconf.BackendHostGW}, host.IfaceMTU, nil
}

// drift reports whether route update u removes a route weft wants.
func (b *hostGWRoutes) drift(u netlink.RouteUpdate) bool {
	var routes map[netip.Prefix]routeWant
	if p := b.want.Load(); p != nil {
		routes = *p
	}
	return routeDrift(routes, u)
}

func (b *hostGWRoutes) Events() <-chan struct{} { return b.w.ch }

func (b *hostGWRoutes) Close() error {
	b.w.close()
	b.rt.Close()
	return nil
}

// Apply reads weft's routes and makes them equal to what snap asks for.
func (b *hostGWRoutes) Apply(ctx context.Context, snap lease.Snapshot) error {
	return b.apply(ctx, snap, true)
}

// ApplyDelta writes only the routes that differ from the last successful
// apply, without reading the kernel; with no such apply it is a full one.
func (b *hostGWRoutes) ApplyDelta(ctx context.Context, snap lease.Snapshot) error {
	return b.apply(ctx, snap, false)
}

func (b *hostGWRoutes) apply(ctx context.Context, snap lease.Snapshot, full bool) error {
	prev := b.applied
	b.applied = nil // until this apply succeeds nothing is known
	own := b.fam.own(snap)
	if prev == nil || own != b.appliedOwn {
		full = true
	}
	var have mainRoutes
	if full {
		var err error
		if have, err = readMainRoutesFor(b.rt, b.fam.family, b.host.IfaceIndex, own.Bits()); err != nil {
			return fmt.Errorf("dataplane: %w", err)
		}
		b.connected = have.connected
		b.foreign = newForeignRoutes(have.foreign)
	}
	want := make(map[netip.Prefix]routeWant, len(snap.Peers)+1)
	// A peer that cannot be programmed is noted (logged once, reported by
	// skipped) and left out; it never fails the apply of the others.
	b.notes.begin()
	defer b.notes.end()
	for _, p := range snap.Peers {
		sub, gw, skip, err := b.fam.peer(p, own, b.host)
		if skip {
			continue
		}
		if err != nil {
			b.notes.note(b.log, sub, err.Error())
			continue
		}
		if !strings.EqualFold(p.Attrs.BackendType, netconf.BackendHostGW) {
			b.notes.note(b.log, sub, fmt.Sprintf("backend type %q, want host-gw", p.Attrs.BackendType))
			continue
		}
		if !coveredBy(b.connected, gw) {
			b.notes.noteAs(b.log, sub, SkipUnreachable, b.unreachable(sub, gw, ErrPeerUnreachable).Error())
			continue
		}
		w := routeWant{Dst: sub, Gw: gw, Link: b.host.IfaceIndex, Metric: b.fam.metric}
		if why := b.foreign.conflict(w, 0); why != "" {
			b.notes.noteAs(b.log, sub, SkipForeignRoute, why)
			continue
		}
		want[sub] = w
	}
	if b.host.BlackholeRoute && own.IsValid() {
		w := routeWant{Dst: own, Blackhole: true, Metric: blackholeMetric}
		if why := b.foreign.conflict(w, 0); why != "" {
			b.notes.noteAs(b.log, own, SkipForeignRoute, "own subnet's blackhole route: "+why)
		} else {
			want[own] = w
		}
	}
	// Published before any write: the deletions below are weft's own.
	b.want.Store(&want)
	// A route the kernel refuses for want of a path to its gateway (the
	// connected subnets changed since they were read) is that peer's
	// problem, noted below.
	t := &tally{what: b.fam.what, peerRoutes: true}
	var err error
	if full {
		routes := make([]routeWant, 0, len(want))
		for _, r := range want {
			routes = append(routes, r)
		}
		var del func() error
		_, del, err = syncRoutes(ctx, b.rt, b.fam.family, b.foreign.adopted(have.weft, want, 0), routes, t)
		if del != nil && err == nil {
			err = del()
		}
	} else {
		err = b.applyDiff(ctx, prev, want, t)
	}
	for _, r := range t.unreachable {
		b.notes.noteAs(b.log, r.w.Dst, SkipUnreachable, b.unreachable(r.w.Dst, r.w.Gw, r.err).Error())
	}
	if err := errors.Join(err, t.err()); err != nil {
		return fmt.Errorf("dataplane: %w", err)
	}
	// After a refusal the kernel holds less than want: the next apply
	// must read it again, not write a delta from want.
	if len(t.unreachable) == 0 {
		b.applied, b.appliedOwn = want, own
	}
	return nil
}

// unreachable is the error of a peer (subnet sub at gw) host-gw cannot route to.
func (b *hostGWRoutes) unreachable(sub netip.Prefix, gw netip.Addr, err error) error {
	return fmt.Errorf("%s peer %s at %s via %s: %w", b.fam.label, sub, gw, b.host.IfaceName, err)
}

// skipped lists the peers the last apply left out.
func (b *hostGWRoutes) skipped() []skippedPeer { return b.notes.skipped() }

// applyDiff adds and replaces, then deletes, the routes that differ between
// old (what the kernel holds, as far as weft knows) and want.
func (b *hostGWRoutes) applyDiff(ctx context.Context, old, want map[netip.Prefix]routeWant, t *tally) error {
	add, del := diffMaps(old, want, func(a, b routeWant) bool { return a == b })
	for _, dst := range add {
		w := want[dst]
		// Only a route weft already holds is replaced. A new destination
		// is added exclusively: a route of another owner that appeared
		// since the last full pass makes it fail (EEXIST), and the full
		// pass that follows leaves that route alone.
		write, verb := b.h.RouteReplace, "replace"
		if _, ours := old[dst]; !ours {
			write, verb = b.h.RouteAdd, "add"
		}
		if err := write(w.route()); err != nil {
			t.add(fmt.Errorf("%s route %s: %w", verb, w, err))
		}
	}
	for _, dst := range del {
		o := old[dst]
		if w, ok := want[dst]; ok && w.Metric == o.Metric {
			continue // replaced above
		}
		if err := delRoute(b.h, o); err != nil {
			t.add(fmt.Errorf("delete stale route %s: %w", o, err))
		}
	}
	return ctx.Err()
}

// allocBackend only takes a lease: no data path, nothing in the kernel.
type allocBackend struct {
	host Host
	h    *netlink.Handle
}

func newAlloc(host Host, h *netlink.Handle) *allocBackend { return &allocBackend{host: host, h: h} }

func (b *allocBackend) Init(ctx context.Context) (Published, int, error) {
	host, _, err := resolveHost(b.h, b.host)
	if err != nil {
		return Published{}, 0, err
	}
	b.host = host
	return Published{BackendType: netconf.BackendAlloc}, host.IfaceMTU, nil
}

func (b *allocBackend) Apply(context.Context, lease.Snapshot) error { return nil }
func (b *allocBackend) Events() <-chan struct{}                     { return nil }
func (b *allocBackend) Close() error                                { return nil }
