package rules

import (
	"net/netip"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// family is one address family's side of the rules. Both families have the
// same objects under the same names — chains FLANNEL-POSTRTG/FLANNEL-FWD in
// the ip (iptables) or ip6 (ip6tables) nat/filter tables, table weft of
// family ip or ip6 — as flanneld writes them for a dual-stack network.
type family struct {
	name         string // nft family keyword, "ip" or "ip6"
	tf           nftables.TableFamily
	proto        byte   // NFPROTO_* of the raw dumps
	iptables     string // the iptables command of this family, for messages
	saddr, daddr uint32 // offsets of the addresses in the network header
	alen         uint32 // address length in bytes
	multicast    netip.Prefix
}

var (
	ipv4 = &family{
		name: "ip", tf: nftables.TableFamilyIPv4, proto: unix.NFPROTO_IPV4, iptables: "iptables",
		saddr: 12, daddr: 16, alen: 4, multicast: netip.MustParsePrefix(multicast),
	}
	ipv6 = &family{
		name: "ip6", tf: nftables.TableFamilyIPv6, proto: unix.NFPROTO_IPV6, iptables: "ip6tables",
		saddr: 8, daddr: 24, alen: 16, multicast: netip.MustParsePrefix(multicast6),
	}
	// families indexes state.fam.
	families = [2]*family{ipv4, ipv6}
)

// nets returns d's overlay and lease prefixes for f; ok is false when d
// wants no rules of f (a network without IPv6).
func (d Desired) nets(f *family) (network, subnet netip.Prefix, ok bool) {
	if f == ipv6 {
		return d.IPv6Network, d.IPv6Subnet, d.IPv6Network.IsValid()
	}
	return d.Network, d.Subnet, d.Network.IsValid()
}
