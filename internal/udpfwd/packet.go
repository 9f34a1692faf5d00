package udpfwd

import "encoding/binary"

// IPv4 header fields the engine reads or rewrites, by byte offset.
const (
	ipv4MinHeader = 20
	offTotalLen   = 2
	offFrag       = 6
	offTTL        = 8
	offProto      = 9
	offChecksum   = 10
	offSrc        = 12
	offDst        = 16

	protoICMP = 1

	icmpDestUnreach = 3
	codeNetUnreach  = 0
	codeFragNeeded  = 4

	flagDF = 0x4000

	// icmpErrorMax is the largest ICMP error the engine builds: outer IPv4
	// header, ICMP header, the offender's header (≤ 60) and 8 payload bytes.
	icmpErrorMax = ipv4MinHeader + 8 + 60 + 8
)

// checkIPv4 validates the header of pkt and returns its header length, or 0.
// The length field must match what was read: a short or padded packet would
// otherwise be forwarded with garbage.
func checkIPv4(pkt []byte) int { return checkIPv4Len(pkt, len(pkt)) }

// checkIPv4Len is checkIPv4 for a packet of n bytes whose first part (at
// least its IPv4 header) is head.
func checkIPv4Len(head []byte, n int) int {
	if len(head) < ipv4MinHeader || head[0]>>4 != 4 {
		return 0
	}
	hl := int(head[0]&0x0f) * 4
	if hl < ipv4MinHeader || hl > len(head) {
		return 0
	}
	if tl := int(binary.BigEndian.Uint16(head[offTotalLen:])); tl != n {
		return 0
	}
	return hl
}

// decTTL decrements the TTL of a valid IPv4 header in place and patches the
// header checksum incrementally (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m'),
// where m is the 16-bit word holding TTL and protocol). It reports false,
// leaving the packet unchanged, when the TTL would reach 0: the packet must be
// dropped, as a router would.
func decTTL(pkt []byte) bool {
	ttl := pkt[offTTL]
	if ttl <= 1 {
		return false
	}
	old := uint32(ttl)<<8 | uint32(pkt[offProto])
	pkt[offTTL] = ttl - 1
	nw := old - 0x100
	sum := uint32(^binary.BigEndian.Uint16(pkt[offChecksum:])) + (^old & 0xffff) + nw
	sum = (sum & 0xffff) + sum>>16
	sum = (sum & 0xffff) + sum>>16
	binary.BigEndian.PutUint16(pkt[offChecksum:], ^uint16(sum))
	return true
}

// checksum is the Internet checksum (RFC 1071) of b.
func checksum(b []byte) uint16 { return ^fold(sum(b, 0)) }

// sum adds b, as big-endian 16-bit words (an odd last byte padded with
// zero), to acc without folding. It adds 32-bit words: 2^16 ≡ 1 in
// ones'-complement arithmetic, so a 32-bit word counts as its two halves,
// and a 64 KiB packet's 16 K words cannot overflow the 64-bit sum. A part of
// a longer sum must start at an even offset of it.
func sum(b []byte, acc uint64) uint64 {
	for len(b) >= 32 {
		acc += uint64(binary.BigEndian.Uint32(b)) + uint64(binary.BigEndian.Uint32(b[4:])) +
			uint64(binary.BigEndian.Uint32(b[8:])) + uint64(binary.BigEndian.Uint32(b[12:])) +
			uint64(binary.BigEndian.Uint32(b[16:])) + uint64(binary.BigEndian.Uint32(b[20:])) +
			uint64(binary.BigEndian.Uint32(b[24:])) + uint64(binary.BigEndian.Uint32(b[28:]))
		b = b[32:]
	}
	for len(b) >= 4 {
		acc += uint64(binary.BigEndian.Uint32(b))
		b = b[4:]
	}
	if len(b) >= 2 {
		acc += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		acc += uint64(b[0]) << 8
	}
	return acc
}

// fold folds a sum to 16 bits (not complemented).
func fold(acc uint64) uint16 {
	for acc > 0xffff {
		acc = acc&0xffff + acc>>16
	}
	return uint16(acc)
}

// mayReplyICMP applies RFC 1122 3.2.2: no ICMP error about an ICMP error,
// about a non-first fragment, or to a source that is not a single host.
func mayReplyICMP(pkt []byte, hl int) bool {
	if binary.BigEndian.Uint16(pkt[offFrag:])&0x1fff != 0 {
		return false
	}
	src := pkt[offSrc]
	if src == 0 || src == 127 || src >= 224 {
		return false
	}
	if pkt[offProto] == protoICMP {
		if len(pkt) < hl+1 {
			return false
		}
		switch pkt[hl] { // error types: unreachable, quench, redirect, time exceeded, parameter problem
		case 3, 4, 5, 11, 12:
			return false
		}
	}
	return true
}

// buildICMPError writes into out an ICMP destination-unreachable error with
// code about offender (a valid IPv4 packet with header length hl) and returns
// its length, 0 if none may be sent. mtu is the next-hop MTU for
// code 4 (fragmentation needed).
//
// The error's source is the offender's destination, not flannel0's address:
// the engine hands the error to the kernel through the TUN device, and the
// kernel drops packets arriving with one of its own addresses as source
// (martian source). An address inside the overlay Network routes back through
// flannel0, so the error passes reverse-path filtering too.
func buildICMPError(out, offender []byte, hl int, code uint8, mtu uint16) int {
	if !mayReplyICMP(offender, hl) {
		return 0
	}
	quote := hl + 8
	if quote > len(offender) {
		quote = len(offender)
	}
	n := ipv4MinHeader + 8 + quote
	if len(out) < n {
		return 0
	}
	out = out[:n]
	clear(out[:ipv4MinHeader+8])
	out[0] = 0x45
	binary.BigEndian.PutUint16(out[offTotalLen:], uint16(n))
	out[offTTL] = 64
	out[offProto] = protoICMP
	copy(out[offSrc:offSrc+4], offender[offDst:offDst+4])
	copy(out[offDst:offDst+4], offender[offSrc:offSrc+4])
	binary.BigEndian.PutUint16(out[offChecksum:], checksum(out[:ipv4MinHeader]))
	icmp := out[ipv4MinHeader:]
	icmp[0] = icmpDestUnreach
	icmp[1] = code
	if code == codeFragNeeded {
		binary.BigEndian.PutUint16(icmp[6:], mtu)
	}
	copy(icmp[8:], offender[:quote])
	binary.BigEndian.PutUint16(icmp[2:], checksum(icmp))
	return n
}
