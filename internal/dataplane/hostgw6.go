package dataplane

// The IPv6 side of host-gw in a dual-stack network: per peer
//
//	<peer v6 subnet> via <peer PublicIPv6> dev <iface> metric 1024 proto 87
//
// with the same rule as IPv4: a peer whose PublicIPv6 is not on a subnet
// connected to the interface is reported (ErrPeerUnreachable) and every
// other peer is still programmed.

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
)

type hostGW6Backend struct {
	host  Host
	h     *netlink.Handle
	rt    *rtnl // shared with the IPv4 half; closed by Close
	log   *slog.Logger
	w     *watcher
	notes peerNotes

	applied    map[netip.Prefix]routeWant // last successful apply; nil: none or it failed
	appliedOwn netip.Prefix
	connected  []netip.Prefix
	want       atomic.Pointer[map[netip.Prefix]routeWant]
}

func newHostGW6(host Host, h *netlink.Handle, rt *rtnl, log *slog.Logger) *hostGW6Backend {
	return &hostGW6Backend{host: host, h: h, rt: rt, log: log, w: newWatcher(host.NetNS, log)}
}

func (b *hostGW6Backend) Init(ctx context.Context) (Published, int, error) {
	host, err := resolveHost6(b.h, b.host)
	if err != nil {
		return Published{}, 0, err
	}
	b.host = host
	b.w.start(watchFilter{
		link: func(u netlink.LinkUpdate) bool { return u.Attrs().Index == b.host.IfaceIndex },
		route: func(u netlink.RouteUpdate) bool {
			var routes map[netip.Prefix]routeWant
			if p := b.want.Load(); p != nil {
				routes = *p
			}
			// Ours removed, or an IPv6 connected route of the interface
			// (which decides which peers are reachable) changed.
			return routeDrift(routes, u) ||
				(u.Family == unix.AF_INET6 && u.LinkIndex == b.host.IfaceIndex && u.Gw == nil &&
					u.Protocol != RTProtWeft && u.Table == unix.RT_TABLE_MAIN)
		},
	})
	return Published{BackendType: "host-gw"}, host.IfaceMTU, nil
}

func (b *hostGW6Backend) Events() <-chan struct{} { return b.w.ch }

func (b *hostGW6Backend) Close() error {
	b.w.close()
	b.rt.close()
	return nil
}

func (b *hostGW6Backend) Apply(ctx context.Context, snap lease.Snapshot) error {
	return b.apply(ctx, snap, true)
}

func (b *hostGW6Backend) ApplyDelta(ctx context.Context, snap lease.Snapshot) error {
	return b.apply(ctx, snap, false)
}

func (b *hostGW6Backend) apply(ctx context.Context, snap lease.Snapshot, full bool) error {
	prev := b.applied
	b.applied = nil
	own := snap.Own.IPv6Subnet.Masked()
	if prev == nil || own != b.appliedOwn {
		full = true
	}
	var have mainRoutes
	if full {
		var err error
		if have, err = readMainRoutes(b.rt, unix.AF_INET6, b.host.IfaceIndex); err != nil {
			return fmt.Errorf("dataplane: %w", err)
		}
		b.connected = have.connected
	}
	want := make(map[netip.Prefix]routeWant, len(snap.Peers)+1)
	var unreachable []error
	b.notes.begin()
	for _, p := range snap.Peers {
		skip, err := peer6(p, own, b.host)
		if skip {
			continue
		}
		sub := p.IPv6Subnet.Masked()
		if err != nil {
			b.notes.note(b.log, sub, err.Error())
			continue
		}
		if !strings.EqualFold(p.Attrs.BackendType, "host-gw") {
			b.notes.note(b.log, sub, fmt.Sprintf("backend type %q, want host-gw", p.Attrs.BackendType))
			continue
		}
		if !coveredBy(b.connected, p.Attrs.PublicIPv6) {
			err := fmt.Errorf("host-gw peer %s at %s via %s: %w", sub, p.Attrs.PublicIPv6, b.host.IfaceName, ErrPeerUnreachable)
			b.notes.note(b.log, sub, err.Error())
			unreachable = append(unreachable, err)
			continue
		}
		want[sub] = routeWant{Dst: sub, Gw: p.Attrs.PublicIPv6, Link: b.host.IfaceIndex, Metric: v6Metric}
	}
	b.notes.end()
	if b.host.BlackholeRoute && own.IsValid() {
		want[own] = routeWant{Dst: own, Blackhole: true, Metric: blackholeMetric}
	}
	b.want.Store(&want) // before any write: the deletions below are weft's own
	t := &tally{what: "host-gw IPv6 apply"}
	var err error
	if full {
		routes := make([]routeWant, 0, len(want))
		for _, r := range want {
			routes = append(routes, r)
		}
		var del func() error
		_, del, err = syncRoutes(ctx, b.rt, unix.AF_INET6, have.weft, routes, t)
		if del != nil && err == nil {
			err = del()
		}
	} else {
		add, del := diffMaps(prev, want, func(a, b routeWant) bool { return a == b })
		for _, dst := range add {
			if err := b.h.RouteReplace(route6(want[dst])); err != nil {
				t.add(fmt.Errorf("replace route %s: %w", want[dst], err))
			}
		}
		for _, dst := range del {
			o := prev[dst]
			if w, ok := want[dst]; ok && w.Metric == o.Metric {
				continue // replaced above
			}
			if err := delRoute6(b.h, o); err != nil {
				t.add(fmt.Errorf("delete stale route %s: %w", o, err))
			}
		}
		err = ctx.Err()
	}
	errs := []error{err, t.err()}
	switch len(unreachable) {
	case 0:
	case 1:
		errs = append(errs, unreachable[0])
	default:
		errs = append(errs, fmt.Errorf("%d host-gw IPv6 peers unreachable, first: %w", len(unreachable), unreachable[0]))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("dataplane: %w", err)
	}
	b.applied, b.appliedOwn = want, own
	return nil
}
