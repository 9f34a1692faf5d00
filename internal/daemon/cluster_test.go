package daemon

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/etcdopts"
	"github.com/weft-net/weft/internal/testutil/etcdtest"
)

// The leader of a 3-member cluster stopped: the lease keeps renewing
// through the other members, the peer routes never change, the watch keeps
// delivering, nothing is re-acquired or restarted.
func TestEtcdLeaderStopped(t *testing.T) {
	c := etcdtest.NewCluster(t, 3)
	o := etcdopts.Options{Endpoints: c.Endpoints(), Prefix: testPrefix}
	cli, err := o.Client()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	n := startNodeWith(t, cli)
	n.put(t, "172.30.50.0-24", `{"PublicIP":"10.64.3.20","BackendType":"host-gw"}`)
	waitUntil(t, 10*time.Second, "/readyz 200", func() bool { code, _ := n.get(t, "/readyz"); return code == http.StatusOK })
	waitUntil(t, 5*time.Second, "peer route", func() bool { return n.hasRoute(t, "172.30.50.0/24", "10.64.3.20") })
	renewed := value(t, n.scrape(t), "weft_lease_renewals_total")

	leader, err := c.Leader(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.Members[leader].Stop()
	stopped := time.Now()
	t.Logf("stopped leader m%d", leader)
	next, err := c.Leader(10 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("new leader m%d after %s", next, time.Since(stopped).Round(time.Millisecond))

	// For a few seconds, the route is there at every look and renewals go on.
	for time.Since(stopped) < 4*time.Second {
		if !n.hasRoute(t, "172.30.50.0/24", "10.64.3.20") {
			t.Fatalf("peer route gone %s after the leader stopped", time.Since(stopped))
		}
		time.Sleep(50 * time.Millisecond)
	}
	waitUntil(t, 10*time.Second, "two renewals after the leader stopped", func() bool {
		return value(t, n.scrape(t), "weft_lease_renewals_total") >= renewed+2
	})
	n.put(t, "172.30.51.0-24", `{"PublicIP":"10.64.3.21","BackendType":"host-gw"}`)
	waitUntil(t, 10*time.Second, "a peer written after the failover programmed", func() bool {
		return n.hasRoute(t, "172.30.51.0/24", "10.64.3.21")
	})
	waitUntil(t, 10*time.Second, "/readyz 200", func() bool { code, _ := n.get(t, "/readyz"); return code == http.StatusOK })
	if own := n.mgr.Own(); own.Subnet != n.own.Subnet || own.EtcdLease != n.own.EtcdLease {
		t.Errorf("own lease changed: %v → %v", n.own, own)
	}
	if strings.Contains(n.logs.String(), "re-acquir") {
		t.Errorf("lease re-acquired after a leader change:\n%s", n.logs)
	}
	f := n.scrape(t)
	t.Logf("renewal failures %v, watch restarts %v", value(t, f, "weft_lease_renewal_failures_total"), value(t, f, "weft_watch_restarts_total"))
}
