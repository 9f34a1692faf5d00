package dockeropts

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/rtnl"
)

// LocalBridges are the bridges the lease may already be routed to: Docker's
// own (a restart of Docker with the same --bip) and the CNI bridge plugin's.
var LocalBridges = []string{"docker0", "cni0"}

// ErrRouteConflict is returned when the kernel already routes the subnet
// elsewhere than a local bridge.
var ErrRouteConflict = errors.New("subnet already routed elsewhere")

// CheckRoutes is the docker0 conflict guard: before telling Docker to put
// subnet on its bridge, make sure the kernel does not already send subnet
// (or a part of it) somewhere else — typically a stale overlay route left
// from when another host held the lease, or a VPN/IDC route. Docker would
// start, but its containers would be unreachable. Less specific routes (the
// default route, the Network's /16) do not conflict: the bridge's connected
// route is more specific and wins. h reads one namespace; nil = the current.
func CheckRoutes(h *netlink.Handle, subnet netip.Prefix) error {
	if h == nil {
		var err error
		if h, err = netlink.NewHandle(); err != nil {
			return fmt.Errorf("netlink handle in the current network namespace: %w", err)
		}
		defer h.Close()
	}
	subnet = subnet.Masked()
	routes, err := rtnl.RetryDump(func() ([]netlink.Route, error) {
		return h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return fmt.Errorf("list IPv4 routes to check %s: %w", subnet, err)
	}
	for _, r := range routes {
		if r.Dst == nil {
			continue // default route
		}
		a, _ := netip.AddrFromSlice(r.Dst.IP)
		ones, _ := r.Dst.Mask.Size()
		dst := netip.PrefixFrom(a.Unmap(), ones)
		if dst.Bits() < subnet.Bits() || !subnet.Overlaps(dst) {
			continue
		}
		if r.Type == unix.RTN_BLACKHOLE && r.Protocol == rtnl.ProtWeft {
			continue // weftd's -ip-blackhole-route for this very subnet
		}
		dev := ""
		if r.LinkIndex != 0 {
			if l, err := h.LinkByIndex(r.LinkIndex); err == nil {
				dev = l.Attrs().Name
			} else {
				dev = fmt.Sprintf("#%d", r.LinkIndex)
			}
		}
		if slices.Contains(LocalBridges, dev) {
			continue
		}
		desc := dst.String()
		if r.Type == unix.RTN_BLACKHOLE {
			desc = "blackhole " + desc
		}
		if r.Gw != nil {
			desc += " via " + r.Gw.String()
		}
		if dev != "" {
			desc += " dev " + dev
		}
		desc += fmt.Sprintf(" proto %s", r.Protocol)
		return fmt.Errorf("%w: subnet %s for docker0 is already routed by the kernel: %q; remove it (ip route del %s) or find who holds %s (weftctl leases list) before starting Docker",
			ErrRouteConflict, subnet, desc, dst, subnet)
	}
	return nil
}
