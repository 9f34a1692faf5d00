package lease

import (
	"encoding/binary"
	"iter"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strings"
)

// peerMap holds every decoded lease under the subnets prefix (ours
// included), by key. A key is its subnet pair: ParseKey accepts only what
// FormatKey writes, so no two keys name one pair and the key string need
// not be kept. The leases of the last list stay where the list put them
// (base, sorted by subnet pair and searched), and only what changed since
// is in maps: a map of 20,000 leases by key string was 1.8 MB beside the
// list (issue 12); base costs nothing more than the list.
type peerMap struct {
	base []Lease
	// over holds the leases written since the list, by packed IPv4-only
	// key (other by subnet pair: dual-stack and IPv6-only keys); a nil
	// lease is a key of base deleted since.
	over  map[uint64]*Lease
	other map[[2]netip.Prefix]*Lease
	n     int
}

// newPeerMap takes list over: it is sorted in place, and the map keeps
// pointers into it.
func newPeerMap(list []Lease) peerMap {
	sortLeases(list)
	return peerMap{base: list, n: len(list)}
}

// sortLeases sorts ls by ComparePeers through a permutation of indices, so
// that 248-byte leases are not swapped and no second list is allocated.
// etcd lists in key order, which is not the subnets' (10.1.10.0-24 comes
// before 10.1.2.0-24).
func sortLeases(ls []Lease) {
	sorted := true
	for i := 1; i < len(ls) && sorted; i++ {
		sorted = ComparePeers(&ls[i-1], &ls[i]) <= 0
	}
	if sorted {
		return
	}
	perm := make([]int32, len(ls))
	for i := range perm {
		perm[i] = int32(i)
	}
	slices.SortFunc(perm, func(a, b int32) int { return ComparePeers(&ls[a], &ls[b]) })
	// Position i takes the lease at perm[i], one cycle of the permutation
	// at a time.
	for i := range perm {
		if perm[i] < 0 {
			continue
		}
		tmp := ls[i]
		j := i
		for {
			k := int(perm[j])
			perm[j] = -1
			if k == i {
				ls[j] = tmp
				break
			}
			ls[j] = ls[k]
			j = k
		}
	}
}

// packV4 is an IPv4-only key's subnet as 64 bits: prefix length, address.
func packV4(v4, v6 netip.Prefix) (uint64, bool) {
	if v6.IsValid() || !v4.IsValid() || !v4.Addr().Is4() {
		return 0, false
	}
	a := v4.Addr().As4()
	return uint64(v4.Bits())<<32 | uint64(binary.BigEndian.Uint32(a[:])), true
}

// changed is the lease written under (v4, v6) since the list (nil:
// deleted); false when the key was not written since.
func (p *peerMap) changed(v4, v6 netip.Prefix) (*Lease, bool) {
	if k, ok := packV4(v4, v6); ok {
		l, found := p.over[k]
		return l, found
	}
	l, found := p.other[[2]netip.Prefix{v4, v6}]
	return l, found
}

func (p *peerMap) setChanged(v4, v6 netip.Prefix, l *Lease) {
	if k, ok := packV4(v4, v6); ok {
		if p.over == nil {
			p.over = map[uint64]*Lease{}
		}
		p.over[k] = l
		return
	}
	if p.other == nil {
		p.other = map[[2]netip.Prefix]*Lease{}
	}
	p.other[[2]netip.Prefix{v4, v6}] = l
}

func (p *peerMap) unchange(v4, v6 netip.Prefix) {
	if k, ok := packV4(v4, v6); ok {
		delete(p.over, k)
		return
	}
	delete(p.other, [2]netip.Prefix{v4, v6})
}

// inBase is the lease of the list under (v4, v6), changed since or not.
func (p *peerMap) inBase(v4, v6 netip.Prefix) (*Lease, bool) {
	probe := Lease{Subnet: v4, IPv6Subnet: v6}
	i, found := sort.Find(len(p.base), func(i int) int { return ComparePeers(&probe, &p.base[i]) })
	if !found {
		return nil, false
	}
	return &p.base[i], true
}

func (p *peerMap) get(v4, v6 netip.Prefix) (*Lease, bool) {
	if l, ok := p.changed(v4, v6); ok {
		return l, l != nil
	}
	return p.inBase(v4, v6)
}

// put stores l under its own key.
func (p *peerMap) put(l *Lease) {
	if _, had := p.get(l.Subnet, l.IPv6Subnet); !had {
		p.n++
	}
	p.setChanged(l.Subnet, l.IPv6Subnet, l)
}

func (p *peerMap) del(v4, v6 netip.Prefix) {
	l, changed := p.changed(v4, v6)
	_, listed := p.inBase(v4, v6)
	switch {
	case changed && l == nil, !changed && !listed:
		return // not there
	case listed:
		p.setChanged(v4, v6, nil)
	default:
		p.unchange(v4, v6)
	}
	p.n--
}

func (p *peerMap) len() int { return p.n }

// all yields every lease, in no particular order.
func (p *peerMap) all() iter.Seq[*Lease] {
	return func(yield func(*Lease) bool) {
		quiet := len(p.over) == 0 && len(p.other) == 0
		for i := range p.base {
			l := &p.base[i]
			if !quiet {
				if _, ok := p.changed(l.Subnet, l.IPv6Subnet); ok {
					continue
				}
			}
			if !yield(l) {
				return
			}
		}
		for _, m := range []iter.Seq[*Lease]{maps.Values(p.over), maps.Values(p.other)} {
			for l := range m {
				if l != nil && !yield(l) {
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
