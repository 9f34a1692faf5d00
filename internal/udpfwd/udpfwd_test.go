package udpfwd

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"

	"golang.zx2c4.com/wireguard/conn"
)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func TestTableLongestPrefix(t *testing.T) {
	tbl := mustTable(t, pfx("10.9.0.0/24"), []Peer{
		{Subnet: pfx("10.5.0.0/16"), Addr: netip.MustParseAddrPort("192.0.2.1:8285")},
		{Subnet: pfx("10.5.7.0/24"), Addr: netip.MustParseAddrPort("192.0.2.2:8285")},
		{Subnet: pfx("10.5.7.128/25"), Addr: netip.MustParseAddrPort("192.0.2.3:8285")},
		{Subnet: pfx("10.6.1.9/24"), Addr: netip.MustParseAddrPort("192.0.2.4:8285")}, // unmasked on purpose
	})
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

func mustTable(t testing.TB, local netip.Prefix, peers []Peer) *Table {
	t.Helper()
	tbl, skipped := NewTable(local, peers)
	if len(skipped) > 0 {
		t.Fatalf("NewTable skipped peers: %v", skipped)
	}
	return tbl
}

// TestTableSkips: a peer that cannot be trusted with a place in the table is
// left out with an error naming it, and the good peers stay (one bad lease
// must not make the whole Apply fail, as two leases of one subnet did).
func TestTableSkips(t *testing.T) {
	good := Peer{Subnet: pfx("10.0.9.0/24"), Addr: netip.MustParseAddrPort("192.0.2.9:8285")}
	for _, c := range []struct {
		name  string
		peers []Peer
		want  string
	}{
		{"ipv6 subnet", []Peer{{Subnet: pfx("fc00::/64"), Addr: netip.MustParseAddrPort("192.0.2.1:8285")}}, "must be an IPv4 prefix"},
		{"slash 0", []Peer{{Subnet: pfx("0.0.0.0/0"), Addr: netip.MustParseAddrPort("192.0.2.1:8285")}}, "longer than /0"},
		{"ipv6 address", []Peer{{Subnet: pfx("10.0.0.0/24"), Addr: netip.MustParseAddrPort("[2001:db8::1]:8285")}}, "global unicast IPv4"},
		{"port 0", []Peer{{Subnet: pfx("10.0.0.0/24"), Addr: netip.MustParseAddrPort("192.0.2.1:0")}}, "non-zero port"},
		{"multicast", []Peer{{Subnet: pfx("10.0.0.0/24"), Addr: netip.MustParseAddrPort("224.0.0.1:8285")}}, "global unicast"},
		{"loopback", []Peer{{Subnet: pfx("10.0.0.0/24"), Addr: netip.MustParseAddrPort("127.0.0.1:8285")}}, "global unicast"},
		{"own subnet", []Peer{{Subnet: pfx("10.0.1.0/24"), Addr: netip.MustParseAddrPort("192.0.2.1:8285")}}, "overlaps this host's subnet 10.0.1.0/24"},
		{"covers own subnet", []Peer{{Subnet: pfx("10.0.0.0/16"), Addr: netip.MustParseAddrPort("192.0.2.1:8285")}}, "overlaps"},
		{"subnet twice", []Peer{good, {Subnet: pfx("10.0.9.0/24"), Addr: netip.MustParseAddrPort("192.0.2.2:8285")}}, "subnet 10.0.9.0/24: listed twice (kept the one at 192.0.2.9:8285)"},
		{"address twice", []Peer{good, {Subnet: pfx("10.0.8.0/24"), Addr: netip.MustParseAddrPort("192.0.2.9:8285")}}, "address 192.0.2.9:8285: already the address of subnet 10.0.9.0/24"},
	} {
		peers := append(c.peers, Peer{Subnet: pfx("10.0.7.0/24"), Addr: netip.MustParseAddrPort("192.0.2.7:8285")})
		tbl, skipped := NewTable(pfx("10.0.1.0/24"), peers)
		if len(skipped) != 1 || !strings.Contains(skipped[0].Error(), c.want) {
			t.Errorf("%s: skipped %v, want one error containing %q", c.name, skipped, c.want)
			continue
		}
		if tbl.Len() != len(peers)-1 {
			t.Errorf("%s: %d peers in the table, want %d", c.name, tbl.Len(), len(peers)-1)
		}
		if p, ok := tbl.LookupAddr(netip.MustParseAddr("10.0.7.1")); !ok || p.Addr.String() != "192.0.2.7:8285" {
			t.Errorf("%s: the good peer is gone: %v %v", c.name, p, ok)
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
	tbl := mustTable(t, pfx("10.255.0.0/24"), peers)
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
			tbl := mustTable(b, pfx("10.255.0.0/24"), manyPeers(n))
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

// TestAdmit: a datagram enters flannel0 only from a peer's PublicIP:Port,
// from that peer's subnet, to this host's subnet; anything else is dropped
// with its reason, before and after a peer table exists.
func TestAdmit(t *testing.T) {
	peerA := netip.MustParseAddrPort("192.0.2.1:8285")
	tbl := mustTable(t, pfx("10.5.1.0/24"), []Peer{
		{Subnet: pfx("10.5.2.0/24"), Addr: peerA},
		{Subnet: pfx("10.5.3.0/24"), Addr: netip.MustParseAddrPort("192.0.2.3:8285")},
	})
	ep := func(s string) conn.Endpoint { return &conn.StdNetEndpoint{AddrPort: netip.MustParseAddrPort(s)} }
	good := ipPacket("10.5.2.7", "10.5.1.9", 63, 1, false, 8)
	for _, c := range []struct {
		name string
		tbl  *Table
		ep   conn.Endpoint
		pkt  []byte
		want int
	}{
		{"peer to own container", tbl, ep("192.0.2.1:8285"), good, -1},
		{"no table yet", nil, ep("192.0.2.1:8285"), good, rxUnknownSender},
		{"stranger", tbl, ep("192.0.2.99:8285"), good, rxUnknownSender},
		{"peer address, other port", tbl, ep("192.0.2.1:9999"), good, rxUnknownSender},
		{"ipv6 sender", tbl, ep("[2001:db8::1]:8285"), good, rxUnknownSender},
		{"mapped ipv4 sender", tbl, ep("[::ffff:192.0.2.1]:8285"), good, rxUnknownSender},
		{"no endpoint", tbl, nil, good, rxUnknownSender},
		{"other peer's source", tbl, ep("192.0.2.1:8285"), ipPacket("10.5.3.7", "10.5.1.9", 63, 1, false, 8), rxInnerSource},
		{"outside source", tbl, ep("192.0.2.1:8285"), ipPacket("8.8.8.8", "10.5.1.9", 63, 1, false, 8), rxInnerSource},
		{"relay to the world", tbl, ep("192.0.2.1:8285"), ipPacket("10.5.2.7", "1.1.1.1", 63, 1, false, 8), rxInnerDest},
		{"relay to another peer", tbl, ep("192.0.2.1:8285"), ipPacket("10.5.2.7", "10.5.3.1", 63, 1, false, 8), rxInnerDest},
		{"truncated", tbl, ep("192.0.2.1:8285"), good[:20], rxMalformed},
		{"empty", tbl, ep("192.0.2.1:8285"), nil, rxMalformed},
		{"no own lease", mustTable(t, netip.Prefix{}, tbl.Peers()), ep("192.0.2.1:8285"), good, rxInnerDest},
	} {
		var a admission
		if got := a.admit(c.tbl, c.ep, c.pkt); got != c.want {
			t.Errorf("%s: admit = %d, want %d", c.name, got, c.want)
		}
	}
	// The remembered sender is re-probed when the sender changes.
	var a admission
	for i, c := range []struct {
		ep   string
		want int
	}{{"192.0.2.1:8285", -1}, {"192.0.2.99:8285", rxUnknownSender}, {"192.0.2.1:8285", -1}} {
		if got := a.admit(tbl, ep(c.ep), good); got != c.want {
			t.Errorf("batch datagram %d from %s: admit = %d, want %d", i, c.ep, got, c.want)
		}
	}
}

// BenchmarkReceiveCheck is the per-datagram cost of admit in a batch of 64
// from one peer, and with the sender changing on every datagram, with 5,000
// peers.
func BenchmarkReceiveCheck(b *testing.B) {
	peers := manyPeers(5000)
	tbl := mustTable(b, pfx("10.255.0.0/24"), peers)
	for _, c := range []struct {
		name    string
		senders int
	}{{"one-sender", 1}, {"sender-per-datagram", 64}} {
		b.Run(c.name, func(b *testing.B) {
			eps := make([]conn.Endpoint, 64)
			pkts := make([][]byte, 64)
			for i := range eps {
				p := peers[(i%c.senders)*71]
				eps[i] = &conn.StdNetEndpoint{AddrPort: p.Addr}
				s := p.Subnet.Addr().As4()
				s[3] = 7
				pkts[i] = ipPacket(netip.AddrFrom4(s).String(), "10.255.0.9", 64, 6, true, 1380)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				var a admission
				for j := range pkts {
					if a.admit(tbl, eps[j], pkts[j]) >= 0 {
						b.Fatal("dropped")
					}
				}
			}
		})
	}
}
