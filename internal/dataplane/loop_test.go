package dataplane

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/lease"
)

// recorder is a Backend that only records what the loop asks of it: the
// loop's scheduling is what is under test here, not the kernel.
type recorder struct {
	mu      sync.Mutex
	applied []int64 // snapshot revisions, in order
	fail    int     // fail this many applies
	block   chan struct{}
	events  chan struct{}
}

func (r *recorder) Init(context.Context) (Published, int, error) { return Published{}, 1500, nil }
func (r *recorder) Events() <-chan struct{}                      { return r.events }
func (r *recorder) Close() error                                 { return nil }
func (r *recorder) Apply(ctx context.Context, s lease.Snapshot) error {
	if r.block != nil {
		<-r.block
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.applied = append(r.applied, s.Revision)
	if r.fail > 0 {
		r.fail--
		return errors.New("injected failure")
	}
	return nil
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.applied)
}

func (r *recorder) last() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.applied) == 0 {
		return -1
	}
	return r.applied[len(r.applied)-1]
}

func TestLoopWaitsForFirstSnapshot(t *testing.T) {
	r := &recorder{events: make(chan struct{}, 1)}
	snaps, _ := runLoop(t, r, 20*time.Millisecond)
	r.events <- struct{}{}
	time.Sleep(100 * time.Millisecond) // several resync periods: still nothing may be applied
	if n := r.count(); n != 0 {
		t.Fatalf("applied %d times before any snapshot; a restart would wipe the data path", n)
	}
	snaps <- lease.Snapshot{Revision: 7}
	eventually(t, time.Second, "first apply", func() (bool, string) { return r.last() == 7, "" })
}

func TestLoopCoalescesAndKeepsLast(t *testing.T) {
	r := &recorder{block: make(chan struct{})}
	ch := make(chan lease.Snapshot, 16)
	l := NewLoop(r, time.Hour, testLog(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- l.Run(ctx, ch) }()
	ch <- lease.Snapshot{Revision: 1}
	// The first apply is blocked; meanwhile a burst queues up.
	for rev := int64(2); rev <= 10; rev++ {
		ch <- lease.Snapshot{Revision: rev}
	}
	close(ch) // the lease source went away (etcd unreachable): keep the last state
	close(r.block)
	eventually(t, time.Second, "latest applied", func() (bool, string) { return r.last() == 10, "" })
	if n := r.count(); n > 3 {
		t.Errorf("burst of 10 snapshots cost %d applies; want them coalesced", n)
	}
	if _, err := l.Status(); err != nil {
		t.Errorf("Status err = %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run = %v, want nil on cancel", err)
	}
}

func TestLoopRetriesAndResyncs(t *testing.T) {
	r := &recorder{fail: 3}
	snaps, l := runLoop(t, r, 200*time.Millisecond)
	snaps <- lease.Snapshot{Revision: 1}
	eventually(t, 2*time.Second, "retried until success", func() (bool, string) {
		last, err := l.Status()
		return err == nil && !last.IsZero(), ""
	})
	if n := r.count(); n != 4 {
		t.Errorf("applies = %d, want 3 failures + 1 success (backoff, not a busy loop)", n)
	}
	n := r.count()
	eventually(t, 2*time.Second, "periodic resync", func() (bool, string) { return r.count() >= n+2, "" })
}

func TestLoopEventTriggersApply(t *testing.T) {
	r := &recorder{events: make(chan struct{}, 1)}
	snaps, _ := runLoop(t, r, time.Hour)
	snaps <- lease.Snapshot{Revision: 1}
	eventually(t, time.Second, "first apply", func() (bool, string) { return r.count() == 1, "" })
	r.events <- struct{}{}
	eventually(t, time.Second, "apply on event", func() (bool, string) { return r.count() == 2, "" })
}

// AfterApply (the underlay guard's feed) sees every applied snapshot, after
// the backend has applied it, failed applies included.
func TestLoopAfterApply(t *testing.T) {
	r := &recorder{fail: 1}
	ch := make(chan lease.Snapshot, 1)
	l := NewLoop(r, time.Hour, testLog(t))
	var (
		mu    sync.Mutex
		after []int64
	)
	l.AfterApply(func(s lease.Snapshot) {
		mu.Lock()
		defer mu.Unlock()
		if r.last() != s.Revision {
			t.Errorf("AfterApply(%d) before the backend applied it (last applied %d)", s.Revision, r.last())
		}
		after = append(after, s.Revision)
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- l.Run(ctx, ch) }()
	ch <- lease.Snapshot{Revision: 1} // fails once, then is retried
	eventually(t, 2*time.Second, "snapshot 1 applied", func() (bool, string) { _, err := l.Status(); return r.count() == 2 && err == nil, "" })
	ch <- lease.Snapshot{Revision: 2}
	eventually(t, 2*time.Second, "AfterApply of both", func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		return len(after) == 3 && after[2] == 2, ""
	})
	cancel()
	<-done
	mu.Lock()
	defer mu.Unlock()
	if after[0] != 1 || after[1] != 1 {
		t.Errorf("AfterApply saw %v, want [1 1 2] (the failed apply of 1, its retry, then 2)", after)
	}
}

// TestResyncPacedByFullPass: the periodic resync waits at least
// resyncBudget times the last full pass, so its cost stays bounded as the
// cluster grows; a fast pass keeps the configured period.
func TestResyncPacedByFullPass(t *testing.T) {
	l := NewLoop(nil, 10*time.Second, nil)
	if d := l.jittered(); d < 9*time.Second || d > 11*time.Second {
		t.Errorf("no pass yet: next resync in %v, want 10 s ± 10 %%", d)
	}
	l.lastFull = 20 * time.Millisecond // 2 s at the budget: under the period
	if d := l.jittered(); d < 9*time.Second || d > 11*time.Second {
		t.Errorf("20 ms pass: next resync in %v, want 10 s ± 10 %%", d)
	}
	l.lastFull = 300 * time.Millisecond
	if d := l.jittered(); d < 27*time.Second || d > 33*time.Second {
		t.Errorf("300 ms pass: next resync in %v, want 30 s ± 10 %%", d)
	}
}
