package dataplane

// Family-aware variants of the route, neighbour and address drivers of
// kernel.go and dump.go, for the IPv6 side of a dual-stack network. They work
// like their IPv4 counterparts (one filtered dump, batched writes, only the
// differences written, failures tallied) and reuse their batch, dump and
// neighbour machinery; only the pieces that hard-code AF_INET are redone
// here, taking the family as a parameter so the IPv4 drivers can move onto
// them later.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// v6Metric is the metric the kernel gives an IPv6 route added without one.
// Weft's IPv6 routes carry it explicitly, so that what a dump reports
// compares equal to what was asked and a delete names the same route.
const v6Metric = 1024

func appendRtmsgFam(b []byte, family, dstLen, tos, table, proto, scope, typ uint8, flags uint32) []byte {
	b = append(b, family, dstLen, 0, tos, table, proto, scope, typ)
	return native.AppendUint32(b, flags)
}

// appendRouteWantFam is appendRouteWant for either family.
func appendRouteWantFam(b []byte, family uint8, w routeWant) []byte {
	typ := uint8(unix.RTN_UNICAST)
	if w.Blackhole {
		typ = unix.RTN_BLACKHOLE
	}
	var flags uint32
	if w.OnLink {
		flags = unix.RTNH_F_ONLINK
	}
	b = appendRtmsgFam(b, family, uint8(w.Dst.Bits()), 0, unix.RT_TABLE_MAIN, uint8(RTProtWeft), unix.RT_SCOPE_UNIVERSE, typ, flags)
	b = appendAttrAddr(b, unix.RTA_DST, w.Dst.Addr())
	if w.Gw.IsValid() {
		b = appendAttrAddr(b, unix.RTA_GATEWAY, w.Gw)
	}
	if w.Metric > 0 {
		b = appendAttrU32(b, unix.RTA_PRIORITY, uint32(w.Metric))
	}
	if w.Link > 0 {
		b = appendAttrU32(b, unix.RTA_OIF, uint32(w.Link))
	}
	return b
}

// appendRouteDelFam is appendRouteDel for either family.
func appendRouteDelFam(b []byte, family uint8, r kRoute) []byte {
	table := uint8(r.Table)
	if r.Table >= 256 {
		table = unix.RT_TABLE_UNSPEC
	}
	b = appendRtmsgFam(b, family, uint8(r.Dst.Bits()), r.Tos, table, r.Protocol, r.Scope, r.Type, r.Flags)
	b = appendAttrAddr(b, unix.RTA_DST, r.Dst.Addr())
	if r.Table >= 256 {
		b = appendAttrU32(b, unix.RTA_TABLE, r.Table)
	}
	if r.Gw.IsValid() {
		b = appendAttrAddr(b, unix.RTA_GATEWAY, r.Gw)
	}
	if r.Priority > 0 {
		b = appendAttrU32(b, unix.RTA_PRIORITY, uint32(r.Priority))
	}
	if r.Link > 0 {
		b = appendAttrU32(b, unix.RTA_OIF, uint32(r.Link))
	}
	return b
}

// parseRouteFam reads an RTM_NEWROUTE payload of the given family; ok is
// false for anything else.
func parseRouteFam(p []byte, family uint8) (r kRoute, ok bool) {
	if family == unix.AF_INET {
		return parseRoute(p)
	}
	if len(p) < unix.SizeofRtMsg || p[0] != family || family != unix.AF_INET6 {
		return r, false
	}
	dstLen := int(p[1])
	r.Tos, r.Table, r.Protocol, r.Scope, r.Type = p[3], uint32(p[4]), p[5], p[6], p[7]
	r.Flags = native.Uint32(p[8:])
	if r.Flags&unix.RTM_F_CLONED != 0 {
		return r, false // a cached exception (PMTU), not a FIB entry
	}
	dst := netip.IPv6Unspecified()
	a := attrs{b: p[unix.SizeofRtMsg:]}
	for a.next() {
		switch a.typ {
		case unix.RTA_DST:
			if len(a.val) == 16 {
				dst = netip.AddrFrom16([16]byte(a.val))
			}
		case unix.RTA_GATEWAY:
			if len(a.val) == 16 {
				r.Gw = netip.AddrFrom16([16]byte(a.val))
			}
		case unix.RTA_OIF:
			if len(a.val) == 4 {
				r.Link = int(native.Uint32(a.val))
			}
		case unix.RTA_PRIORITY:
			if len(a.val) == 4 {
				r.Priority = int(native.Uint32(a.val))
			}
		case unix.RTA_TABLE:
			if len(a.val) == 4 {
				r.Table = native.Uint32(a.val)
			}
		case unix.RTA_MULTIPATH, unix.RTA_VIA, unix.RTA_ENCAP, rtaNHID:
			r.Other = true
		}
	}
	if dstLen > 128 {
		return r, false
	}
	r.Dst = netip.PrefixFrom(dst, dstLen)
	return r, true
}

// readMainRoutesFam is readMainRoutes for either family. An IPv6 route has
// no link scope, so "connected to the underlay" is: no gateway, out of the
// interface, unicast, not link-local.
func readMainRoutesFam(c *rtnl, family uint8, ifaceIndex int) (mainRoutes, error) {
	if family == unix.AF_INET {
		return readMainRoutes(c, ifaceIndex)
	}
	var m mainRoutes
	var rb [unix.SizeofRtMsg]byte
	req := appendRtmsgFam(rb[:0], family, 0, 0, unix.RT_TABLE_MAIN, 0, 0, 0, 0)
	_, err := dump(func() (struct{}, error) {
		m.weft, m.connected = m.weft[:0], m.connected[:0]
		return struct{}{}, dumpRaw(c, unix.RTM_GETROUTE, req, unix.RTM_NEWROUTE, func(p []byte) {
			r, ok := parseRouteFam(p, family)
			if !ok || r.Table != unix.RT_TABLE_MAIN {
				return
			}
			switch {
			case r.Protocol == uint8(RTProtWeft):
				m.weft = append(m.weft, r)
			case r.Link == ifaceIndex && ifaceIndex != 0 && !r.Gw.IsValid() && r.Type == unix.RTN_UNICAST &&
				!r.Dst.Addr().IsLinkLocalUnicast() && !r.Other:
				m.connected = append(m.connected, r.Dst)
			}
		})
	})
	if err != nil {
		return m, fmt.Errorf("list IPv6 main-table routes: %w", err)
	}
	return m, nil
}

// syncRoutesFam is syncRoutes for either family: it makes weft's main-table
// routes of that family (have, from readMainRoutesFam) equal to want.
func syncRoutesFam(ctx context.Context, c *rtnl, family uint8, have []kRoute, want []routeWant, t *tally) (*syncStats, func() error, error) {
	st := &syncStats{}
	wantBy := make(map[netip.Prefix]int, len(want))
	for i, w := range want {
		wantBy[w.Dst] = i
	}
	ok := make([]bool, len(want))
	var stale []kRoute
	for _, r := range have {
		i, found := wantBy[r.Dst]
		if found && !ok[i] && want[i].matches(r) {
			ok[i] = true
			continue
		}
		// As in syncRoutes: a route at the wanted metric is replaced in
		// place; one at another metric would survive that, so it is stale.
		if !found || r.Priority != want[i].Metric {
			stale = append(stale, r)
		}
	}
	b := newBatch(c, func(i int, err error) bool {
		t.add(fmt.Errorf("replace route %s: %w", want[i], err))
		return true
	})
	for i, w := range want {
		if ok[i] {
			continue
		}
		if len(b.keys) == 0 && ctx.Err() != nil {
			return st, nil, ctx.Err()
		}
		b.begin()
		b.buf = appendRouteWantFam(b.buf, family, w)
		b.end(i, unix.RTM_NEWROUTE, setFlags)
	}
	b.flush()
	st.Added = b.ok()
	del := func() error {
		d := newBatch(c, func(i int, err error) bool {
			if isGone(err) {
				return false
			}
			t.add(fmt.Errorf("delete stale route %s: %w", stale[i].Dst, err))
			return true
		})
		for i, r := range stale {
			if len(d.keys) == 0 && ctx.Err() != nil {
				return ctx.Err()
			}
			d.begin()
			d.buf = appendRouteDelFam(d.buf, family, r)
			d.end(i, unix.RTM_DELROUTE, 0)
		}
		d.flush()
		st.Deleted += d.ok()
		return nil
	}
	return st, del, nil
}

// syncNeighsFam is syncNeighs for either family: the permanent neighbours of
// that family on link become exactly want.
func syncNeighsFam(ctx context.Context, c *rtnl, family uint8, link int, want map[netip.Addr]net.HardwareAddr, t *tally) (*syncStats, func() error, error) {
	if family == unix.AF_INET {
		return syncNeighs(ctx, c, link, want, t)
	}
	st := &syncStats{}
	var stale []kNeigh
	present := make(map[netip.Addr]bool, len(want))
	var rb [unix.SizeofNdMsg + 8]byte
	req := appendAttrU32(appendNdmsg(rb[:0], family, 0, 0, 0, 0), unix.NDA_IFINDEX, uint32(link))
	_, err := dump(func() (struct{}, error) {
		clear(present)
		stale = stale[:0]
		return struct{}{}, dumpRaw(c, unix.RTM_GETNEIGH, req, unix.RTM_NEWNEIGH, func(p []byte) {
			n, ok := parseNeigh(p)
			if !ok || n.Family != family || n.Link != link {
				return
			}
			mac, wanted := want[n.IP]
			perm := n.State&netlink.NUD_PERMANENT != 0
			switch {
			case wanted && perm && n.MACLen == len(mac) && len(mac) == 6 && n.MAC == [6]byte(mac):
				present[n.IP] = true
			case !wanted && perm:
				stale = append(stale, n)
			}
		})
	})
	if err != nil {
		return st, nil, fmt.Errorf("list IPv6 neighbours on #%d: %w", link, err)
	}
	b := newBatch(c, func(ip netip.Addr, err error) bool {
		t.add(fmt.Errorf("set neighbour %s lladdr %s: %w", ip, want[ip], err))
		return true
	})
	for ip, mac := range want {
		if present[ip] {
			continue
		}
		if len(b.keys) == 0 && ctx.Err() != nil {
			return st, nil, ctx.Err()
		}
		b.begin()
		b.buf = appendNeighSet(b.buf, family, link, ip, mac)
		b.end(ip, unix.RTM_NEWNEIGH, setFlags)
	}
	b.flush()
	st.Added = b.ok()
	del := deleteNeighs(ctx, c, stale, st, t, func(n kNeigh) string { return fmt.Sprintf("neighbour %s", n.IP) })
	return st, del, nil
}

// syncAddrs6 makes the global IPv6 addresses on link exactly want (zero =
// none); link-local addresses are the kernel's and stay. The address is
// added without duplicate address detection: it is a /128 nobody else can
// hold on this device, and a tentative address cannot be used as a source
// for the second or so DAD takes.
func syncAddrs6(h *netlink.Handle, link netlink.Link, want netip.Prefix, t *tally) (syncStats, error) {
	var st syncStats
	have, err := dump(func() ([]netlink.Addr, error) { return h.AddrList(link, netlink.FAMILY_V6) })
	if err != nil {
		return st, fmt.Errorf("list IPv6 addresses on %s: %w", link.Attrs().Name, err)
	}
	found := false
	for _, a := range have {
		found = found || (want.IsValid() && prefixOf(a.IPNet) == want)
	}
	if want.IsValid() && !found {
		if err := h.AddrAdd(link, &netlink.Addr{IPNet: ipNet(want), Flags: unix.IFA_F_NODAD}); err != nil && !errors.Is(err, unix.EEXIST) {
			t.add(fmt.Errorf("add address %s to %s: %w", want, link.Attrs().Name, err))
		} else {
			st.Added++
		}
	}
	for _, a := range have {
		p := prefixOf(a.IPNet)
		if (want.IsValid() && p == want) || a.Scope != unix.RT_SCOPE_UNIVERSE || p.Addr().IsLinkLocalUnicast() {
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

// route6 is routeWant.route for an IPv6 route.
func route6(w routeWant) *netlink.Route {
	r := w.route()
	r.Family = netlink.FAMILY_V6
	return r
}

// delRoute6 is delRoute for an IPv6 route.
func delRoute6(h *netlink.Handle, w routeWant) error {
	err := h.RouteDel(&netlink.Route{
		Dst:      ipNet(w.Dst),
		Protocol: RTProtWeft,
		Table:    unix.RT_TABLE_MAIN,
		Priority: w.Metric,
		Family:   netlink.FAMILY_V6,
	})
	if err != nil && !isGone(err) {
		return err
	}
	return nil
}

func neigh6Entry(link int, ip netip.Addr, mac net.HardwareAddr) *netlink.Neigh {
	return &netlink.Neigh{
		LinkIndex:    link,
		Family:       netlink.FAMILY_V6,
		State:        netlink.NUD_PERMANENT,
		Type:         unix.RTN_UNICAST,
		IP:           ip.AsSlice(),
		HardwareAddr: mac,
	}
}
