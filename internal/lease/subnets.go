package lease

import (
	"math"
	"math/big"
	"net/netip"

	"github.com/weft-net/weft/internal/netconf"
)

// subnetRange is the leasable range [Min, Max] of one address family, as
// read from a netconf.Config. It is private so that the lease package does
// not depend on when netconf grows its own helpers; the rules are COMPAT.md's.
type subnetRange struct {
	network  netip.Prefix
	bits     int // subnet prefix length
	min, max netip.Prefix
}

func v4Range(c netconf.Config) subnetRange {
	return subnetRange{network: c.Network, bits: c.SubnetLen, min: c.SubnetMin, max: c.SubnetMax}
}

func v6Range(c netconf.Config) subnetRange {
	return subnetRange{network: c.IPv6Network, bits: c.IPv6SubnetLen, min: c.IPv6SubnetMin, max: c.IPv6SubnetMax}
}

// fits reports whether p is a subnet of the network with the configured
// length. Reservations may lie outside [Min, Max] (operators reserve outside
// the random pool on purpose), so this is the test for reuse of a lease.
func (r subnetRange) fits(p netip.Prefix) bool {
	return p.IsValid() && r.network.IsValid() && p.Bits() == r.bits && p.Masked() == p &&
		r.network.Contains(p.Addr()) && p.Addr().Is4() == r.network.Addr().Is4()
}

// inPool reports whether p fits and lies in [Min, Max]: where a new lease may
// be created.
func (r subnetRange) inPool(p netip.Prefix) bool {
	return r.fits(p) && p.Addr().Compare(r.min.Addr()) >= 0 && p.Addr().Compare(r.max.Addr()) <= 0
}

func (r subnetRange) hostBits() uint { return uint(r.network.Addr().BitLen() - r.bits) }

// count is the number of subnets in [Min, Max], capped at MaxInt64 for huge
// IPv6 ranges (the caller only needs "more than the leases that exist").
func (r subnetRange) count() int64 {
	if !r.min.IsValid() || !r.max.IsValid() {
		return 0
	}
	d := new(big.Int).Sub(addrInt(r.max.Addr()), addrInt(r.min.Addr()))
	d.Rsh(d, r.hostBits())
	d.Add(d, big.NewInt(1))
	if d.Sign() <= 0 {
		return 0
	}
	if !d.IsInt64() {
		return math.MaxInt64
	}
	return d.Int64()
}

// at returns the i-th subnet of [Min, Max].
func (r subnetRange) at(i int64) netip.Prefix {
	n := new(big.Int).Lsh(big.NewInt(i), r.hostBits())
	n.Add(n, addrInt(r.min.Addr()))
	return netip.PrefixFrom(intAddr(n, r.min.Addr().Is4()), r.bits)
}

// String names the range in errors and logs: "172.30.1.0/24–172.30.255.0/24".
func (r subnetRange) String() string { return r.min.String() + "–" + r.max.String() }

func addrInt(a netip.Addr) *big.Int {
	b := a.AsSlice()
	return new(big.Int).SetBytes(b)
}

func intAddr(n *big.Int, four bool) netip.Addr {
	size := 16
	if four {
		size = 4
	}
	buf := make([]byte, size)
	n.FillBytes(buf)
	a, _ := netip.AddrFromSlice(buf)
	return a
}
