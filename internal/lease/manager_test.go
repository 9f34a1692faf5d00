package lease

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/testutil/etcdtest"
)

func TestAcquire100Concurrently(t *testing.T) {
	srv, _, s, _ := newTestStore(t)
	const n = 100
	// Ten clients shared by the managers, as ten hosts' worth of connections
	// would be; the contention is on the keys, which is what matters.
	clis := make([]*clientv3.Client, 10)
	for i := range clis {
		clis[i] = etcdtest.NewClient(t, srv)
	}
	// A pool of 120 subnets for 100 hosts: races are frequent.
	cfg := smallNet("172.30.1.0/24", "172.30.120.0/24")
	leases := make([]Lease, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range n {
		wg.Go(func() {
			st := NewStore(clis[i%len(clis)], testPrefix, nil)
			m := newTestManager(st, cfg, hostIP(i+1), nil)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			leases[i], errs[i] = m.Acquire(ctx)
		})
	}
	wg.Wait()
	t.Logf("100 concurrent acquisitions took %v", time.Since(start))
	seen := map[netip.Prefix]int{}
	for i, l := range leases {
		if errs[i] != nil {
			t.Fatalf("manager %d: %v", i, errs[i])
		}
		if j, dup := seen[l.Subnet]; dup {
			t.Errorf("managers %d and %d both got %s", i, j, l.Subnet)
		}
		seen[l.Subnet] = i
	}
	all, _, err := s.List(context.Background())
	if err != nil || len(all) != n {
		t.Fatalf("etcd holds %d leases (%v), want %d", len(all), err, n)
	}
	// No etcd lease leaked: exactly one per key.
	resp, err := clis[0].Leases(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Leases) != n {
		t.Errorf("%d etcd leases exist for %d keys: lost races leaked leases", len(resp.Leases), n)
	}
}

func TestRangeExhaustion(t *testing.T) {
	_, _, s, _ := newTestStore(t)
	cfg := smallNet("172.30.1.0/24", "172.30.3.0/24") // three subnets
	for i := range 3 {
		m := newTestManager(s, cfg, hostIP(i+1), nil)
		if _, err := m.acquireOnce(context.Background(), netip.Prefix{}); err != nil {
			t.Fatalf("host %d: %v", i, err)
		}
	}
	log, lb := newLogger()
	m := newTestManager(s, cfg, hostIP(9), log)
	_, err := m.acquireOnce(context.Background(), netip.Prefix{})
	if !errors.Is(err, ErrRangeFull) {
		t.Fatalf("4th host: %v, want ErrRangeFull", err)
	}
	for _, want := range []string{"172.30.1.0/24–172.30.3.0/24", "3 leases"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	// Acquire does not give up: it logs once and retries until cancelled.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, err := m.Acquire(ctx); done <- err }()
	waitFor(t, 5*time.Second, "the range-full log line", func() bool { return lb.Count("no free subnet in range") >= 1 })
	select {
	case err := <-done:
		t.Fatalf("Acquire returned %v on a full range, want it to keep retrying", err)
	case <-time.After(500 * time.Millisecond):
	}
	if held, _, reason := m.Status(); held || !strings.Contains(reason, "no free subnet") {
		t.Errorf("Status = %v, %q", held, reason)
	}
	// Free a subnet: the waiting host takes it.
	if err := s.Delete(context.Background(), netip.MustParsePrefix("172.30.2.0/24")); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Acquire after a subnet was freed: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Acquire did not take the freed subnet")
	}
	if own := m.Own(); own.Subnet != netip.MustParsePrefix("172.30.2.0/24") {
		t.Errorf("got %v, want the freed 172.30.2.0/24", own.Subnet)
	}
	if n := lb.Count("no free subnet in range"); n != 1 {
		t.Errorf("range-full logged %d times, want once per distinct failure", n)
	}
	cancel()

	// Cancel while retrying returns ctx.Err() promptly.
	m2 := newTestManager(s, cfg, hostIP(10), nil)
	ctx2, cancel2 := context.WithCancel(context.Background())
	go func() { _, err := m2.Acquire(ctx2); done <- err }()
	time.Sleep(300 * time.Millisecond) // into the retry loop; not an assertion
	cancel2()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Acquire on cancel = %v", err)
		}
	case <-time.After(time.Second):
		t.Fatal("Acquire ignored cancel")
	}
}

func TestRestartReusesSubnet(t *testing.T) {
	_, cli, s, _ := newTestStore(t)
	ctx := context.Background()
	cfg := testNet()

	t.Run("by PrevSubnet", func(t *testing.T) {
		prev := netip.MustParsePrefix("172.30.77.0/24")
		m := newTestManager(s, cfg, hostIP(1), nil)
		m.cfg.PrevSubnet = prev
		l, err := m.Acquire(ctx)
		if err != nil || l.Subnet != prev {
			t.Fatalf("Acquire = %v, %v; want %s", l.Subnet, err, prev)
		}
		// PrevSubnet held by someone else → a different subnet.
		m2 := newTestManager(s, cfg, hostIP(2), nil)
		m2.cfg.PrevSubnet = prev
		l2, err := m2.Acquire(ctx)
		if err != nil || l2.Subnet == prev {
			t.Fatalf("second host got %v, %v", l2.Subnet, err)
		}
	})

	t.Run("by PublicIP", func(t *testing.T) {
		m := newTestManager(s, cfg, hostIP(3), nil)
		first, err := m.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// A restart: new manager, same PublicIP, new backend data, no subnet.env.
		m2 := newTestManager(s, cfg, hostIP(3), nil)
		m2.cfg.BackendData = []byte(`{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}`)
		second, err := m2.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if second.Subnet != first.Subnet {
			t.Fatalf("restart got %s, want the same %s", second.Subnet, first.Subnet)
		}
		if second.EtcdLease == first.EtcdLease || second.ModRevision <= first.ModRevision {
			t.Errorf("reuse did not re-attach to a fresh etcd lease: %+v then %+v", first, second)
		}
		got, _ := s.Get(ctx, first.Subnet)
		if got.Attrs.VtepMAC() != "aa:bb:cc:dd:ee:ff" || got.EtcdLease != second.EtcdLease {
			t.Errorf("value not updated: %+v", got)
		}
		// The old etcd lease was revoked, not leaked.
		ttl, err := cli.TimeToLive(ctx, clientv3.LeaseID(first.EtcdLease))
		if err != nil || ttl.TTL != -1 {
			t.Errorf("old etcd lease TTL = %v, %v; want revoked (-1)", ttl.TTL, err)
		}
	})

	t.Run("own lease outside a changed network is dropped", func(t *testing.T) {
		m := newTestManager(s, cfg, hostIP(4), nil)
		old, err := m.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		cfg2 := testNet()
		cfg2.Network = netip.MustParsePrefix("10.200.0.0/16")
		cfg2.SubnetMin, cfg2.SubnetMax = netip.MustParsePrefix("10.200.1.0/24"), netip.MustParsePrefix("10.200.9.0/24")
		m2 := newTestManager(s, cfg2, hostIP(4), nil)
		m2.cfg.PrevSubnet = old.Subnet // outside the new pool: not used
		l, err := m2.Acquire(ctx)
		if err != nil || !m2.r4.inPool(l.Subnet) {
			t.Fatalf("Acquire = %v, %v", l.Subnet, err)
		}
		if _, err := s.Get(ctx, old.Subnet); !errors.Is(err, ErrNotFound) {
			t.Errorf("stale own lease %s still there: %v", old.Subnet, err)
		}
	})
}

func TestReservationHonoured(t *testing.T) {
	_, cli, s, _ := newTestStore(t)
	ctx := context.Background()
	cfg := smallNet("172.30.50.0/24", "172.30.51.0/24") // two subnets
	p50 := netip.MustParsePrefix("172.30.50.0/24")
	p51 := netip.MustParsePrefix("172.30.51.0/24")
	owner := netip.MustParseAddr("10.64.9.50")
	if err := s.Reserve(ctx, p50, Attrs{PublicIP: owner}); err != nil {
		t.Fatal(err)
	}
	// Another host, even asking for it by PrevSubnet, never gets it.
	other := newTestManager(s, cfg, hostIP(1), nil)
	other.cfg.PrevSubnet = p50
	l, err := other.Acquire(ctx)
	if err != nil || l.Subnet != p51 {
		t.Fatalf("other host got %v, %v; want %s", l.Subnet, err, p51)
	}
	third := newTestManager(s, cfg, hostIP(2), nil)
	if _, err := third.acquireOnce(ctx, p50); !errors.Is(err, ErrRangeFull) {
		t.Fatalf("third host: %v, want ErrRangeFull (the reservation is not free)", err)
	}
	// The host with that PublicIP uses it, as a reservation.
	m := newTestManager(s, cfg, owner, nil)
	own := runManager(t, m)
	if own.Subnet != p50 || !own.Reserved() || !m.ownExp.IsZero() {
		t.Fatalf("owner got %+v, want reservation %s", own, p50)
	}
	got, err := s.Get(ctx, p50)
	if err != nil || !got.Reserved() || got.Attrs.VtepMAC() == "" {
		t.Fatalf("reservation after use = %+v, %v; want no etcd lease, backend data published", got, err)
	}
	// Never expires: no etcd lease exists that could take it away.
	resp, _ := cli.Get(ctx, s.Key(p50, netip.Prefix{}))
	if resp.Kvs[0].Lease != 0 {
		t.Errorf("reservation attached to etcd lease %x", resp.Kvs[0].Lease)
	}
	snap := waitSnap(t, m, 5*time.Second, "the other host as peer", func(s Snapshot) bool { return len(s.Peers) == 1 })
	if snap.Own.Subnet != p50 || snap.Peers[0].Subnet != p51 {
		t.Errorf("snapshot own %s peers %v", snap.Own.Subnet, peerSubnets(snap))
	}
}

func TestOwnLeaseDeletedComesBack(t *testing.T) {
	_, cli, s, _ := newTestStore(t)
	ctx := context.Background()
	log, lb := newLogger()
	m := newTestManager(s, testNet(), hostIP(1), log)
	own := runManager(t, m)
	waitSnap(t, m, 5*time.Second, "the first snapshot", func(s Snapshot) bool { return s.Own.Subnet == own.Subnet })

	var worst time.Duration
	for round := range 3 {
		cur := m.Own()
		t0 := time.Now()
		if round < 2 {
			// The seed's etcdctl rmdir …/subnets/<subnet>.
			if err := s.Delete(ctx, own.Subnet); err != nil {
				t.Fatal(err)
			}
		} else {
			// The lease expiring: etcd deletes the key with the lease.
			if _, err := cli.Revoke(ctx, clientv3.LeaseID(cur.EtcdLease)); err != nil {
				t.Fatal(err)
			}
		}
		snap := waitSnap(t, m, time.Second, "the own lease back", func(s Snapshot) bool {
			return s.Own.Subnet == own.Subnet && s.Own.ModRevision > cur.ModRevision
		})
		d := time.Since(t0)
		worst = max(worst, d)
		t.Logf("round %d: own lease %s back after %v", round, snap.Own.Subnet, d)
		got, err := s.Get(ctx, own.Subnet)
		if err != nil || got.EtcdLease == 0 || got.EtcdLease != snap.Own.EtcdLease {
			t.Fatalf("etcd after re-acquire: %+v, %v", got, err)
		}
		waitFor(t, time.Second, "Status held", func() bool { held, _, _ := m.Status(); return held })
	}
	t.Logf("worst time to get the deleted lease back: %v (bound 1s)", worst)
	// The line is logged just after the snapshot it reports is published.
	waitFor(t, time.Second, "three re-acquisitions logged", func() bool { return lb.Count("lease re-acquired") == 3 })
	// No etcd lease leaked by the three re-acquisitions.
	resp, _ := cli.Leases(ctx)
	if len(resp.Leases) != 1 {
		t.Errorf("%d etcd leases exist, want 1", len(resp.Leases))
	}
}

func TestKeepAliveRenews(t *testing.T) {
	_, cli, s, _ := newTestStore(t)
	m := newTestManager(s, testNet(), hostIP(1), nil)
	m.cfg.TTL, m.cfg.RenewMargin = 2*time.Second, 1500*time.Millisecond // renew every 0.5 s
	own := runManager(t, m)
	// Well past the TTL, the key is still there on the same etcd lease.
	deadline := time.Now().Add(4 * time.Second)
	for time.Now().Before(deadline) {
		got, err := s.Get(context.Background(), own.Subnet)
		if err != nil || got.EtcdLease != own.EtcdLease {
			t.Fatalf("lease not kept alive: %+v, %v", got, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	ttl, err := cli.TimeToLive(context.Background(), clientv3.LeaseID(own.EtcdLease))
	if err != nil || ttl.TTL <= 0 {
		t.Errorf("TTL = %v, %v", ttl.TTL, err)
	}
}

func TestPeersSnapshotCompaction(t *testing.T) {
	_, cli, s, _ := newTestStore(t)
	ctx := context.Background()
	m := newTestManager(s, testNet(), hostIP(1), nil)
	sp := s.SubnetsPrefix()
	peer := func(i int) string { return fmt.Sprintf(`{"PublicIP":"%s","BackendType":"vxlan"}`, hostIP(100+i)) }
	put(t, cli, sp+"172.30.200.0-24", peer(0))

	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := m.Acquire(actx); err != nil {
		t.Fatal(err)
	}
	first := waitSnap(t, m, time.Second, "the first snapshot", func(Snapshot) bool { return true })
	octet := func(i int) int { return 200 + i } // the peers' third octets
	skipped := "172.30.250.0-24"                // a lease the manager must skip
	if got := peerSubnets(first); !slices.Equal(got, []string{"172.30.200.0/24"}) {
		t.Errorf("first snapshot peers %v", got)
	}
	// Before Run starts watching from the list revision + 1, write and
	// compact past that revision: the watch must fail with ErrCompacted and
	// the manager must recover by re-listing.
	put(t, cli, fmt.Sprintf("%s172.30.%d.0-24", sp, octet(1)), peer(1))
	cli.Delete(ctx, sp+"172.30.200.0-24")
	put(t, cli, fmt.Sprintf("%s172.30.%d.0-24", sp, octet(2)), peer(2))
	rev := put(t, cli, sp+"garbage", "x") // malformed: skipped
	if _, err := cli.Compact(ctx, rev); err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- m.Run(runCtx) }()
	defer func() { stop(); <-done }()
	want := []string{fmt.Sprintf("172.30.%d.0/24", octet(1)), fmt.Sprintf("172.30.%d.0/24", octet(2))}
	slices.Sort(want)
	waitSnap(t, m, 5*time.Second, fmt.Sprint("peers ", want), func(s Snapshot) bool { return slices.Equal(peerSubnets(s), want) })

	// Compaction while watching: writes keep flowing, the snapshot follows.
	for i := 3; i < 13; i++ {
		put(t, cli, fmt.Sprintf("%s172.30.%d.0-24", sp, octet(i)), peer(i))
	}
	rev = put(t, cli, sp+skipped, `{"PublicIP":"172.30.9.9"}`) // PublicIP inside the overlay: skipped
	cli.Compact(ctx, rev)
	cli.Delete(ctx, fmt.Sprintf("%s172.30.%d.0-24", sp, octet(1)))
	put(t, cli, sp+"10.99.0.0-24", peer(20)) // outside the network: skipped
	want = []string{fmt.Sprintf("172.30.%d.0/24", octet(2))}
	for i := 3; i < 13; i++ {
		want = append(want, fmt.Sprintf("172.30.%d.0/24", octet(i)))
	}
	slices.Sort(want)
	snap := waitSnap(t, m, 5*time.Second, fmt.Sprint("peers ", want), func(s Snapshot) bool { return slices.Equal(peerSubnets(s), want) })
	assertSnapshotMatchesEtcd(t, s, m, snap)
}

// assertSnapshotMatchesEtcd checks the snapshot against a fresh list: every
// valid peer in etcd is in it, and nothing else.
func assertSnapshotMatchesEtcd(t *testing.T, s *Store, m *Manager, snap Snapshot) {
	t.Helper()
	leases, _, err := s.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, l := range leases {
		if l.Subnet != snap.Own.Subnet && m.r4.fits(l.Subnet) && !m.r4.network.Contains(l.Attrs.PublicIP) {
			want = append(want, l.Subnet.String())
		}
	}
	slices.SortFunc(want, func(a, b string) int {
		return netip.MustParsePrefix(a).Addr().Compare(netip.MustParsePrefix(b).Addr())
	})
	if got := peerSubnets(snap); !slices.Equal(got, want) {
		t.Errorf("snapshot peers %v, etcd says %v", got, want)
	}
}

func TestEtcdRestart(t *testing.T) {
	old := watchCheckInterval
	watchCheckInterval = 100 * time.Millisecond
	t.Cleanup(func() { watchCheckInterval = old })

	srv, _, s, _ := newTestStore(t)
	log, lb := newLogger()
	m := newTestManager(s, testNet(), hostIP(1), log)
	// Renew every second, also during the outage; the TTL outlasts the
	// outage (a stopping embedded etcd keeps expiring leases for a while).
	m.cfg.TTL, m.cfg.RenewMargin = 60*time.Second, 59*time.Second
	own := runManager(t, m)
	waitFor(t, 5*time.Second, "watch live", func() bool { _, live, _ := m.Status(); return live })

	srv.Stop()
	waitFor(t, 10*time.Second, "watch reported not live", func() bool { _, live, _ := m.Status(); return !live })
	held, _, reason := m.Status()
	if !held {
		t.Errorf("lease dropped during etcd outage (silence is not loss): %q", reason)
	}
	t.Logf("during outage: %q", reason)
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	cli2 := etcdtest.NewClient(t, srv)
	put(t, cli2, s.SubnetsPrefix()+"172.30.222.0-24", fmt.Sprintf(`{"PublicIP":"%s"}`, hostIP(2)))
	snap := waitSnap(t, m, 15*time.Second, "the peer written after the restart", func(s Snapshot) bool {
		return slices.Contains(peerSubnets(s), "172.30.222.0/24")
	})
	assertSnapshotMatchesEtcd(t, s, m, snap)
	waitFor(t, 10*time.Second, "watch live again", func() bool { _, live, _ := m.Status(); return live })
	if cur := m.Own(); cur.Subnet != own.Subnet || cur.EtcdLease != own.EtcdLease {
		t.Errorf("own lease changed across the restart: %+v → %+v", own, cur)
	}
	if lb.Count("lease re-acquired") != 0 {
		t.Errorf("lease re-acquired after an etcd restart:\n%s", lb)
	}
}

func TestDualStackAcquire(t *testing.T) {
	_, _, s, _ := newTestStore(t)
	ctx := context.Background()
	cfg := testNet()
	cfg.EnableIPv6 = true
	cfg.IPv6Network = netip.MustParsePrefix("fc00::/48")
	cfg.IPv6SubnetLen = 64
	cfg.IPv6SubnetMin = netip.MustParsePrefix("fc00:0:0:1::/64")
	cfg.IPv6SubnetMax = netip.MustParsePrefix("fc00:0:0:ffff::/64")
	m := newTestManager(s, cfg, hostIP(1), nil)
	m.cfg.PublicIPv6 = netip.MustParseAddr("fd00::1")
	l, err := m.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !m.r6.inPool(l.IPv6Subnet) || !m.r4.inPool(l.Subnet) {
		t.Fatalf("dual-stack lease %v %v", l.Subnet, l.IPv6Subnet)
	}
	got, err := s.Get(ctx, l.Subnet)
	if err != nil || got.IPv6Subnet != l.IPv6Subnet || got.Attrs.PublicIPv6 != m.cfg.PublicIPv6 {
		t.Fatalf("Get = %+v, %v", got, err)
	}
	// A restart finds both halves again by PublicIP.
	m2 := newTestManager(s, cfg, hostIP(1), nil)
	m2.cfg.PublicIPv6 = m.cfg.PublicIPv6
	l2, err := m2.Acquire(ctx)
	if err != nil || l2.Subnet != l.Subnet || l2.IPv6Subnet != l.IPv6Subnet {
		t.Fatalf("restart got %v %v (%v), want %v %v", l2.Subnet, l2.IPv6Subnet, err, l.Subnet, l.IPv6Subnet)
	}
	// An IPv4-only host never takes the IPv4 half of a dual-stack lease.
	m3 := newTestManager(s, testNet(), hostIP(2), nil)
	l3, err := m3.acquireOnce(ctx, l.Subnet)
	if err != nil || l3.Subnet == l.Subnet {
		t.Fatalf("IPv4-only host with PrevSubnet %s got %v, %v", l.Subnet, l3.Subnet, err)
	}
	// Nor can it win a race for it: the creation transaction checks both spellings.
	if _, ok, err := s.createIfFree(ctx, l.Subnet, s.Key(l.Subnet, netip.Prefix{}), `{"PublicIP":"10.9.9.9"}`, clientv3.NoLease); ok || err != nil {
		t.Errorf("createIfFree on the IPv4 half of a dual-stack key: ok=%v err=%v", ok, err)
	}
}

// One transaction that puts and deletes several leases gives every event the
// same ModRevision: all of them must reach the snapshot, not just the first.
func TestPeersMultiOpTransaction(t *testing.T) {
	_, cli, s, _ := newTestStore(t)
	ctx := context.Background()
	m := newTestManager(s, testNet(), hostIP(1), nil)
	sp := s.SubnetsPrefix()
	peer := func(i int) string { return fmt.Sprintf(`{"PublicIP":"%s","BackendType":"vxlan"}`, hostIP(100+i)) }
	for i := 0; i < 3; i++ {
		put(t, cli, fmt.Sprintf("%s172.30.%d.0-24", sp, 200+i), peer(i))
	}
	runManager(t, m)
	waitSnap(t, m, 5*time.Second, "3 peers", func(s Snapshot) bool { return len(s.Peers) == 3 })

	var ops []clientv3.Op
	for i := 0; i < 3; i++ {
		ops = append(ops, clientv3.OpDelete(fmt.Sprintf("%s172.30.%d.0-24", sp, 200+i)))
	}
	for i := 10; i < 20; i++ {
		ops = append(ops, clientv3.OpPut(fmt.Sprintf("%s172.30.%d.0-24", sp, 200+i), peer(i)))
	}
	if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
		t.Fatal(err)
	}
	var want []string
	for i := 10; i < 20; i++ {
		want = append(want, fmt.Sprintf("172.30.%d.0/24", 200+i))
	}
	snap := waitSnap(t, m, 5*time.Second, fmt.Sprint("peers ", want), func(s Snapshot) bool { return slices.Equal(peerSubnets(s), want) })
	assertSnapshotMatchesEtcd(t, s, m, snap)
}
