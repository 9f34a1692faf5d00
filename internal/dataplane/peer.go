package dataplane

// Which peer leases a backend can program on this host. Whether a lease is
// trustworthy at all — inside the network, the right subnet length, a
// host's unicast address, no clash with another host's claims — is judged
// in one place, internal/lease (Manager.distrust and the peer index), and
// such leases never reach a snapshot. What is left here is what only this
// host knows: its own subnet and addresses, and the address family a
// backend's family needs. The unicast rule is netconf.HostAddrProblem's in
// both places, so the two cannot drift apart; it is repeated here only so
// that a snapshot built by hand (tests, the doctor) is held to it too.

import (
	"fmt"
	"net/netip"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netconf"
)

// checkPeer rejects IPv4 peer leases that cannot be programmed on host,
// whatever the backend.
func checkPeer(p *lease.Lease, own netip.Prefix, host Host) error {
	pub := p.Attrs.PublicIP
	switch {
	case !p.Subnet.IsValid() || !p.Subnet.Addr().Is4():
		return fmt.Errorf("subnet %s: not an IPv4 subnet", p.Subnet)
	case p.Subnet.Masked() == own:
		return fmt.Errorf("subnet %s: is this host's own subnet", p.Subnet)
	case !pub.Is4() || netconf.HostAddrProblem(pub) != "":
		return fmt.Errorf("PublicIP %s: not an IPv4 unicast address", pub)
	case pub == host.PublicIP || pub == host.IfaceAddr:
		return fmt.Errorf("PublicIP %s: is this host's own address", pub)
	}
	return nil
}

// peer6 says whether a peer takes part in the IPv6 overlay: a lease without
// an IPv6 subnet (a host of an IPv4-only network, or one that has not
// upgraded) is silently left out (skip); one with an IPv6 subnet that cannot
// be programmed is an error naming what is wrong.
func peer6(p *lease.Lease, own netip.Prefix, host Host) (skip bool, err error) {
	if !p.IPv6Subnet.IsValid() {
		return true, nil
	}
	pub := p.Attrs.PublicIPv6
	switch {
	case !p.IPv6Subnet.Addr().Is6() || p.IPv6Subnet.Addr().Is4In6():
		return false, fmt.Errorf("IPv6 subnet %s: not an IPv6 subnet", p.IPv6Subnet)
	case p.IPv6Subnet.Masked() == own:
		return false, fmt.Errorf("IPv6 subnet %s: is this host's own subnet", p.IPv6Subnet)
	case !pub.Is6() || pub.Is4In6() || netconf.HostAddrProblem(pub) != "":
		return false, fmt.Errorf("PublicIPv6 %s: not an IPv6 unicast address", pub)
	case pub == host.PublicIP6 || pub == host.IfaceAddr6:
		return false, fmt.Errorf("PublicIPv6 %s: is this host's own address", pub)
	}
	return false, nil
}
