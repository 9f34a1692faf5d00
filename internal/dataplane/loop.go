package dataplane

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/weft-net/weft/internal/latest"
	"github.com/weft-net/weft/internal/lease"
)

// DefaultResync is how often the loop re-applies the whole desired state even
// when nothing told it to, to catch drift no netlink event reported.
const DefaultResync = 10 * time.Second

// resyncBudget paces the periodic resync: the wait before the next one is
// at least this many times what the last full pass took, so reading and
// comparing the whole kernel state costs at most ~1 % of the time however
// large the cluster (at 10,000 peers a pass that finds nothing to do takes
// ~60 ms, at 20,000 ~150 ms). Drift is still caught at once when a kernel
// event reports it; the resync is for what no event reported.
const resyncBudget = 100

const (
	retryMin = 50 * time.Millisecond
	retryMax = 5 * time.Second
)

// Loop is the one goroutine that changes the kernel (felix-style): lease
// snapshots, backend events, the retry timer and the resync timer only mark
// the state dirty; when it is dirty the loop applies the latest snapshot as a
// whole. Because every apply is level-triggered — desired state against what
// the kernel holds — coalescing inputs loses nothing, and a failed item is
// retried by simply applying again. When only the snapshot changed since the
// last successful apply, a backend that supports it applies the difference
// between the two desired states instead (see delta.go); every other trigger
// makes the next apply a full one.
type Loop struct {
	b      Backend
	resync time.Duration
	log    *slog.Logger

	// lastFull is how long the last successful full pass took (the loop's
	// goroutine only), which paces the periodic resync.
	lastFull time.Duration

	onApply    func(peers int, took time.Duration, err error)
	afterApply func(lease.Snapshot)
	onSkipped  func(reason string, peers int)
	// skipCounts is what onSkipped last heard, by SkipReasons index (the
	// loop's goroutine only).
	skipCounts [len(SkipReasons)]int

	mu        sync.Mutex
	lastApply time.Time
	lastErr   error
	applies   uint64
	warnings  []string
}

// NewLoop returns a loop around b. resync ≤ 0 means DefaultResync; each
// period is jittered by ±10 % so hosts that started together spread out.
func NewLoop(b Backend, resync time.Duration, log *slog.Logger) *Loop {
	if resync <= 0 {
		resync = DefaultResync
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Loop{b: b, resync: resync, log: log}
}

// OnApply sets a function called after every apply (metrics): the number of
// peers in the applied snapshot, how long it took and its error. Call it
// before Run; fn runs on the loop's goroutine and must be quick.
func (l *Loop) OnApply(fn func(peers int, took time.Duration, err error)) { l.onApply = fn }

// AfterApply sets a function handed the snapshot of every apply, after it
// (failed or not): what follows the peers outside the dataplane — the
// underlay guard's nf_tables sets — is written after the routes and
// neighbours, not at the same time as them. At start with 5,000 peers the
// guard's full write (2.5 MB of garbage, a collection under weftd's memory
// limit) otherwise overlaps the dataplane's first full pass. Call it before
// Run; fn runs on the loop's goroutine and must not block.
func (l *Loop) AfterApply(fn func(lease.Snapshot)) { l.afterApply = fn }

// OnSkipped sets a function told how many peers are left out for each of
// SkipReasons (metrics): every reason at 0 now, so that each series exists
// from the start, then all of them after each apply that changed one. Call
// it before Run; later calls of fn run on the loop's goroutine.
func (l *Loop) OnSkipped(fn func(reason string, peers int)) {
	l.onSkipped = fn
	for i, r := range SkipReasons {
		fn(r, l.skipCounts[i])
	}
}

// Warnings lists the peers the last apply left out and why — one
// unreachable or conflicting peer is a warning, not a failed apply, so
// /readyz stays ready and shows these. Nil when there are none, or when
// the backend does not report them.
func (l *Loop) Warnings() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.warnings)
}

// Status reports when the last apply succeeded and the error of the last
// apply (nil when it succeeded), for /readyz.
func (l *Loop) Status() (lastApply time.Time, lastErr error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lastApply, l.lastErr
}

// Applies counts apply attempts, for metrics and tests.
func (l *Loop) Applies() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.applies
}

func (l *Loop) jittered() time.Duration {
	period := max(l.resync, resyncBudget*l.lastFull)
	return time.Duration(float64(period) * (0.9 + 0.2*rand.Float64()))
}

// Run applies snapshots until ctx ends, then returns nil. Nothing is applied
// before the first snapshot: applying "no peers" at start would tear down a
// working data path left by the previous run. When snaps closes (or stalls,
// e.g. etcd is unreachable) the last snapshot stays the desired state — peer
// state is never removed for lack of news.
func (l *Loop) Run(ctx context.Context, snaps <-chan lease.Snapshot) error {
	var (
		snap  lease.Snapshot
		have  bool
		dirty bool
		// full: the next apply must read the kernel (dump and diff). Only
		// a new snapshot after a successful apply, with no kernel event, retry
		// or resync in between, may be applied as a delta.
		full    = true
		backoff time.Duration
	)
	events := l.b.Events()
	resync := time.NewTimer(l.jittered())
	defer resync.Stop()
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()

	for {
		if dirty && have && ctx.Err() == nil {
			dirty = false
			err := l.apply(ctx, snap, full)
			// A failed item may have left the kernel anywhere between the two
			// states: only a full pass knows where.
			full = err != nil
			if err != nil && ctx.Err() == nil {
				backoff = min(max(2*backoff, retryMin), retryMax, l.resync)
				retry.Reset(backoff)
			} else {
				backoff = 0
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case s, ok := <-snaps:
			if !ok {
				snaps = nil // keep the last snapshot; keep reconciling it
				continue
			}
			// A burst of snapshots costs one apply.
			snap, _ = latest.Drain(snaps, s)
			have, dirty = true, true
		case <-events:
			dirty, full = true, true
		case <-retry.C:
			dirty, full = true, true
		case <-resync.C:
			dirty, full = true, true
			resync.Reset(l.jittered())
		}
	}
}

func (l *Loop) apply(ctx context.Context, snap lease.Snapshot, full bool) error {
	start := time.Now()
	var err error
	kind := "full"
	if d, ok := l.b.(deltaApplier); ok && !full {
		kind = "delta"
		err = d.ApplyDelta(ctx, snap)
	} else {
		err = l.b.Apply(ctx, snap)
	}
	took := time.Since(start)
	if kind == "full" && err == nil {
		l.lastFull = took
	}
	var (
		warnings []string
		counts   [len(SkipReasons)]int
	)
	if r, ok := l.b.(skipReporter); ok {
		for _, s := range r.skipped() {
			warnings = append(warnings, s.String())
			if i := slices.Index(SkipReasons[:], s.reason); i >= 0 {
				counts[i]++
			}
		}
	}

	l.mu.Lock()
	prev := l.lastErr
	l.applies++
	l.lastErr = err
	if err == nil {
		l.lastApply = time.Now()
	}
	l.warnings = warnings
	l.mu.Unlock()
	if l.onSkipped != nil && counts != l.skipCounts {
		for i, r := range SkipReasons {
			l.onSkipped(r, counts[i])
		}
	}
	l.skipCounts = counts
	if l.onApply != nil {
		l.onApply(len(snap.Peers), took, err)
	}
	if l.afterApply != nil {
		l.afterApply(snap)
	}

	switch {
	case err != nil && (prev == nil || prev.Error() != err.Error()):
		// Logged when it changes, not on every retry.
		l.log.Warn("dataplane apply failed; retrying", "err", err, "peers", len(snap.Peers), "revision", snap.Revision)
	case err == nil && prev != nil:
		l.log.Info("dataplane apply recovered", "peers", len(snap.Peers), "took", took)
	default:
		l.log.Debug("dataplane applied", "kind", kind, "peers", len(snap.Peers), "revision", snap.Revision, "took", took, "err", err)
	}
	return err
}
