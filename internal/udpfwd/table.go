package udpfwd

import (
	"fmt"
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
// destinations to peers. It is rebuilt whole from every lease snapshot and
// swapped into a running Engine with one atomic pointer store, so lookups
// never take a lock and never see a half-updated table.
//
// Lookup costs one hash probe per distinct prefix length present, longest
// first. A flannel network gives every lease the same SubnetLen, so in
// practice that is a single map probe whatever the number of peers: 10,000
// peers cost what 10 do (see BenchmarkLookup).
type Table struct {
	peers  []Peer
	eps    []conn.Endpoint // eps[i] is the send endpoint of peers[i], built once here, not per packet
	levels []level         // by prefix length, longest first
}

type level struct {
	mask uint32
	idx  map[uint32]int32 // masked destination → index in peers
}

// NewTable builds a table; peers whose subnets are not IPv4 or whose address
// is not an IPv4 address:port are rejected with an error naming them (the
// caller filters leases before). Two peers with the same subnet are an error.
func NewTable(peers []Peer) (*Table, error) {
	t := &Table{peers: slices.Clone(peers), eps: make([]conn.Endpoint, len(peers))}
	byLen := map[int]*level{}
	for i, p := range t.peers {
		if !p.Subnet.IsValid() || !p.Subnet.Addr().Is4() {
			return nil, fmt.Errorf("udpfwd: peer subnet %s: must be an IPv4 prefix", p.Subnet)
		}
		if !p.Addr.IsValid() || !p.Addr.Addr().Is4() || p.Addr.Port() == 0 {
			return nil, fmt.Errorf("udpfwd: peer %s address %s: must be an IPv4 address with a non-zero port", p.Subnet, p.Addr)
		}
		p.Subnet = p.Subnet.Masked()
		t.peers[i] = p
		l := byLen[p.Subnet.Bits()]
		if l == nil {
			l = &level{mask: maskOf(p.Subnet.Bits()), idx: map[uint32]int32{}}
			byLen[p.Subnet.Bits()] = l
		}
		k := be32(p.Subnet.Addr().As4())
		if j, dup := l.idx[k]; dup {
			return nil, fmt.Errorf("udpfwd: peer subnet %s: listed twice (%s and %s)", p.Subnet, t.peers[j].Addr, p.Addr)
		}
		l.idx[k] = int32(i)
		t.eps[i] = &conn.StdNetEndpoint{AddrPort: p.Addr}
	}
	bits := make([]int, 0, len(byLen))
	for b := range byLen {
		bits = append(bits, b)
	}
	slices.Sort(bits)
	slices.Reverse(bits)
	for _, b := range bits {
		t.levels = append(t.levels, *byLen[b])
	}
	return t, nil
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
