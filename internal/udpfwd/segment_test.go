package udpfwd

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"testing"

	"golang.org/x/sys/unix"
)

// TestChecksumSum: the 32-bit-word sum gives RFC 1071's checksum for every
// length and alignment, and sums of parts at even offsets add up.
func TestChecksumSum(t *testing.T) {
	ref := func(b []byte) uint16 {
		var s uint32
		for i := 0; i+1 < len(b); i += 2 {
			s += uint32(b[i])<<8 | uint32(b[i+1])
		}
		if len(b)%2 == 1 {
			s += uint32(b[len(b)-1]) << 8
		}
		for s>>16 != 0 {
			s = s&0xffff + s>>16
		}
		return ^uint16(s)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for n := range 300 {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		if got, want := checksum(b), ref(b); got != want {
			t.Fatalf("%d bytes: %#04x, want %#04x", n, got, want)
		}
		if n >= 2 {
			at := n / 2 &^ 1
			if got, want := ^fold(sum(b[at:], sum(b[:at], 0))), ref(b); got != want {
				t.Fatalf("%d bytes in two parts: %#04x, want %#04x", n, got, want)
			}
		}
	}
	ff := bytes.Repeat([]byte{0xff}, 65535)
	if got, want := checksum(ff), ref(ff); got != want {
		t.Fatalf("64 KiB of 0xff: %#04x, want %#04x", got, want)
	}
}

// superPacket returns a TSO/USO read as the TUN gives it: virtio-net header
// (NEEDS_CSUM, gso), the first headers with the pseudo-header sum in the
// checksum field, then payload bytes.
func superPacket(proto byte, gso int, payload []byte) []byte {
	var p []byte
	if proto == protoTCP {
		p = tcpSeg(1000, 77, tcpFlagACK|tcpFlagPSH, []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2}, payload)
	} else {
		p = udpDgram(payload)
	}
	hl, csumAt, typ := 32, tcpCsumOffset, byte(unix.VIRTIO_NET_HDR_GSO_TCPV4)
	if proto == protoUDP {
		hl, csumAt, typ = 8, udpCsumOffset, unix.VIRTIO_NET_HDR_GSO_UDP_L4
	}
	binary.BigEndian.PutUint16(p[20+csumAt:], pseudoSum(p, proto, len(p)-20))
	h := make([]byte, vnetHdrLen)
	h[0], h[1] = unix.VIRTIO_NET_HDR_F_NEEDS_CSUM, typ
	binary.LittleEndian.PutUint16(h[2:], uint16(20+hl))
	binary.LittleEndian.PutUint16(h[4:], uint16(gso))
	binary.LittleEndian.PutUint16(h[6:], 20)
	binary.LittleEndian.PutUint16(h[8:], uint16(csumAt))
	return append(h, p...)
}

// TestSplit: a super-packet leaves as segments the way the kernel's own
// segmentation would cut it: every one a valid IPv4 packet with a complete
// transport checksum (what a flanneld peer's TUN without offloads needs),
// consecutive TCP sequence numbers and IP IDs, PSH only on the last, the
// payload in order and unchanged.
func TestSplit(t *testing.T) {
	payload := make([]byte, 10000)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	for _, proto := range []byte{protoTCP, protoUDP} {
		raw := superPacket(proto, 1400, payload)
		s := newSegmenter(128)
		dgs, err := s.split(raw, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(dgs) != 8 {
			t.Fatalf("%s: %d segments, want 8", protoName(proto), len(dgs))
		}
		var got []byte
		for i, d := range dgs {
			pkt := append(append([]byte(nil), d.head...), d.body...)
			if checkIPv4(pkt) != 20 || checksum(pkt[:20]) != 0 {
				t.Fatalf("segment %d: not a valid IPv4 packet", i)
			}
			if id := binary.BigEndian.Uint16(pkt[4:]); id != uint16(i) {
				t.Errorf("segment %d: IP ID %d", i, id)
			}
			tp := make([]byte, 12+len(pkt)-20)
			copy(tp, pkt[offSrc:20])
			tp[9] = proto
			binary.BigEndian.PutUint16(tp[10:], uint16(len(pkt)-20))
			copy(tp[12:], pkt[20:])
			if checksum(tp) != 0 {
				t.Fatalf("%s segment %d: transport checksum not valid", protoName(proto), i)
			}
			hl := 8
			if proto == protoTCP {
				hl = 32
				if seq := binary.BigEndian.Uint32(pkt[24:]); seq != 1000+uint32(i*1400) {
					t.Errorf("segment %d: seq %d", i, seq)
				}
				if psh := pkt[33]&tcpFlagPSH != 0; psh != (i == 7) {
					t.Errorf("segment %d: PSH %v", i, psh)
				}
			} else if l := binary.BigEndian.Uint16(pkt[24:]); int(l) != len(pkt)-20 {
				t.Errorf("segment %d: UDP length %d of %d", i, l, len(pkt)-20)
			}
			got = append(got, pkt[20+hl:]...)
		}
		if !bytes.Equal(got, payload) {
			t.Fatalf("%s: payload changed by the split", protoName(proto))
		}
	}
	// What the engine does not forward, and a batch without room.
	s := newSegmenter(128)
	bad := superPacket(protoTCP, 1400, payload)
	bad[1] = unix.VIRTIO_NET_HDR_GSO_TCPV6
	if _, err := s.split(bad, nil); err == nil {
		t.Error("TCPv6 GSO on an IPv4 packet accepted")
	}
	if _, err := s.split(superPacket(protoTCP, 10, payload), nil); err == nil {
		t.Error("1,000 segments accepted into a batch of 128")
	}
	if _, err := s.split(superPacket(protoTCP, 1400, payload), make([]dgram, 125)); err != errNoRoom {
		t.Errorf("8 segments with 3 places left: %v, want errNoRoom", err)
	}
}

// FuzzSplit: whatever the TUN hands over, split never panics, and every
// datagram it makes is a whole IPv4 packet of its stated length.
func FuzzSplit(f *testing.F) {
	f.Add(superPacket(protoTCP, 100, make([]byte, 1000)))
	f.Add(superPacket(protoUDP, 64, make([]byte, 300)))
	f.Add(append(make([]byte, vnetHdrLen), udpDgram([]byte("x"))...))
	s := newSegmenter(128)
	f.Fuzz(func(t *testing.T, raw []byte) {
		dgs, err := s.split(raw, nil)
		if err != nil {
			return
		}
		for i, d := range dgs {
			if len(d.body) > 0 && checkIPv4Len(d.head, d.len()) == 0 {
				t.Fatalf("segment %d of %d is not a whole IPv4 packet", i, len(dgs))
			}
		}
	})
}
