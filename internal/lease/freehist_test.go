package lease

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

func TestFreeHistoryPick(t *testing.T) {
	r := v4Range(smallNet("172.30.1.0/24", "172.30.4.0/24"))
	p := func(s string) netip.Prefix { return netip.MustParsePrefix(s) }
	for _, tc := range []struct {
		name  string
		taken []string
		freed map[string]int64
		want  []string // any of these
	}{
		{"no history: any free", []string{"172.30.1.0/24"}, nil, []string{"172.30.2.0/24", "172.30.3.0/24", "172.30.4.0/24"}},
		{"never-freed first", nil, map[string]int64{"172.30.1.0/24": 5, "172.30.2.0/24": 9, "172.30.3.0/24": 7}, []string{"172.30.4.0/24"}},
		{"oldest freed when all were freed", []string{"172.30.4.0/24"}, map[string]int64{"172.30.1.0/24": 50, "172.30.2.0/24": 9, "172.30.3.0/24": 70}, []string{"172.30.2.0/24"}},
		{"taken freed ones are skipped", []string{"172.30.2.0/24", "172.30.4.0/24"}, map[string]int64{"172.30.1.0/24": 50, "172.30.2.0/24": 9, "172.30.3.0/24": 70}, []string{"172.30.1.0/24"}},
		{"outside the pool ignored", []string{"172.30.1.0/24", "172.30.2.0/24", "172.30.3.0/24"}, map[string]int64{"172.30.9.0/24": 1, "172.30.4.0/24": 3}, []string{"172.30.4.0/24"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var h freeHistory
			for s, rev := range tc.freed {
				h.note(p(s), rev)
			}
			taken := map[netip.Prefix]bool{}
			for _, s := range tc.taken {
				taken[p(s)] = true
			}
			for range 20 { // random among the never-freed: try several times
				got, ok := h.pick(r, taken)
				if !ok {
					t.Fatalf("pick: nothing, want one of %v", tc.want)
				}
				found := false
				for _, w := range tc.want {
					found = found || got == p(w)
				}
				if !found {
					t.Fatalf("pick = %v, want one of %v", got, tc.want)
				}
			}
		})
	}
	var h freeHistory
	h.note(p("172.30.1.0/24"), 3)
	all := map[netip.Prefix]bool{p("172.30.1.0/24"): true, p("172.30.2.0/24"): true, p("172.30.3.0/24"): true, p("172.30.4.0/24"): true}
	if got, ok := h.pick(r, all); ok {
		t.Errorf("pick in a full range = %v, want none", got)
	}
	// Trimmed in batches: never more than an eighth over the bound, back
	// to the bound when it trims, the oldest going first.
	for i := range maxFreeHistory + maxFreeHistory/8 { // with the entry above, one over: a trim
		h.note(netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24), int64(100+i))
		if len(h.at) > maxFreeHistory+maxFreeHistory/8 {
			t.Fatalf("history holds %d entries, over the bound %d + 1/8", len(h.at), maxFreeHistory)
		}
	}
	if len(h.at) != maxFreeHistory {
		t.Errorf("history holds %d entries after a trim, want the bound %d", len(h.at), maxFreeHistory)
	}
	if _, ok := h.at[p("172.30.1.0/24")]; ok {
		t.Errorf("the oldest entry survived eviction")
	}
}

// On real etcd: subnets freed at known revisions, then a new host (a fresh
// manager: its history comes from etcd's) and a running one both take the
// never-used subnet first, then the one freed longest ago; after a
// compaction the replay still works from what is left.
func TestAllocationOrderRealEtcd(t *testing.T) {
	_, cli, s, _ := newTestStore(t)
	log, _ := newLogger()
	cfg := smallNet("172.30.1.0/24", "172.30.4.0/24")
	del := func(sub string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := cli.Delete(ctx, s.Key(netip.MustParsePrefix(sub), netip.Prefix{})); err != nil {
			t.Fatal(err)
		}
	}
	val := func(i int) string { return `{"PublicIP":"` + hostIP(100+i).String() + `","PublicIPv6":null}` }
	// Used and freed in this order: .3 first (longest ago), then .1, then .2.
	put(t, cli, s.Key(netip.MustParsePrefix("172.30.3.0/24"), netip.Prefix{}), val(3))
	put(t, cli, s.Key(netip.MustParsePrefix("172.30.1.0/24"), netip.Prefix{}), val(1))
	put(t, cli, s.Key(netip.MustParsePrefix("172.30.2.0/24"), netip.Prefix{}), val(2))
	del("172.30.3.0/24")
	del("172.30.1.0/24")
	del("172.30.2.0/24")

	want := []string{"172.30.4.0/24", "172.30.3.0/24", "172.30.1.0/24", "172.30.2.0/24"}
	for i, w := range want {
		m := newTestManager(s, cfg, hostIP(i+1), log)
		own := runManager(t, m)
		if own.Subnet.String() != w {
			t.Fatalf("host %d got %v, want %s (never used first, then freed longest ago)", i+1, own.Subnet, w)
		}
	}
}

// After a compaction etcd no longer knows the deletes before it: the
// replay starts again at the compaction revision, a subnet freed before it
// counts as never freed, and one freed after it is still taken last.
func TestAllocationOrderAfterCompaction(t *testing.T) {
	_, cli, s, _ := newTestStore(t)
	log, _ := newLogger()
	cfg := smallNet("172.30.1.0/24", "172.30.3.0/24")
	val := func(i int) string { return `{"PublicIP":"` + hostIP(100+i).String() + `","PublicIPv6":null}` }
	k := func(sub string) string { return s.Key(netip.MustParsePrefix(sub), netip.Prefix{}) }
	put(t, cli, k("172.30.1.0/24"), val(1))
	put(t, cli, k("172.30.2.0/24"), val(2))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Delete(ctx, k("172.30.1.0/24")); err != nil {
		t.Fatal(err)
	}
	// The events of the compaction revision itself stay: compact at a
	// write after the delete.
	resp, err := cli.Put(ctx, "/weft-test/other", "x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Delete(ctx, k("172.30.2.0/24")); err != nil {
		t.Fatal(err)
	}
	for i := range 5 { // .1 and .3 look never freed and are picked at random
		m := newTestManager(s, cfg, hostIP(i+1), log)
		m.freedLoaded = false
		var h freeHistory
		m.loadHistory(ctx, &h, resp.Header.Revision+1) // the delete of .2
		if _, ok := h.at[netip.MustParsePrefix("172.30.2.0/24")]; !ok || len(h.at) != 1 {
			t.Fatalf("replay after compaction: %v, want only 172.30.2.0/24's delete", h.at)
		}
	}
	m := newTestManager(s, cfg, hostIP(1), log)
	own := runManager(t, m)
	if own.Subnet.String() == "172.30.2.0/24" {
		t.Fatalf("got %v, the subnet freed last", own.Subnet)
	}
}

// A running host learns deletes from its own watch: when its lease is
// deleted and its subnet taken meanwhile, it gets the subnet freed longest
// ago rather than the one freed a moment before.
func TestAllocationOrderLiveWatch(t *testing.T) {
	_, cli, s, _ := newTestStore(t)
	log, lb := newLogger()
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(lb.String())
		}
	})
	cfg := smallNet("172.30.1.0/24", "172.30.4.0/24")
	m := newTestManager(s, cfg, hostIP(1), log)
	own := runManager(t, m)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	val := func(i int) string { return `{"PublicIP":"` + hostIP(100+i).String() + `","PublicIPv6":null}` }
	var others []string
	for i := 1; i <= 4; i++ {
		if sub := fmt.Sprintf("172.30.%d.0/24", i); sub != own.Subnet.String() {
			others = append(others, sub)
		}
	}
	k := func(sub string) string { return s.Key(netip.MustParsePrefix(sub), netip.Prefix{}) }
	// others[0] freed first (oldest), others[1] freed last; others[2] stays.
	for _, sub := range others {
		put(t, cli, k(sub), val(len(sub)))
	}
	for _, sub := range others[:2] {
		if _, err := cli.Delete(ctx, k(sub)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, "the deletes seen on the watch", func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		return len(m.freed.at) >= 2
	})
	// Our key is deleted and our subnet at once taken by someone else, in
	// one transaction, so that the manager cannot take it back first (etcd
	// refuses a delete and a put of one key in one transaction; a delete
	// then a put let the manager re-take its subnet in between, and the
	// put was then a rewrite of our key, which it restores: 1 run in ~10).
	// The other holder's key is the dual-stack form of our subnet, which
	// createIfFree counts as taken: prev is gone, others[0] and others[1]
	// are free.
	theirs := s.Key(own.Subnet, netip.MustParsePrefix("fd00:9::/64"))
	if _, err := cli.Txn(ctx).Then(clientv3.OpDelete(k(own.Subnet.String())), clientv3.OpPut(theirs, val(9))).Commit(); err != nil {
		t.Fatal(err)
	}
	got := waitSnap(t, m, 10*time.Second, "a new own subnet", func(sn Snapshot) bool {
		return sn.Own.Subnet.IsValid() && sn.Own.Subnet != own.Subnet
	})
	if got.Own.Subnet.String() != others[0] {
		t.Fatalf("re-acquired %v, want %s (freed longest ago; %s was freed later, our own subnet just now)", got.Own.Subnet, others[0], others[1])
	}
}

// TestFreeHistoryTrimTies: the deletes of one transaction share a revision;
// a bulk delete larger than the bound still trims to it (a trim keeping
// every entry of the cut-off revision ran again on every note).
func TestFreeHistoryTrimTies(t *testing.T) {
	var h freeHistory
	for i := range 2 * maxFreeHistory {
		h.note(netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24), 7)
		if len(h.at) > maxFreeHistory+maxFreeHistory/8 {
			t.Fatalf("after %d deletes at one revision the history holds %d entries, over the bound", i+1, len(h.at))
		}
	}
}

// TestQuietWindowExact: quietWindow's proof against etcd's own history. A
// random mix of what happens to a subnets prefix — creates, rewrites,
// deletes, expiries (an etcd lease revoked), multi-key transactions that
// create one lease and delete another, a key that is not a lease, writes
// elsewhere in the keyspace — and, at checkpoints, every window [from,
// rev]: quietWindow never says "no delete" when a watch from revision 1
// shows one, and says it whenever there was none and every key is a lease.
func TestQuietWindowExact(t *testing.T) {
	_, cli, s, _ := newTestStore(t)
	log, _ := newLogger()
	m := newTestManager(s, testNet(), hostIP(1), log)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rng := rand.New(rand.NewPCG(12, 16))
	k := func(i int) string {
		return s.Key(netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 30, byte(1 + i), 0}), 24), netip.Prefix{})
	}
	val := `{"PublicIP":"10.64.0.9","PublicIPv6":null}`
	bad := s.SubnetsPrefix() + "not-a-lease"
	alive := map[string]bool{}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	do := func() {
		a, b := k(rng.IntN(8)), k(rng.IntN(8))
		switch op := rng.IntN(10); {
		case op < 3: // create or rewrite
			put(t, cli, a, val)
			alive[a] = true
		case op < 5:
			if alive[a] {
				_, err := cli.Delete(ctx, a)
				must(err)
				delete(alive, a)
			}
		case op == 5: // one transaction: a created or rewritten, b deleted
			if a != b && alive[b] {
				_, err := cli.Txn(ctx).Then(clientv3.OpPut(a, val), clientv3.OpDelete(b)).Commit()
				must(err)
				alive[a] = true
				delete(alive, b)
			}
		case op == 6: // two leases in one transaction
			if a != b {
				_, err := cli.Txn(ctx).Then(clientv3.OpPut(a, val), clientv3.OpPut(b, val)).Commit()
				must(err)
				alive[a], alive[b] = true, true
			}
		case op == 7: // an expiry: the key goes with its etcd lease
			if !alive[a] {
				g, err := cli.Grant(ctx, 60)
				must(err)
				put(t, cli, a, val, clientv3.WithLease(g.ID))
				_, err = cli.Revoke(ctx, g.ID)
				must(err)
			}
		case op == 8: // elsewhere in the keyspace
			put(t, cli, "/weft-test/other/x", val)
			_, err := cli.Delete(ctx, "/weft-test/other/x")
			must(err)
		default: // not a lease, under the prefix
			if alive[bad] {
				_, err := cli.Delete(ctx, bad)
				must(err)
				delete(alive, bad)
			} else {
				put(t, cli, bad, "x")
				alive[bad] = true
			}
		}
	}
	deletesAt := func(rev int64) []int64 { // revisions of the prefix's deletes up to rev
		wctx, wcancel := context.WithCancel(ctx)
		defer wcancel()
		var revs []int64
		for w := range cli.Watch(wctx, s.SubnetsPrefix(), clientv3.WithPrefix(), clientv3.WithRev(1), clientv3.WithProgressNotify()) {
			must(w.Err())
			for _, ev := range w.Events {
				if ev.Kv.ModRevision > rev {
					return revs
				}
				if ev.Type == clientv3.EventTypeDelete {
					revs = append(revs, ev.Kv.ModRevision)
				}
			}
			if w.Header.Revision >= rev && (len(w.Events) == 0 || w.Events[len(w.Events)-1].Kv.ModRevision >= rev) {
				return revs
			}
			_ = cli.RequestProgress(wctx)
		}
		t.Fatal("watch closed")
		return nil
	}
	proved, disproved := 0, 0
	for step := 1; step <= 60; step++ {
		do()
		if step > 6 && step%10 != 0 { // early checkpoints: windows without deletes
			continue
		}
		leases, rev, err := s.List(ctx)
		must(err)
		dels := deletesAt(rev)
		for from := int64(1); from <= rev; from++ {
			deleted := slices.ContainsFunc(dels, func(d int64) bool { return d >= from })
			got := m.quietWindow(ctx, from, rev, leases)
			if got && deleted {
				t.Fatalf("window [%d, %d]: quietWindow says no delete, etcd's history has deletes at %v", from, rev, dels)
			}
			if !got && !deleted && !alive[bad] {
				t.Fatalf("window [%d, %d]: no delete in etcd's history (deletes at %v) and every key a lease, but quietWindow found no proof", from, rev, dels)
			}
			if got {
				proved++
			} else if deleted {
				disproved++
			}
		}
	}
	if proved == 0 || disproved == 0 {
		t.Fatalf("the random history proved %d windows quiet and found deletes in %d: both cases must occur", proved, disproved)
	}
	t.Logf("%d windows proved quiet, %d with deletes", proved, disproved)
}

// A new host on a prefix with no delete in the window takes a subnet
// without the replay (quietWindow); with one it still replays, and the
// freed subnet goes last (TestAllocationOrderRealEtcd for the order).
func TestAcquireSkipsReplayOnQuietWindow(t *testing.T) {
	_, cli, s, _ := newTestStore(t)
	cfg := smallNet("172.30.1.0/24", "172.30.3.0/24")
	val := `{"PublicIP":"10.64.0.9","PublicIPv6":null}`
	k := func(sub string) string { return s.Key(netip.MustParsePrefix(sub), netip.Prefix{}) }
	put(t, cli, k("172.30.1.0/24"), val)
	log, lb := newLogger()
	replayOnly := func(m *Manager) *Manager { m.replayOnly = true; return m } // the candidate check would answer first
	own1 := runManager(t, replayOnly(newTestManager(s, cfg, hostIP(1), log)))
	if lb.Count("no delete in the window") != 1 || lb.Count("lease history replayed") != 0 {
		t.Fatalf("a new host on a window without deletes: want the quiet-window proof and no replay; log:\n%s", lb)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Delete(ctx, k("172.30.1.0/24")); err != nil {
		t.Fatal(err)
	}
	log, lb = newLogger()
	own := runManager(t, replayOnly(newTestManager(s, cfg, hostIP(2), log)))
	if lb.Count("no delete in the window") != 0 || lb.Count("lease history replayed") != 1 {
		t.Fatalf("a new host after a delete: want the replay; log:\n%s", lb)
	}
	want := "172.30.2.0/24"
	if own1.Subnet.String() == want {
		want = "172.30.3.0/24"
	}
	if own.Subnet.String() != want {
		t.Fatalf("host 2 got %v, want %s (host 1 holds %v, .1 was freed in the window)", own.Subnet, want, own1.Subnet)
	}
}

// BenchmarkQuietWindow: quietWindow's proof over 51 revisions with 1,000
// leases (etcd's index walked once per revision: its cost bound,
// quietMaxWork).
func BenchmarkQuietWindow(b *testing.B) {
	_, cli, s, _ := newTestStore(b)
	log, _ := newLogger()
	m := newTestManager(s, testNet(), hostIP(1), log)
	ctx := context.Background()
	for i := range 40 {
		put(b, cli, fmt.Sprintf("/weft-test/other/%d", i), "x")
	}
	var ops []clientv3.Op
	for i := range 1000 {
		ops = append(ops, clientv3.OpPut(s.Key(netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24), netip.Prefix{}),
			`{"PublicIP":"10.64.0.9","PublicIPv6":null}`))
	}
	for i := 0; i < len(ops); i += 100 {
		if _, err := cli.Txn(ctx).Then(ops[i : i+100]...).Commit(); err != nil {
			b.Fatal(err)
		}
	}
	leases, rev, err := s.List(ctx)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		if !m.quietWindow(ctx, 1, rev, leases) {
			b.Fatal("no proof for a window of puts only")
		}
	}
}

// TestHistoryPrefetch: a prefetch started before the manager (weftd starts
// it as soon as etcd answers, for a new host) holds the deletes from before
// its start and those while it waits, and the manager takes it over: the
// never-used subnet first, then the one freed longest ago. A stopped
// prefetch leaves the replay to the manager, with the same answer.
func TestHistoryPrefetch(t *testing.T) {
	_, cli, s, _ := newTestStore(t)
	cfg := smallNet("172.30.1.0/24", "172.30.4.0/24")
	val := `{"PublicIP":"10.64.0.9","PublicIPv6":null}`
	k := func(sub string) string { return s.Key(netip.MustParsePrefix(sub), netip.Prefix{}) }
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	del := func(sub string) {
		t.Helper()
		if _, err := cli.Delete(ctx, k(sub)); err != nil {
			t.Fatal(err)
		}
	}
	for _, sub := range []string{"172.30.3.0/24", "172.30.1.0/24", "172.30.2.0/24"} {
		put(t, cli, k(sub), val)
	}
	del("172.30.3.0/24")
	del("172.30.1.0/24")
	log, lb := newLogger()
	p := prefetchHistory(ctx, s, log, 0)
	// Long enough for etcd's unsynced-watcher pass (100 ms): the prefetch
	// has caught up and follows the live deletes when .2 goes.
	time.Sleep(250 * time.Millisecond)
	del("172.30.2.0/24")
	m := newTestManager(s, cfg, hostIP(1), log)
	m.cfg.History = p
	m.replayOnly = true // the candidate check would answer first
	own := runManager(t, m)
	if own.Subnet.String() != "172.30.4.0/24" || lb.Count("lease history replayed (prefetched)") != 1 {
		t.Fatalf("host 1 with a prefetch got %v, want the never-used 172.30.4.0/24 from the prefetched history; log:\n%s", own.Subnet, lb)
	}
	log, lb = newLogger()
	p = prefetchHistory(ctx, s, log, 0)
	m = newTestManager(s, cfg, hostIP(2), log)
	m.cfg.History = p
	m.replayOnly = true // the candidate check would answer first
	if own = runManager(t, m); own.Subnet.String() != "172.30.3.0/24" || lb.Count("lease history replayed (prefetched)") != 1 {
		t.Fatalf("host 2 with a prefetch got %v, want 172.30.3.0/24, freed longest ago (.1, .2 later); log:\n%s", own.Subnet, lb)
	}
	log, lb = newLogger()
	p = prefetchHistory(ctx, s, log, 0)
	p.Stop()
	m = newTestManager(s, cfg, hostIP(3), log)
	m.cfg.History = p
	m.replayOnly = true // the candidate check would answer first
	if own = runManager(t, m); own.Subnet.String() != "172.30.1.0/24" || lb.Count("lease history replayed (prefetched)") != 0 || lb.Count("lease history replayed") != 1 {
		t.Fatalf("host 3 with a stopped prefetch got %v, want its own replay and 172.30.1.0/24 (.2 freed later); log:\n%s", own.Subnet, lb)
	}
}

// BenchmarkNewHostAfterDelete: a new host's acquisition when its window
// holds a delete (no quiet-window proof: the replay runs), replayed by the
// manager or prefetched 20 ms before (the start's other work between etcd
// answering and the acquisition; weftd's start takes about that), or, as
// weftd does, first the check of the subnet it picks (candidate: the
// freed subnet is one of 256). Reports the acquisition's own time,
// acquire-ms: etcd delays a watch from the past by up to 100 ms (its
// unsynced-watcher loop).
func BenchmarkNewHostAfterDelete(b *testing.B) {
	for _, mode := range []string{"replay", "prefetch", "candidate"} {
		prefetch := mode != "replay"
		b.Run(mode, func(b *testing.B) {
			_, cli, s, _ := newTestStore(b)
			log, _ := newLogger()
			ctx := context.Background()
			var total time.Duration
			for i := range b.N {
				// A start at a random point of etcd's 100 ms loop, as
				// in life (back to back, the runs lock to its phase).
				time.Sleep(rand.N(100 * time.Millisecond))
				k := s.Key(netip.MustParsePrefix("172.30.255.0/24"), netip.Prefix{})
				put(b, cli, k, `{"PublicIP":"10.64.0.9","PublicIPv6":null}`)
				if _, err := cli.Delete(ctx, k); err != nil {
					b.Fatal(err)
				}
				m := newTestManager(s, testNet(), hostIP(i+1), log)
				m.replayOnly = mode != "candidate"
				if prefetch {
					m.cfg.History = prefetchHistory(ctx, s, log, 0)
				}
				time.Sleep(20 * time.Millisecond)
				t0 := time.Now()
				own, err := m.Acquire(ctx)
				total += time.Since(t0)
				m.cfg.History.Stop()
				if err != nil {
					b.Fatal(err)
				}
				if _, err := cli.Delete(ctx, s.Key(own.Subnet, netip.Prefix{})); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N), "acquire-ms")
		})
	}
}

// TestCandidateQuietExact: candidateQuiet's proof against etcd's own
// history. A random mix under the subnets prefix — IPv4 and dual-stack keys
// of a few subnets, deletes, expiries, transactions that create one and
// delete another, a key that is not a lease inside a subnet's key range,
// writes elsewhere — and, at checkpoints, every window [from, rev] and
// every subnet: the proof holds exactly when no key of the subnet's range
// is alive at rev and none was deleted in the window (a watch from
// revision 1 tells).
func TestCandidateQuietExact(t *testing.T) {
	_, cli, s, _ := newTestStore(t)
	log, _ := newLogger()
	m := newTestManager(s, testNet(), hostIP(1), log)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rng := rand.New(rand.NewPCG(7, 16))
	const subnets = 4
	sub := func(i int) netip.Prefix {
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 30, byte(1 + i), 0}), 24)
	}
	// The keys of subnet i: IPv4 only, dual stack, and one that is not a
	// lease but sorts inside the range candidateQuiet counts.
	keys := func(i int) []string {
		k := s.Key(sub(i), netip.Prefix{})
		return []string{k, s.Key(sub(i), netip.MustParsePrefix(fmt.Sprintf("fd00:%d::/64", i))), k + "#"}
	}
	var all []string
	owner := map[string]int{}
	for i := range subnets {
		for _, k := range keys(i) {
			all = append(all, k)
			owner[k] = i
		}
	}
	val := `{"PublicIP":"10.64.0.9","PublicIPv6":null}`
	alive := map[string]bool{}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	do := func() {
		a, b := all[rng.IntN(len(all))], all[rng.IntN(len(all))]
		switch op := rng.IntN(8); {
		case op < 3:
			put(t, cli, a, val)
			alive[a] = true
		case op < 5:
			if alive[a] {
				_, err := cli.Delete(ctx, a)
				must(err)
				delete(alive, a)
			}
		case op == 5: // one transaction: a created or rewritten, b deleted
			if a != b && alive[b] {
				_, err := cli.Txn(ctx).Then(clientv3.OpPut(a, val), clientv3.OpDelete(b)).Commit()
				must(err)
				alive[a] = true
				delete(alive, b)
			}
		case op == 6: // an expiry
			if !alive[a] {
				g, err := cli.Grant(ctx, 60)
				must(err)
				put(t, cli, a, val, clientv3.WithLease(g.ID))
				_, err = cli.Revoke(ctx, g.ID)
				must(err)
			}
		default:
			put(t, cli, "/weft-test/other/x", val)
		}
	}
	// The revisions of each subnet's deletes up to rev.
	deletesAt := func(rev int64) map[int][]int64 {
		wctx, wcancel := context.WithCancel(ctx)
		defer wcancel()
		dels := map[int][]int64{}
		// etcd says it caught up only when asked; with no event after
		// revision 1 nothing else would come.
		go func() {
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-wctx.Done():
					return
				case <-tick.C:
					_ = cli.RequestProgress(wctx)
				}
			}
		}()
		for w := range cli.Watch(wctx, s.SubnetsPrefix(), clientv3.WithPrefix(), clientv3.WithRev(1), clientv3.WithProgressNotify()) {
			must(w.Err())
			for _, ev := range w.Events {
				if ev.Kv.ModRevision > rev {
					return dels
				}
				if i, ok := owner[string(ev.Kv.Key)]; ok && ev.Type == clientv3.EventTypeDelete {
					dels[i] = append(dels[i], ev.Kv.ModRevision)
				}
			}
			if w.Header.Revision >= rev && (len(w.Events) == 0 || w.Events[len(w.Events)-1].Kv.ModRevision >= rev) {
				return dels
			}
		}
		t.Fatal("watch closed")
		return nil
	}
	proved, disproved := 0, 0
	for step := 1; step <= 60; step++ {
		do()
		if step%10 != 0 && step > 4 {
			continue
		}
		_, rev, err := s.List(ctx)
		must(err)
		dels := deletesAt(rev)
		for i := range subnets {
			held := slices.ContainsFunc(keys(i), func(k string) bool { return alive[k] })
			for from := int64(1); from <= rev; from++ {
				deleted := slices.ContainsFunc(dels[i], func(d int64) bool { return d >= from })
				got, err := m.candidateQuiet(ctx, sub(i), from, rev)
				must(err)
				if want := !held && !deleted; got != want {
					t.Fatalf("subnet %v, window [%d, %d]: candidateQuiet %v, want %v (a key alive at rev: %v; deletes at %v)",
						sub(i), from, rev, got, want, held, dels[i])
				}
				if got {
					proved++
				} else if deleted && !held {
					disproved++
				}
			}
		}
	}
	if proved == 0 || disproved == 0 {
		t.Fatalf("the random history proved %d (subnet, window) pairs unfreed and found deletes in %d: both cases must occur", proved, disproved)
	}
	t.Logf("%d (subnet, window) pairs proved unfreed, %d freed", proved, disproved)
}

// A new host whose window holds a delete takes a subnet without the replay
// when the subnet it picks was not freed in the window, checking a second
// one when the first was; once only the freed subnet is left, it replays
// and takes it (the order of several freed ones: TestAllocationOrderRealEtcd).
func TestAcquireCandidateSkipsReplay(t *testing.T) {
	_, cli, s, _ := newTestStore(t)
	cfg := smallNet("172.30.1.0/24", "172.30.3.0/24")
	val := `{"PublicIP":"10.64.0.9","PublicIPv6":null}`
	k := s.Key(netip.MustParsePrefix("172.30.2.0/24"), netip.Prefix{})
	put(t, cli, k, val)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Delete(ctx, k); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	// As weftd starts a new host: with a prefetch, which leaves a window
	// this small to the check.
	withPrefetch := func(m *Manager, log *slog.Logger) *Manager {
		m.cfg.History = PrefetchHistory(ctx, s, log)
		t.Cleanup(m.cfg.History.Stop)
		return m
	}
	for i := range 2 {
		log, lb := newLogger()
		own := runManager(t, withPrefetch(newTestManager(s, cfg, hostIP(i+1), log), log))
		if own.Subnet.String() == "172.30.2.0/24" || got[own.Subnet.String()] {
			t.Fatalf("host %d got %v (hosts before: %v); want a never-used subnet", i+1, own.Subnet, got)
		}
		got[own.Subnet.String()] = true
		if lb.Count("lease history replayed") != 0 || lb.Count("the picked subnet was not freed in the window") != 1 {
			t.Fatalf("host %d: want the candidate check and no replay; log:\n%s", i+1, lb)
		}
	}
	log, lb := newLogger()
	own := runManager(t, withPrefetch(newTestManager(s, cfg, hostIP(3), log), log))
	if own.Subnet.String() != "172.30.2.0/24" || lb.Count("lease history replayed") != 1 || lb.Count("lease history replayed (prefetched)") != 0 {
		t.Fatalf("host 3 got %v, want the freed 172.30.2.0/24, the only one left, after a replay of its own; log:\n%s", own.Subnet, lb)
	}
}

// BenchmarkCandidateQuiet: candidateQuiet over its largest window
// (candidateMaxRevs revisions) with 5,000 leases: one count of one key per
// revision, so the peers do not matter.
func BenchmarkCandidateQuiet(b *testing.B) {
	_, cli, s, _ := newTestStore(b)
	log, _ := newLogger()
	m := newTestManager(s, testNet(), hostIP(1), log)
	ctx := context.Background()
	putScaleLeases(b, cli, s, 5000)
	var rev int64
	for i := range candidateMaxRevs {
		rev = put(b, cli, fmt.Sprintf("/weft-test/other/%d", i%10), "x")
	}
	p := netip.MustParsePrefix("172.30.255.0/24")
	b.ResetTimer()
	for range b.N {
		if ok, err := m.candidateQuiet(ctx, p, rev-candidateMaxRevs+2, rev); !ok || err != nil {
			b.Fatal("no proof for a never-used subnet", err)
		}
	}
}
