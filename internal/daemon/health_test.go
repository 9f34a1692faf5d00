package daemon

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/vishvananda/netlink"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netconf"
	"github.com/weft-net/weft/internal/testutil/etcdtest"
	"github.com/weft-net/weft/internal/testutil/netnstest"
)

const testPrefix = "/weft-health/network"

// syncBuf is a log sink safe for the daemon's goroutines and the test.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// node is the running core of weftd — lease manager, reconcile loop,
// health — wired as run() wires it, on a real etcd and a host-gw data path
// in a test namespace.
type node struct {
	srv   *etcdtest.Server
	cli   *clientv3.Client
	store *lease.Store
	mgr   *lease.Manager
	h     *health
	ns    *netnstest.NS
	own   lease.Lease
	base  string // http://addr of the health server
	logs  *syncBuf
}

func startNode(t *testing.T) *node {
	t.Helper()
	srv := etcdtest.New(t)
	n := startNodeWith(t, etcdtest.NewClient(t, srv))
	n.srv = srv
	return n
}

// startNodeWith runs the node on the etcd behind cli.
func startNodeWith(t *testing.T, cli *clientv3.Client) *node {
	t.Helper()
	netnstest.RequireRoot(t)
	n := &node{logs: &syncBuf{}, cli: cli}
	log := slog.New(slog.NewTextHandler(n.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))

	n.ns = netnstest.New(t, "wh")
	sw := netnstest.New(t, "whs")
	if err := netnstest.VethPair(n.ns, "eth0", sw, "eth0"); err != nil {
		t.Fatal(err)
	}
	eth0, err := n.ns.Handle.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := netlink.ParseAddr("10.64.3.10/24")
	if err := n.ns.Handle.AddrAdd(eth0, addr); err != nil {
		t.Fatal(err)
	}

	// The node takes its subnet from 172.30.200–250: the tests write
	// their peers below, and a random pick equal to one of them would
	// make that write overwrite the node's own lease.
	cfgJSON := `{"Network":"172.30.0.0/16","SubnetLen":24,"SubnetMin":"172.30.200.0","SubnetMax":"172.30.250.0","Backend":{"Type":"host-gw"}}`
	cfg, _, err := netconf.Parse([]byte(cfgJSON))
	if err != nil {
		t.Fatal(err)
	}
	n.store = lease.NewStore(n.cli, testPrefix, log)

	fd := n.ns.Fd()
	backend, err := dataplane.NewBackend(cfg, dataplane.Host{IfaceName: "eth0", NetNS: &fd}, n.ns.Handle, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { backend.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	pub, _, err := backend.Init(ctx)
	if err != nil {
		t.Fatal(err)
	}

	n.h = newHealth()
	n.mgr = lease.NewManager(lease.ManagerConfig{
		Store: n.store, Network: cfg, PublicIP: netip.MustParseAddr("10.64.3.10"),
		BackendType: pub.BackendType, BackendData: pub.BackendData,
		// Renew every second, also while etcd is away; the TTL outlasts
		// the outage.
		TTL: 60 * time.Second, RenewMargin: 59 * time.Second,
		WatchCheck: 100 * time.Millisecond,
		Logger:     log, Hooks: n.h.metrics.LeaseHooks(),
	})
	actx, acancel := context.WithTimeout(ctx, 10*time.Second)
	n.own, err = n.mgr.Acquire(actx)
	acancel()
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	loop := dataplane.NewLoop(backend, time.Second, log)
	loop.OnApply(n.h.metrics.OnApply)
	n.h.attach(n.mgr, loop)
	hostAddr, stop, err := n.h.serve("127.0.0.1", 0, log)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	n.base = "http://" + hostAddr

	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); n.h.logTransitions(ctx, log, 50*time.Millisecond) }()
	go func() { defer wg.Done(); n.mgr.Run(ctx) }()
	go func() { defer wg.Done(); loop.Run(ctx, n.mgr.Snapshots()) }()
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		stop()
		if t.Failed() {
			t.Logf("daemon log:\n%s", n.logs)
		}
	})
	return n
}

func (n *node) get(t *testing.T, path string) (int, string) {
	t.Helper()
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(n.base + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return resp.StatusCode, string(b)
}

// scrape fetches /metrics and parses it with the Prometheus text parser.
func (n *node) scrape(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	code, body := n.get(t, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics does not parse as Prometheus text: %v\n%s", err, body)
	}
	return fams
}

// value returns the value of the metric with the given labels (name=value
// pairs), failing when it does not exist.
func value(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	t.Helper()
	f, ok := fams[name]
	if !ok {
		t.Fatalf("metric %s not exposed", name)
	}
next:
	for _, m := range f.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, lp := range m.GetLabel() {
				if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Gauge != nil:
			return m.GetGauge().GetValue()
		case m.Counter != nil:
			return m.GetCounter().GetValue()
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount())
		case m.Untyped != nil:
			return m.GetUntyped().GetValue()
		}
	}
	t.Fatalf("metric %s%v not exposed", name, labels)
	return 0
}

func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (n *node) put(t *testing.T, subnet, val string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := n.cli.Put(ctx, n.store.SubnetsPrefix()+subnet, val); err != nil {
		t.Fatal(err)
	}
}

// hasRoute reports whether the namespace routes dst via gw.
func (n *node) hasRoute(t *testing.T, dst, gw string) bool {
	t.Helper()
	routes, err := n.ns.Handle.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: 254}, netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if r.Dst != nil && r.Dst.String() == dst && r.Gw != nil && r.Gw.String() == gw {
			return true
		}
	}
	return false
}

// Every kind of lease weftd must not trust is skipped, logged once and
// counted by reason; of two leases naming one PublicIP only the older is
// programmed (a forged copy cannot evict the host it copies). The metrics are scraped and parsed as Prometheus text.
func TestMetricsAndDistrust(t *testing.T) {
	n := startNode(t)
	hostgw := func(ip string) string { return fmt.Sprintf(`{"PublicIP":%q,"BackendType":"host-gw"}`, ip) }

	n.put(t, "172.30.50.0-24", hostgw("10.64.3.20")) // a good peer
	n.put(t, "10.99.0.0-24", hostgw("10.64.3.21"))   // outside Network
	n.put(t, "172.30.51.0-25", hostgw("10.64.3.22")) // wrong length
	n.put(t, "172.30.52.0-24", hostgw("172.30.9.9")) // PublicIP inside the overlay
	n.put(t, "172.30.53.0-24", `{"PublicIP":"10.64.3.23","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"01:00:5e:00:00:01"}}`)
	n.put(t, "172.30.54.0-24", `{"PublicIP":"10.64.3.24","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"00:00:00:00:00:00"}}`)
	n.put(t, "172.30.55.0-24", `{"PublicIP":`)       // malformed
	n.put(t, "172.30.60.0-24", hostgw("10.64.3.30")) // older of two naming 10.64.3.30: programmed
	n.put(t, "172.30.61.0-24", hostgw("10.64.3.30")) // newer: rejected

	waitUntil(t, 10*time.Second, "the good peers programmed", func() bool {
		return n.hasRoute(t, "172.30.50.0/24", "10.64.3.20") && n.hasRoute(t, "172.30.60.0/24", "10.64.3.30")
	})
	waitUntil(t, 10*time.Second, "/readyz 200", func() bool { c, _ := n.get(t, "/readyz"); return c == http.StatusOK })
	// More writes make the manager re-evaluate every lease: still one log
	// line and one count per bad write.
	for i := range 5 {
		n.put(t, fmt.Sprintf("172.30.%d.0-24", 70+i), hostgw(fmt.Sprintf("10.64.3.%d", 70+i)))
	}
	waitUntil(t, 10*time.Second, "the later peers programmed", func() bool { return n.hasRoute(t, "172.30.74.0/24", "10.64.3.74") })
	if n.hasRoute(t, "172.30.61.0/24", "10.64.3.30") {
		t.Errorf("the newer of two leases naming 10.64.3.30 is programmed")
	}

	f := n.scrape(t)
	for _, reason := range []string{lease.ReasonOutsideNetwork, lease.ReasonWrongLength, lease.ReasonPublicIPInside,
		lease.ReasonMalformed, lease.ReasonDuplicatePublicIP} {
		if v := value(t, f, "weft_rejected_leases_total", "reason", reason); v != 1 {
			t.Errorf("weft_rejected_leases_total{reason=%q} = %v, want 1", reason, v)
		}
	}
	if v := value(t, f, "weft_rejected_leases_total", "reason", lease.ReasonVtepMAC); v != 2 {
		t.Errorf("weft_rejected_leases_total{reason=vtep_mac_not_unicast} = %v, want 2", v)
	}
	for _, key := range []string{"10.99.0.0-24", "172.30.51.0-25", "172.30.52.0-24", "172.30.53.0-24", "172.30.54.0-24", "172.30.55.0-24", "172.30.61.0-24"} {
		if c := strings.Count(n.logs.String(), n.store.SubnetsPrefix()+key+" "); c != 1 {
			t.Errorf("lease %s logged %d times, want once", key, c)
		}
	}
	// Known: every other lease that parses (15 keys, 1 malformed); accepted:
	// 50, 60 and 70..74.
	if v := value(t, f, "weft_peers_known"); v != 13 {
		t.Errorf("weft_peers_known = %v, want 13", v)
	}
	if v := value(t, f, "weft_peers_accepted"); v != 7 {
		t.Errorf("weft_peers_accepted = %v, want 7", v)
	}
	waitUntil(t, 5*time.Second, "weft_peers_programmed 7", func() bool {
		return value(t, n.scrape(t), "weft_peers_programmed") == 7
	})
	if v := value(t, f, "weft_reconcile_runs_total"); v < 1 {
		t.Errorf("weft_reconcile_runs_total = %v", v)
	}
	if v := value(t, f, "weft_reconcile_duration_seconds"); v < 1 {
		t.Errorf("weft_reconcile_duration_seconds has %v samples", v)
	}
	if v := value(t, f, "weft_reconcile_errors_total"); v != 0 {
		t.Errorf("weft_reconcile_errors_total = %v", v)
	}
	if v := value(t, f, "weft_ready"); v != 1 {
		t.Errorf("weft_ready = %v", v)
	}
	exp := time.Unix(int64(value(t, f, "weft_lease_expiry_timestamp_seconds")), 0)
	if d := time.Until(exp); d < 50*time.Second || d > 61*time.Second {
		t.Errorf("weft_lease_expiry_timestamp_seconds is %s from now, want ~60s", d)
	}
	if v := value(t, f, "weft_watch_lag_seconds"); v > 1 {
		t.Errorf("weft_watch_lag_seconds = %v on a live watch", v)
	}
	waitUntil(t, 5*time.Second, "a renewal counted", func() bool {
		return value(t, n.scrape(t), "weft_lease_renewals_total") >= 1
	})
	for _, name := range []string{"weft_lease_renewal_failures_total", "weft_watch_restarts_total", "weft_rule_resyncs_total"} {
		value(t, f, name)
	}
}

// /readyz follows etcd: 503 naming the datastore while it is stopped (the
// data path untouched, the lease kept), 200 again when it is back, and the
// state resyncs without a restart.
func TestReadyzFollowsEtcd(t *testing.T) {
	n := startNode(t)
	n.put(t, "172.30.50.0-24", `{"PublicIP":"10.64.3.20","BackendType":"host-gw"}`)
	if c, body := n.get(t, "/healthz"); c != http.StatusOK {
		t.Fatalf("/healthz %d %s", c, body)
	}
	waitUntil(t, 10*time.Second, "/readyz 200", func() bool { c, _ := n.get(t, "/readyz"); return c == http.StatusOK })
	waitUntil(t, 5*time.Second, "peer route", func() bool { return n.hasRoute(t, "172.30.50.0/24", "10.64.3.20") })

	n.srv.Stop()
	stopped := time.Now()
	var body string
	waitUntil(t, 10*time.Second, "/readyz 503", func() bool {
		var c int
		c, body = n.get(t, "/readyz")
		return c == http.StatusServiceUnavailable
	})
	t.Logf("/readyz %s after etcd stopped: %s", time.Since(stopped).Round(time.Millisecond), strings.TrimSpace(body))
	if !strings.Contains(body, "datastore unreachable") {
		t.Errorf("/readyz body %q does not say the datastore is unreachable", body)
	}
	if c, _ := n.get(t, "/healthz"); c != http.StatusOK {
		t.Errorf("/healthz %d while etcd is down: liveness must not follow etcd", c)
	}
	waitUntil(t, 5*time.Second, "renewal failures counted", func() bool {
		return value(t, n.scrape(t), "weft_lease_renewal_failures_total") >= 1
	})
	if lag := value(t, n.scrape(t), "weft_watch_lag_seconds"); lag < 0.2 {
		t.Errorf("weft_watch_lag_seconds = %v while etcd is down", lag)
	}
	if !n.hasRoute(t, "172.30.50.0/24", "10.64.3.20") {
		t.Errorf("peer route removed while etcd was down")
	}
	if held, _, _ := n.mgr.Status(); !held {
		t.Errorf("lease dropped during the outage")
	}

	if err := n.srv.Restart(); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	waitUntil(t, 20*time.Second, "/readyz 200 again", func() bool { c, _ := n.get(t, "/readyz"); return c == http.StatusOK })
	t.Logf("/readyz 200 %s after etcd restarted", time.Since(back).Round(time.Millisecond))
	cli := etcdtest.NewClient(t, n.srv)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, n.store.SubnetsPrefix()+"172.30.51.0-24", `{"PublicIP":"10.64.3.21","BackendType":"host-gw"}`); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Delete(ctx, n.store.SubnetsPrefix()+"172.30.50.0-24"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "routes follow etcd after the outage", func() bool {
		return n.hasRoute(t, "172.30.51.0/24", "10.64.3.21") && !n.hasRoute(t, "172.30.50.0/24", "10.64.3.20")
	})
	if own := n.mgr.Own(); own.Subnet != n.own.Subnet || own.EtcdLease != n.own.EtcdLease {
		t.Errorf("own lease changed across the outage: %v → %v", n.own, own)
	}
	if c := strings.Count(n.logs.String(), `msg="not ready"`); c < 1 || c > 4 {
		t.Errorf("readiness change logged %d times, want one line per change:\n%s", c, n.logs)
	}
}

// A forged lease naming this host's PublicIP leaves the node ready and is
// reported on /readyz as a warning line under "ok", and in weft_warnings.
func TestReadyzWarnsOfImpersonation(t *testing.T) {
	n := startNode(t)
	waitUntil(t, 10*time.Second, "/readyz 200", func() bool { c, _ := n.get(t, "/readyz"); return c == http.StatusOK })
	n.put(t, "172.30.90.0-24", `{"PublicIP":"10.64.3.10","BackendType":"host-gw"}`)
	var body string
	waitUntil(t, 10*time.Second, "a warning on /readyz", func() bool {
		var c int
		c, body = n.get(t, "/readyz")
		return c == http.StatusOK && strings.HasPrefix(body, "ok\nwarning: ")
	})
	t.Logf("/readyz:\n%s", body)
	if !strings.Contains(body, "10.64.3.10") {
		t.Errorf("/readyz warning does not name the PublicIP:\n%s", body)
	}
	if v := value(t, n.scrape(t), "weft_warnings"); v < 1 {
		t.Errorf("weft_warnings = %v, want >= 1", v)
	}
}

// The real lease manager and loop offer the warnings /readyz prints.
var (
	_ warner = (*lease.Manager)(nil)
	_ warner = (*dataplane.Loop)(nil)
)
