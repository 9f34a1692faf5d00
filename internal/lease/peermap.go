package lease

import (
	"encoding/binary"
	"iter"
	"maps"
	"net/netip"
	"strings"
)

// peerMap holds every decoded lease under the subnets prefix (ours
// included), by key. A key is its subnet pair: ParseKey accepts only what
// FormatKey writes, so no two keys name one pair and the key string need
// not be kept. The usual key, an IPv4 subnet alone, is packed into 8 bytes
// with no pointer; the rest (dual-stack and IPv6-only keys) are keyed by
// the pair. Keyed by the key strings, the map and the strings were 1.8 MB
// at 20,000 peers (issue 12); packed, 0.55 MB.
type peerMap struct {
	v4    map[uint64]*Lease
	other map[[2]netip.Prefix]*Lease
}

func newPeerMap(n int) peerMap {
	return peerMap{v4: make(map[uint64]*Lease, n)}
}

// packV4 is an IPv4-only key's subnet as 64 bits: prefix length, address.
func packV4(v4, v6 netip.Prefix) (uint64, bool) {
	if v6.IsValid() || !v4.IsValid() || !v4.Addr().Is4() {
		return 0, false
	}
	a := v4.Addr().As4()
	return uint64(v4.Bits())<<32 | uint64(binary.BigEndian.Uint32(a[:])), true
}

func (p *peerMap) get(v4, v6 netip.Prefix) (*Lease, bool) {
	if k, ok := packV4(v4, v6); ok {
		l, found := p.v4[k]
		return l, found
	}
	l, found := p.other[[2]netip.Prefix{v4, v6}]
	return l, found
}

// put stores l under its own key.
func (p *peerMap) put(l *Lease) {
	if k, ok := packV4(l.Subnet, l.IPv6Subnet); ok {
		p.v4[k] = l
		return
	}
	if p.other == nil {
		p.other = map[[2]netip.Prefix]*Lease{}
	}
	p.other[[2]netip.Prefix{l.Subnet, l.IPv6Subnet}] = l
}

func (p *peerMap) del(v4, v6 netip.Prefix) {
	if k, ok := packV4(v4, v6); ok {
		delete(p.v4, k)
		return
	}
	delete(p.other, [2]netip.Prefix{v4, v6})
}

func (p *peerMap) len() int { return len(p.v4) + len(p.other) }

// all yields every lease, in no particular order.
func (p *peerMap) all() iter.Seq[*Lease] {
	return func(yield func(*Lease) bool) {
		for _, m := range []iter.Seq[*Lease]{maps.Values(p.v4), maps.Values(p.other)} {
			for l := range m {
				if !yield(l) {
					return
				}
			}
		}
	}
}

// keyOf is the etcd key a peer lease is stored under, for logs, warnings
// and the claim election's tie-break; made only when needed.
func (m *Manager) keyOf(l *Lease) string { return m.s.Key(l.Subnet, l.IPv6Subnet) }

// keySubnets is the subnet pair of an etcd key; false when it is not a
// well-formed lease key (then no lease is stored under it).
func (m *Manager) keySubnets(key string) (v4, v6 netip.Prefix, ok bool) {
	name, ok := strings.CutPrefix(key, m.s.SubnetsPrefix())
	if !ok || len(name) > maxKeyName || strings.Contains(name, "/") {
		return netip.Prefix{}, netip.Prefix{}, false
	}
	v4, v6, err := ParseKey(name)
	return v4, v6, err == nil
}

// peerByKey is the lease stored under an etcd key.
func (m *Manager) peerByKey(key string) (*Lease, bool) {
	v4, v6, ok := m.keySubnets(key)
	if !ok {
		return nil, false
	}
	return m.peers.get(v4, v6)
}
