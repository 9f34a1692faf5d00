package udpfwd

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"net/netip"
	"slices"

	"golang.zx2c4.com/wireguard/conn"
)

// Peer is one remote host of the overlay: the subnet it leased and the UDP
// address its engine listens on (its PublicIP and the network's Port).
type Peer struct {
	Subnet netip.Prefix
	Addr   netip.AddrPort
}

// Table is an immutable longest-prefix-match table from overlay IPv4
// destinations to peers, and the receive side's list of who may send what:
// a datagram is accepted only from a peer's Addr, carrying an inner packet
// from that peer's subnet to this host's subnet (Local). It is rebuilt whole
// from every lease snapshot and swapped into a running Engine with one
// atomic pointer store, so lookups never take a lock and never see a
// half-updated table.
//
// Lookup costs one hash probe per distinct prefix length present, longest
// first. A flannel network gives every lease the same SubnetLen, so in
// practice that is a single map probe whatever the number of peers: 10,000
// peers cost what 10 do (see BenchmarkLookup). The sender check is one more
// probe, by source address and port (see BenchmarkReceiveCheck).
type Table struct {
	peers  []Peer
	eps    []conn.Endpoint // eps[i] is the send endpoint of peers[i], built once here, not per packet
	nets   []ipv4Net       // nets[i] is peers[i].Subnet as integers, for the per-packet inner source check
	bySrc  map[uint64]int32
	local  ipv4Net // this host's subnet; the zero value (no own lease yet) contains nothing
	levels []level // by prefix length, longest first
}

type level struct {
	mask uint32
	idx  map[uint32]int32 // masked destination → index in peers
}

// ipv4Net is a prefix as big-endian integers. A mask of 0 never matches: a
// /0 is refused as a subnet, so the zero value stands for "none".
type ipv4Net struct{ addr, mask uint32 }

func netOf(p netip.Prefix) ipv4Net {
	return ipv4Net{addr: be32(p.Masked().Addr().As4()), mask: maskOf(p.Bits())}
}

func (n ipv4Net) contains(a uint32) bool { return n.mask != 0 && a&n.mask == n.addr }

// srcKey is a sender's IPv4 address and port in one map key.
func srcKey(a [4]byte, port uint16) uint64 { return uint64(be32(a))<<16 | uint64(port) }

// SkippedPeer is a peer NewTable left out, and the rule it broke.
type SkippedPeer struct {
	Peer
	Reason string
}

func (s SkippedPeer) Error() string {
	return fmt.Sprintf("udpfwd: peer %s at %s left out of the table: %s", s.Subnet, s.Addr, s.Reason)
}

// NewTable builds the table of a host whose own subnet is local (the zero
// Prefix before the host holds a lease: then nothing is accepted from the
// wire). A peer that cannot be trusted with a place in the table is left out
// and reported in skipped, with the rule it broke, so that
// one bad lease never stops the others from being programmed: a subnet that
// is not IPv4, a /0, or overlaps local (its owner could then forge our own
// containers' addresses); an address that is not a global unicast IPv4
// address with a non-zero port; a subnet or an address already taken by an
// earlier peer in the list (the sender check needs one subnet per address).
func NewTable(local netip.Prefix, peers []Peer) (t *Table, skipped []SkippedPeer) {
	t = &Table{peers: make([]Peer, 0, len(peers)), bySrc: make(map[uint64]int32, len(peers))}
	if local.IsValid() && local.Addr().Is4() && local.Bits() > 0 {
		t.local = netOf(local)
	}
	byLen := map[int]*level{}
	for _, p := range peers {
		if why := t.check(p, local, byLen); why != "" {
			skipped = append(skipped, SkippedPeer{Peer: p, Reason: why})
			continue
		}
		p.Subnet = p.Subnet.Masked()
		i := int32(len(t.peers))
		t.peers = append(t.peers, p)
		t.nets = append(t.nets, netOf(p.Subnet))
		t.eps = append(t.eps, &conn.StdNetEndpoint{AddrPort: p.Addr})
		t.bySrc[srcKey(p.Addr.Addr().As4(), p.Addr.Port())] = i
		l := byLen[p.Subnet.Bits()]
		if l == nil {
			l = &level{mask: maskOf(p.Subnet.Bits()), idx: map[uint32]int32{}}
			byLen[p.Subnet.Bits()] = l
		}
		l.idx[be32(p.Subnet.Addr().As4())] = i
	}
	lens := make([]int, 0, len(byLen))
	for b := range byLen {
		lens = append(lens, b)
	}
	slices.Sort(lens)
	slices.Reverse(lens)
	for _, b := range lens {
		t.levels = append(t.levels, *byLen[b])
	}
	return t, skipped
}

// check tells which rule keeps p out of the table being built, or "".
func (t *Table) check(p Peer, local netip.Prefix, byLen map[int]*level) string {
	switch {
	case !p.Subnet.IsValid() || !p.Subnet.Addr().Is4() || p.Subnet.Bits() == 0:
		return fmt.Sprintf("subnet %s: must be an IPv4 prefix longer than /0", p.Subnet)
	case !p.Addr.IsValid() || !p.Addr.Addr().Is4() || !p.Addr.Addr().IsGlobalUnicast() || p.Addr.Port() == 0:
		return fmt.Sprintf("address %s: must be a global unicast IPv4 address with a non-zero port", p.Addr)
	case local.IsValid() && p.Subnet.Overlaps(local):
		return fmt.Sprintf("subnet %s: overlaps this host's subnet %s", p.Subnet, local)
	}
	if l := byLen[p.Subnet.Bits()]; l != nil {
		if j, dup := l.idx[be32(p.Subnet.Masked().Addr().As4())]; dup {
			return fmt.Sprintf("subnet %s: listed twice (kept the one at %s)", p.Subnet.Masked(), t.peers[j].Addr)
		}
	}
	if j, dup := t.bySrc[srcKey(p.Addr.Addr().As4(), p.Addr.Port())]; dup {
		return fmt.Sprintf("address %s: already the address of subnet %s (one subnet per sender)", p.Addr, t.peers[j].Subnet)
	}
	return ""
}

// Local is this host's subnet as the table knows it (invalid before a lease).
func (t *Table) Local() netip.Prefix {
	if t.local.mask == 0 {
		return netip.Prefix{}
	}
	var a [4]byte
	binary.BigEndian.PutUint32(a[:], t.local.addr)
	return netip.PrefixFrom(netip.AddrFrom4(a), bits.OnesCount32(t.local.mask))
}

// Len is the number of peers.
func (t *Table) Len() int { return len(t.peers) }

// Peers returns a copy of the peers, masked, in the order given.
func (t *Table) Peers() []Peer { return slices.Clone(t.peers) }

// Lookup returns the index of the peer whose subnet is the longest match for
// dst (big-endian IPv4), or -1.
func (t *Table) Lookup(dst uint32) int {
	for i := range t.levels {
		l := &t.levels[i]
		if j, ok := l.idx[dst&l.mask]; ok {
			return int(j)
		}
	}
	return -1
}

// Sender returns the index of the peer whose Addr is ap, or -1: the only
// peer a datagram from ap may speak for.
func (t *Table) Sender(ap netip.AddrPort) int {
	a := ap.Addr()
	if !a.Is4() {
		return -1
	}
	if j, ok := t.bySrc[srcKey(a.As4(), ap.Port())]; ok {
		return int(j)
	}
	return -1
}

// LookupAddr is Lookup for a netip.Addr (tests and tools; the engine uses Lookup).
func (t *Table) LookupAddr(a netip.Addr) (Peer, bool) {
	if !a.Is4() {
		return Peer{}, false
	}
	i := t.Lookup(be32(a.As4()))
	if i < 0 {
		return Peer{}, false
	}
	return t.peers[i], true
}

func maskOf(bits int) uint32 {
	if bits == 0 {
		return 0
	}
	return ^uint32(0) << (32 - bits)
}

func be32(b [4]byte) uint32 {
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}
