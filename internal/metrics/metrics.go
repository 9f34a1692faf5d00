// Package metrics holds weftd's Prometheus metrics, all named weft_*.
//
// The metrics are registered on a registry the caller passes in (never the
// global default registry), so tests and several daemons in one process do
// not collide. The packages that do the work (lease, dataplane, rules) know
// nothing about Prometheus: they expose small hooks, and this package turns
// hook calls into metric updates.
package metrics

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/udpfwd"
)

// Metrics is every weft_ metric of one daemon.
type Metrics struct {
	LeaseExpiry          prometheus.Gauge
	LeaseRenewals        prometheus.Counter
	LeaseRenewalFailures prometheus.Counter
	PeersKnown           prometheus.Gauge
	PeersAccepted        prometheus.Gauge
	PeersProgrammed      prometheus.Gauge
	ReconcileRuns        prometheus.Counter
	ReconcileErrors      prometheus.Counter
	ReconcileDuration    prometheus.Histogram
	WatchRestarts        prometheus.Counter
	RejectedLeases       *prometheus.CounterVec
	LeaseAlerts          *prometheus.CounterVec
	RuleResyncs          *prometheus.CounterVec
	UnderlayDropped      prometheus.Counter
	UDPDroppedPackets    *prometheus.CounterVec
	PeersSkipped         *prometheus.GaugeVec

	// ConfigRejected counts reads of the network config weftd refused.
	ConfigRejected prometheus.Counter
	// ConfigRestartRequired is 1 while the network config in etcd differs
	// from the running one in a way only a restart applies.
	ConfigRestartRequired prometheus.Gauge
	// ConfigChangesApplied counts network config changes applied live.
	ConfigChangesApplied prometheus.Counter
	// UnderlayRebuilds counts dataplane rebuilds after the underlay
	// interface changed (recreated, new address, new MTU).
	UnderlayRebuilds prometheus.Counter

	// lastWatch is the UnixNano of the last watch answer; the lag gauge is
	// computed at scrape time so that a stalled watch shows a growing value
	// without anybody updating it.
	lastWatch atomic.Int64
	now       func() time.Time
}

// Rule resync outcomes, the label values of weft_rule_resyncs_total.
const (
	ResyncUnchanged = "unchanged"
	ResyncRewritten = "rewritten"
	ResyncFailed    = "failed"
)

// New creates the metrics and registers them on reg.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		LeaseExpiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "weft_lease_expiry_timestamp_seconds",
			Help: "Unix time at which this host's subnet lease expires unless renewed (0 for a reservation or no lease).",
		}),
		LeaseRenewals: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weft_lease_renewals_total",
			Help: "Successful renewals of this host's subnet lease.",
		}),
		LeaseRenewalFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weft_lease_renewal_failures_total",
			Help: "Failed renewal attempts of this host's subnet lease (the lease is kept and renewal retried).",
		}),
		PeersKnown: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "weft_peers_known",
			Help: "Other hosts' leases read from etcd, including rejected ones.",
		}),
		PeersAccepted: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "weft_peers_accepted",
			Help: "Other hosts' leases that passed validation and were handed to the dataplane.",
		}),
		PeersProgrammed: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "weft_peers_programmed",
			Help: "Peers in the last snapshot the dataplane applied successfully.",
		}),
		ReconcileRuns: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weft_reconcile_runs_total",
			Help: "Dataplane reconcile runs (desired state applied against the kernel).",
		}),
		ReconcileErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weft_reconcile_errors_total",
			Help: "Dataplane reconcile runs that failed (retried with backoff).",
		}),
		ReconcileDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "weft_reconcile_duration_seconds",
			Help:    "Duration of dataplane reconcile runs.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 9), // 0.5 ms … 33 s
		}),
		WatchRestarts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weft_watch_restarts_total",
			Help: "Times the etcd watch of the leases was lost and restarted from a fresh list.",
		}),
		RejectedLeases: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weft_rejected_leases_total",
			Help: "Lease values read from etcd and skipped (counted once per write), by reason.",
		}, []string{"reason"}),
		LeaseAlerts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weft_lease_alerts_total",
			Help: "Writes in etcd aimed at this host (counted once per write), by kind: own_lease_rewritten (restored), own_value_claimed (another key names our PublicIP, VtepMAC or subnet; see /readyz warnings), identity_conflict (a lease names our PublicIP and another node name: weftd refused to start).",
		}, []string{"kind"}),
		RuleResyncs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weft_rule_resyncs_total",
			Help: "Periodic checks of the traffic rules, by result (unchanged, rewritten, failed).",
		}, []string{"result"}),
		UnderlayDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weft_underlay_dropped_packets_total",
			Help: "Packets to the backend's encapsulation port (vxlan, udp) from addresses that are no peer's PublicIP, dropped by table inet weft-guard (read from its kernel counter at each rules check).",
		}),
		UDPDroppedPackets: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weft_udp_dropped_packets_total",
			Help: "Datagrams received by the udp backend and dropped as untrusted or malformed, by reason.",
		}, []string{"reason"}),
		PeersSkipped: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "weft_dataplane_peers_skipped",
			Help: "Peers the last dataplane apply left out (the others are programmed; see /readyz warnings), by reason: invalid, unreachable, foreign_route.",
		}, []string{"reason"}),
		ConfigRejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weft_config_rejected_total",
			Help: "Reads of the network config from etcd that were refused (invalid or unsafe, e.g. a Network of 0.0.0.0/0).",
		}),
		ConfigRestartRequired: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "weft_config_restart_required",
			Help: "1 while the network config in etcd has a change this weftd can only apply by restarting (Backend type, SubnetLen, EnableIPv6, a Network without its subnet; /readyz says which); it runs on the old config meanwhile.",
		}),
		ConfigChangesApplied: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weft_config_changes_applied_total",
			Help: "Changes of the network config in etcd applied without a restart (a wider Network, backend options, MTU).",
		}),
		UnderlayRebuilds: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weft_underlay_rebuilds_total",
			Help: "Dataplane rebuilds after the underlay interface changed (recreated, new address, new MTU).",
		}),
		now: time.Now,
	}
	reg.MustRegister(m.ConfigRejected, m.ConfigRestartRequired, m.ConfigChangesApplied, m.UnderlayRebuilds)
	// Every reason and result is present from the start, so that a query
	// for rate() or a zero-alert works before the first rejection.
	for _, r := range lease.RejectReasons {
		m.RejectedLeases.WithLabelValues(r)
	}
	for _, k := range lease.AlertKinds {
		m.LeaseAlerts.WithLabelValues(k)
	}
	reg.MustRegister(m.LeaseAlerts)
	for _, r := range []string{ResyncUnchanged, ResyncRewritten, ResyncFailed} {
		m.RuleResyncs.WithLabelValues(r)
	}
	for _, r := range udpfwd.DropReasons() {
		m.UDPDroppedPackets.WithLabelValues(r)
	}
	lag := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "weft_watch_lag_seconds",
		Help: "Seconds since the etcd lease watch last answered (events or progress notification, requested every few seconds); grows while the watch is stalled.",
	}, m.watchLag)
	reg.MustRegister(m.LeaseExpiry, m.LeaseRenewals, m.LeaseRenewalFailures, m.PeersKnown, m.PeersAccepted,
		m.PeersProgrammed, m.ReconcileRuns, m.ReconcileErrors, m.ReconcileDuration, m.WatchRestarts,
		m.RejectedLeases, m.RuleResyncs, m.UDPDroppedPackets, m.PeersSkipped, lag)
	reg.MustRegister(m.UnderlayDropped)
	return m
}

func (m *Metrics) watchLag() float64 {
	last := m.lastWatch.Load()
	if last == 0 {
		return 0 // no watch yet: nothing lags
	}
	return max(m.now().Sub(time.Unix(0, last)).Seconds(), 0)
}

// LeaseHooks returns the hooks for lease.ManagerConfig.
func (m *Metrics) LeaseHooks() lease.Hooks {
	return lease.Hooks{
		Expiry: func(t time.Time) {
			if t.IsZero() {
				m.LeaseExpiry.Set(0)
				return
			}
			m.LeaseExpiry.Set(float64(t.UnixNano()) / 1e9)
		},
		Renewed: func(err error) {
			if err != nil {
				m.LeaseRenewalFailures.Inc()
				return
			}
			m.LeaseRenewals.Inc()
		},
		Rejected:       func(reason string) { m.RejectedLeases.WithLabelValues(reason).Inc() },
		Alert:          func(kind string) { m.LeaseAlerts.WithLabelValues(kind).Inc() },
		WatchRestarted: m.WatchRestarts.Inc,
		WatchAnswered:  func(t time.Time) { m.lastWatch.Store(t.UnixNano()) },
		Peers: func(known, accepted int) {
			m.PeersKnown.Set(float64(known))
			m.PeersAccepted.Set(float64(accepted))
		},
	}
}

// OnApply is the hook for dataplane.Loop.OnApply.
func (m *Metrics) OnApply(peers int, took time.Duration, err error) {
	m.ReconcileRuns.Inc()
	m.ReconcileDuration.Observe(took.Seconds())
	if err != nil {
		m.ReconcileErrors.Inc()
		return
	}
	m.PeersProgrammed.Set(float64(peers))
}

// OnPeersSkipped is the hook for dataplane.Loop.OnSkipped, which reports
// every reason (at 0) when it is set, so each series exists from the start.
func (m *Metrics) OnPeersSkipped(reason string, peers int) {
	m.PeersSkipped.WithLabelValues(reason).Set(float64(peers))
}

// OnRuleResync is the hook for rules.WithResyncHook.
func (m *Metrics) OnRuleResync(changed bool, err error) {
	switch {
	case err != nil:
		m.RuleResyncs.WithLabelValues(ResyncFailed).Inc()
	case changed:
		m.RuleResyncs.WithLabelValues(ResyncRewritten).Inc()
	default:
		m.RuleResyncs.WithLabelValues(ResyncUnchanged).Inc()
	}
}

// OnUnderlayDrop is the hook for rules.WithGuardDropHook.
func (m *Metrics) OnUnderlayDrop(packets uint64) { m.UnderlayDropped.Add(float64(packets)) }

// OnUDPDrop is the hook for dataplane.UDPHooks.Dropped.
func (m *Metrics) OnUDPDrop(reason string, n uint64) {
	m.UDPDroppedPackets.WithLabelValues(reason).Add(float64(n))
}
