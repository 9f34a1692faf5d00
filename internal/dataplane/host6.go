package dataplane

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/rtnl"
)

// resolveHost6 fills in what the IPv6 side needs and the caller left zero:
// the interface (index, name, MTU) and its IPv6 address, from the kernel.
// Unlike resolveHost it does not need an IPv4 address.
func resolveHost6(h *netlink.Handle, host Host) (Host, error) {
	host, link, err := findUnderlay(h, host)
	if err != nil {
		return host, err
	}
	attrs := link.Attrs()
	if !host.IfaceAddr6.IsValid() {
		addrs, err := rtnl.RetryDump(func() ([]netlink.Addr, error) { return h.AddrList(link, netlink.FAMILY_V6) })
		if err != nil {
			return host, fmt.Errorf("dataplane: list IPv6 addresses of %s: %w", attrs.Name, err)
		}
		// Temporary (privacy) addresses change and deprecated ones are on
		// their way out; a tentative one becomes usable once DAD is done.
		const unusable = unix.IFA_F_TEMPORARY | unix.IFA_F_DEPRECATED | unix.IFA_F_DADFAILED
		for _, a := range addrs {
			ip, ok := netip.AddrFromSlice(a.IP)
			if ok && a.Scope == unix.RT_SCOPE_UNIVERSE && a.Flags&unusable == 0 && ip.Is6() && !ip.Is4In6() && ip.IsGlobalUnicast() {
				host.IfaceAddr6 = ip
				break
			}
		}
		if !host.IfaceAddr6.IsValid() {
			return host, fmt.Errorf("dataplane: underlay interface %s has no global IPv6 address (EnableIPv6 needs one)", attrs.Name)
		}
	}
	if !host.IfaceAddr6.Is6() || host.IfaceAddr6.Is4In6() {
		return host, fmt.Errorf("dataplane: IPv6 underlay address %s on %s: not an IPv6 address", host.IfaceAddr6, attrs.Name)
	}
	if !host.PublicIP6.IsValid() {
		host.PublicIP6 = host.IfaceAddr6
	}
	return host, nil
}

// peer6 says whether a peer takes part in the IPv6 overlay: a lease without
// an IPv6 subnet (a host of an IPv4-only network, or one that has not
// upgraded) is silently left out (skip); one with an IPv6 subnet that cannot
// be programmed is an error naming what is wrong.
func peer6(p *lease.Lease, own netip.Prefix, host Host) (skip bool, err error) {
	if !p.IPv6Subnet.IsValid() {
		return true, nil
	}
	pub := p.Attrs.PublicIPv6
	switch {
	case !p.IPv6Subnet.Addr().Is6() || p.IPv6Subnet.Addr().Is4In6():
		return false, fmt.Errorf("IPv6 subnet %s: not an IPv6 subnet", p.IPv6Subnet)
	case p.IPv6Subnet.Masked() == own:
		return false, fmt.Errorf("IPv6 subnet %s: is this host's own subnet", p.IPv6Subnet)
	case !pub.Is6() || pub.Is4In6() || pub.IsUnspecified() || pub.IsMulticast():
		return false, fmt.Errorf("PublicIPv6 %s: not an IPv6 unicast address", pub)
	case pub == host.PublicIP6 || pub == host.IfaceAddr6:
		return false, fmt.Errorf("PublicIPv6 %s: is this host's own address", pub)
	}
	return false, nil
}
