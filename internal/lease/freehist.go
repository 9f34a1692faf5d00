package lease

// Allocation order: a subnet freed a minute ago may still be routed to its
// old host by a peer whose watch lags, or by a flanneld that missed the
// delete, so a new host should get it last. The manager keeps a small
// free-history — subnet → etcd revision of its delete — and picks, among
// the free subnets, one never seen freed (at random, so that hosts joining
// together do not race for one key), else the one freed longest ago.
//
// Where the history comes from, cheapest first:
//   - while running, the deletes on the manager's own watch, and subnets
//     missing from a re-list (noted at the re-list's revision);
//   - before the first acquisition, a replay of etcd's history of the
//     subnets prefix over the last historyWindow revisions (a watch from a
//     past revision). etcd keeps history only back to its last compaction:
//     a compacted start is moved up to the compaction revision, and what is
//     older is simply unknown — those subnets count as never freed. Key
//     versions and reads at a past revision cannot do better: a deleted key
//     has no version left, and a past read fails once compacted.
//
// The history is a preference, never a rule: when every free subnet was
// freed recently, the oldest is taken rather than failing.
//
// The replay costs a new host up to 100 ms at start (etcd serves a watch
// from the past only on its next unsynced-watcher pass, every 100 ms), plus
// etcd's scan of the window, so it is skipped when reads etcd answers at
// once prove it could not change the choice:
//   - candidateQuiet: the subnet picked without the history had no key at
//     any revision of the window, so it was not freed in it: it is in the
//     first class (never freed) whatever the replay would say of the
//     others. One count of one key per revision (~revisions/128
//     transactions), so it scales with the window, not with the peers —
//     at 5,000+ peers the replay and the proof below were on the start's
//     path (issue 12's host-gw 5,000 and 20,000 first-route figures). It
//     is tried only on windows of at most candidateMaxRevs revisions (a
//     young cluster's whole history), where weftd's prefetch leaves the
//     window to it rather than scan it beside the start;
//   - quietWindow: no delete under the prefix in the whole window: then
//     the replay could only return nothing (costs revisions × keys).
// Only when the picked subnet was freed in the window (or etcd cannot say:
// a larger or compacted window, an error) is the history replayed, and the
// pick made again from it.

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

const (
	// maxFreeHistory bounds the history (about 50 bytes an entry); the
	// oldest entries are dropped first, which only makes them look
	// never-freed, the least recent class anyway.
	maxFreeHistory = 4096
	// historyWindow is how many revisions back the start-up replay looks.
	// etcd serves a past watch by scanning that range of its whole
	// keyspace (every key, not only ours), so on a busy shared etcd the
	// window stays small; on flannel's own etcd it spans months of joins.
	historyWindow = 10000
	// historyTimeout bounds the start-up replay: acquisition does not wait
	// longer for a preference.
	historyTimeout = 3 * time.Second
	// quietMaxRevs and quietMaxWork bound quietWindow's proof: it asks etcd
	// for one count per revision of the window, and each count walks the
	// prefix's keys in etcd's index (revisions × keys lookups, ~70 ns each:
	// BenchmarkQuietWindow, 51 revisions × 1,000 keys in ~3 ms). At the
	// bound it costs ~8 ms, well under the replay's wait (0–100 ms); past
	// it the replay is the cheaper way.
	quietMaxRevs = 1024
	quietMaxWork = 1 << 17
	// quietTxnOps is etcd's default --max-txn-ops: the counts go in
	// transactions of at most this many reads, sent at once.
	quietTxnOps = 128
	// candidateTries bounds the subnets candidateQuiet checks before the
	// replay: in a cluster where most free subnets were freed in the
	// window, the replay is the cheaper way.
	candidateTries = 2
	// candidateMaxRevs bounds candidateQuiet's window: one read per
	// revision, ~5-11 µs each on a 2-core machine (BenchmarkCandidateQuiet:
	// 10,000 revisions 101-115 ms at load 4.5), so past ~2,000 revisions
	// the proof costs as much as the replay's wait (0-100 ms, mostly
	// overlapped by the prefetch) and the replay decides.
	candidateMaxRevs = 2048
)

// freeHistory maps subnets to the etcd revision of their last delete.
type freeHistory struct {
	at map[netip.Prefix]int64
}

func (h *freeHistory) note(p netip.Prefix, rev int64) {
	if !p.IsValid() {
		return
	}
	if h.at == nil {
		h.at = map[netip.Prefix]int64{}
	}
	if old, ok := h.at[p]; ok && old >= rev {
		return
	}
	h.at[p] = rev
	if len(h.at) > maxFreeHistory+maxFreeHistory/8 {
		h.trim()
	}
}

// trim drops the oldest entries down to maxFreeHistory. It runs once per
// maxFreeHistory/8 notes, not on each: a bulk delete of 5,000 leases must
// not scan the whole history once per lease.
func (h *freeHistory) trim() {
	type entry struct {
		p   netip.Prefix
		rev int64
	}
	es := make([]entry, 0, len(h.at))
	for p, r := range h.at {
		es = append(es, entry{p, r})
	}
	// Oldest first; the deletes of one transaction share a revision, so
	// exactly the surplus goes, whatever the ties.
	slices.SortFunc(es, func(a, b entry) int { return cmp.Compare(a.rev, b.rev) })
	for _, e := range es[:len(es)-maxFreeHistory] {
		delete(h.at, e.p)
	}
}

// noteKey records the delete of a lease key at rev.
func (h *freeHistory) noteKey(prefix, key string, rev int64) {
	name, ok := strings.CutPrefix(key, prefix)
	if !ok {
		return
	}
	v4, _, err := ParseKey(name)
	if err == nil {
		h.note(v4, rev)
	}
}

// pick returns a subnet of r that is not taken: one never seen freed when
// there is one (at random), else the one freed longest ago.
func (h *freeHistory) pick(r subnetRange, taken map[netip.Prefix]bool) (netip.Prefix, bool) {
	if len(h.at) > 0 {
		avoid := make(map[netip.Prefix]bool, len(taken)+len(h.at))
		for p := range taken {
			avoid[p] = true
		}
		for p := range h.at {
			avoid[p] = true
		}
		if p, ok := pickFree(r, avoid); ok {
			return p, true
		}
	} else {
		return pickFree(r, taken)
	}
	var best netip.Prefix
	var bestRev int64 = -1
	for p, rev := range h.at {
		if taken[p] || !r.inPool(p) {
			continue
		}
		if bestRev < 0 || rev < bestRev || rev == bestRev && p.Addr().Less(best.Addr()) {
			best, bestRev = p, rev
		}
	}
	return best, bestRev >= 0
}

// historyFrom is the first revision of the window the start-up replay
// looks at when the list was read at rev.
func historyFrom(rev int64) int64 { return max(rev-historyWindow+1, 1) }

// loadHistory replays the deletes under the subnets prefix from the last
// historyWindow revisions up to rev into h (see the file comment). Errors
// only shorten the history, so none is returned.
func (m *Manager) loadHistory(ctx context.Context, h *freeHistory, rev int64) (events int) {
	ctx, cancel := context.WithTimeout(ctx, historyTimeout)
	defer cancel()
	var target atomic.Int64
	target.Store(rev)
	events, _ = replayDeletes(ctx, m.cli, m.s.SubnetsPrefix(), historyFrom(rev), h, &target, nil, m.log)
	return events
}

// replayDeletes notes into h the deletes under prefix from revision from
// on, until it has caught up with revision target (a target of 0: not
// known yet, keep going; wake says it changed) or ctx ends. It returns the
// events seen and the revision it caught up with (0: it did not).
func replayDeletes(ctx context.Context, cli *clientv3.Client, prefix string, from int64, h *freeHistory,
	target *atomic.Int64, wake <-chan struct{}, log *slog.Logger) (events int, reached int64) {
	for attempt := 0; attempt < 2; attempt++ {
		wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		// Only deletes matter: etcd leaves the puts out (the window holds
		// every lease written in it — at 5,000 peers preloaded in one
		// transaction, 5,000 events decoded for nothing).
		wch := cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(from), clientv3.WithFilterPut())
		// A progress notification comes only once the watcher has caught
		// up with the present: it marks the end of the replay. etcd
		// answers a progress request only while every watcher of the
		// stream is synced, and syncs a watcher from the past in a loop
		// that runs every 100 ms, so the request is repeated often: each
		// costs one small round trip, and the replay ends ≤ 10 ms after
		// etcd caught up rather than at the next 50 ms tick. Once caught
		// up with an unknown target (a prefetch), the watch just follows
		// the deletes until the target is known.
		progress := time.NewTicker(10 * time.Millisecond)
		compacted := int64(0)
		done := func() bool { t := target.Load(); return t > 0 && reached >= t }
	read:
		for !done() {
			select {
			case <-ctx.Done():
				break read
			case <-wake:
				if !done() {
					progress.Reset(10 * time.Millisecond)
					_ = cli.RequestProgress(wctx)
				}
			case <-progress.C:
				if reached > 0 && target.Load() == 0 {
					progress.Stop() // caught up; wake restarts it
					continue
				}
				_ = cli.RequestProgress(wctx)
			case w, ok := <-wch:
				if !ok {
					break read
				}
				if w.CompactRevision != 0 {
					compacted = w.CompactRevision
					break read
				}
				if w.Err() != nil {
					break read
				}
				for _, ev := range w.Events {
					if ev.Type == mvccpb.DELETE {
						h.noteKey(prefix, string(ev.Kv.Key), ev.Kv.ModRevision)
					}
					events++
				}
				if w.IsProgressNotify() {
					reached = max(reached, w.Header.Revision)
				}
				if n := len(w.Events); n > 0 {
					reached = max(reached, w.Events[n-1].Kv.ModRevision)
				}
			}
		}
		progress.Stop()
		wcancel()
		if done() || compacted == 0 || compacted <= from {
			break
		}
		log.Debug("lease history compacted; replaying what is left", "from", from, "compacted", compacted)
		from, reached = compacted, 0
	}
	return events, reached
}

// HistoryPrefetch is the start-up replay begun before the manager needs
// it. A new host (no subnet.env) has weftd start it as soon as etcd
// answers: etcd's wait for its next unsynced-watcher pass (up to 100 ms)
// then runs alongside the rest of the start (network config, interface,
// backend) instead of after it. The manager takes it over
// (ManagerConfig.History) when it needs a new subnet, and replays by itself
// when the prefetch did not catch up (stopped, timed out, etcd failing).
type HistoryPrefetch struct {
	cancel context.CancelFunc
	target atomic.Int64
	wake   chan struct{}
	done   chan struct{}
	// Set by the replay before done is closed.
	h       freeHistory
	from    int64
	events  int
	reached int64
}

// PrefetchHistory starts replaying the deletes under s's subnets prefix
// over the last historyWindow revisions and on; it runs at most
// historyTimeout. Stop releases it when it is not handed to a manager.
//
// When the window is small enough for the manager's check of the subnet it
// picks (candidateQuiet), the prefetch does not replay: that check answers
// at once in nearly every cluster, and the replay's scan of the window
// would only compete with the start for etcd's CPU (on a 2-core host the
// list of 5,000 leases took ~20 ms longer beside it). The manager replays
// by itself when its check fails.
func PrefetchHistory(ctx context.Context, s *Store, log *slog.Logger) *HistoryPrefetch {
	return prefetchHistory(ctx, s, log, candidateMaxRevs)
}

// prefetchHistory is PrefetchHistory replaying only windows of more than
// minRevs revisions (tests: 0, always).
func prefetchHistory(ctx context.Context, s *Store, log *slog.Logger, minRevs int64) *HistoryPrefetch {
	ctx, cancel := context.WithTimeout(ctx, historyTimeout)
	p := &HistoryPrefetch{cancel: cancel, wake: make(chan struct{}, 1), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		// The present revision anchors the window; the count is the
		// cheapest read that returns it.
		resp, err := s.cli.Get(ctx, s.SubnetsPrefix(), clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			log.Debug("lease history prefetch: no revision to start from; the manager replays by itself", "err", err)
			return
		}
		p.from = historyFrom(resp.Header.Revision)
		if resp.Header.Revision-p.from+2 <= minRevs {
			log.Debug("lease history prefetch: a small window, left to the check of the picked subnet", "from", p.from, "to", resp.Header.Revision)
			return
		}
		p.events, p.reached = replayDeletes(ctx, s.cli, s.SubnetsPrefix(), p.from, &p.h, &p.target, p.wake, log)
	}()
	return p
}

// Stop ends the prefetch and waits for it.
func (p *HistoryPrefetch) Stop() {
	if p == nil {
		return
	}
	p.cancel()
	<-p.done
}

// take waits for the prefetch to catch up with rev and returns its
// history; ok is false when it did not (the caller replays by itself). The
// window it covers starts no later than historyFrom(rev): it was anchored
// at an earlier revision.
func (p *HistoryPrefetch) take(ctx context.Context, rev int64) (h freeHistory, events int, ok bool) {
	if p == nil {
		return freeHistory{}, 0, false
	}
	p.target.Store(rev)
	select {
	case p.wake <- struct{}{}:
	default:
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		p.Stop()
	}
	if p.reached < rev || p.from > historyFrom(rev) {
		return freeHistory{}, 0, false
	}
	return p.h, p.events, true
}

// quietWindow reports whether etcd proves that no key under the subnets
// prefix was deleted in the revisions [from, rev], given leases, the list of
// the prefix at rev. Then a replay of the window's deletes would return
// nothing, and it is skipped. Any error, bound or doubt answers false: the
// replay decides.
//
// The proof, from what etcd serves at once (reads at past revisions; no
// watch): let n(r) be the number of keys under the prefix at revision r and
// c(r) the number of keys alive at rev that were created at r. With no
// delete in the window, every key created in it is alive at rev, so
// n(r) - n(r-1) = c(r) for every r in [from, rev]. Conversely, if there were
// deletes, let d be the last revision holding one: a key created at d is
// alive at rev (its delete would be later than d, and etcd refuses a put
// and a delete of one key in one transaction), so n(d) - n(d-1) = c(d) -
// deletes(d) < c(d). The counts must also cover every key: a key under the
// prefix that is not a lease (absent from leases) could hide a delete, so
// n(rev) must be len(leases).
func (m *Manager) quietWindow(ctx context.Context, from, rev int64, leases []Lease) bool {
	lo := max(from-1, 1) // n(0) = 0: etcd's store is empty at revision 1 and before
	revs := rev - lo + 1
	if from < 1 || revs < 1 || revs > quietMaxRevs || revs*int64(len(leases)+1) > quietMaxWork {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	prefix := m.s.SubnetsPrefix()
	n := make([]int64, revs) // n[i] = n(lo+i)
	err := m.countAtRevisions(ctx, prefix, clientv3.GetPrefixRangeEnd(prefix), lo, rev, func(r, count int64) bool {
		n[r-lo] = count
		return true
	})
	if err != nil {
		// A compacted window, a server with a lower --max-txn-ops, no
		// permission: the replay copes with each.
		m.log.Debug("lease history: no quiet-window proof; replaying", "err", err)
		return false
	}
	if n[revs-1] != int64(len(leases)) {
		return false
	}
	created := make(map[int64]int64)
	for _, l := range leases {
		if l.CreateRevision >= from {
			created[l.CreateRevision]++
		}
	}
	prev := int64(0) // n(lo-1) when lo is 1, i.e. from is 1
	i0 := int64(0)
	if lo == from-1 {
		prev, i0 = n[0], 1
	}
	for i := i0; i < revs; i++ {
		r := lo + i
		if n[i]-prev != created[r] {
			return false
		}
		prev = n[i]
	}
	return true
}

// candidateQuiet reports whether etcd proves that subnet p was not freed in
// the revisions [from, rev]: no key of p (its IPv4 key, alone or with an
// IPv6 part) existed at any revision of [from-1, rev]. A delete at d needs
// the key alive at d-1, so an empty range at every revision rules out
// every delete of the window; the range is wider than p's lease keys
// (FormatKey(p)+"&"+1 also holds keys that are not leases), which can only
// answer false. Unlike quietWindow each read counts one key, not the
// prefix, so the cost is the window's revisions whatever the number of
// peers. An error says there is no answer (a window over the bound, a
// compacted one, a server with a lower --max-txn-ops, no permission): the
// replay copes with each.
func (m *Manager) candidateQuiet(ctx context.Context, p netip.Prefix, from, rev int64) (bool, error) {
	lo := max(from-1, 1) // nothing exists at revision 0
	revs := rev - lo + 1
	if from < 1 || revs < 1 || revs > candidateMaxRevs {
		return false, fmt.Errorf("window [%d, %d]: over %d revisions, the replay is cheaper", from, rev, candidateMaxRevs)
	}
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	key := m.s.Key(p, netip.Prefix{})
	end := key + "'" // '&' + 1: the key and key&<IPv6 part>
	var busy atomic.Bool
	err := m.countAtRevisions(ctx, key, end, lo, rev, func(_, count int64) bool {
		if count != 0 {
			busy.Store(true)
		}
		return count == 0
	})
	if err != nil {
		return false, err
	}
	return !busy.Load(), nil
}

// countAtRevisions counts the keys in [key, end) at every revision of [lo,
// rev] and hands each count to seen, which returns false to stop its batch
// early; the counts go in transactions of quietTxnOps reads, sent at once,
// so seen is called from several goroutines (each revision once). The
// first error is returned: a compacted revision, a server with a lower
// --max-txn-ops, no permission.
func (m *Manager) countAtRevisions(ctx context.Context, key, end string, lo, rev int64, seen func(r, count int64) bool) error {
	errs := make(chan error, (rev-lo+1)/quietTxnOps+1)
	var wg sync.WaitGroup
	for start := lo; start <= rev; start += quietTxnOps {
		stop := min(start+quietTxnOps-1, rev)
		wg.Go(func() {
			ops := make([]clientv3.Op, 0, stop-start+1)
			for r := start; r <= stop; r++ {
				ops = append(ops, clientv3.OpGet(key, clientv3.WithRange(end), clientv3.WithCountOnly(), clientv3.WithRev(r)))
			}
			resp, err := m.cli.Txn(ctx).Then(ops...).Commit()
			if err != nil {
				errs <- fmt.Errorf("count %s at revisions %d-%d: %w", key, start, stop, err)
				return
			}
			if len(resp.Responses) != len(ops) {
				errs <- fmt.Errorf("count %s at revisions %d-%d: %d answers to %d reads", key, start, stop, len(resp.Responses), len(ops))
				return
			}
			for i, r := range resp.Responses {
				rr := r.GetResponseRange()
				if rr == nil {
					errs <- fmt.Errorf("count %s at revision %d: no range answer", key, start+int64(i))
					return
				}
				if !seen(start+int64(i), rr.Count) {
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// newPicks is what pickNew learned during one acquisition before the
// history was loaded.
type newPicks struct {
	checks int
	freed  map[netip.Prefix]bool // picked, and freed in the window
}

// pickNew returns the subnet to try next among those not taken, never
// freed (at random) or freed longest ago. Before the history is loaded (a
// new host) it first tries to do without it: a subnet picked without it
// that candidateQuiet proves was not freed in the window is in the first
// class whatever the replay says of the others, so it is the answer the
// history would allow. Otherwise the history is loaded (loadFreed) and the
// pick made from it.
func (m *Manager) pickNew(ctx context.Context, taken map[netip.Prefix]bool, leases []Lease, rev int64, np *newPicks) (netip.Prefix, bool) {
	from := historyFrom(rev)
	for np.checks < candidateTries && !m.replayOnly {
		m.mu.Lock()
		if m.freedLoaded {
			defer m.mu.Unlock()
			return m.freed.pick(m.r4, taken)
		}
		avoid := taken
		if len(np.freed) > 0 {
			avoid = maps.Clone(taken)
			for p := range np.freed {
				avoid[p] = true
			}
		}
		v4, ok := m.freed.pick(m.r4, avoid)
		_, known := m.freed.at[v4]
		m.mu.Unlock()
		if !ok || known {
			break // no never-freed subnet left to check: the history orders the rest
		}
		np.checks++
		quiet, err := m.candidateQuiet(ctx, v4, from, rev)
		if err != nil {
			m.log.Debug("lease history: no proof for the picked subnet; replaying", "subnet", v4, "err", err)
			break
		}
		if quiet {
			m.log.Debug("lease history: the picked subnet was not freed in the window, nothing to replay",
				"subnet", v4, "from", from, "to", rev)
			return v4, true
		}
		if np.freed == nil {
			np.freed = map[netip.Prefix]bool{}
		}
		np.freed[v4] = true
	}
	m.loadFreed(ctx, leases, rev)
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.freed.pick(m.r4, taken)
}

// loadFreed loads the history of the window before rev into m.freed, once:
// nothing when quietWindow proves the window holds no delete, else the
// prefetched replay when it caught up, else a replay of its own.
func (m *Manager) loadFreed(ctx context.Context, leases []Lease, rev int64) {
	m.mu.Lock()
	loaded := m.freedLoaded
	m.mu.Unlock()
	if loaded {
		return
	}
	var h freeHistory
	if from := historyFrom(rev); m.quietWindow(ctx, from, rev, leases) {
		m.cfg.History.Stop()
		m.log.Debug("lease history: no delete in the window, nothing to replay", "from", from, "to", rev)
	} else if ph, n, ok := m.cfg.History.take(ctx, rev); ok {
		h = ph
		m.log.Debug("lease history replayed (prefetched)", "events", n, "freedSubnets", len(h.at))
	} else {
		n := m.loadHistory(ctx, &h, rev)
		m.log.Debug("lease history replayed", "events", n, "freedSubnets", len(h.at))
	}
	m.mu.Lock()
	for p, r := range h.at {
		m.freed.note(p, r)
	}
	m.freedLoaded = true
	m.mu.Unlock()
}
