package lease

import (
	"fmt"
	"sync"
	"time"
)

// clipLen is how much of a string read from etcd goes into a log line or a
// map of remembered keys: enough to recognise a real key or value, never a
// 200 KB key written to fill our memory or our logs.
const clipLen = 160

// clip returns s, or its first bytes with its length and a checksum when it
// is longer than clipLen: distinct long keys stay distinct, at a bounded size.
func clip(s string) string {
	if len(s) <= clipLen {
		return s
	}
	var h uint32 = 2166136261 // FNV-1a
	for i := 0; i < len(s); i++ {
		h = (h ^ uint32(s[i])) * 16777619
	}
	return fmt.Sprintf("%s…(%d bytes, fnv %08x)", s[:clipLen-40], len(s), h)
}

// warnLimit lets at most burst warnings through per period; the first one
// of the next period says how many were dropped. Counting (the metrics) is
// never limited, only the log.
type warnLimit struct {
	period time.Duration
	burst  int

	mu      sync.Mutex
	start   time.Time
	n       int
	dropped int
}

// allow reports whether a warning may be logged now, and how many were
// dropped since the last one that was.
func (w *warnLimit) allow(now time.Time) (ok bool, dropped int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if now.Sub(w.start) >= w.period {
		w.start, w.n = now, 0
	}
	if w.n >= w.burst {
		w.dropped++
		return false, 0
	}
	w.n++
	dropped, w.dropped = w.dropped, 0
	return true, dropped
}
