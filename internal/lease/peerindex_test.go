package lease

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// referencePeers is the published set computed the obvious way: every valid
// peer lease, one per PublicIP (newest write, then lowest key), sorted.
func referencePeers(m *Manager) ([]*Lease, int) {
	known := 0
	best := map[netip.Addr]string{}
	for k, l := range m.peers {
		if !m.counted(k, *l) {
			continue
		}
		known++
		if _, why := m.distrust(*l); why != "" {
			continue
		}
		ip := l.Attrs.PublicIP
		w, ok := best[ip]
		if !ok || l.ModRevision > m.peers[w].ModRevision || (l.ModRevision == m.peers[w].ModRevision && k < w) {
			best[ip] = k
		}
	}
	var out []*Lease
	for _, k := range best {
		out = append(out, m.peers[k])
	}
	slices.SortFunc(out, ComparePeers)
	return out, known
}

// TestPeerIndexMatchesReference drives the incremental index with random
// watch events — joins, leaves, rewrites, duplicate PublicIPs, invalid
// leases, garbage, our own key — and checks after every batch that what would
// be published equals the set computed from scratch.
func TestPeerIndexMatchesReference(t *testing.T) {
	s := NewStore(nil, testPrefix, nil)
	own := netip.MustParseAddr("10.9.0.1")
	m := NewManager(ManagerConfig{Store: s, Network: testNet(), PublicIP: own, BackendType: "vxlan"})
	ownSub := netip.MustParsePrefix("172.30.7.0/24")
	ownKey := s.Key(ownSub, netip.Prefix{})
	m.install(Lease{Subnet: ownSub, Attrs: Attrs{PublicIP: own}}, ownKey, nil, 1)

	r := rand.New(rand.NewPCG(1, 2))
	rev := int64(1)
	value := func() string {
		ip := fmt.Sprintf("10.9.0.%d", 1+r.IntN(12)) // .1 is ours; few IPs: many duplicates
		mac := fmt.Sprintf("0e:00:00:00:00:%02x", r.IntN(40))
		switch r.IntN(12) {
		case 0:
			mac = "01:00:5e:00:00:01" // multicast: distrusted
		case 1:
			ip = "172.30.99.9" // inside the overlay: distrusted
		case 2:
			return "{not json"
		}
		return fmt.Sprintf(`{"PublicIP":%q,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":%q}}`, ip, mac)
	}
	key := func() string {
		if r.IntN(50) == 0 {
			return ownKey
		}
		return s.Key(netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 30, byte(1 + r.IntN(30)), 0}), 24), netip.Prefix{})
	}
	for batch := range 3000 {
		rev++
		var evs []*clientv3.Event
		seen := map[string]bool{} // etcd refuses a transaction that names a key twice
		for range 1 + r.IntN(3) {
			k := key()
			if seen[k] {
				continue
			}
			seen[k] = true
			if r.IntN(3) == 0 {
				evs = append(evs, &clientv3.Event{Type: mvccpb.DELETE, Kv: &mvccpb.KeyValue{Key: []byte(k), ModRevision: rev}})
				continue
			}
			evs = append(evs, &clientv3.Event{Type: mvccpb.PUT, Kv: &mvccpb.KeyValue{Key: []byte(k), Value: []byte(value()), ModRevision: rev, Lease: 7}})
		}
		if lost, _ := m.apply(evs); lost {
			// Our key was deleted or taken: re-install it, as Run would.
			m.install(Lease{Subnet: ownSub, Attrs: Attrs{PublicIP: own}}, ownKey, nil, rev)
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
	peer := func(i int, rev int64) *mvccpb.KeyValue {
		sub := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(1 + i/256), byte(i % 256), 0}), 24)
		v := fmt.Sprintf(`{"PublicIP":"192.168.%d.%d","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:57:00:00:%02x:%02x"}}`, i/250, 1+i%250, i/256, i%256)
		return &mvccpb.KeyValue{Key: []byte(s.Key(sub, netip.Prefix{})), Value: []byte(v), ModRevision: rev, Lease: 7}
	}
	var leases []Lease
	for i := range 1000 {
		l, err := s.decode(peer(i, 2))
		if err != nil {
			b.Fatal(err)
		}
		leases = append(leases, l)
	}
	m.install(Lease{Subnet: ownSub, Attrs: Attrs{PublicIP: own}}, s.Key(ownSub, netip.Prefix{}), leases, 2)
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
	var leases []Lease
	for i := range 1000 {
		sub := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(1 + i/256), byte(i % 256), 0}), 24)
		v := fmt.Sprintf(`{"PublicIP":"192.168.%d.%d","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:57:00:00:%02x:%02x"}}`, i/250, 1+i%250, i/256, i%256)
		l, err := s.decode(&mvccpb.KeyValue{Key: []byte(s.Key(sub, netip.Prefix{})), Value: []byte(v), ModRevision: 2, Lease: 7})
		if err != nil {
			b.Fatal(err)
		}
		leases = append(leases, l)
	}
	for b.Loop() {
		m.install(Lease{Subnet: ownSub, Attrs: Attrs{PublicIP: own}}, s.Key(ownSub, netip.Prefix{}), leases, 2)
		<-m.Snapshots()
	}
}
