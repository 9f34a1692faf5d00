package udpfwd

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func TestTableLongestPrefix(t *testing.T) {
	tbl, err := NewTable([]Peer{
		{Subnet: pfx("10.5.0.0/16"), Addr: netip.MustParseAddrPort("192.0.2.1:8285")},
		{Subnet: pfx("10.5.7.0/24"), Addr: netip.MustParseAddrPort("192.0.2.2:8285")},
		{Subnet: pfx("10.5.7.128/25"), Addr: netip.MustParseAddrPort("192.0.2.3:8285")},
		{Subnet: pfx("10.6.1.9/24"), Addr: netip.MustParseAddrPort("192.0.2.4:8285")}, // unmasked on purpose
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ dst, want string }{
		{"10.5.7.200", "192.0.2.3:8285"},
		{"10.5.7.1", "192.0.2.2:8285"},
		{"10.5.9.1", "192.0.2.1:8285"},
		{"10.6.1.1", "192.0.2.4:8285"},
		{"10.7.0.1", ""},
	} {
		p, ok := tbl.LookupAddr(netip.MustParseAddr(c.dst))
		got := ""
		if ok {
			got = p.Addr.String()
		}
		if got != c.want {
			t.Errorf("lookup %s = %q, want %q", c.dst, got, c.want)
		}
	}
}

func TestTableRejects(t *testing.T) {
	for _, peers := range [][]Peer{
		{{Subnet: pfx("fc00::/64"), Addr: netip.MustParseAddrPort("192.0.2.1:8285")}},
		{{Subnet: pfx("10.0.0.0/24"), Addr: netip.MustParseAddrPort("[2001:db8::1]:8285")}},
		{{Subnet: pfx("10.0.0.0/24"), Addr: netip.MustParseAddrPort("192.0.2.1:0")}},
		{{Subnet: pfx("10.0.0.0/24"), Addr: netip.MustParseAddrPort("192.0.2.1:1")},
			{Subnet: pfx("10.0.0.0/24"), Addr: netip.MustParseAddrPort("192.0.2.2:1")}},
	} {
		if _, err := NewTable(peers); err == nil {
			t.Errorf("NewTable(%v) accepted", peers)
		}
	}
}

// manyPeers returns n /24 peers of 10.0.0.0/8.
func manyPeers(n int) []Peer {
	peers := make([]Peer, n)
	for i := range peers {
		peers[i] = Peer{
			Subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24),
			Addr:   netip.AddrPortFrom(netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)}), 8285),
		}
	}
	return peers
}

func TestTableThousandPeers(t *testing.T) {
	peers := manyPeers(1000)
	tbl, err := NewTable(peers)
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range peers {
		a := p.Subnet.Addr().As4()
		a[3] = byte(1 + i%250)
		got, ok := tbl.LookupAddr(netip.AddrFrom4(a))
		if !ok || got != p {
			t.Fatalf("lookup %v = %v %v, want %v", netip.AddrFrom4(a), got, ok, p)
		}
	}
	if _, ok := tbl.LookupAddr(netip.MustParseAddr("10.200.0.1")); ok {
		t.Error("address outside every peer subnet matched")
	}
}

func BenchmarkLookup(b *testing.B) {
	for _, n := range []int{10, 1000, 10000} {
		b.Run(fmt.Sprintf("peers=%d", n), func(b *testing.B) {
			tbl, err := NewTable(manyPeers(n))
			if err != nil {
				b.Fatal(err)
			}
			dsts := make([]uint32, 4096)
			for i := range dsts {
				dsts[i] = 10<<24 | uint32(rand.IntN(n))<<8 | 7
			}
			b.ReportAllocs()
			b.ResetTimer()
			hit := 0
			for i := 0; i < b.N; i++ {
				if tbl.Lookup(dsts[i&4095]) >= 0 {
					hit++
				}
			}
			if hit != b.N {
				b.Fatalf("%d of %d lookups missed", b.N-hit, b.N)
			}
		})
	}
}

// ipPacket makes a valid IPv4 packet with the given fields and payload size.
func ipPacket(src, dst string, ttl, proto uint8, df bool, payload int) []byte {
	p := make([]byte, 20+payload)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	binary.BigEndian.PutUint16(p[4:], 0x1234)
	if df {
		binary.BigEndian.PutUint16(p[6:], flagDF)
	}
	p[8], p[9] = ttl, proto
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	binary.BigEndian.PutUint16(p[10:], checksum(p[:20]))
	for i := 20; i < len(p); i++ {
		p[i] = byte(i)
	}
	return p
}

func TestDecTTLIncrementalChecksum(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 100000; i++ {
		p := make([]byte, 20)
		for j := range p {
			p[j] = byte(r.UintN(256))
		}
		p[0] = 0x45
		p[8] = byte(2 + r.UintN(254))
		if i%7 == 0 {
			p[8] = 2 // smallest TTL that is still forwarded
		}
		binary.BigEndian.PutUint16(p[10:], 0)
		binary.BigEndian.PutUint16(p[10:], checksum(p))
		ttl := p[8]
		if !decTTL(p) {
			t.Fatalf("TTL %d dropped", ttl)
		}
		if p[8] != ttl-1 {
			t.Fatalf("TTL %d became %d", ttl, p[8])
		}
		if c := checksum(p); c != 0 && c != 0xffff { // a correct header sums to zero
			t.Fatalf("header %x: checksum does not verify after decrement (residue %#04x)", p, c)
		}
	}
	for _, ttl := range []uint8{0, 1} {
		p := ipPacket("10.0.0.1", "10.0.1.1", ttl, 17, false, 8)
		if decTTL(p) || p[8] != ttl {
			t.Errorf("TTL %d: forwarded or changed", ttl)
		}
	}
}

func TestCheckIPv4(t *testing.T) {
	good := ipPacket("10.0.0.1", "10.0.1.1", 64, 6, true, 40)
	if checkIPv4(good) != 20 {
		t.Fatal("valid packet rejected")
	}
	short := good[:30]
	v6 := append([]byte{0x60}, good[1:]...)
	badHL := append([]byte{0x44}, good[1:]...)
	for name, p := range map[string][]byte{"truncated": short, "version 6": v6, "ihl 4": badHL, "empty": nil} {
		if checkIPv4(p) != 0 {
			t.Errorf("%s accepted", name)
		}
	}
}

func TestICMPErrors(t *testing.T) {
	off := ipPacket("10.5.1.2", "10.5.99.3", 63, 6, true, 1480)
	out := make([]byte, icmpErrorMax)
	for _, c := range []struct {
		code uint8
		mtu  uint16
	}{{codeNetUnreach, 0}, {codeFragNeeded, 1472}} {
		n := buildICMPError(out, off, 20, c.code, c.mtu)
		if n != 20+8+28 {
			t.Fatalf("code %d: length %d, want 56", c.code, n)
		}
		e := out[:n]
		if checksum(e[:20]) != 0 || checksum(e[20:]) != 0 {
			t.Errorf("code %d: bad checksums", c.code)
		}
		if e[9] != protoICMP || e[20] != icmpDestUnreach || e[21] != c.code {
			t.Errorf("code %d: got proto %d type %d code %d", c.code, e[9], e[20], e[21])
		}
		if src, dst := netip.AddrFrom4([4]byte(e[12:16])), netip.AddrFrom4([4]byte(e[16:20])); src.String() != "10.5.99.3" || dst.String() != "10.5.1.2" {
			t.Errorf("code %d: %s → %s, want 10.5.99.3 → 10.5.1.2", c.code, src, dst)
		}
		if got := binary.BigEndian.Uint16(e[26:]); got != c.mtu {
			t.Errorf("code %d: next-hop MTU %d, want %d", c.code, got, c.mtu)
		}
		if string(e[28:]) != string(off[:28]) {
			t.Errorf("code %d: quote is not the offender's header + 8 bytes", c.code)
		}
	}
	// No error about an ICMP error, a later fragment, or a multicast source.
	icmpErr := ipPacket("10.5.1.2", "10.5.99.3", 63, protoICMP, false, 36)
	icmpErr[20] = 3
	frag := ipPacket("10.5.1.2", "10.5.99.3", 63, 17, false, 36)
	binary.BigEndian.PutUint16(frag[6:], 100)
	mcast := ipPacket("224.0.0.5", "10.5.99.3", 63, 17, false, 36)
	echo := ipPacket("10.5.1.2", "10.5.99.3", 63, protoICMP, false, 36)
	echo[20] = 8
	for name, p := range map[string][]byte{"icmp error": icmpErr, "fragment": frag, "multicast source": mcast} {
		if buildICMPError(out, p, 20, codeNetUnreach, 0) != 0 {
			t.Errorf("ICMP error built about a %s", name)
		}
	}
	if buildICMPError(out, echo, 20, codeNetUnreach, 0) == 0 {
		t.Error("no ICMP error about an echo request")
	}
}

func BenchmarkDecTTL(b *testing.B) {
	p := ipPacket("10.0.0.1", "10.0.1.1", 255, 6, true, 40)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if !decTTL(p) {
			p[8] = 255
		}
	}
}
