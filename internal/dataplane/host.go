package dataplane

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
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

	// VtepMAC and VtepMAC6 are the MACs a vxlan device weft must create
	// takes (flannel.<VNI>, flannel-v6.<VNI>): what the lease already
	// publishes, so that a backend rebuilt after the underlay NIC was
	// recreated (which deletes the device with it) keeps the lease's MAC
	// and peers' FDB entries stay right. nil: the kernel picks one. An
	// existing compatible device keeps its own.
	VtepMAC, VtepMAC6 net.HardwareAddr

	// BlackholeRoute installs a blackhole route for the own subnet
	// (-ip-blackhole-route), so that traffic for a container that does not
	// exist is dropped here instead of leaking out of the default route.
	BlackholeRoute bool

	// NetNS is the namespace the netlink handle is bound to; the backend
	// subscribes to kernel events there. nil = the current namespace.
	NetNS *netns.NsHandle
}

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
