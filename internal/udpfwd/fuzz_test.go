package udpfwd

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"golang.zx2c4.com/wireguard/conn"
)

// FuzzPacket feeds arbitrary datagrams from arbitrary senders (what any host
// on the underlay can send to port 8285) through the engine's per-packet
// steps: the receive check must admit only a well-formed packet from the
// peer's address, from its subnet to ours; validation, TTL decrement and
// ICMP error construction must never panic, never read past the packet, and
// keep the header checksum valid. testdata/fuzz/FuzzPacket holds the
// datagrams of the attacks the receive check stops (issue 11, finding 1).
func FuzzPacket(f *testing.F) {
	local, peerNet := netip.MustParsePrefix("172.30.1.0/24"), netip.MustParsePrefix("172.30.2.0/24")
	peer := netip.MustParseAddrPort("192.0.2.2:8285")
	tbl, skipped := NewTable(local, []Peer{{Subnet: peerNet, Addr: peer}})
	if len(skipped) > 0 {
		f.Fatal(skipped)
	}
	peerIP := be32(peer.Addr().As4())
	ping := []byte{0x45, 0, 0, 28, 0, 1, 0x40, 0, 64, 1, 0, 0, 172, 30, 2, 2, 172, 30, 1, 2, 8, 0, 0, 0, 0, 1, 0, 1}
	binary.BigEndian.PutUint16(ping[offChecksum:], checksum(ping[:ipv4MinHeader]))
	f.Add(peerIP, peer.Port(), ping)
	f.Add(peerIP, peer.Port(), []byte{0x46, 0, 0, 24, 0, 0, 0, 0, 1, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, 1, 1, 1, 1})
	f.Add(peerIP, peer.Port(), []byte{0x45})
	f.Add(uint32(0), uint16(0), []byte{})
	out := make([]byte, icmpErrorMax)
	f.Fuzz(func(t *testing.T, sender uint32, port uint16, pkt []byte) {
		var a [4]byte
		binary.BigEndian.PutUint32(a[:], sender)
		from := netip.AddrPortFrom(netip.AddrFrom4(a), port)
		var adm admission
		why := adm.admit(tbl, &conn.StdNetEndpoint{AddrPort: from}, pkt)
		switch {
		case from != peer && why != rxUnknownSender:
			t.Fatalf("datagram from stranger %s: reason %d, want unknown sender", from, why)
		case why < 0 && (checkIPv4(pkt) == 0 ||
			!peerNet.Contains(netip.AddrFrom4([4]byte(pkt[offSrc:offSrc+4]))) ||
			!local.Contains(netip.AddrFrom4([4]byte(pkt[offDst:offDst+4])))):
			t.Fatalf("admitted from %s: % x", from, pkt)
		}
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
