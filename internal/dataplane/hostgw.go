package dataplane

// The host-gw backend: no encapsulation, one route per peer,
//
//	<peer subnet> via <peer PublicIP> dev <iface>
//	<peer v6 subnet> via <peer PublicIPv6> dev <iface> metric 1024   (dual stack)
//
// which only works when every peer is on this host's L2 segment. A peer that
// is not (no connected route on the interface covers its address) cannot be
// served by host-gw at all; it is reported by name, once, and every other
// peer is still programmed.

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netconf"
)

// ErrPeerUnreachable marks a peer host-gw cannot route to: its PublicIP is
// not on a subnet directly connected to the chosen interface.
var ErrPeerUnreachable = errors.New("peer is not directly reachable (host-gw needs every host on one L2 segment)")

// hostGWSpec is the host-gw backend's desired state for family.
func hostGWSpec(host Host, family uint8) spec {
	s := spec{
		family: family, label: netconf.BackendHostGW, blackhole: host.BlackholeRoute, usesConnected: true,
		own: func(snap lease.Snapshot) netip.Prefix { return snap.Own.Subnet.Masked() },
	}
	metric := 0
	if family == unix.AF_INET6 {
		s.label, metric = "host-gw IPv6", v6Metric
		s.own = func(snap lease.Snapshot) netip.Prefix { return snap.Own.IPv6Subnet.Masked() }
	}
	s.peer = func(p *lease.Lease, own netip.Prefix, f Facts) (PeerEntries, bool, string) {
		sub, gw := p.Subnet.Masked(), p.Attrs.PublicIP
		if family == unix.AF_INET6 {
			skip, err := peer6(p, own, host)
			if skip {
				return PeerEntries{}, true, ""
			}
			if err != nil {
				return PeerEntries{}, false, err.Error()
			}
			sub, gw = p.IPv6Subnet.Masked(), p.Attrs.PublicIPv6
		} else if err := checkPeer(p, own, host); err != nil {
			return PeerEntries{}, false, err.Error()
		}
		if !strings.EqualFold(p.Attrs.BackendType, netconf.BackendHostGW) {
			return PeerEntries{}, false, fmt.Sprintf("backend type %q, want host-gw", p.Attrs.BackendType)
		}
		e := PeerEntries{Route: Route{Dst: sub, Gw: gw, Link: host.IfaceIndex, Metric: metric}}
		if !coveredBy(f.Connected, gw) {
			e.Unreachable = true
			return e, false, fmt.Sprintf("%s peer %s at %s via %s: %v", s.label, sub, gw, host.IfaceName, ErrPeerUnreachable)
		}
		return e, false, ""
	}
	return s
}

// hostGWSpecs is the host-gw backend's desired state per family.
func hostGWSpecs(cfg netconf.Config, host Host) ([]spec, error) {
	var out []spec
	for _, fam := range families(cfg) {
		out = append(out, hostGWSpec(host, fam))
	}
	return out, nil
}

// setupHostGW adds the route-only drivers: host-gw has no device.
func setupHostGW(b *backend, specs []spec) (Published, int, error) {
	for _, s := range specs {
		log := b.log
		if s.family == unix.AF_INET6 {
			log = log.With("family", "ipv6")
		}
		b.add(s, nil, log)
	}
	return Published{BackendType: netconf.BackendHostGW}, b.host.IfaceMTU, nil
}
