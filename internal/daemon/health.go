package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/weft-net/weft/internal/metrics"
)

// leaseStatus and loopStatus are what /readyz needs of the lease manager
// and the reconcile loop (*lease.Manager and *dataplane.Loop).
type leaseStatus interface {
	Status() (leaseHeld bool, watchLive bool, reason string)
}

type loopStatus interface {
	Status() (lastApply time.Time, lastErr error)
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

	mu      sync.Mutex
	waiting string // what the daemon waits for before attach
	mgr     leaseStatus
	loop    loopStatus
}

func newHealth() *health {
	reg := prometheus.NewRegistry()
	h := &health{reg: reg, metrics: metrics.New(reg), waiting: "starting"}
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "weft_ready", Help: "1 while the lease is held, the etcd watch is live and the last reconcile succeeded.",
	}, func() float64 {
		if ok, _ := h.ready(); ok {
			return 1
		}
		return 0
	}))
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
	srv := &http.Server{Handler: h.handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
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
