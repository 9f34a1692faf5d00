package udpfwd

import (
	"encoding/binary"
	"testing"
)

// FuzzPacket feeds arbitrary datagrams (what any host on the underlay can
// send to port 8285) through the engine's per-packet steps: validation, TTL
// decrement and ICMP error construction must never panic, never read past
// the packet, and keep the header checksum valid.
func FuzzPacket(f *testing.F) {
	ping := []byte{0x45, 0, 0, 28, 0, 1, 0x40, 0, 64, 1, 0, 0, 172, 30, 1, 2, 172, 30, 2, 2, 8, 0, 0, 0, 0, 1, 0, 1}
	binary.BigEndian.PutUint16(ping[offChecksum:], checksum(ping[:ipv4MinHeader]))
	f.Add(ping)
	f.Add([]byte{0x46, 0, 0, 24, 0, 0, 0, 0, 1, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, 1, 1, 1, 1})
	f.Add([]byte{0x45})
	f.Add([]byte{})
	out := make([]byte, icmpErrorMax)
	f.Fuzz(func(t *testing.T, pkt []byte) {
		hl := checkIPv4(pkt)
		if hl == 0 {
			return
		}
		if hl < ipv4MinHeader || hl > len(pkt) || int(binary.BigEndian.Uint16(pkt[offTotalLen:])) != len(pkt) {
			t.Fatalf("checkIPv4 accepted a bad header: hl %d, len %d", hl, len(pkt))
		}
		valid := checksum(pkt[:hl]) == 0
		ttl := pkt[offTTL]
		if decTTL(pkt) {
			if pkt[offTTL] != ttl-1 {
				t.Fatalf("TTL %d → %d", ttl, pkt[offTTL])
			}
			if valid && checksum(pkt[:hl]) != 0 {
				t.Fatalf("decTTL broke a valid header checksum: % x", pkt[:hl])
			}
		} else if ttl > 1 {
			t.Fatalf("decTTL refused TTL %d", ttl)
		}
		for _, code := range []uint8{codeNetUnreach, codeFragNeeded} {
			n := buildICMPError(out, pkt, hl, code, 1472)
			if n == 0 {
				continue
			}
			if n > len(out) || checkIPv4(out[:n]) != ipv4MinHeader || checksum(out[:ipv4MinHeader]) != 0 {
				t.Fatalf("ICMP error of %d bytes is not a valid IPv4 packet: % x", n, out[:n])
			}
		}
	})
}
