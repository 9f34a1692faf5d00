package lease

import (
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/netconf"
	"github.com/weft-net/weft/internal/testutil/etcdtest"
)

// scaleNet holds 65,536 /24 leases: room for issue 12's 20,000 peers.
func scaleNet() netconf.Config {
	return netconf.Config{
		EnableIPv4:  true,
		Network:     netip.MustParsePrefix("10.0.0.0/8"),
		SubnetLen:   24,
		SubnetMin:   netip.MustParsePrefix("10.0.1.0/24"),
		SubnetMax:   netip.MustParsePrefix("10.255.255.0/24"),
		BackendType: netconf.BackendVXLAN,
	}
}

// putScaleLeases writes n vxlan leases the way bench/overlay's fake peers
// look, 128 to a transaction (etcd's default bound) on one etcd lease: the
// memory of a lease does not depend on how it was written, and 20,000
// grants take longer than the measurement.
func putScaleLeases(tb testing.TB, cli *clientv3.Client, s *Store, n int) {
	tb.Helper()
	ctx := context.Background()
	g, err := cli.Grant(ctx, 3600)
	if err != nil {
		tb.Fatal(err)
	}
	for i := 0; i < n; i += 128 {
		var ops []clientv3.Op
		for j := i; j < min(i+128, n); j++ {
			key := fmt.Sprintf("%s10.%d.%d.0-24", s.SubnetsPrefix(), 1+j>>8, j&255)
			val := fmt.Sprintf(`{"PublicIP":"192.168.%d.%d","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"d6:51:2e:80:%02x:%02x"}}`, j>>8, j&255, j>>8, j&255)
			ops = append(ops, clientv3.OpPut(key, val, clientv3.WithLease(g.ID)))
		}
		if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			tb.Fatalf("put leases %d..%d: %v", i, i+len(ops)-1, err)
		}
	}
}

// liveHeap is the heap a full collection finds live.
func liveHeap() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// heapPeak samples the heap's in-use bytes until stopped: the transient
// peak of a start-up, at the sampling's resolution (1 ms), collector
// included — what RSS has to hold.
func heapPeak() (stop func() uint64) {
	done, out := make(chan struct{}), make(chan uint64)
	go func() {
		var ms runtime.MemStats
		var peak uint64
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapInuse)
			select {
			case <-done:
				out <- peak
				return
			case <-t.C:
			}
		}
	}()
	return func() uint64 { close(done); return <-out }
}

// BenchmarkManagerMemory20000 is issue 12's lease side at 20,000 peers: a
// manager acquiring its lease and publishing the first snapshot, as weftd
// starts. It reports the heap the manager keeps per peer (its leases, the
// peer index, the snapshot), what the start-up allocated per peer (the
// etcd list's response, decoding; the embedded etcd server's own
// allocations for the list are counted too), and the peak heap in use
// during it, above what was live before.
func BenchmarkManagerMemory20000(b *testing.B) { benchManagerMemory(b, 20000) }

// BenchmarkManagerMemory5000 is the same at 5,000 peers (issue 3's RSS
// figure).
func BenchmarkManagerMemory5000(b *testing.B) { benchManagerMemory(b, 5000) }

func benchManagerMemory(b *testing.B, n int) {
	srv := etcdtest.New(b)
	cli := etcdtest.NewClient(b, srv)
	s := NewStore(cli, testPrefix, nil)
	putScaleLeases(b, cli, s, n)
	var live, alloc, peak float64
	for b.Loop() {
		b.StopTimer()
		before := liveHeap()
		var ms0, ms1 runtime.MemStats
		runtime.ReadMemStats(&ms0)
		stopPeak := heapPeak()
		b.StartTimer()
		m := NewManager(ManagerConfig{Store: s, Network: scaleNet(), PublicIP: netip.MustParseAddr("172.16.0.1"),
			BackendType: netconf.BackendVXLAN, BackendData: []byte(`{"VNI":1,"VtepMAC":"d6:51:00:00:00:01"}`)})
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if _, err := m.Acquire(ctx); err != nil {
			b.Fatal(err)
		}
		snap := <-m.Snapshots()
		cancel()
		b.StopTimer()
		p := stopPeak()
		runtime.ReadMemStats(&ms1)
		if len(snap.Peers) != n {
			b.Fatalf("snapshot has %d peers, want %d", len(snap.Peers), n)
		}
		after := liveHeap()
		runtime.KeepAlive(m)
		runtime.KeepAlive(snap)
		live += float64(after) - float64(before)
		alloc += float64(ms1.TotalAlloc - ms0.TotalAlloc)
		peak += float64(p) - float64(before)
		// The next iteration's "before" must not hold this one's manager.
		m, snap = nil, Snapshot{}
		b.StartTimer()
	}
	runs := float64(b.N)
	b.ReportMetric(live/runs/float64(n), "live-B/peer")
	b.ReportMetric(alloc/runs/float64(n), "alloc-B/peer")
	b.ReportMetric(peak/runs/float64(n), "peak-B/peer")
}
