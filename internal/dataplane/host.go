package dataplane

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/weft-net/weft/internal/netconf"
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
// The backend programs the kernel only through h; the handle stays the
// caller's (Close does not close it).
func NewBackend(cfg netconf.Config, host Host, h *netlink.Handle, log *slog.Logger) (Backend, error) {
	if h == nil {
		return nil, fmt.Errorf("dataplane: new %q backend: nil netlink handle", cfg.BackendType)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	switch strings.ToLower(cfg.BackendType) {
	case "vxlan", "":
		opts, err := decodeVXLANOptions(cfg.Backend)
		if err != nil {
			return nil, err
		}
		return newVXLAN(opts, host, h, log.With("backend", "vxlan")), nil
	case "host-gw":
		return newHostGW(host, h, log.With("backend", "host-gw")), nil
	case "alloc":
		return newAlloc(host, h), nil
	case "udp":
		return newUDP(cfg, host, h, log.With("backend", "udp"))
	case "ipip", "wireguard":
		return nil, fmt.Errorf("dataplane: backend type %q is not yet supported by weft (supported: vxlan, host-gw, udp, alloc)", cfg.BackendType)
	default:
		return nil, fmt.Errorf("dataplane: unknown backend type %q (supported: vxlan, host-gw, udp, alloc)", cfg.BackendType)
	}
}

// VXLANOptions are the vxlan backend's keys in the config's Backend object.
type VXLANOptions struct {
	VNI           int  // default 1
	Port          int  // UDP destination port; 0 = the kernel default 8472
	GBP           bool // VXLAN group based policy extension
	Learning      bool // let the kernel learn FDB entries (off: weft programs them)
	DirectRouting bool // plain route via the peer's address when it is on the same L2 segment
	MTU           int  // 0 = underlay MTU − 50
}

// decodeVXLANOptions reads the vxlan options from the raw Backend object
// (keys matched case-insensitively, like encoding/json does for flannel).
func decodeVXLANOptions(raw json.RawMessage) (VXLANOptions, error) {
	var o VXLANOptions
	if len(raw) > 0 {
		var in struct {
			VNI           *int
			Port          *int
			GBP           *bool
			Learning      *bool
			DirectRouting *bool
			MTU           *int
		}
		if err := json.Unmarshal(raw, &in); err != nil {
			return o, fmt.Errorf("dataplane: decode vxlan Backend options %s: %w", raw, err)
		}
		if in.VNI != nil {
			o.VNI = *in.VNI
		}
		if in.Port != nil {
			o.Port = *in.Port
		}
		if in.GBP != nil {
			o.GBP = *in.GBP
		}
		if in.Learning != nil {
			o.Learning = *in.Learning
		}
		if in.DirectRouting != nil {
			o.DirectRouting = *in.DirectRouting
		}
		if in.MTU != nil {
			o.MTU = *in.MTU
		}
	}
	if o.VNI == 0 {
		o.VNI = 1
	}
	switch {
	case o.VNI < 0 || o.VNI > 1<<24-1:
		return o, fmt.Errorf("dataplane: vxlan Backend.VNI %d: must be in 1..16777215", o.VNI)
	case o.Port < 0 || o.Port > 65535:
		return o, fmt.Errorf("dataplane: vxlan Backend.Port %d: must be in 0..65535 (0 = kernel default 8472)", o.Port)
	case o.MTU != 0 && (o.MTU < 68 || o.MTU > 65535):
		return o, fmt.Errorf("dataplane: vxlan Backend.MTU %d: must be 0 (underlay − 50) or in 68..65535", o.MTU)
	}
	return o, nil
}

// resolveHost fills in what the caller left zero, from the kernel.
func resolveHost(h *netlink.Handle, host Host) (Host, netlink.Link, error) {
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
	host.IfaceIndex = attrs.Index
	host.IfaceName = attrs.Name
	if host.IfaceMTU == 0 {
		host.IfaceMTU = attrs.MTU
	}
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
