package dataplane

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/rtnl"
)

// syncDevice makes the FDB entries, neighbours and routes of the family of
// the device d.Dev equal to d, given weft's routes of family in the main table
// (have, read as the routes are synced); it adds what it changed to st. Adds go
// in dependency order (FDB, neighbour, then the route that uses them: a
// route is usable the moment it appears), deletes in reverse, so no packet
// is sent through a half-programmed peer.
func syncDevice(ctx context.Context, rt *rtnl.Conn, d *Desired, have routeSource, nexthops bool, st *syncStats, t *tally) []error {
	var errs []error
	// A route through a nexthop object cannot be written before it: each
	// goes just before its route, in the route's batch (nexthopPlan), not
	// all before the first route. Deleting one deletes its routes, so
	// stale ones go last.
	var (
		nhs   = &syncStats{}
		nh    *nexthopPlan
		nhdel func() error
	)
	if nexthops || d.nhCount > 0 {
		var err error
		nh, err = readNexthops(rt, d.Family, d)
		errs = append(errs, err)
		if nh != nil {
			nhdel = nh.deleteStale(ctx, rt, nhs, t)
		}
	}
	fs, fdel, err := syncFDB(ctx, rt, d.Dev, d, t)
	errs = append(errs, err)
	ns, ndel, err := syncNeighs(ctx, rt, d.Family, d.Dev, d, t)
	errs = append(errs, err)
	rs, rdel, err := syncRoutesVia(ctx, rt, d.Family, have, d, nh, t)
	errs = append(errs, err)
	for _, del := range []func() error{rdel, ndel, fdel, nhdel} {
		if del != nil {
			errs = append(errs, del())
		}
	}
	st.plus(*nhs)
	st.plus(*fs)
	st.plus(*ns)
	st.plus(*rs)
	return errs
}

// deleteNeighs is the stale-delete step of syncNeighs and syncFDB, returned
// for the caller to run after every add (deletes go in reverse dependency
// order): "already gone" counts as success, other failures are collected in
// t so that the entry is retried by the next pass.
func deleteNeighs(ctx context.Context, c *rtnl.Conn, stale []rtnl.Neigh, st *syncStats, t *tally, what func(n rtnl.Neigh) string) func() error {
	return func() error {
		d := rtnl.NewBatch(c, func(i int, err error) bool {
			if isGone(err) {
				return false
			}
			t.add(fmt.Errorf("delete stale %s: %w", what(stale[i]), err))
			return true
		})
		for i, n := range stale {
			if d.Pending() == 0 && ctx.Err() != nil {
				return ctx.Err()
			}
			d.DeleteNeigh(i, n)
		}
		d.Flush()
		st.Deleted += d.OK()
		return nil
	}
}

// syncNeighs makes the permanent neighbours of family (AF_INET or AF_INET6)
// on link equal to want's (address → MAC). Dynamic entries the kernel made are
// left alone unless their address is wanted, in which case the permanent
// entry replaces them.
func syncNeighs(ctx context.Context, c *rtnl.Conn, family uint8, link int, want *Desired, t *tally) (*syncStats, func() error, error) {
	st := &syncStats{}
	sc := getScratch()
	defer putScratch(sc)
	sc.addrs = slices.Grow(sc.addrs[:0], want.NumNeighs()) // as syncRoutes' dsts
	var stale []rtnl.Neigh
	_, err := rtnl.RetryDump(func() (struct{}, error) {
		sc.addrs, stale = sc.addrs[:0], stale[:0]
		return struct{}{}, c.DumpNeighs(family, link, func(n rtnl.Neigh) {
			mac, wanted := want.Neigh(n.IP)
			perm := n.State&netlink.NUD_PERMANENT != 0
			switch {
			case wanted && perm && n.MACLen == 6 && n.MAC == [6]byte(mac):
				sc.addrs = append(sc.addrs, n.IP)
			case !wanted && perm:
				stale = append(stale, n)
			}
		})
	})
	if err != nil {
		return st, nil, fmt.Errorf("list %s neighbours on #%d: %w", famName(family), link, err)
	}
	present := sortedSet(sc.addrs, netip.Addr.Compare)
	b := rtnl.NewBatch(c, func(ip netip.Addr, err error) bool {
		mac, _ := want.Neigh(ip)
		t.add(fmt.Errorf("set neighbour %s lladdr %s: %w", ip, mac, err))
		return true
	})
	if len(present) < want.NumNeighs() {
		for ip, mac := range want.Neighs() {
			if _, found := slices.BinarySearchFunc(present, ip, netip.Addr.Compare); found {
				continue
			}
			if b.Pending() == 0 && ctx.Err() != nil {
				return st, nil, ctx.Err()
			}
			b.SetNeigh(ip, family, link, ip, mac[:])
		}
		b.Flush()
	}
	st.Added = b.OK()
	del := deleteNeighs(ctx, c, stale, st, t, func(n rtnl.Neigh) string { return fmt.Sprintf("neighbour %s", n.IP) })
	return st, del, nil
}

// syncFDB makes the permanent forwarding entries of the vxlan device link
// equal to want's (VTEP MAC → underlay destination).
func syncFDB(ctx context.Context, c *rtnl.Conn, link int, want *Desired, t *tally) (*syncStats, func() error, error) {
	st := &syncStats{}
	sc := getScratch()
	defer putScratch(sc)
	sc.macs = slices.Grow(sc.macs[:0], want.NumFDB()) // as syncRoutes' dsts
	var stale []rtnl.Neigh
	_, err := rtnl.RetryDump(func() (struct{}, error) {
		sc.macs, stale = sc.macs[:0], stale[:0]
		return struct{}{}, c.DumpFDB(link, func(n rtnl.Neigh) {
			if n.State&netlink.NUD_PERMANENT == 0 || n.MACLen != 6 {
				return // learned entries (Learning on) belong to the kernel
			}
			if dst, wanted := want.FDBDst(n.MAC); wanted && n.IP == dst {
				sc.macs = append(sc.macs, n.MAC)
				return
			}
			stale = append(stale, n)
		})
	})
	if err != nil {
		return st, nil, fmt.Errorf("list FDB entries on #%d: %w", link, err)
	}
	present := sortedSet(sc.macs, cmpMAC)
	b := rtnl.NewBatch(c, func(mac [6]byte, err error) bool {
		dst, _ := want.FDBDst(mac)
		t.add(fmt.Errorf("set FDB entry %s dst %s: %w", net.HardwareAddr(mac[:]), dst, err))
		return true
	})
	// Replace first: on an existing MAC the kernel swaps its destination in
	// place, so the stale delete that follows is usually already done.
	if len(present) < want.NumFDB() {
		for mac, dst := range want.FDB() {
			if _, found := slices.BinarySearchFunc(present, [6]byte(mac), cmpMAC); found {
				continue
			}
			if b.Pending() == 0 && ctx.Err() != nil {
				return st, nil, ctx.Err()
			}
			b.SetNeigh(mac, unix.AF_BRIDGE, link, dst, mac[:])
		}
		b.Flush()
	}
	st.Added = b.OK()
	// After the replace above a delete is often ENOENT (success): the
	// kernel already swapped the destination of this MAC in place.
	del := deleteNeighs(ctx, c, stale, st, t, func(n rtnl.Neigh) string {
		return fmt.Sprintf("FDB entry %s dst %s", net.HardwareAddr(n.MAC[:]), n.IP)
	})
	return st, del, nil
}

// syncAddrs makes the addresses of family (AF_INET or AF_INET6) on link
// exactly want (zero = none). Anything else — e.g. the /16 that flannel
// before 0.7.0 put on flannel.1, whose connected route swallowed the whole
// overlay — is removed. The new address goes on before old ones come off:
// removing a device's last IPv4 address makes the kernel flush every route
// through it.
//
// For IPv6 only global addresses are weft's: link-local ones are the
// kernel's and stay. The address is added without duplicate address
// detection: it is a /128 nobody else can hold on this device, and a
// tentative address cannot be used as a source for the second or so DAD
// takes.
func syncAddrs(h *netlink.Handle, family uint8, link netlink.Link, want netip.Prefix, t *tally) (syncStats, error) {
	var st syncStats
	v6 := family == unix.AF_INET6
	nlFamily, what := netlink.FAMILY_V4, "addresses"
	if v6 {
		nlFamily, what = netlink.FAMILY_V6, "IPv6 addresses"
	}
	have, err := rtnl.RetryDump(func() ([]netlink.Addr, error) { return h.AddrList(link, nlFamily) })
	if err != nil {
		return st, fmt.Errorf("list %s on %s: %w", what, link.Attrs().Name, err)
	}
	found := false
	for _, a := range have {
		found = found || (want.IsValid() && prefixOf(a.IPNet) == want)
	}
	if want.IsValid() && !found {
		add := &netlink.Addr{IPNet: ipNet(want)}
		if v6 {
			add.Flags = unix.IFA_F_NODAD
		}
		if err := h.AddrAdd(link, add); err != nil && !errors.Is(err, unix.EEXIST) {
			t.add(fmt.Errorf("add address %s to %s: %w", want, link.Attrs().Name, err))
		} else {
			st.Added++
		}
	}
	for _, a := range have {
		p := prefixOf(a.IPNet)
		if want.IsValid() && p == want {
			continue
		}
		if v6 && (a.Scope != unix.RT_SCOPE_UNIVERSE || p.Addr().IsLinkLocalUnicast()) {
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
