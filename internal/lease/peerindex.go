package lease

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
)

// ComparePeers is the order of Snapshot.Peers: by IPv4 subnet, then IPv6
// subnet. Consumers may merge two snapshots' peer lists with it.
func ComparePeers(a, b *Lease) int {
	if c := a.Subnet.Addr().Compare(b.Subnet.Addr()); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Subnet.Bits(), b.Subnet.Bits()); c != 0 {
		return c
	}
	if c := a.IPv6Subnet.Addr().Compare(b.IPv6Subnet.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.IPv6Subnet.Bits(), b.IPv6Subnet.Bits())
}

// peerIndex is the published peer set, kept up to date per watch event: with
// thousands of peers, rebuilding, deduplicating and sorting the whole set for
// every join or leave was most of weftd's work on that path. A relist or a
// new own lease drops the index, and the next publish rebuilds it whole.
type peerIndex struct {
	// byIP holds the keys of the valid peer leases naming each PublicIP;
	// usually one. Only the newest is published (see elect).
	byIP map[netip.Addr][]string
	// winner is the lease published for each PublicIP, as it sits in
	// sorted (m.peers may already hold its replacement).
	winner map[netip.Addr]*Lease
	sorted []*Lease // the winners, in ComparePeers order
	known  int      // peer leases counted: not ours, not naming our PublicIP
}

// counted reports whether a lease is a peer at all (rather than this host's
// own key, or a lease naming this host's address).
func (m *Manager) counted(key string, l Lease) bool {
	return key != m.ownKey && l.Attrs.PublicIP != m.cfg.PublicIP
}

// rebuildIndexLocked computes the published set from m.peers from scratch.
func (m *Manager) rebuildIndexLocked() {
	x := &peerIndex{
		byIP:   make(map[netip.Addr][]string, len(m.peers)),
		winner: make(map[netip.Addr]*Lease, len(m.peers)),
	}
	m.idx = x
	for k, l := range m.peers {
		if !m.counted(k, *l) {
			continue
		}
		x.known++
		if m.peerOK(k, *l) {
			x.byIP[l.Attrs.PublicIP] = append(x.byIP[l.Attrs.PublicIP], k)
		}
	}
	x.sorted = make([]*Lease, 0, len(x.byIP))
	for ip, keys := range x.byIP {
		w := m.elect(ip, keys)
		x.winner[ip] = m.peers[w]
		x.sorted = append(x.sorted, m.peers[w])
	}
	slices.SortFunc(x.sorted, ComparePeers)
}

// elect picks the lease published for a PublicIP named by several: the most
// recently written (the other is a host's stale lease or a forgery; either
// way one FDB entry per address), ties broken by key so every host agrees.
// The others are reported, once per write.
func (m *Manager) elect(ip netip.Addr, keys []string) string {
	w := keys[0]
	for _, k := range keys[1:] {
		l, cur := m.peers[k], m.peers[w]
		if l.ModRevision > cur.ModRevision || (l.ModRevision == cur.ModRevision && k < w) {
			w = k
		}
	}
	for _, k := range keys {
		if k != w {
			m.rejectLocked(k, *m.peers[k], ReasonDuplicatePublicIP,
				fmt.Sprintf("PublicIP %s is also named by the newer lease %s", ip, w))
		}
	}
	return w
}

// indexRemoveLocked takes the lease l that key held out of the index. Call
// it before m.peers forgets or replaces l.
func (m *Manager) indexRemoveLocked(key string, l *Lease) {
	x := m.idx
	if x == nil || !m.counted(key, *l) {
		return
	}
	x.known--
	ip := l.Attrs.PublicIP
	keys := x.byIP[ip]
	i := slices.Index(keys, key)
	if i < 0 {
		return // it was rejected, so never published
	}
	if len(keys) == 1 {
		delete(x.byIP, ip)
	} else {
		x.byIP[ip] = slices.Delete(keys, i, i+1)
	}
	m.reelectLocked(ip)
}

// indexAddLocked puts key's lease l (already in m.peers) into the index.
func (m *Manager) indexAddLocked(key string, l *Lease) {
	x := m.idx
	if x == nil || !m.counted(key, *l) {
		return
	}
	x.known++
	if !m.peerOK(key, *l) {
		return
	}
	ip := l.Attrs.PublicIP
	x.byIP[ip] = append(x.byIP[ip], key)
	m.reelectLocked(ip)
}

// reelectLocked republishes the winner for ip after its keys changed.
func (m *Manager) reelectLocked(ip netip.Addr) {
	x := m.idx
	if old, ok := x.winner[ip]; ok {
		if !x.unsort(old) {
			// Cannot happen while the index is consistent; rebuilding
			// is always correct.
			m.idx = nil
			return
		}
		delete(x.winner, ip)
	}
	keys := x.byIP[ip]
	if len(keys) == 0 {
		return
	}
	w := m.elect(ip, keys)
	l := m.peers[w]
	x.winner[ip] = l
	i, _ := slices.BinarySearchFunc(x.sorted, l, ComparePeers)
	x.sorted = slices.Insert(x.sorted, i, l)
}

// unsort removes l from sorted; false when it is not there.
func (x *peerIndex) unsort(l *Lease) bool {
	i, found := slices.BinarySearchFunc(x.sorted, l, ComparePeers)
	if !found {
		return false
	}
	// Distinct keys cannot share a subnet pair, but be exact anyway.
	for ; i < len(x.sorted) && ComparePeers(x.sorted[i], l) == 0; i++ {
		if x.sorted[i] == l {
			x.sorted = slices.Delete(x.sorted, i, i+1)
			return true
		}
	}
	return false
}
