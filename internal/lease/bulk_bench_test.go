package lease

import (
	"net/netip"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// BenchmarkPeersDeleteAll5000 is bench/overlay's bulk figure inside the
// manager: one watch response deleting all 5,000 peers, then one putting
// them back, each followed by a publish.
func BenchmarkPeersDeleteAll5000(b *testing.B) {
	const n = 5000
	s := NewStore(nil, testPrefix, nil)
	net := testNet()
	net.Network = netip.MustParsePrefix("10.0.0.0/8")
	own := netip.MustParseAddr("192.168.255.1")
	m := NewManager(ManagerConfig{Store: s, Network: net, PublicIP: own, BackendType: "vxlan"})
	ownSub := netip.MustParsePrefix("10.100.1.0/24")
	leases := benchLeases(b, s, n)
	kvs := make([]*mvccpb.KeyValue, n)
	for i := range kvs {
		kvs[i] = benchPeerKV(s, i, 2)
	}
	m.install(Lease{Subnet: ownSub, Attrs: Attrs{PublicIP: own}}, time.Time{}, s.Key(ownSub, netip.Prefix{}), leases, 2)
	<-m.Snapshots()
	rev := int64(2)
	del := make([]*clientv3.Event, n)
	put := make([]*clientv3.Event, n)
	b.ReportAllocs()
	for b.Loop() {
		rev++
		for i, kv := range kvs {
			del[i] = &clientv3.Event{Type: mvccpb.DELETE, Kv: &mvccpb.KeyValue{Key: kv.Key, ModRevision: rev}}
		}
		m.apply(del)
		m.mu.Lock()
		m.publishLocked()
		m.mu.Unlock()
		if s := <-m.Snapshots(); len(s.Peers) != 0 {
			b.Fatalf("%d peers after deleting all", len(s.Peers))
		}
		rev++
		for i, kv := range kvs {
			put[i] = &clientv3.Event{Type: mvccpb.PUT, Kv: &mvccpb.KeyValue{Key: kv.Key, Value: kv.Value, CreateRevision: rev, ModRevision: rev, Lease: kv.Lease}}
		}
		m.apply(put)
		m.mu.Lock()
		m.publishLocked()
		m.mu.Unlock()
		if s := <-m.Snapshots(); len(s.Peers) != n {
			b.Fatalf("%d peers after re-adding all, want %d", len(s.Peers), n)
		}
	}
}
