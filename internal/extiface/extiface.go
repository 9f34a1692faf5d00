// Package extiface chooses the interface that carries inter-host (underlay)
// traffic and the address advertised in the lease, the way flanneld does:
// every -iface in order, then every -iface-regex (addresses first, then
// names), then -iface-can-reach; with none of them, the interface of the
// default route.
//
// Everything goes through the *netlink.Handle the caller passes, so the
// daemon can look at its own namespace and tests at a namespace they built;
// nothing here depends on the namespace of the calling thread.
package extiface

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/netconf"
	"github.com/weft-net/weft/internal/rtnl"
)

// Options are the daemon's interface flags.
type Options struct {
	Ifaces     []string // -iface, repeatable: name or IP, tried in order
	IfaceRegex []string // -iface-regex, repeatable: matched against addresses first, then names; tried after all Ifaces
	CanReach   string   // -iface-can-reach: the interface `ip route get <addr>` would use; tried last
	PublicIP   string   // -public-ip overrides the advertised address
	PublicIPv6 string   // -public-ipv6 overrides the advertised IPv6 address
}

// ExtIface is the chosen interface.
type ExtIface struct {
	Name      string
	Index     int
	MTU       int
	IfaceAddr netip.Addr // IPv4 address on the interface (used as vxlan local / source)
	PublicIP  netip.Addr // advertised in the lease: Options.PublicIP or IfaceAddr
	// IfaceAddr6 is the interface's global IPv6 address (zero when it has
	// none): the IPv6 vxlan local address. PublicIPv6 is Options.PublicIPv6
	// or IfaceAddr6. Only a dual-stack network (EnableIPv6) needs them.
	IfaceAddr6 netip.Addr
	PublicIPv6 netip.Addr
}

// Select chooses the external interface according to opts. Every failure
// names each selector that was tried and why it did not match.
func Select(h *netlink.Handle, opts Options) (ExtIface, error) {
	var public, public6 netip.Addr
	var err error
	if opts.PublicIP != "" {
		if public, err = ParsePublicIP("-public-ip", opts.PublicIP, false); err != nil {
			return ExtIface{}, err
		}
	}
	if opts.PublicIPv6 != "" {
		if public6, err = ParsePublicIP("-public-ipv6", opts.PublicIPv6, true); err != nil {
			return ExtIface{}, err
		}
	}

	ext, err := choose(h, opts)
	if err != nil {
		return ExtIface{}, err
	}
	ext.PublicIP = ext.IfaceAddr
	if public.IsValid() {
		ext.PublicIP = public
	}
	if ext.IfaceAddr6, err = global6(h, ext.Index); err != nil {
		return ExtIface{}, fmt.Errorf("interface %s: %w", ext.Name, err)
	}
	ext.PublicIPv6 = ext.IfaceAddr6
	if public6.IsValid() {
		ext.PublicIPv6 = public6
	}
	return ext, nil
}

// ParsePublicIP parses the value of flag, an address advertised to every
// peer in the lease: IPv4 unless v6. Only an address peers can send to is
// accepted; each error names the flag, the value and the rule. A zone
// (fe80::1%eth0) is refused because the lease cannot carry it: peers would
// store fe80::1 and send to their own link, isolating this host.
func ParsePublicIP(flag, s string, v6 bool) (netip.Addr, error) {
	family := "an IPv4"
	if v6 {
		family = "an IPv6"
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Is4() == v6 || a.Is4In6() {
		return netip.Addr{}, fmt.Errorf("%s %q: not %s address", flag, s, family)
	}
	if what := netconf.HostAddrProblem(a); what != "" {
		return netip.Addr{}, fmt.Errorf("%s %q: %s is not allowed: peers could not send to it", flag, s, what)
	}
	return a, nil
}

// global6 returns the first usable global IPv6 address of the interface:
// not link-local, not temporary (privacy addresses change), not deprecated,
// tentative or failed duplicate detection. Zero when there is none.
func global6(h *netlink.Handle, index int) (netip.Addr, error) {
	link, err := h.LinkByIndex(index)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("look up interface index %d: %w", index, err)
	}
	addrs, err := rtnl.RetryDump(func() ([]netlink.Addr, error) { return h.AddrList(link, netlink.FAMILY_V6) })
	if err != nil {
		return netip.Addr{}, fmt.Errorf("list IPv6 addresses: %w", err)
	}
	const unusable = unix.IFA_F_TEMPORARY | unix.IFA_F_DEPRECATED | unix.IFA_F_TENTATIVE | unix.IFA_F_DADFAILED
	for _, ad := range addrs {
		if ad.IPNet == nil || ad.Scope != unix.RT_SCOPE_UNIVERSE || ad.Flags&unusable != 0 {
			continue
		}
		if ip, ok := netip.AddrFromSlice(ad.IP); ok && ip.Is6() && !ip.Is4In6() && ip.IsGlobalUnicast() {
			return ip, nil
		}
	}
	return netip.Addr{}, nil
}

func choose(h *netlink.Handle, opts Options) (ExtIface, error) {
	anyFlag := len(opts.Ifaces) > 0 || len(opts.IfaceRegex) > 0 || opts.CanReach != ""
	if !anyFlag {
		return byDefaultRoute(h)
	}
	var tried []error
	for _, s := range opts.Ifaces {
		ext, err := byIface(h, s)
		if err == nil {
			return ext, nil
		}
		tried = append(tried, err)
	}
	for _, re := range opts.IfaceRegex {
		ext, err := byRegex(h, re)
		if err == nil {
			return ext, nil
		}
		tried = append(tried, err)
	}
	if opts.CanReach != "" {
		ext, err := byCanReach(h, opts.CanReach)
		if err == nil {
			return ext, nil
		}
		tried = append(tried, err)
	}
	return ExtIface{}, fmt.Errorf("no interface matches the -iface/-iface-regex/-iface-can-reach flags: %w", errors.Join(tried...))
}

// byIface resolves one -iface value: an IP selects the interface holding it
// (and that very address), anything else is an interface name.
func byIface(h *netlink.Handle, s string) (ExtIface, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		if !a.Is4() {
			return ExtIface{}, fmt.Errorf("-iface %s: only IPv4 addresses are supported", s)
		}
		addrs, err := addrList(h, nil)
		if err != nil {
			return ExtIface{}, fmt.Errorf("-iface %s: list addresses: %w", s, err)
		}
		for _, ad := range addrs {
			if ip, ok := addrOf(ad); ok && ip == a {
				link, err := h.LinkByIndex(ad.LinkIndex)
				if err != nil {
					return ExtIface{}, fmt.Errorf("-iface %s: look up interface index %d: %w", s, ad.LinkIndex, err)
				}
				return fromLink(link, a), nil
			}
		}
		return ExtIface{}, fmt.Errorf("-iface %s: no interface has this address", s)
	}
	link, err := h.LinkByName(s)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) || errors.Is(err, unix.ENODEV) {
			return ExtIface{}, fmt.Errorf("-iface %s: no such interface", s)
		}
		return ExtIface{}, fmt.Errorf("-iface %s: look up interface: %w", s, err)
	}
	ext, err := withPrimary(h, link)
	if err != nil {
		return ExtIface{}, fmt.Errorf("-iface %s: %w", s, err)
	}
	return ext, nil
}

// byRegex matches the expression against every IPv4 address first and only
// then against interface names, as flanneld does: an address pattern is the
// more specific intent.
func byRegex(h *netlink.Handle, expr string) (ExtIface, error) {
	re, err := regexp.Compile(expr)
	if err != nil {
		return ExtIface{}, fmt.Errorf("-iface-regex %q: invalid regular expression: %w", expr, err)
	}
	addrs, err := addrList(h, nil)
	if err != nil {
		return ExtIface{}, fmt.Errorf("-iface-regex %q: list addresses: %w", expr, err)
	}
	for _, ad := range addrs {
		ip, ok := addrOf(ad)
		// Host-scope addresses (loopback) can never carry inter-host
		// traffic; a pattern like "2" must not pick 127.0.0.1.
		if !ok || ad.Scope == unix.RT_SCOPE_HOST || !re.MatchString(ip.String()) {
			continue
		}
		link, err := h.LinkByIndex(ad.LinkIndex)
		if err != nil {
			return ExtIface{}, fmt.Errorf("-iface-regex %q: look up interface index %d: %w", expr, ad.LinkIndex, err)
		}
		return fromLink(link, ip), nil
	}
	links, err := linkList(h)
	if err != nil {
		return ExtIface{}, fmt.Errorf("-iface-regex %q: list interfaces: %w", expr, err)
	}
	var noAddr []string
	for _, l := range links {
		if !re.MatchString(l.Attrs().Name) {
			continue
		}
		ext, err := withPrimary(h, l)
		if err == nil {
			return ext, nil
		}
		noAddr = append(noAddr, err.Error())
	}
	if len(noAddr) > 0 {
		return ExtIface{}, fmt.Errorf("-iface-regex %q: matched no address; matching interfaces are unusable: %s", expr, strings.Join(noAddr, "; "))
	}
	return ExtIface{}, fmt.Errorf("-iface-regex %q: matched no address or interface name", expr)
}

// byCanReach asks the kernel which interface (and source address) it would
// use for the destination; no packet is sent.
func byCanReach(h *netlink.Handle, s string) (ExtIface, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return ExtIface{}, fmt.Errorf("-iface-can-reach %q: not an IPv4 address", s)
	}
	routes, err := h.RouteGet(net.IP(a.AsSlice()))
	if err != nil {
		return ExtIface{}, fmt.Errorf("-iface-can-reach %s: route lookup: %w", s, err)
	}
	if len(routes) == 0 || routes[0].LinkIndex == 0 {
		return ExtIface{}, fmt.Errorf("-iface-can-reach %s: no route to this address", s)
	}
	link, err := h.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		return ExtIface{}, fmt.Errorf("-iface-can-reach %s: look up interface index %d: %w", s, routes[0].LinkIndex, err)
	}
	// The kernel's chosen source is what the peer will see, so prefer it when
	// it really is on this interface.
	if src, ok := netip.AddrFromSlice(routes[0].Src); ok && src.Unmap().Is4() {
		src = src.Unmap()
		addrs, err := addrList(h, link)
		if err == nil {
			for _, ad := range addrs {
				if ip, ok := addrOf(ad); ok && ip == src {
					return fromLink(link, src), nil
				}
			}
		}
	}
	ext, err := withPrimary(h, link)
	if err != nil {
		return ExtIface{}, fmt.Errorf("-iface-can-reach %s: %w", s, err)
	}
	return ext, nil
}

// byDefaultRoute picks the interface of the IPv4 default route with the
// lowest metric in the main table.
func byDefaultRoute(h *netlink.Handle) (ExtIface, error) {
	routes, err := rtnl.RetryDump(func() ([]netlink.Route, error) {
		return h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return ExtIface{}, fmt.Errorf("list IPv4 routes to find the default route: %w", err)
	}
	best := -1
	for i, r := range routes {
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 {
				continue
			}
		}
		if r.LinkIndex == 0 {
			// A multipath default route: take its first hop.
			if len(r.MultiPath) == 0 {
				continue
			}
			routes[i].LinkIndex = r.MultiPath[0].LinkIndex
		}
		if best < 0 || r.Priority < routes[best].Priority {
			best = i
		}
	}
	if best < 0 {
		return ExtIface{}, errors.New("no IPv4 default route to choose the external interface from: pass -iface (name or IP), -iface-regex or -iface-can-reach")
	}
	link, err := h.LinkByIndex(routes[best].LinkIndex)
	if err != nil {
		return ExtIface{}, fmt.Errorf("look up interface index %d of the default route: %w", routes[best].LinkIndex, err)
	}
	ext, err := withPrimary(h, link)
	if err != nil {
		return ExtIface{}, fmt.Errorf("default route interface: %w", err)
	}
	return ext, nil
}

// withPrimary fills in the interface's primary address: the first global
// IPv4 address that is not secondary (the one the kernel uses as source).
func withPrimary(h *netlink.Handle, link netlink.Link) (ExtIface, error) {
	addrs, err := addrList(h, link)
	if err != nil {
		return ExtIface{}, fmt.Errorf("list addresses of %s: %w", link.Attrs().Name, err)
	}
	var fallback netip.Addr
	for _, ad := range addrs {
		ip, ok := addrOf(ad)
		if !ok || ad.Scope != unix.RT_SCOPE_UNIVERSE {
			continue
		}
		if ad.Flags&unix.IFA_F_SECONDARY == 0 {
			return fromLink(link, ip), nil
		}
		if !fallback.IsValid() {
			fallback = ip
		}
	}
	if fallback.IsValid() {
		return fromLink(link, fallback), nil
	}
	return ExtIface{}, fmt.Errorf("interface %s has no global IPv4 address", link.Attrs().Name)
}

func fromLink(link netlink.Link, addr netip.Addr) ExtIface {
	a := link.Attrs()
	return ExtIface{Name: a.Name, Index: a.Index, MTU: a.MTU, IfaceAddr: addr}
}

// addrOf returns the IPv4 address of a netlink address, if it has one.
func addrOf(ad netlink.Addr) (netip.Addr, bool) {
	if ad.IPNet == nil {
		return netip.Addr{}, false
	}
	ip, ok := netip.AddrFromSlice(ad.IP)
	if !ok {
		return netip.Addr{}, false
	}
	ip = ip.Unmap()
	return ip, ip.Is4()
}

func addrList(h *netlink.Handle, link netlink.Link) ([]netlink.Addr, error) {
	return rtnl.RetryDump(func() ([]netlink.Addr, error) { return h.AddrList(link, netlink.FAMILY_V4) })
}

func linkList(h *netlink.Handle) ([]netlink.Link, error) {
	return rtnl.RetryDump(h.LinkList)
}
