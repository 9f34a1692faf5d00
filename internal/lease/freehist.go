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

import (
	"cmp"
	"context"
	"net/netip"
	"slices"
	"strings"
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

// loadHistory replays the deletes under the subnets prefix from the last
// historyWindow revisions up to rev into h (see the file comment). Errors
// only shorten the history, so none is returned.
func (m *Manager) loadHistory(ctx context.Context, h *freeHistory, rev int64) (events int) {
	from := max(rev-historyWindow+1, 1)
	ctx, cancel := context.WithTimeout(ctx, historyTimeout)
	defer cancel()
	prefix := m.s.SubnetsPrefix()
	for attempt := 0; attempt < 2; attempt++ {
		wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		// Only deletes matter: etcd leaves the puts out (the window holds
		// every lease written in it — at 5,000 peers preloaded in one
		// transaction, 5,000 events decoded for nothing).
		wch := m.cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(from), clientv3.WithFilterPut())
		// A progress notification comes only once the watcher has caught
		// up with the present: it marks the end of the replay. etcd
		// answers a progress request only while every watcher of the
		// stream is synced, and syncs a watcher from the past in a loop
		// that runs every 100 ms, so the request is repeated often: each
		// costs one small round trip, and the replay ends ≤ 10 ms after
		// etcd caught up rather than at the next 50 ms tick.
		progress := time.NewTicker(10 * time.Millisecond)
		compacted := int64(0)
	read:
		for {
			select {
			case <-ctx.Done():
				break read
			case <-progress.C:
				_ = m.cli.RequestProgress(wctx)
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
				if w.IsProgressNotify() && w.Header.Revision >= rev {
					break read
				}
				if n := len(w.Events); n > 0 && w.Events[n-1].Kv.ModRevision >= rev {
					break read
				}
			}
		}
		progress.Stop()
		wcancel()
		if compacted == 0 || compacted <= from {
			break
		}
		m.log.Debug("lease history compacted; replaying what is left", "from", from, "compacted", compacted)
		from = compacted
	}
	return events
}
