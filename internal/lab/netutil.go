package lab

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/dockeropts"
	"github.com/weft-net/weft/internal/rtnl"
	"github.com/weft-net/weft/internal/subnetenv"
)

// addBridge creates an up bridge with an optional MTU (0 = kernel default)
// and address.
func addBridge(h *netlink.Handle, name string, mtu int, addr netip.Prefix) error {
	la := netlink.NewLinkAttrs()
	la.Name = name
	if mtu > 0 {
		la.MTU = mtu
	}
	if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: la}); err != nil {
		return fmt.Errorf("add bridge %s: %w", name, err)
	}
	link, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find bridge %s: %w", name, err)
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("set bridge %s up: %w", name, err)
	}
	if addr.IsValid() {
		return addAddr(h, name, addr)
	}
	return nil
}

func setMaster(h *netlink.Handle, port, bridge string) error {
	p, err := h.LinkByName(port)
	if err != nil {
		return fmt.Errorf("find %s: %w", port, err)
	}
	b, err := h.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("find bridge %s: %w", bridge, err)
	}
	if err := h.LinkSetMasterByIndex(p, b.Attrs().Index); err != nil {
		return fmt.Errorf("attach %s to bridge %s: %w", port, bridge, err)
	}
	return nil
}

func addAddr(h *netlink.Handle, link string, p netip.Prefix) error {
	l, err := h.LinkByName(link)
	if err != nil {
		return fmt.Errorf("find %s: %w", link, err)
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD // usable at once: the lab's addresses are unique by construction
	}
	if err := h.AddrAdd(l, a); err != nil {
		return fmt.Errorf("add address %s to %s: %w", p, link, err)
	}
	return nil
}

// SubnetEnv is the content of a host's subnet.env.
type SubnetEnv = subnetenv.Env

// ReadSubnetEnv reads a host's subnet.env and checks what the lab relies
// on: an IPv4 FLANNEL_SUBNET and a usable FLANNEL_MTU.
func ReadSubnetEnv(path string) (SubnetEnv, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return SubnetEnv{}, err
	}
	return parseSubnetEnv(path, b)
}

func parseSubnetEnv(path string, b []byte) (SubnetEnv, error) {
	env, err := subnetenv.Parse(b)
	if err != nil {
		return env, fmt.Errorf("%s: %w", path, err)
	}
	if !env.Subnet.IsValid() {
		return env, fmt.Errorf("%s: no FLANNEL_SUBNET: the lab needs an IPv4 subnet", path)
	}
	if env.MTU < 68 {
		return env, fmt.Errorf("%s: FLANNEL_MTU=%d: must be at least 68", path, env.MTU)
	}
	return env, nil
}

// dockerOpts is what dockerd would take from the ops note's
// /run/flannel/docker: --bip and --mtu.
type dockerOpts struct {
	BIP netip.Prefix
	MTU int
}

// writeDockerOpts does the ops note's ExecStartPost
// (mk-docker-opts.sh -k DOCKER_NETWORK_OPTIONS -d <dir>/docker) and reads
// back DOCKER_NETWORK_OPTIONS, as `dockerd $DOCKER_NETWORK_OPTIONS` would.
func writeDockerOpts(subnetFile, outFile string) (dockerOpts, error) {
	o := dockeropts.Defaults()
	o.SubnetFile, o.OutFile, o.Key = subnetFile, outFile, "DOCKER_NETWORK_OPTIONS"
	o.Individual, o.Combined = true, true
	noEnv := func(string) (string, bool) { return "", false }
	if err := dockeropts.Run(o, noEnv); err != nil {
		return dockerOpts{}, fmt.Errorf("docker options from %s: %w", subnetFile, err)
	}
	b, err := os.ReadFile(outFile)
	if err != nil {
		return dockerOpts{}, err
	}
	vars, err := subnetenv.ParseVars(b)
	if err != nil {
		return dockerOpts{}, fmt.Errorf("%s: %w", outFile, err)
	}
	var d dockerOpts
	for _, v := range vars {
		if v.Name != o.Key {
			continue
		}
		for _, f := range strings.Fields(v.Value) {
			k, val, _ := strings.Cut(f, "=")
			switch k {
			case "--bip":
				d.BIP, err = netip.ParsePrefix(val)
			case "--mtu":
				d.MTU, err = strconv.Atoi(val)
			}
			if err != nil {
				return d, fmt.Errorf("%s: %s %q: %w", outFile, o.Key, f, err)
			}
		}
	}
	if !d.BIP.IsValid() || !d.BIP.Addr().Is4() || d.MTU < 68 {
		return d, fmt.Errorf("%s: %s lacks a usable --bip and --mtu", outFile, o.Key)
	}
	return d, nil
}

// enableIPv6 turns IPv6 on in a namespace (some machines default it off in
// new namespaces) and, for a host, IPv6 forwarding. Call it before the
// namespace's links exist: they must come up without duplicate address
// detection. A router solicits a neighbour for a forwarded packet from its
// link-local address, and while that is still tentative (a second or more
// after the link comes up) nobody answers: a lab host that just started
// would drop its first second of forwarded IPv6 traffic, which real hosts,
// up long before, never do.
func enableIPv6(ns *rtnl.NS, forward bool) error {
	settings := [][2]string{
		{"/proc/sys/net/ipv6/conf/all/disable_ipv6", "0"},
		{"/proc/sys/net/ipv6/conf/default/disable_ipv6", "0"},
		{"/proc/sys/net/ipv6/conf/all/accept_dad", "0"},
		{"/proc/sys/net/ipv6/conf/default/accept_dad", "0"},
	}
	if forward {
		settings = append(settings, [2]string{"/proc/sys/net/ipv6/conf/all/forwarding", "1"})
	}
	return ns.Do(func() error {
		for _, s := range settings {
			if err := os.WriteFile(s[0], []byte(s[1]+"\n"), 0o644); err != nil {
				return fmt.Errorf("enable IPv6 in %s: %w", ns.Name, err)
			}
		}
		return nil
	})
}
