package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/weft-net/weft/internal/metrics"
	"github.com/weft-net/weft/internal/udpbpf"
)

// leaseStatus and loopStatus are what /readyz needs of the lease manager
// and the reconcile loop (*lease.Manager and *dataplane.Loop).
type leaseStatus interface {
	Status() (leaseHeld bool, watchLive bool, reason string)
}

type loopStatus interface {
	Status() (lastApply time.Time, lastErr error)
}

// warner is what the lease manager and the loop may also offer: conditions
// that do not make the node unready but need an operator (another lease
// names our PublicIP, a peer could not be programmed). It is optional so
// that either side can add it on its own.
type warner interface {
	Warnings() []string
}

// maxWarnings bounds the warning lines of /readyz: the warnings may come
// from etcd, which anybody with write access can fill.
const maxWarnings = 20

// serverLimits bound what clients of the health server can hold: without
// them one local process that opens connections and never finishes its
// headers, never reads, or idles would pin goroutines and file
// descriptors for ever, and /readyz would stop answering kubelet or
// systemd.
type serverLimits struct {
	readHeader, read, write, idle time.Duration
	maxHeaderBytes                int
	maxConns                      int
}

// defaultLimits fit what is served: requests without a body, answers of
// at most a few hundred KB (/metrics), a scraper or two and a probe.
var defaultLimits = serverLimits{
	readHeader: 5 * time.Second, read: 10 * time.Second, write: 10 * time.Second, idle: 30 * time.Second,
	maxHeaderBytes: 8 << 10, maxConns: 16,
}

// health answers /healthz (the process runs), /readyz (the lease is held,
// the etcd watch is live and the last reconcile succeeded) and /metrics.
//
// It is served from the start of the daemon, before there is a lease
// manager or a loop, so that /healthz answers while weftd waits for its
// network config; /readyz says what it is waiting for until attach.
type health struct {
	reg     *prometheus.Registry
	metrics *metrics.Metrics
	// runtimeOnce registers the Go and process collectors when /metrics
	// is first served: building them reads runtime/metrics descriptions
	// and procfs, work (and binary pages, i.e. RSS) a weftd without
	// -healthz-port never needs.
	runtimeOnce sync.Once

	limits  serverLimits
	evicted prometheus.Counter

	mu      sync.Mutex
	waiting string // what the daemon waits for before attach
	mgr     leaseStatus
	loop    loopStatus
	// blocked holds conditions that make the node unready although the
	// lease and the dataplane are fine (a config change that needs a
	// restart, the underlay interface gone), by source; see setBlocked.
	blocked map[string]string
	// notes are warnings of weftd itself (an address overlapping the
	// Network), shown like the manager's and the loop's.
	notes map[string]string

	// udpKernel reads the udp backend's in-kernel path counters for the
	// weft_udp_kernel_* metrics (nil read: no udp backend in force).
	udpKernel atomic.Pointer[udpKernelStats]
}

// udpKernelStats are the counters of the udp backend in force (read) plus
// those of the backends it replaced (base), so the metrics never go back.
type udpKernelStats struct {
	base udpbpf.Stats
	read func() udpbpf.Stats
}

func (s *udpKernelStats) now() udpbpf.Stats {
	st := s.base
	if s.read != nil {
		cur := s.read()
		st.Encapsulated += cur.Encapsulated
		st.Decapsulated += cur.Decapsulated
	}
	return st
}

// setUDPKernel makes read (dataplane.UDPKernelStats of the backend just
// built; nil for another backend) the source of the weft_udp_kernel_*
// metrics, keeping what the previous backend counted.
func (h *health) setUDPKernel(read func() udpbpf.Stats) {
	next := &udpKernelStats{read: read}
	if old := h.udpKernel.Load(); old != nil {
		next.base = old.now()
	}
	h.udpKernel.Store(next)
}

func (h *health) udpKernelNow() udpbpf.Stats {
	if s := h.udpKernel.Load(); s != nil {
		return s.now()
	}
	return udpbpf.Stats{}
}

func newHealth() *health {
	reg := prometheus.NewRegistry()
	h := &health{reg: reg, metrics: metrics.New(reg), waiting: "starting", limits: defaultLimits}
	h.evicted = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "weft_health_connections_evicted_total",
		Help: "Connections to the health server closed to make room for a new one (the connection limit was reached).",
	})
	reg.MustRegister(h.evicted, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "weft_warnings", Help: "Warnings /readyz reports (impersonation alerts, peers not programmed, ...): each needs an operator.",
	}, func() float64 { _, n := h.warnings(); return float64(n) }))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "weft_ready", Help: "1 while the lease is held, the etcd watch is live and the last reconcile succeeded.",
	}, func() float64 {
		if ok, _ := h.ready(); ok {
			return 1
		}
		return 0
	}))
	reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "weft_udp_kernel_encapsulated_packets_total",
		Help: "Packets the udp backend's in-kernel path (tc BPF on flannel0) encapsulated and sent to a peer without the engine.",
	}, func() float64 { return float64(h.udpKernelNow().Encapsulated) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "weft_udp_kernel_decapsulated_packets_total",
			Help: "Datagrams the udp backend's in-kernel path (tc BPF on the underlay) admitted as the engine would and decapsulated into flannel0 without the engine.",
		}, func() float64 { return float64(h.udpKernelNow().Decapsulated) }))
	return h
}

// setWaiting records what the daemon waits for, reported by /readyz until
// attach.
func (h *health) setWaiting(what string) {
	h.mu.Lock()
	h.waiting = what
	h.mu.Unlock()
}

// attach hands over the running lease manager and loop.
func (h *health) attach(mgr leaseStatus, loop loopStatus) {
	h.mu.Lock()
	h.mgr, h.loop = mgr, loop
	h.mu.Unlock()
}

func (h *health) ready() (bool, string) {
	h.mu.Lock()
	mgr, loop, waiting := h.mgr, h.loop, h.waiting
	h.mu.Unlock()
	if mgr == nil || loop == nil {
		return false, "not ready: " + waiting
	}
	if why := h.blockedReason(); why != "" {
		return false, why
	}
	held, live, reason := mgr.Status()
	switch {
	case !held:
		return false, "lease not held: " + reason
	case !live:
		return false, "datastore unreachable: " + reason
	}
	last, err := loop.Status()
	if err != nil {
		return false, "last reconcile failed: " + err.Error()
	}
	if last.IsZero() {
		return false, "dataplane not reconciled yet"
	}
	return true, "ok"
}

// setBlocked makes /readyz unready with why under source, or clears the
// source when why is empty. Sources are sorted so the answer is stable.
func (h *health) setBlocked(source, why string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if why == "" {
		delete(h.blocked, source)
		return
	}
	if h.blocked == nil {
		h.blocked = map[string]string{}
	}
	h.blocked[source] = why
}

func (h *health) blockedReason() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	keys := slices.Sorted(maps.Keys(h.blocked))
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		out = append(out, h.blocked[k])
	}
	return strings.Join(out, "; ")
}

// setNote shows (or, with an empty text, clears) a warning of weftd's own
// under source.
func (h *health) setNote(source, text string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if text == "" {
		delete(h.notes, source)
		return
	}
	if h.notes == nil {
		h.notes = map[string]string{}
	}
	h.notes[source] = text
}

// warnings collects the warnings of the attached manager and loop, with
// control characters escaped (they may quote etcd keys, and a newline
// would forge a /readyz line) and at most maxWarnings of them; total is
// how many there are.
func (h *health) warnings() (shown []string, total int) {
	h.mu.Lock()
	sources := []any{h.mgr, h.loop}
	var out []string
	for _, k := range slices.Sorted(maps.Keys(h.notes)) {
		out = append(out, h.notes[k])
	}
	h.mu.Unlock()
	for _, src := range sources {
		if w, ok := src.(warner); ok {
			out = append(out, w.Warnings()...)
		}
	}
	total = len(out)
	if total > maxWarnings {
		out = append(out[:maxWarnings:maxWarnings], fmt.Sprintf("%d more warnings not shown", total-maxWarnings))
	}
	for i, w := range out {
		out[i] = escapeControl(w)
	}
	return out, total
}

// escapeControl quotes control characters (newlines, ESC) as Go escapes.
func escapeControl(s string) string {
	if !strings.ContainsFunc(s, unicode.IsControl) {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if unicode.IsControl(r) {
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

func (h *health) handler() http.Handler {
	h.runtimeOnce.Do(func() {
		h.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	})
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		ok, reason := h.ready()
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		fmt.Fprintln(w, reason)
		shown, _ := h.warnings()
		for _, warning := range shown {
			fmt.Fprintln(w, "warning: "+warning)
		}
	})
	mux.Handle("/metrics", promhttp.HandlerFor(h.reg, promhttp.HandlerOpts{}))
	return mux
}

// serve listens on ip:port and returns the bound address and a function
// that stops the server.
func (h *health) serve(ip string, port int, log *slog.Logger) (string, func(), error) {
	addr := net.JoinHostPort(ip, strconv.Itoa(port))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("listen for health checks on %s: %w", addr, err)
	}
	lim := h.limits
	cl := newConnLimiter(ln, lim.maxConns, h.evicted, log)
	srv := &http.Server{
		Handler:           h.handler(),
		ReadHeaderTimeout: lim.readHeader,
		ReadTimeout:       lim.read,
		WriteTimeout:      lim.write,
		IdleTimeout:       lim.idle,
		MaxHeaderBytes:    lim.maxHeaderBytes,
		ConnState:         cl.track,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	go func() {
		if err := srv.Serve(cl); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("health server", "addr", addr, "err", err)
		}
	}()
	log.Info("serving /healthz, /readyz and /metrics", "addr", ln.Addr().String())
	return ln.Addr().String(), func() {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		srv.Shutdown(ctx)
	}, nil
}

// logTransitions logs readiness once per change (not once per check), so
// that the log tells when and why the node went unready and came back.
func (h *health) logTransitions(ctx context.Context, log *slog.Logger, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	wasReady, lastReason := false, ""
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ok, reason := h.ready()
		switch {
		case ok && !wasReady:
			log.Info("ready")
		case !ok && reason != lastReason:
			log.Warn("not ready", "reason", reason)
		}
		wasReady, lastReason = ok, reason
	}
}

// connLimiter bounds the open connections of the health server. At the
// limit a new connection is not made to wait (then a few clients that
// never finish their headers would starve every probe until their
// timeouts, again and again): it evicts the connection that has waited
// longest, preferring one that has no request in flight. A probe sends its
// request at once and is served in microseconds, so it wins against
// slow clients.
type connLimiter struct {
	net.Listener
	max     int
	evicted prometheus.Counter
	log     *slog.Logger

	mu       sync.Mutex
	conns    map[net.Conn]connEntry
	seq      uint64
	lastWarn time.Time
	unlogged int // evictions since the last warning
}

type connEntry struct {
	seq  uint64 // order of acceptance or of the last state change
	busy bool   // a request is in flight
}

func newConnLimiter(ln net.Listener, max int, evicted prometheus.Counter, log *slog.Logger) *connLimiter {
	return &connLimiter{Listener: ln, max: max, evicted: evicted, log: log, conns: map[net.Conn]connEntry{}}
}

func (l *connLimiter) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.conns) >= l.max {
		l.evictLocked()
	}
	l.seq++
	l.conns[c] = connEntry{seq: l.seq}
	return c, nil
}

// evictLocked closes the oldest idle connection, or the oldest busy one
// when all are busy, counts it and logs at most once a minute.
func (l *connLimiter) evictLocked() {
	var victim net.Conn
	var best connEntry
	for c, e := range l.conns {
		if victim == nil || (best.busy && !e.busy) || (best.busy == e.busy && e.seq < best.seq) {
			victim, best = c, e
		}
	}
	delete(l.conns, victim)
	victim.Close()
	l.evicted.Inc()
	l.unlogged++
	if now := time.Now(); now.Sub(l.lastWarn) >= time.Minute {
		l.log.Warn("health server: connection limit reached, closed the longest-waiting connections",
			"limit", l.max, "closed", l.unlogged, "last-from", victim.RemoteAddr().String())
		l.lastWarn, l.unlogged = now, 0
	}
}

// track is the server's ConnState hook: it marks requests in flight and
// forgets closed connections.
func (l *connLimiter) track(c net.Conn, s http.ConnState) {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.conns[c]
	if !ok {
		return // evicted
	}
	switch s {
	case http.StateClosed, http.StateHijacked:
		delete(l.conns, c)
	case http.StateActive, http.StateIdle:
		l.seq++
		l.conns[c] = connEntry{seq: l.seq, busy: s == http.StateActive}
	}
}
