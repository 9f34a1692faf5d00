package dataplane

// The IPv6-only pieces of the drivers for the IPv6 side of a dual-stack
// network. Routes and neighbours go through the same family-aware drivers
// as IPv4 (readMainRoutes, syncRoutes, syncNeighs with unix.AF_INET6); what
// stays here differs in substance: the address sync (no DAD, the kernel's
// link-local addresses kept) and the vishvananda-typed route and neighbour
// values of the IPv6 backends.

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// v6Metric is the metric the kernel gives an IPv6 route added without one.
// Weft's IPv6 routes carry it explicitly, so that what a dump reports
// compares equal to what was asked and a delete names the same route.
const v6Metric = 1024

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
