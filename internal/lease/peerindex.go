package lease

import (
	"cmp"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/weft-net/weft/internal/netconf"
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

// A claim is a value that only one peer may hold: its IPv4 subnet, its IPv6
// subnet, its PublicIP, its VtepMAC (per device). Two keys naming one IPv4
// subnet (172.30.5.0-24 and 172.30.5.0-24&fc00::-64) would point one route
// at two hosts; two naming one PublicIP or VtepMAC make one FDB entry serve
// two subnets. Every conflict rule lives here, so the dataplane never sees
// a clash: among the valid peer leases claiming one value, the oldest key
// (lowest CreateRevision, then lowest key) wins, and a lease is published
// only when it wins every claim it makes. A forgery is always newer than
// the lease it copies, so it can never push a live host out.
type claim struct {
	kind claimKind
	bits uint8    // prefix length, for subnets
	val  [16]byte // address or MAC; no pointer, so the GC does not scan the map
}

type claimKind uint8

const (
	claimSubnet claimKind = iota
	claimSubnet6
	claimPublicIP
	claimVtepMAC
	claimVtepMAC6
)

// reason is the rejected-leases label of a lost claim.
func (k claimKind) reason() string {
	switch k {
	case claimSubnet:
		return ReasonDuplicateSubnet
	case claimSubnet6:
		return ReasonDuplicateIPv6Subnet
	case claimPublicIP:
		return ReasonDuplicatePublicIP
	}
	return ReasonDuplicateVtepMAC
}

func (c claim) String() string {
	switch c.kind {
	case claimSubnet, claimSubnet6:
		a := netip.AddrFrom16(c.val)
		if c.kind == claimSubnet {
			a = a.Unmap()
		}
		return "subnet " + netip.PrefixFrom(a, int(c.bits)).String()
	case claimPublicIP:
		return "PublicIP " + netip.AddrFrom16(c.val).Unmap().String()
	}
	return "VtepMAC " + net.HardwareAddr(c.val[:6]).String()
}

// claimsOf appends the claims of l to buf, the IPv4 subnet's first and
// the PublicIP's always.
func claimsOf(l *Lease, buf []claim) []claim {
	buf = append(buf, claim{kind: claimSubnet, bits: uint8(l.Subnet.Bits()), val: l.Subnet.Addr().As16()})
	if l.IPv6Subnet.IsValid() {
		buf = append(buf, claim{kind: claimSubnet6, bits: uint8(l.IPv6Subnet.Bits()), val: l.IPv6Subnet.Addr().As16()})
	}
	buf = append(buf, claim{kind: claimPublicIP, val: l.Attrs.PublicIP.As16()})
	if strings.EqualFold(l.Attrs.BackendType, netconf.BackendVXLAN) {
		if c, ok := macClaim(claimVtepMAC, l.Attrs.BackendData); ok {
			buf = append(buf, c)
		}
		if c, ok := macClaim(claimVtepMAC6, l.Attrs.BackendV6Data); ok {
			buf = append(buf, c)
		}
	}
	return buf
}

// indexClaims are the claims of l the index keeps: claimsOf's, but in a
// network without IPv6 the IPv4 subnet's is left out. There every peer
// lease that is not distrusted has an IPv4-only key, and such a key is its
// subnet, so two of them never claim one subnet; the claim could never
// clash, and it was a third of the index (1.1 MB at 20,000 peers, issue
// 12). The PublicIP claim is then first.
func (m *Manager) indexClaims(l *Lease, buf []claim) []claim {
	cs := claimsOf(l, buf)
	if !m.six && cs[0].kind == claimSubnet {
		return cs[1:]
	}
	return cs
}

// claimsPerPeer is how many claims indexClaims gives a peer of this
// network, to size the index once (a map grown by doubling leaves garbage
// behind it).
func (m *Manager) claimsPerPeer() int {
	vxlan := strings.EqualFold(m.cfg.BackendType, netconf.BackendVXLAN)
	n := 1 // PublicIP
	if vxlan {
		n++ // VtepMAC
	}
	if m.six {
		n += 2 // both subnets
		if vxlan {
			n++ // the IPv6 VtepMAC
		}
	}
	return n
}

// macClaim is the claim of a valid VtepMAC in raw backend data. The form
// flannel and weft write is read without allocating: it runs for every
// join and leave, and for every lease on a rebuild.
func macClaim(kind claimKind, raw []byte) (claim, bool) {
	if len(raw) == 0 {
		return claim{}, false
	}
	c := claim{kind: kind}
	if s, ok := canonicalVtepMAC(raw); ok && hexMAC(s, c.val[:6]) {
		return c, c.val[0]&1 == 0 && c.val != [16]byte{}
	}
	mac, present, err := VtepMAC(raw)
	if !present || err != nil {
		return claim{}, false
	}
	copy(c.val[:], mac)
	return c, true
}

// hexMAC parses "xx:xx:xx:xx:xx:xx" into out; false for anything else.
func hexMAC[T ~string | ~[]byte](s T, out []byte) bool {
	if len(s) != 17 {
		return false
	}
	for i := range 6 {
		if i > 0 && s[3*i-1] != ':' {
			return false
		}
		hi, ok1 := unhex(s[3*i])
		lo, ok2 := unhex(s[3*i+1])
		if !ok1 || !ok2 {
			return false
		}
		out[i] = hi<<4 | lo
	}
	return true
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// older reports whether key a (lease la) wins a claim against key b.
func older(a string, la *Lease, b string, lb *Lease) bool {
	if la.CreateRevision != lb.CreateRevision {
		return la.CreateRevision < lb.CreateRevision
	}
	return a < b
}

// peerIndex is the published peer set, kept up to date per watch event: with
// thousands of peers, rebuilding, deduplicating and sorting the whole set for
// every join or leave was most of weftd's work on that path. Only a join or
// leave without any clash is folded in; one touching a contested claim (rare)
// drops the index, and the next publish rebuilds it whole, as a relist or a
// new own lease does.
type peerIndex struct {
	// taken holds every claim of every valid peer lease (packed: see
	// claim.packed; taken16 the claims that do not pack, IPv6 subnets). It
	// is a set, without the lease making each claim: a published lease
	// holds all of its claims, and is found in sorted. contested holds, for
	// a claim several valid leases make, those leases, the one that took it
	// first first.
	taken     map[packedClaim]struct{}
	taken16   map[claim]struct{}
	contested map[claim][]*Lease
	// sorted is the published leases, in ComparePeers order. A published
	// snapshot's Peers is sorted itself (shared), not a copy of it: the
	// copy per publish was one more slice of pointers live beside the
	// dataplane's (0.16 MB at 20,000 peers, issue 12). So sorted is copied
	// before it is changed again.
	sorted []*Lease
	shared bool
	known  int      // peer leases counted: not ours, not naming our PublicIP
	buf    [5]claim // scratch for claimsOf, so a join or leave allocates nothing
}

// v4InV6 is the first 12 bytes of an IPv4 address in a claim's val.
var v4InV6 = [12]byte{10: 0xff, 11: 0xff}

// packedClaim is a claim in 7 bytes: its kind, then an IPv4 subnet's
// length and address, an IPv4 address, or a 6-byte MAC. Three claims a
// peer, the claim map was the largest thing the manager kept at 20,000
// peers (issue 12): an 18-byte key padded to 24 beside a 16-byte key
// string made 40-byte slots, a 64-bit key and a lease pointer 16; 7 bytes
// and an empty value make 8 (1.1 → 0.6 MB).
type packedClaim [7]byte

// packed is c in 7 bytes, when it fits: an IPv4 subnet or address, a
// 6-byte MAC — every claim of an IPv4 network.
func (c claim) packed() (packedClaim, bool) {
	k := packedClaim{0: byte(c.kind)}
	switch c.kind {
	case claimSubnet, claimPublicIP:
		if [12]byte(c.val[:12]) != v4InV6 || c.bits > 32 {
			return packedClaim{}, false
		}
		k[1] = c.bits
		copy(k[2:], c.val[12:])
		return k, true
	case claimVtepMAC, claimVtepMAC6:
		if [10]byte(c.val[6:]) != [10]byte{} || c.bits != 0 {
			return packedClaim{}, false
		}
		copy(k[1:], c.val[:6])
		return k, true
	}
	return packedClaim{}, false
}

func (x *peerIndex) isTaken(c claim) bool {
	if k, ok := c.packed(); ok {
		_, found := x.taken[k]
		return found
	}
	_, found := x.taken16[c]
	return found
}

func (x *peerIndex) take(c claim) {
	if k, ok := c.packed(); ok {
		x.taken[k] = struct{}{}
		return
	}
	if x.taken16 == nil {
		x.taken16 = map[claim]struct{}{}
	}
	x.taken16[c] = struct{}{}
}

func (x *peerIndex) drop(c claim) {
	if k, ok := c.packed(); ok {
		delete(x.taken, k)
		return
	}
	delete(x.taken16, c)
}

// counted reports whether a lease is a peer at all (rather than this host's
// own key, or a lease naming this host's address).
func (m *Manager) counted(l *Lease) bool {
	return !m.isOwnKey(l) && l.Attrs.PublicIP != m.cfg.PublicIP
}

// isOwnKey reports whether l is stored under our own key (m.ownKey): the
// key is the subnet pair, and m.own's subnets are always ownKey's.
func (m *Manager) isOwnKey(l *Lease) bool {
	return m.ownKey != "" && l.Subnet == m.own.Subnet && l.IPv6Subnet == m.own.IPv6Subnet
}

// rebuildIndexLocked computes the published set from m.peers from scratch.
func (m *Manager) rebuildIndexLocked() {
	x := &peerIndex{taken: make(map[packedClaim]struct{}, m.claimsPerPeer()*m.peers.len())}
	m.idx = x
	x.sorted = make([]*Lease, 0, m.peers.len())
	for l := range m.peers.all() {
		if !m.counted(l) {
			continue
		}
		x.known++
		if !m.peerOK(l) {
			continue
		}
		x.sorted = append(x.sorted, l)
		for _, c := range m.indexClaims(l, x.buf[:0]) {
			if !x.isTaken(c) {
				x.take(c)
				continue
			}
			if x.contested == nil {
				x.contested = map[claim][]*Lease{}
			}
			x.contested[c] = append(x.contested[c], l)
		}
	}
	if len(x.contested) > 0 {
		// The lease that took a contested claim is the first candidate
		// making it (sorted is still in the order of the pass above).
		first := make(map[claim]bool, len(x.contested))
		for _, l := range x.sorted {
			for _, c := range m.indexClaims(l, x.buf[:0]) {
				if others, ok := x.contested[c]; ok && !first[c] {
					first[c] = true
					x.contested[c] = append([]*Lease{l}, others...)
				}
			}
		}
	}
	if lost := m.electLocked(); len(lost) > 0 {
		x.sorted = slices.DeleteFunc(x.sorted, func(l *Lease) bool { return lost[l] })
	}
	slices.SortFunc(x.sorted, ComparePeers)
}

// electLocked decides every contested claim and returns the keys that lost
// one, each reported once per write with the first claim it lost (in claim
// order, so that every host gives the same reason).
func (m *Manager) electLocked() map[*Lease]bool {
	x := m.idx
	if len(x.contested) == 0 {
		return nil
	}
	type loss struct {
		c      claim
		winner *Lease
	}
	losses := map[*Lease]loss{}
	for c, all := range x.contested {
		w := all[0]
		for _, l := range all[1:] {
			if older(m.keyOf(l), l, m.keyOf(w), w) {
				w = l
			}
		}
		for _, l := range all {
			if prev, seen := losses[l]; l != w && (!seen || c.kind < prev.c.kind) {
				losses[l] = loss{c, w}
			}
		}
	}
	lost := make(map[*Lease]bool, len(losses))
	for l, ls := range losses {
		lost[l] = true
		m.rejectLocked(m.keyOf(l), *l, ls.c.kind.reason(),
			fmt.Sprintf("%s is also claimed by the older lease %s", ls.c, m.keyOf(ls.winner)))
	}
	return lost
}

// indexRemoveLocked takes the lease l that key held out of the index. Call
// it before m.peers forgets or replaces l.
func (m *Manager) indexRemoveLocked(key string, l *Lease) {
	x := m.idx
	if x == nil || !m.counted(l) {
		return
	}
	x.known--
	cs := m.indexClaims(l, x.buf[:0])
	if len(x.contested) > 0 {
		for _, c := range cs {
			if _, ok := x.contested[c]; ok {
				m.idx = nil // a clash may have a new winner: rebuild
				return
			}
		}
	}
	// A published lease holds each of its claims (none is contested: see
	// above), a rejected one none of them.
	if !x.unsort(l) {
		return // it was rejected, so never published
	}
	for _, c := range cs {
		x.drop(c)
	}
}

// indexAddLocked puts key's lease l (already in m.peers) into the index.
func (m *Manager) indexAddLocked(key string, l *Lease) {
	x := m.idx
	if x == nil || !m.counted(l) {
		return
	}
	x.known++
	if !m.peerOK(l) {
		return
	}
	cs := m.indexClaims(l, x.buf[:0])
	for _, c := range cs {
		if x.isTaken(c) {
			m.idx = nil // a clash: the election decides, on the rebuild
			return
		}
	}
	for _, c := range cs {
		x.take(c)
	}
	i, _ := slices.BinarySearchFunc(x.sorted, l, ComparePeers)
	x.unshare()
	x.sorted = slices.Insert(x.sorted, i, l)
}

// unshare gives the index its own copy of sorted when a snapshot holds it.
func (x *peerIndex) unshare() {
	if x.shared {
		x.sorted = slices.Clone(x.sorted)
		x.shared = false
	}
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
			x.unshare()
			x.sorted = slices.Delete(x.sorted, i, i+1)
			return true
		}
	}
	return false
}
