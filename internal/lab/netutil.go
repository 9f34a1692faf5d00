package lab

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
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
	if err := h.AddrAdd(l, a); err != nil {
		return fmt.Errorf("add address %s to %s: %w", p, link, err)
	}
	return nil
}

// SubnetEnv is what the lab needs of a host's subnet.env.
type SubnetEnv struct {
	Network netip.Prefix // FLANNEL_NETWORK
	Subnet  netip.Prefix // FLANNEL_SUBNET, e.g. 172.30.19.1/24 (docker0's address)
	MTU     int          // FLANNEL_MTU
	IPMasq  bool         // FLANNEL_IPMASQ
}

// ReadSubnetEnv parses flannel's subnet.env format (KEY=VALUE lines).
func ReadSubnetEnv(path string) (SubnetEnv, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return SubnetEnv{}, err
	}
	return parseSubnetEnv(path, b)
}

func parseSubnetEnv(path string, b []byte) (SubnetEnv, error) {
	var env SubnetEnv
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return env, fmt.Errorf("%s: line %q: want KEY=VALUE", path, line)
		}
		var err error
		switch k {
		case "FLANNEL_NETWORK":
			env.Network, err = netip.ParsePrefix(v)
		case "FLANNEL_SUBNET":
			env.Subnet, err = netip.ParsePrefix(v)
		case "FLANNEL_MTU":
			env.MTU, err = strconv.Atoi(v)
		case "FLANNEL_IPMASQ":
			env.IPMasq, err = strconv.ParseBool(v)
		}
		if err != nil {
			return env, fmt.Errorf("%s: %s=%q: %w", path, k, v, err)
		}
		seen[k] = true
	}
	for _, k := range []string{"FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_MTU"} {
		if !seen[k] {
			return env, fmt.Errorf("%s: %s missing", path, k)
		}
	}
	if env.MTU < 68 || env.MTU > 65535 {
		return env, fmt.Errorf("%s: FLANNEL_MTU=%d: must be between 68 and 65535", path, env.MTU)
	}
	if !env.Subnet.Addr().Is4() {
		return env, fmt.Errorf("%s: FLANNEL_SUBNET=%s: the lab needs an IPv4 subnet", path, env.Subnet)
	}
	return env, nil
}
