package dataplane

// The IPv6 side of host-gw in a dual-stack network: per peer
//
//	<peer v6 subnet> via <peer PublicIPv6> dev <iface> metric 1024 proto 87
//
// with the same rule as IPv4: a peer whose PublicIPv6 is not on a subnet
// connected to the interface is reported (ErrPeerUnreachable) and every
// other peer is still programmed.

import (
	"context"
	"log/slog"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netconf"
	"github.com/weft-net/weft/internal/rtnl"
)

type hostGW6Backend struct{ hostGWRoutes }

var hostGW6 = hostGWFamily{
	family: unix.AF_INET6,
	label:  "host-gw IPv6",
	what:   "host-gw IPv6 apply",
	metric: v6Metric,
	own:    func(snap lease.Snapshot) netip.Prefix { return snap.Own.IPv6Subnet.Masked() },
	peer: func(p *lease.Lease, own netip.Prefix, host Host) (netip.Prefix, netip.Addr, bool, error) {
		skip, err := peer6(p, own, host)
		return p.IPv6Subnet.Masked(), p.Attrs.PublicIPv6, skip, err
	},
}

func newHostGW6(host Host, h *netlink.Handle, rt *rtnl.Conn, log *slog.Logger) *hostGW6Backend {
	return &hostGW6Backend{hostGWRoutes{fam: hostGW6, host: host, h: h, rt: rt, log: log, w: newWatcher(host.NetNS, log)}}
}

func (b *hostGW6Backend) Init(ctx context.Context) (Published, int, error) {
	host, err := resolveHost6(b.h, b.host)
	if err != nil {
		return Published{}, 0, err
	}
	b.host = host
	b.w.start(watchFilter{
		link: func(u netlink.LinkUpdate) bool { return u.Attrs().Index == b.host.IfaceIndex },
		route: func(u netlink.RouteUpdate) bool {
			// Ours removed, or an IPv6 connected route of the interface
			// (which decides which peers are reachable) changed.
			return b.drift(u) ||
				(u.Family == unix.AF_INET6 && u.LinkIndex == b.host.IfaceIndex && u.Gw == nil &&
					u.Protocol != rtnl.ProtWeft && u.Table == unix.RT_TABLE_MAIN)
		},
	})
	return Published{BackendType: netconf.BackendHostGW}, host.IfaceMTU, nil
}
