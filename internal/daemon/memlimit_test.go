package daemon

import (
	"errors"
	"log/slog"
	"runtime"
	"runtime/debug"
	"sync/atomic"
	"testing"
	"time"
)

func TestMemoryLimitFlagValues(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "20MiB": 20 << 20, "1GiB": 1 << 30, "8192KiB": 8 << 20, "5000000B": 5000000, "6000000": 6000000} {
		var m MemoryLimit
		if err := m.Set(in); err != nil || int64(m) != want {
			t.Errorf("Set(%q) = %d, %v; want %d", in, m, err, want)
		}
	}
	for _, bad := range []string{"", "20MB", "-1MiB", "1MiB", "x", "99999999999GiB"} {
		var m MemoryLimit
		if err := m.Set(bad); err == nil {
			t.Errorf("Set(%q) = %d; want an error", bad, m)
		}
	}
	m := MemoryLimit(DefaultMemoryLimit)
	if got := m.String(); got != "16MiB" {
		t.Errorf("default prints as %q, want 16MiB", got)
	}
}

func currentLimit() int64 { return debug.SetMemoryLimit(-1) }

func TestMemoryLimitAppliedAndRestored(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	before := currentLimit()

	// GOMEMLIMIT set: the operator's runtime setting wins.
	stop := startMemoryLimit(24<<20, func(k string) (string, bool) { return "100MiB", k == "GOMEMLIMIT" }, log)
	if got := currentLimit(); got != before {
		t.Errorf("with GOMEMLIMIT set the limit changed to %d", got)
	}
	stop()

	stop = startMemoryLimit(24<<20, noEnv, log)
	if got := currentLimit(); got != 24<<20 {
		t.Errorf("limit %d, want the floor %d", got, 24<<20)
	}
	// A second daemon in the process does not take over the process-wide limit.
	stop2 := startMemoryLimit(64<<20, noEnv, log)
	if got := currentLimit(); got != 24<<20 {
		t.Errorf("second daemon changed the limit to %d", got)
	}
	stop2()

	// A live heap above the floor raises the limit to the live heap plus a
	// quarter of it plus the runtime's other memory after a collection, so
	// the collector does not run back to back.
	big := make([][]byte, 0, 64)
	for range 64 {
		big = append(big, make([]byte, 1<<20)) // 64 MiB live
	}
	deadline := time.Now().Add(10 * time.Second)
	for currentLimit() <= 80<<20 && time.Now().Before(deadline) {
		runtime.GC()
		time.Sleep(10 * time.Millisecond) // the finalizer goroutine adjusts after the cycle
	}
	if got := currentLimit(); got <= 80<<20 || got > 128<<20 {
		t.Errorf("with 64 MiB live the limit is %d, want more than 1.25× it (80 MiB) by the runtime's own memory, and less than 2× it", got)
	}
	runtime.KeepAlive(big)
	stop()
	if got := currentLimit(); got != before {
		t.Errorf("after stop the limit is %d, want the previous %d", got, before)
	}
}

// TestMemLimitFormula: the floor while the heap fits under it, then live +
// a quarter (at least minHeadroom) + the runtime's other memory, continuous
// across the floor: a live heap near the floor's reach still leaves the
// collector room.
func TestMemLimitFormula(t *testing.T) {
	const MiB = 1 << 20
	for _, c := range []struct{ live, other, want int64 }{
		{2 * MiB, 6 * MiB, 16 * MiB},                    // a small cluster: the floor
		{7 * MiB, 8 * MiB, 7*MiB + minHeadroom + 8*MiB}, // was the floor, no room for the heap
		{20 * MiB, 8 * MiB, 33 * MiB},
		{0, 0, 16 * MiB},
	} {
		got := memLimit(16*MiB, c.live, c.other)
		if got != c.want {
			t.Errorf("memLimit(16 MiB, live %d, other %d) = %d, want %d", c.live, c.other, got, c.want)
		}
		if got < c.live+c.other+minHeadroom && got > 16*MiB {
			t.Errorf("live %d, other %d: limit %d leaves the heap less than %d to grow", c.live, c.other, got, minHeadroom)
		}
	}
}

// TestReleaseAfterFirstApply: every apply reaches the metrics hook; the
// start-up's memory is released once, after the first apply that
// succeeded (a failed first apply releases nothing yet).
func TestReleaseAfterFirstApply(t *testing.T) {
	var calls atomic.Int32
	released := make(chan struct{}, 4)
	hook := releaseAfterFirstApply(func(int, time.Duration, error) { calls.Add(1) }, time.Millisecond, func() { released <- struct{}{} })
	hook(10, time.Millisecond, errors.New("route refused"))
	select {
	case <-released:
		t.Fatal("released after a failed apply")
	case <-time.After(50 * time.Millisecond):
	}
	for range 3 {
		hook(10, time.Millisecond, nil)
	}
	select {
	case <-released:
	case <-time.After(5 * time.Second):
		t.Fatal("not released within 5s of the first successful apply")
	}
	select {
	case <-released:
		t.Fatal("released twice")
	case <-time.After(50 * time.Millisecond):
	}
	if n := calls.Load(); n != 4 {
		t.Errorf("metrics hook called %d times, want 4 (every apply)", n)
	}
}
