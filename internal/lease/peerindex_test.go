package lease

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// referencePeers is the published set computed the obvious way: every valid
// peer lease that wins each of its claims (subnets, PublicIP, VtepMACs)
// against every other valid peer lease (oldest CreateRevision, then lowest
// key), sorted.
func referencePeers(m *Manager) ([]*Lease, int) {
	known := 0
	var cands []string
	peers := map[string]*Lease{}
	for l := range m.peers.all() {
		peers[m.keyOf(l)] = l
	}
	for k, l := range peers {
		if !m.counted(l) {
			continue
		}
		known++
		if _, why := m.distrust(*l); why == "" {
			cands = append(cands, k)
		}
	}
	best := map[claim]string{}
	for _, k := range cands {
		for _, c := range claimsOf(peers[k], nil) {
			if w, ok := best[c]; !ok || older(k, peers[k], w, peers[w]) {
				best[c] = k
			}
		}
	}
	var out []*Lease
	for _, k := range cands {
		wins := true
		for _, c := range claimsOf(peers[k], nil) {
			wins = wins && best[c] == k
		}
		if wins {
			out = append(out, peers[k])
		}
	}
	slices.SortFunc(out, ComparePeers)
	return out, known
}

// TestPeerIndexMatchesReference drives the incremental index with random
// watch events — joins, leaves, rewrites, invalid leases, garbage, our own
// key, and clashes of every kind: two keys for one IPv4 subnet (its IPv4-only
// and dual-stack spellings), for one IPv6 subnet, one PublicIP, one VtepMAC,
// keys naming our subnet or VtepMAC — and checks after every batch that what
// would be published equals the set computed from scratch.
//
// In a network without IPv6 (where the index keeps no subnet claims, the
// dual-stack keys being distrusted) the same events must give the same
// agreement.
func TestPeerIndexMatchesReference(t *testing.T) {
	t.Run("dual-stack", func(t *testing.T) { testPeerIndexMatchesReference(t, true) })
	t.Run("IPv4 only", func(t *testing.T) { testPeerIndexMatchesReference(t, false) })
}

func testPeerIndexMatchesReference(t *testing.T, six bool) {
	s := NewStore(nil, testPrefix, nil)
	own := netip.MustParseAddr("10.9.0.1")
	cfg := testNet()
	if six {
		cfg.EnableIPv6 = true
		cfg.IPv6Network = netip.MustParsePrefix("fc00::/48")
		cfg.IPv6SubnetLen = 64
	}
	m := NewManager(ManagerConfig{Store: s, Network: cfg, PublicIP: own, BackendType: "vxlan",
		BackendData: []byte(`{"VNI":1,"VtepMAC":"0e:00:00:00:00:00"}`)})
	ownSub := netip.MustParsePrefix("172.30.7.0/24")
	ownKey := s.Key(ownSub, netip.Prefix{})
	m.install(Lease{Subnet: ownSub, Attrs: Attrs{PublicIP: own}}, time.Time{}, ownKey, nil, 1)

	r := rand.New(rand.NewPCG(1, 2))
	rev := int64(1)
	value := func() string {
		ip := fmt.Sprintf("10.9.0.%d", 1+r.IntN(40))          // .1 is ours; few IPs: duplicates
		mac := fmt.Sprintf("0e:00:00:00:00:%02x", r.IntN(80)) // :00 is ours
		switch r.IntN(14) {
		case 0:
			mac = "01:00:5e:00:00:01" // multicast: distrusted
		case 1:
			ip = "172.30.99.9" // inside the overlay: distrusted
		case 2:
			return "{not json"
		case 3:
			ip = "224.0.0.1" // multicast PublicIP: distrusted
		}
		v6 := ""
		if r.IntN(3) == 0 {
			v6 = fmt.Sprintf(`,"BackendV6Data":{"VNI":1,"VtepMAC":"0e:00:00:00:01:%02x"}`, r.IntN(40))
		}
		return fmt.Sprintf(`{"PublicIP":%q,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":%q}%s}`, ip, mac, v6)
	}
	key := func() string {
		if r.IntN(50) == 0 {
			return ownKey
		}
		n := byte(1 + r.IntN(30))
		v4 := netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 30, n, 0}), 24)
		var v6 netip.Prefix
		switch x := r.IntN(20); {
		case x < 10: // IPv4 only
		case x < 17: // dual-stack, the IPv6 subnet going with the IPv4 one
			v6 = netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfc, 7: n}), 64)
		case x < 19: // another host's IPv6 subnet
			v6 = netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfc, 7: byte(1 + r.IntN(30))}), 64)
		default: // outside the IPv6 network: distrusted
			v6 = netip.MustParsePrefix("fd00::/64")
		}
		return s.Key(v4, v6)
	}
	created := map[string]int64{} // key → CreateRevision, as etcd keeps it
	for batch := range 3000 {
		rev++
		var evs []*clientv3.Event
		seen := map[string]bool{} // etcd refuses a transaction that names a key twice
		for range 1 + r.IntN(3) {
			k := key()
			del := r.IntN(2) == 0
			if del && len(created) > 0 && r.IntN(4) != 0 {
				// Mostly leaves of existing keys, so that the set stays
				// about 40 keys with their clashes, not hundreds.
				ks := slices.Sorted(maps.Keys(created))
				k = ks[r.IntN(len(ks))]
			}
			if seen[k] {
				continue
			}
			seen[k] = true
			if del {
				delete(created, k)
				evs = append(evs, &clientv3.Event{Type: mvccpb.DELETE, Kv: &mvccpb.KeyValue{Key: []byte(k), ModRevision: rev}})
				continue
			}
			if _, ok := created[k]; !ok {
				created[k] = rev
			}
			evs = append(evs, &clientv3.Event{Type: mvccpb.PUT, Kv: &mvccpb.KeyValue{Key: []byte(k), Value: []byte(value()),
				ModRevision: rev, CreateRevision: created[k], Lease: 7}})
		}
		if lost, _ := m.apply(evs); lost {
			// Our key was deleted or taken: re-install it, as Run would.
			m.install(Lease{Subnet: ownSub, Attrs: Attrs{PublicIP: own}}, time.Time{}, ownKey, nil, rev)
		}
		m.mu.Lock()
		m.publishLocked()
		got := slices.Clone(m.idx.sorted)
		gotKnown := m.idx.known
		want, wantKnown := referencePeers(m)
		m.mu.Unlock()
		snap := <-m.Snapshots()
		if !slices.EqualFunc(got, want, sameLease) || !slices.EqualFunc(snap.Peers, want, sameLease) || gotKnown != wantKnown {
			t.Fatalf("batch %d: index has %d peers (known %d), snapshot %d, reference %d (known %d)\nindex: %v\nref:   %v",
				batch, len(got), gotKnown, len(snap.Peers), len(want), wantKnown, subnets(got), subnets(want))
		}
		if batch%500 == 0 {
			t.Logf("batch %d: %d peers known, %d published", batch, gotKnown, len(got))
		}
	}
}

func sameLease(a, b *Lease) bool {
	return a.Subnet == b.Subnet && a.ModRevision == b.ModRevision && a.Attrs.PublicIP == b.Attrs.PublicIP
}

func subnets(ls []*Lease) []string {
	var out []string
	for _, l := range ls {
		out = append(out, fmt.Sprintf("%s@%d/%s", l.Subnet, l.ModRevision, l.Attrs.PublicIP))
	}
	return out
}

// BenchmarkPeersJoinLeave is the lease manager's share of a join and a leave
// with 1,000 peers: fold the watch event in and publish a snapshot.
func BenchmarkPeersJoinLeave(b *testing.B) {
	s := NewStore(nil, testPrefix, nil)
	net := testNet()
	net.Network = netip.MustParsePrefix("10.0.0.0/8")
	net.SubnetMin, net.SubnetMax = netip.MustParsePrefix("10.100.0.0/24"), netip.MustParsePrefix("10.100.255.0/24")
	own := netip.MustParseAddr("192.168.255.1")
	m := NewManager(ManagerConfig{Store: s, Network: net, PublicIP: own, BackendType: "vxlan"})
	ownSub := netip.MustParsePrefix("10.100.1.0/24")
	peer := func(i int, rev int64) *mvccpb.KeyValue { return benchPeerKV(s, i, rev) }
	leases := benchLeases(b, s, 1000)
	m.install(Lease{Subnet: ownSub, Attrs: Attrs{PublicIP: own}}, time.Time{}, s.Key(ownSub, netip.Prefix{}), leases, 2)
	<-m.Snapshots()
	rev := int64(2)
	for b.Loop() {
		rev++
		kv := peer(1000, rev)
		m.apply([]*clientv3.Event{{Type: mvccpb.PUT, Kv: kv}})
		m.mu.Lock()
		m.publishLocked()
		m.mu.Unlock()
		<-m.Snapshots()
		rev++
		m.apply([]*clientv3.Event{{Type: mvccpb.DELETE, Kv: &mvccpb.KeyValue{Key: kv.Key, ModRevision: rev}}})
		m.mu.Lock()
		m.publishLocked()
		m.mu.Unlock()
		<-m.Snapshots()
	}
}

// BenchmarkPeersRebuild is a publish from scratch (start, relist) with 1,000
// peers: every lease vetted, deduplicated and sorted.
func BenchmarkPeersRebuild(b *testing.B) {
	s := NewStore(nil, testPrefix, nil)
	net := testNet()
	net.Network = netip.MustParsePrefix("10.0.0.0/8")
	own := netip.MustParseAddr("192.168.255.1")
	m := NewManager(ManagerConfig{Store: s, Network: net, PublicIP: own, BackendType: "vxlan"})
	ownSub := netip.MustParsePrefix("10.100.1.0/24")
	leases := benchLeases(b, s, 1000)
	for b.Loop() {
		m.install(Lease{Subnet: ownSub, Attrs: Attrs{PublicIP: own}}, time.Time{}, s.Key(ownSub, netip.Prefix{}), leases, 2)
		<-m.Snapshots()
	}
}

// benchPeerKV is peer i's lease key-value as etcd returns it, written at rev:
// subnet 10.<1+i/256>.<i%256>.0/24, a PublicIP in 192.168/16 and a VtepMAC
// of its own (up to 62,500 peers).
func benchPeerKV(s *Store, i int, rev int64) *mvccpb.KeyValue {
	sub := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(1 + i/256), byte(i % 256), 0}), 24)
	v := fmt.Sprintf(`{"PublicIP":"192.168.%d.%d","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:57:00:00:%02x:%02x"}}`, i/250, 1+i%250, i/256, i%256)
	return &mvccpb.KeyValue{Key: []byte(s.Key(sub, netip.Prefix{})), Value: []byte(v), CreateRevision: rev, ModRevision: rev, Lease: 7}
}

// benchLeases decodes the first n bench peers, written at revision 2.
func benchLeases(b *testing.B, s *Store, n int) []Lease {
	leases := make([]Lease, 0, n)
	for i := range n {
		l, err := s.decode(benchPeerKV(s, i, 2))
		if err != nil {
			b.Fatal(err)
		}
		leases = append(leases, l)
	}
	return leases
}

// TestClaimPacked: the packed owner keys are exact — distinct claims never
// share a key (kind, prefix length and value all count), and claims that
// do not fit (IPv6 subnets, a MAC longer than 6 bytes) are kept unpacked.
func TestClaimPacked(t *testing.T) {
	v4 := func(kind claimKind, s string, bits uint8) claim {
		return claim{kind: kind, bits: bits, val: netip.MustParseAddr(s).As16()}
	}
	mac := func(kind claimKind, b ...byte) claim {
		c := claim{kind: kind}
		copy(c.val[:], b)
		return c
	}
	packs := []claim{
		v4(claimSubnet, "10.1.2.0", 24), v4(claimSubnet, "10.1.2.0", 23), v4(claimSubnet, "10.1.3.0", 24),
		v4(claimPublicIP, "10.1.2.0", 0), v4(claimPublicIP, "192.168.0.1", 0),
		mac(claimVtepMAC, 0xd6, 0x51, 0, 0, 0, 1), mac(claimVtepMAC6, 0xd6, 0x51, 0, 0, 0, 1), mac(claimVtepMAC, 0xd6, 0x51, 0, 0, 1, 0),
	}
	seen := map[packedClaim]claim{}
	for _, c := range packs {
		k, ok := c.packed()
		if !ok {
			t.Errorf("%v (kind %d): not packed, want packed", c, c.kind)
			continue
		}
		if o, dup := seen[k]; dup {
			t.Errorf("%v (kind %d) and %v (kind %d) share the packed key %#x", c, c.kind, o, o.kind, k)
		}
		seen[k] = c
	}
	for _, c := range []claim{
		{kind: claimSubnet6, bits: 64, val: netip.MustParseAddr("fc00::").As16()},
		mac(claimVtepMAC, 0xd6, 0x51, 0, 0, 0, 1, 2, 3), // a 8-byte hardware address
	} {
		if k, ok := c.packed(); ok {
			t.Errorf("%v (kind %d) packed as %#x, want unpacked", c, c.kind, k)
		}
	}
}
