package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/lease"
)

// health answers /healthz (the process runs), /readyz (the lease is held,
// the etcd watch is live and the last reconcile succeeded) and /metrics.
type health struct {
	mgr  *lease.Manager
	loop *dataplane.Loop
	reg  *prometheus.Registry
}

func newHealth(mgr *lease.Manager, loop *dataplane.Loop) *health {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "weft_ready", Help: "1 while the lease is held, the etcd watch is live and the last reconcile succeeded.",
	}, func() float64 {
		if ok, _ := (&health{mgr: mgr, loop: loop}).ready(); ok {
			return 1
		}
		return 0
	}))
	return &health{mgr: mgr, loop: loop, reg: reg}
}

func (h *health) ready() (bool, string) {
	held, live, reason := h.mgr.Status()
	if !held || !live {
		return false, reason
	}
	last, err := h.loop.Status()
	if err != nil {
		return false, "last reconcile failed: " + err.Error()
	}
	if last.IsZero() {
		return false, "dataplane not reconciled yet"
	}
	return true, "ok"
}

func (h *health) handler() http.Handler {
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

// serve listens on ip:port and returns a function that stops the server.
func (h *health) serve(ip string, port int, log *slog.Logger) (func(), error) {
	addr := net.JoinHostPort(ip, strconv.Itoa(port))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen for health checks on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: h.handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("health server", "addr", addr, "err", err)
		}
	}()
	log.Info("serving /healthz, /readyz and /metrics", "addr", addr)
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		srv.Shutdown(ctx)
	}, nil
}
