package netconf

import (
	"fmt"
	"math"
	"net/netip"
	"strings"
)

// SubnetCount is the number of leasable IPv4 subnets in [SubnetMin,
// SubnetMax]; 0 when IPv4 is off.
func (c Config) SubnetCount() int {
	if !c.EnableIPv4 {
		return 0
	}
	return count(32, c.SubnetLen, c.SubnetMin, c.SubnetMax)
}

// SubnetAt is the i-th leasable IPv4 subnet counting from SubnetMin (0 is
// SubnetMin itself). It returns the zero Prefix when i is out of range.
func (c Config) SubnetAt(i int) netip.Prefix {
	if i < 0 || i >= c.SubnetCount() {
		return netip.Prefix{}
	}
	return at(32, c.SubnetLen, c.SubnetMin, i)
}

// Contains reports whether p is a leasable IPv4 subnet: an IPv4 prefix of
// SubnetLen bits, on its boundary, within [SubnetMin, SubnetMax].
func (c Config) Contains(p netip.Prefix) bool {
	return c.EnableIPv4 && p.Addr().Is4() && contains(c.SubnetLen, c.SubnetMin, c.SubnetMax, p)
}

// IPv6SubnetCount is the number of leasable IPv6 subnets, saturated at
// math.MaxInt; 0 when IPv6 is off.
func (c Config) IPv6SubnetCount() int {
	if !c.EnableIPv6 {
		return 0
	}
	return count(128, c.IPv6SubnetLen, c.IPv6SubnetMin, c.IPv6SubnetMax)
}

// IPv6SubnetAt is the i-th leasable IPv6 subnet counting from IPv6SubnetMin.
func (c Config) IPv6SubnetAt(i int) netip.Prefix {
	if i < 0 || i >= c.IPv6SubnetCount() {
		return netip.Prefix{}
	}
	return at(128, c.IPv6SubnetLen, c.IPv6SubnetMin, i)
}

// ContainsIPv6 is Contains for the IPv6 half.
func (c Config) ContainsIPv6(p netip.Prefix) bool {
	return c.EnableIPv6 && p.Addr().Is6() && !p.Addr().Is4In6() &&
		contains(c.IPv6SubnetLen, c.IPv6SubnetMin, c.IPv6SubnetMax, p)
}

func count(bits, subnetLen int, min, max netip.Prefix) int {
	if !min.IsValid() || !max.IsValid() || min.Addr().Compare(max.Addr()) > 0 {
		return 0
	}
	n := fromAddr(max.Addr()).sub(fromAddr(min.Addr())).shr(bits - subnetLen)
	if n.int(math.MaxInt) == math.MaxInt {
		return math.MaxInt
	}
	return n.int(math.MaxInt) + 1
}

func at(bits, subnetLen int, min netip.Prefix, i int) netip.Prefix {
	off := u128{lo: uint64(i)}.shl(bits - subnetLen)
	return netip.PrefixFrom(toAddr(bits, fromAddr(min.Addr()).add(off)), subnetLen)
}

func contains(subnetLen int, min, max, p netip.Prefix) bool {
	return p.IsValid() && p.Bits() == subnetLen && p.Masked() == p &&
		p.Addr().Compare(min.Addr()) >= 0 && p.Addr().Compare(max.Addr()) <= 0
}

// Validate checks the invariants Parse guarantees, for a Config built some
// other way (by hand in a test, or changed after parsing).
func (c Config) Validate() error {
	if !c.EnableIPv4 && !c.EnableIPv6 {
		return &Error{Key: "EnableIPv4", Value: "false", Rule: "at least one of EnableIPv4 and EnableIPv6 must be true"}
	}
	if c.EnableIPv4 {
		if err := ipv4.validate(c.Network, c.SubnetLen, c.SubnetMin, c.SubnetMax); err != nil {
			return err
		}
	}
	if c.EnableIPv6 {
		if err := ipv6.validate(c.IPv6Network, c.IPv6SubnetLen, c.IPv6SubnetMin, c.IPv6SubnetMax); err != nil {
			return err
		}
	}
	known := false
	for _, k := range KnownBackends {
		known = known || c.BackendType == k
	}
	if !known {
		return &Error{Key: "Backend.Type", Value: fmt.Sprintf("%q", c.BackendType),
			Rule: "unknown backend (known: " + strings.Join(KnownBackends, ", ") + ")"}
	}
	if err := checkSupported(c.BackendType); err != nil {
		return err
	}
	_, err := c.backendOptions()
	return err
}

func (f family) validate(network netip.Prefix, subnetLen int, min, max netip.Prefix) error {
	netKey, lenKey := f.keyPrefix+"Network", f.keyPrefix+"SubnetLen"
	minKey, maxKey := f.keyPrefix+"SubnetMin", f.keyPrefix+"SubnetMax"
	if !network.IsValid() || !f.is(network.Addr()) {
		return &Error{Key: netKey, Value: fmt.Sprintf("%q", network.String()), Rule: "not an " + f.name + " CIDR"}
	}
	if network.Masked() != network {
		return &Error{Key: netKey, Value: network.String(), Rule: "host bits set"}
	}
	if err := f.usable(netKey, network); err != nil {
		return err
	}
	if subnetLen > f.maxLen {
		return &Error{Key: lenKey, Value: fmt.Sprint(subnetLen), Rule: fmt.Sprintf("must be at most %d", f.maxLen)}
	}
	if subnetLen < network.Bits()+2 {
		return &Error{Key: lenKey, Value: fmt.Sprint(subnetLen),
			Rule: fmt.Sprintf("must be at least %s prefix + 2 (/%d → %d)", netKey, network.Bits(), network.Bits()+2)}
	}
	for _, b := range []struct {
		key string
		p   netip.Prefix
	}{{minKey, min}, {maxKey, max}} {
		switch {
		case !b.p.IsValid() || !f.is(b.p.Addr()):
			return &Error{Key: b.key, Value: fmt.Sprintf("%q", b.p.String()), Rule: "not an " + f.name + " subnet"}
		case b.p.Bits() != subnetLen:
			return &Error{Key: b.key, Value: b.p.String(), Rule: fmt.Sprintf("prefix length must be the subnet length %d", subnetLen)}
		case !network.Contains(b.p.Addr()):
			return &Error{Key: b.key, Value: b.p.Addr().String(), Rule: fmt.Sprintf("outside %s %s", netKey, network)}
		case b.p.Masked() != b.p:
			return &Error{Key: b.key, Value: b.p.Addr().String(), Rule: fmt.Sprintf("not on a /%d boundary", subnetLen)}
		}
	}
	if min.Addr().Compare(max.Addr()) > 0 {
		return &Error{Key: minKey, Value: fmt.Sprintf("%s > %s %s", min.Addr(), maxKey, max.Addr()),
			Rule: minKey + " must not be greater than " + maxKey}
	}
	return nil
}
