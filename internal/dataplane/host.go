package dataplane

import (
	"fmt"
	"log/slog"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/weft-net/weft/internal/netconf"
	"github.com/weft-net/weft/internal/rtnl"
)

// Host is what a backend needs to know about the machine it programs: the
// interface chosen for inter-host traffic (-iface) and the address published
// in the lease.
type Host struct {
	IfaceName  string     // underlay interface, e.g. eth0
	IfaceIndex int        // its index; 0 = look it up by name
	IfaceMTU   int        // its MTU; 0 = read it from the kernel
	IfaceAddr  netip.Addr // its IPv4 address: the vxlan device's local address; zero = first global IPv4 on it
	PublicIP   netip.Addr // the address other hosts send to (lease PublicIP); zero = IfaceAddr

	// Only a dual-stack network (EnableIPv6) uses these two.
	IfaceAddr6 netip.Addr // the interface's global IPv6 address: flannel-v6.<VNI>'s local address; zero = first usable one on it
	PublicIP6  netip.Addr // lease PublicIPv6; zero = IfaceAddr6

	// BlackholeRoute installs a blackhole route for the own subnet
	// (-ip-blackhole-route), so that traffic for a container that does not
	// exist is dropped here instead of leaking out of the default route.
	BlackholeRoute bool

	// NetNS is the namespace the netlink handle is bound to; the backend
	// subscribes to kernel events there. nil = the current namespace.
	NetNS *netns.NsHandle
}

// NewBackend builds the backend named by cfg.BackendType. Backends are wired
// here explicitly rather than registered from init() by blank imports, so the
// set of data paths a binary carries is visible in one place.
//
// The backend programs the kernel through h and through one rtnetlink socket
// of its own (dumps and batched writes), opened here in host.NetNS, which
// must be the namespace h works in. Close closes that socket; h stays the
// caller's (Close does not close it).
func NewBackend(cfg netconf.Config, host Host, h *netlink.Handle, log *slog.Logger) (Backend, error) {
	if h == nil {
		return nil, fmt.Errorf("dataplane: new %q backend: nil netlink handle", cfg.BackendType)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg.BackendType = strings.ToLower(cfg.BackendType) // as netconf.Parse leaves it
	if cfg.EnableIPv6 {
		return newDualStack(cfg, host, h, log)
	}
	switch cfg.BackendType {
	case netconf.BackendVXLAN, "":
		opts, err := cfg.VXLAN()
		if err != nil {
			return nil, fmt.Errorf("dataplane: vxlan options: %w", err)
		}
		rt, err := openBackendRTNL(cfg.BackendType, host)
		if err != nil {
			return nil, err
		}
		return newVXLAN(opts, host, h, rt, log.With("backend", netconf.BackendVXLAN)), nil
	case netconf.BackendHostGW:
		rt, err := openBackendRTNL(cfg.BackendType, host)
		if err != nil {
			return nil, err
		}
		return newHostGW(host, h, rt, log.With("backend", netconf.BackendHostGW)), nil
	case netconf.BackendAlloc:
		return newAlloc(host, h), nil // no data path: no socket
	case netconf.BackendUDP:
		rt, err := openBackendRTNL(cfg.BackendType, host)
		if err != nil {
			return nil, err
		}
		b, err := newUDP(cfg, host, h, rt, log.With("backend", netconf.BackendUDP))
		if err != nil {
			rt.Close()
			return nil, err
		}
		return b, nil
	case netconf.BackendIPIP, netconf.BackendWireGuard:
		return nil, fmt.Errorf("dataplane: backend type %q is not yet supported by weft (supported: vxlan, host-gw, udp, alloc)", cfg.BackendType)
	default:
		return nil, fmt.Errorf("dataplane: unknown backend type %q (supported: vxlan, host-gw, udp, alloc)", cfg.BackendType)
	}
}

// openBackendRTNL opens the rtnetlink socket of a typ backend in host.NetNS.
func openBackendRTNL(typ string, host Host) (*rtnl.Conn, error) {
	rt, err := rtnl.Open(host.NetNS)
	if err != nil {
		return nil, fmt.Errorf("dataplane: new %q backend: %w", typ, err)
	}
	return rt, nil
}

// VXLANOptions are the vxlan backend's keys in the config's Backend object;
// netconf owns their decoding, defaults and validation.
type VXLANOptions = netconf.VXLANOptions

// findUnderlay looks up the underlay interface (by index, else by name) and
// fills in its index, name and, unless the caller set it, MTU.
func findUnderlay(h *netlink.Handle, host Host) (Host, netlink.Link, error) {
	var (
		link netlink.Link
		err  error
	)
	if host.IfaceIndex != 0 {
		link, err = h.LinkByIndex(host.IfaceIndex)
	} else {
		link, err = h.LinkByName(host.IfaceName)
	}
	if err != nil {
		return host, nil, fmt.Errorf("dataplane: find underlay interface %q (index %d): %w", host.IfaceName, host.IfaceIndex, err)
	}
	attrs := link.Attrs()
	host.IfaceIndex, host.IfaceName = attrs.Index, attrs.Name
	if host.IfaceMTU == 0 {
		host.IfaceMTU = attrs.MTU
	}
	return host, link, nil
}

// resolveHost fills in what the caller left zero, from the kernel.
func resolveHost(h *netlink.Handle, host Host) (Host, netlink.Link, error) {
	host, link, err := findUnderlay(h, host)
	if err != nil {
		return host, nil, err
	}
	attrs := link.Attrs()
	if !host.IfaceAddr.IsValid() {
		addrs, err := h.AddrList(link, netlink.FAMILY_V4)
		if err != nil {
			return host, nil, fmt.Errorf("dataplane: list addresses of %s: %w", attrs.Name, err)
		}
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok && ip.IsGlobalUnicast() {
				host.IfaceAddr = ip
				break
			}
		}
		if !host.IfaceAddr.IsValid() {
			return host, nil, fmt.Errorf("dataplane: underlay interface %s has no global IPv4 address", attrs.Name)
		}
	}
	if !host.PublicIP.IsValid() {
		host.PublicIP = host.IfaceAddr
	}
	return host, link, nil
}
