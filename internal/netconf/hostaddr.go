package netconf

import "net/netip"

// HostAddrProblem says what keeps a from being a host's public (underlay)
// address — this host's -public-ip/-public-ipv6 or a peer lease's PublicIP —
// or "" when nothing does. Peers send encapsulated traffic to that address,
// so it must name one host and be routed between hosts; a zone cannot travel
// in a lease. One rule for both sides, so that weftd never advertises what
// its peers would refuse.
func HostAddrProblem(a netip.Addr) string {
	switch {
	case a.Zone() != "":
		return "a zone (%" + a.Zone() + ")"
	case a.IsUnspecified():
		return "the unspecified address"
	case a.IsLoopback():
		return "a loopback address"
	case a.IsLinkLocalUnicast():
		return "a link-local address"
	case a.IsMulticast():
		return "a multicast address"
	case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "the broadcast address"
	}
	return ""
}
