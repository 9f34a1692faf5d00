package dataplane

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

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
