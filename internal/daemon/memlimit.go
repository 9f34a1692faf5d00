package daemon

import (
	"fmt"
	"log/slog"
	"math"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultMemoryLimit is the default of -memory-limit.
//
// Why a limit at all: with GOGC=100 alone the heap grows to twice what a
// burst keeps live. A full pass over 5,000 peers (a start, a periodic
// resync) keeps ~6 MB live for a moment, and the heap grew to twice that.
// Below the floor the runtime collects a little more often during such a
// burst instead; at 1,000 peers the heap never gets near it, so the idle
// cost is nil. Above the floor the limit follows the live heap (see
// memLimiter), so a larger cluster never collects in a loop. The default was
// chosen from bench/overlay runs at 5,000 peers with the limit varied (peak
// RSS against start-to-converged time; figures in BENCHMARKS.md).
const DefaultMemoryLimit = 16 << 20

// MemoryLimit is a byte count given as GOMEMLIMIT spells it: a number with
// an optional B, KiB, MiB or GiB suffix. 0 turns the limit off.
type MemoryLimit int64

func (m *MemoryLimit) String() string {
	v := int64(*m)
	switch {
	case v == 0:
		return "0"
	case v%(1<<30) == 0:
		return strconv.FormatInt(v>>30, 10) + "GiB"
	case v%(1<<20) == 0:
		return strconv.FormatInt(v>>20, 10) + "MiB"
	case v%(1<<10) == 0:
		return strconv.FormatInt(v>>10, 10) + "KiB"
	}
	return strconv.FormatInt(v, 10)
}

// Set parses a size like GOMEMLIMIT does (decimal, binary suffixes).
func (m *MemoryLimit) Set(s string) error {
	num, unit := s, int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}} {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			num, unit = n, u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64/unit {
		return fmt.Errorf("%q: want a byte count such as 20MiB (suffix B, KiB, MiB or GiB; 0 = off)", s)
	}
	if v := n * unit; v != 0 && v < 4<<20 {
		return fmt.Errorf("%q: below 4MiB the runtime would collect without pause", s)
	}
	*m = MemoryLimit(n * unit)
	return nil
}

// memLimiter keeps the runtime's soft memory limit at the floor while the
// heap a small cluster needs fits under it, which bounds the heap's growth
// during a burst. Above that the limit follows the heap the last collection
// found live: live + a quarter of it (at least minHeadroom) + the runtime's
// memory that is neither heap objects nor free pages (stacks, metadata,
// unused room in spans), which the runtime holds against the limit too. So
// the collector never runs back to back: each cycle has at least a quarter
// of the live heap to allocate before the next. Without that last term, at
// 10,000 peers (13 MB live, 6.5 MB besides) the heap goal was the live heap
// itself and weftd collected every 20 ms, idle or not (BENCHMARKS.md, issue
// 12); with half the live heap as headroom, the heap kept 1.5 × live, which
// at 20,000 peers (20 MB live) was most of the RSS above the binary's pages.
// A quarter keeps a collection to a few per full resync pass (their
// garbage is some MB) while the heap stays near what the peers need.
//
// The limit is one formula across the floor, not a switch: a live heap just
// under the floor's reach (the start-up's lease list, 7 MB live with 8 MB
// of runtime memory besides) otherwise left the collector no room at all,
// and it ran a hundred times in half a second.
type memLimiter struct {
	floor   int64
	prev    int64 // the limit in force before, restored on stop
	stopped atomic.Bool
	sample  []metrics.Sample
	last    int64
}

// headroomDiv and minHeadroom size the heap's growth allowed between two
// collections above the floor: live/headroomDiv, at least minHeadroom.
// The minimum is what a join or leave's garbage needs: each makes ~0.2 MB
// (the peer slice copied for the new snapshot, netlink buffers whose pool a
// collection empties), and with the lease and desired-state cuts of issue
// 12 the live heap at 10,000 peers fell to ~8 MB, whose quarter (2 MB) made
// a collection every ~10 joins: join p50 2.07 ms against 0.80 at 1,000.
// With 4 MiB: 1.12 ms, p99 6.00 -> 2.93 ms, for 0.9 MiB more peak RSS at
// 20,000 peers (36.5 -> 37.4 MiB; bench/overlay -figure scale10k,scale20k).
const (
	headroomDiv = 4
	minHeadroom = 4 << 20
)

// limiterActive: the limit is process-wide, so only the first daemon of a
// process (tests run several) owns it.
var limiterActive atomic.Bool

// startMemoryLimit applies -memory-limit unless GOMEMLIMIT is set (the
// operator's runtime setting wins) or the limit is 0. It returns a stop
// func that restores the previous limit.
func startMemoryLimit(floor MemoryLimit, lookupEnv func(string) (string, bool), log *slog.Logger) (stop func()) {
	if v, ok := lookupEnv("GOMEMLIMIT"); ok && v != "" {
		log.Debug("GOMEMLIMIT is set; -memory-limit ignored", "GOMEMLIMIT", v)
		return func() {}
	}
	if floor == 0 || !limiterActive.CompareAndSwap(false, true) {
		return func() {}
	}
	l := &memLimiter{floor: int64(floor), sample: []metrics.Sample{
		{Name: "/gc/heap/live:bytes"},
		{Name: "/memory/classes/total:bytes"},
		{Name: "/memory/classes/heap/released:bytes"},
		{Name: "/memory/classes/heap/free:bytes"},
		{Name: "/memory/classes/heap/objects:bytes"},
	}}
	l.prev = debug.SetMemoryLimit(l.floor)
	l.last = l.floor
	l.arm()
	var once sync.Once
	return func() {
		once.Do(func() {
			l.stopped.Store(true)
			debug.SetMemoryLimit(l.prev)
			limiterActive.Store(false)
		})
	}
}

// gcSentinel is garbage as soon as it is armed; its finalizer runs after
// the next collection. It holds a pointer so that it is never batched with
// other small objects by the tiny allocator (whose finalizers may not run).
type gcSentinel struct{ l *memLimiter }

func (l *memLimiter) arm() {
	runtime.SetFinalizer(&gcSentinel{l: l}, func(s *gcSentinel) {
		if s.l.stopped.Load() {
			return
		}
		s.l.adjust()
		s.l.arm()
	})
}

// adjust runs on the finalizer goroutine after each collection.
func (l *memLimiter) adjust() {
	metrics.Read(l.sample)
	var v [5]int64 // live, total, released, free, objects
	for i, s := range l.sample {
		if s.Value.Kind() != metrics.KindUint64 {
			return
		}
		v[i] = int64(min(s.Value.Uint64(), math.MaxInt64/4))
	}
	// Free pages are left out: counting them would raise the limit by what
	// the last cycle freed, cycle after cycle.
	limit := memLimit(l.floor, v[0], max(v[1]-v[2]-v[3]-v[4], 0))
	if limit != l.last {
		debug.SetMemoryLimit(limit)
		l.last = limit
	}
}

// memLimit is the soft limit for a live heap of live bytes and other bytes
// of the runtime's memory besides heap objects and free pages (memLimiter).
func memLimit(floor, live, other int64) int64 {
	return max(floor, live+max(live/headroomDiv, minHeadroom)+other)
}

// releaseDelay is how long after the first successful apply the start-up's
// freed memory goes back to the OS: the guard's write of every peer
// (AfterApply) runs after the apply and its garbage should go too.
const releaseDelay = time.Second

// releaseAfterFirstApply wraps an OnApply hook so that, once, some time
// after the first apply that succeeded, release runs (debug.FreeOSMemory
// in weftd): the heap the start-up used and freed — the lease list, the
// first full pass's kernel dumps and writes, the collector's headroom
// above them — goes back to the OS at once, not at the scavenger's pace.
// VmHWM keeps the start-up's peak (a high-water mark); the RSS from then on
// is what the cluster's state needs (issue 12).
func releaseAfterFirstApply(next func(int, time.Duration, error), delay time.Duration, release func()) func(int, time.Duration, error) {
	var done atomic.Bool
	return func(peers int, took time.Duration, err error) {
		if next != nil {
			next(peers, took, err)
		}
		if err == nil && !done.Swap(true) {
			time.AfterFunc(delay, release)
		}
	}
}
