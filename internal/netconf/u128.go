package netconf

import "net/netip"

// u128 is an address as a number, so that IPv4 and IPv6 subnets are computed
// by the same code. IPv4 addresses use the low 32 bits.
type u128 struct{ hi, lo uint64 }

var one = u128{lo: 1}

func fromAddr(a netip.Addr) u128 {
	if a.Is4() {
		b := a.As4()
		return u128{lo: uint64(b[0])<<24 | uint64(b[1])<<16 | uint64(b[2])<<8 | uint64(b[3])}
	}
	b := a.As16()
	var v u128
	for i := 0; i < 8; i++ {
		v.hi = v.hi<<8 | uint64(b[i])
		v.lo = v.lo<<8 | uint64(b[8+i])
	}
	return v
}

// toAddr converts back; bits is 32 for IPv4, 128 for IPv6.
func toAddr(bits int, v u128) netip.Addr {
	if bits == 32 {
		return netip.AddrFrom4([4]byte{byte(v.lo >> 24), byte(v.lo >> 16), byte(v.lo >> 8), byte(v.lo)})
	}
	var b [16]byte
	for i := 0; i < 8; i++ {
		b[7-i] = byte(v.hi >> (8 * i))
		b[15-i] = byte(v.lo >> (8 * i))
	}
	return netip.AddrFrom16(b)
}

func (a u128) add(b u128) u128 {
	lo := a.lo + b.lo
	hi := a.hi + b.hi
	if lo < a.lo {
		hi++
	}
	return u128{hi, lo}
}

func (a u128) sub(b u128) u128 {
	lo := a.lo - b.lo
	hi := a.hi - b.hi
	if a.lo < b.lo {
		hi--
	}
	return u128{hi, lo}
}

func (a u128) shl(n int) u128 {
	switch {
	case n <= 0:
		return a
	case n >= 128:
		return u128{}
	case n >= 64:
		return u128{hi: a.lo << (n - 64)}
	}
	return u128{hi: a.hi<<n | a.lo>>(64-n), lo: a.lo << n}
}

func (a u128) shr(n int) u128 {
	switch {
	case n <= 0:
		return a
	case n >= 128:
		return u128{}
	case n >= 64:
		return u128{lo: a.hi >> (n - 64)}
	}
	return u128{hi: a.hi >> n, lo: a.lo>>n | a.hi<<(64-n)}
}

// int saturates at max.
func (a u128) int(max int) int {
	if a.hi != 0 || a.lo > uint64(max) {
		return max
	}
	return int(a.lo)
}
