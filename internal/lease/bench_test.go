package lease

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/testutil/etcdtest"
)

// fillLeases writes n leases under s, each on its own etcd lease as n hosts
// would, with a few concurrent writers.
func fillLeases(b *testing.B, cli *clientv3.Client, s *Store, n int) {
	b.Helper()
	ctx := context.Background()
	var wg sync.WaitGroup
	work := make(chan int)
	errs := make(chan error, 1)
	for range 16 {
		wg.Go(func() {
			for i := range work {
				g, err := cli.Grant(ctx, 3600)
				if err == nil {
					key := fmt.Sprintf("%s10.%d.%d.0-24", s.SubnetsPrefix(), i>>8, i&255)
					val := fmt.Sprintf(`{"PublicIP":"192.168.%d.%d","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"d6:51:2e:80:%02x:%02x"}}`, i>>8, i&255, i>>8, i&255)
					_, err = cli.Put(ctx, key, val, clientv3.WithLease(g.ID))
				}
				if err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
		})
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
}

func benchStore(b *testing.B, n int) (*clientv3.Client, *Store) {
	srv := etcdtest.New(b)
	cli := etcdtest.NewClient(b, srv)
	s := NewStore(cli, testPrefix, nil)
	fillLeases(b, cli, s, n)
	return cli, s
}

// BenchmarkList5000 is weft's way: one prefix Get for all leases.
func BenchmarkList5000(b *testing.B) {
	_, s := benchStore(b, 5000)
	ctx := context.Background()
	for b.Loop() {
		l, _, err := s.List(ctx)
		if err != nil || len(l) != 5000 {
			b.Fatalf("List: %d, %v", len(l), err)
		}
	}
}

// BenchmarkListTimeToLivePerKey5000 is flannel's way: the list, then one
// TimeToLive call per key, one after the other.
func BenchmarkListTimeToLivePerKey5000(b *testing.B) {
	cli, s := benchStore(b, 5000)
	ctx := context.Background()
	for b.Loop() {
		leases, _, err := s.List(ctx)
		if err != nil {
			b.Fatal(err)
		}
		for _, l := range leases {
			if _, err := cli.TimeToLive(ctx, clientv3.LeaseID(l.EtcdLease)); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkListExpirations5000 is what `weftctl leases list` pays for
// showing expiry: the list plus concurrent TimeToLive per distinct lease.
func BenchmarkListExpirations5000(b *testing.B) {
	_, s := benchStore(b, 5000)
	ctx := context.Background()
	for b.Loop() {
		leases, _, err := s.List(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := s.Expirations(ctx, leases); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAcquire100 measures 100 hosts acquiring at once on one etcd,
// each round on a fresh prefix; it reports acquisitions per second.
func BenchmarkAcquire100(b *testing.B) {
	srv := etcdtest.New(b)
	clis := make([]*clientv3.Client, 10)
	for i := range clis {
		clis[i] = etcdtest.NewClient(b, srv)
	}
	cfg := testNet()
	round := 0
	var total time.Duration
	for b.Loop() {
		round++
		prefix := fmt.Sprintf("/bench/%d", round)
		var wg sync.WaitGroup
		start := time.Now()
		for i := range 100 {
			wg.Go(func() {
				m := newTestManager(NewStore(clis[i%len(clis)], prefix, nil), cfg, hostIP(i+1), nil)
				if _, err := m.Acquire(context.Background()); err != nil {
					b.Error(err)
				}
			})
		}
		wg.Wait()
		total += time.Since(start)
	}
	b.ReportMetric(float64(100*round)/total.Seconds(), "acquisitions/s")
}
