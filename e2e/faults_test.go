package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/lab"
)

const faultHealthPort = "9102"

// readyz asks host h's weftd for /readyz on the host's own loopback.
func readyz(h *lab.Host) (int, string, error) {
	code, body, err := hostHTTP(h, faultHealthPort, "/readyz")
	return code, strings.TrimSpace(body), err
}

func allReadyz(l *lab.Lab, want int, body string) error {
	for _, h := range l.Hosts {
		code, got, err := readyz(h)
		if err != nil {
			return fmt.Errorf("%s /readyz: %w", h.Name, err)
		}
		if code != want || !strings.Contains(got, body) {
			return fmt.Errorf("%s /readyz %d %q, want %d %q", h.Name, code, got, want, body)
		}
	}
	return nil
}

// partition cuts (or restores) host h's path to etcd: its weftd talks to
// the lab's etcd through 127.0.0.1:2379 inside the host namespace, and a
// dropping nftables rule there makes etcd silent, as a lost quorum is.
func partition(t *testing.T, h *lab.Host, on bool) {
	t.Helper()
	cmds := [][]string{{"nft", "delete", "table", "inet", "weft-fault"}}
	if on {
		cmds = [][]string{
			{"nft", "add", "table", "inet", "weft-fault"},
			{"nft", "add", "chain", "inet", "weft-fault", "out", "{ type filter hook output priority 0; policy accept; }"},
			{"nft", "add", "rule", "inet", "weft-fault", "out", "tcp", "dport", "2379", "drop"},
			{"nft", "add", "rule", "inet", "weft-fault", "out", "tcp", "sport", "2379", "drop"},
		}
	}
	for _, c := range cmds {
		if out, err := h.NS.Run(c...); err != nil {
			t.Fatalf("%s: %s: %v\n%s", h.Name, strings.Join(c, " "), err, out)
		}
	}
}

func outage() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("WEFT_FAULT_OUTAGE")); err == nil && d > 0 {
		return d
	}
	return 30 * time.Second // the 60 s: WEFT_FAULT_OUTAGE=60s
}

// etcd silent for every host (quorum lost) → containers keep pinging,
// /readyz says the datastore is unreachable, nothing restarts; leases
// written and history compacted meanwhile are picked up when etcd is back,
// from a fresh list, without a restart.
func TestEtcdQuorumLoss(t *testing.T) {
	l := newLab(t, "vxlan", 3, "-healthz-port="+faultHealthPort)
	ctx := context.Background()
	all := pairsWith(l, 0)
	all = append(all, pair{1, 2}, pair{2, 1})
	waitFor(t, "all /readyz 200", time.Now(), 15*time.Second, 30*time.Second, func() error { return allReadyz(l, 200, "ok") })
	if err := pings(l, all, lab.PingOptions{}); err != nil {
		t.Fatalf("before the outage: %v", err)
	}
	pids := make([]int, len(l.Hosts))
	for i := range l.Hosts {
		pids[i] = l.WeftdPID(i)
	}

	for _, h := range l.Hosts {
		partition(t, h, true)
	}
	healed := false
	defer func() {
		if !healed {
			for _, h := range l.Hosts {
				partition(t, h, false)
			}
		}
	}()
	cut := time.Now()
	waitFor(t, "all /readyz 503 datastore unreachable", cut, 25*time.Second, 40*time.Second, func() error {
		return allReadyz(l, 503, "datastore unreachable")
	})

	// Meanwhile an operator adds a host and etcd compacts its history past
	// every host's watch.
	newPeer := netip.MustParsePrefix("172.30.250.0/24")
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	resp, err := l.Etcd.Put(cctx, lab.LeaseKey(l.Config().Prefix, newPeer),
		`{"PublicIP":"10.64.3.250","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:58:0a:40:03:fa"}}`)
	if err == nil {
		_, err = l.Etcd.Compact(cctx, resp.Header.Revision)
	}
	cancel()
	if err != nil {
		t.Fatal(err)
	}

	for time.Since(cut) < outage() {
		if err := pings(l, all, lab.PingOptions{}); err != nil {
			t.Fatalf("%s into the outage: containers stopped pinging: %v", time.Since(cut).Round(time.Second), err)
		}
		time.Sleep(time.Second)
	}
	if err := allVXLANPeersProgrammed(t, l); err != nil {
		t.Errorf("dataplane changed during the outage: %v", err)
	}

	for _, h := range l.Hosts {
		partition(t, h, false)
	}
	healed = true
	back := time.Now()
	waitFor(t, "all /readyz 200 after the outage", back, 20*time.Second, 40*time.Second, func() error { return allReadyz(l, 200, "ok") })
	waitFor(t, "the peer written during the outage programmed everywhere", back, 20*time.Second, 40*time.Second, func() error {
		for _, h := range l.Hosts {
			ps, err := vxlanPeerState(h, newPeer, "0a:58:0a:40:03:fa", netip.MustParseAddr("10.64.3.250"))
			if err != nil {
				return err
			}
			if ps != (peerState{true, true, true}) {
				return fmt.Errorf("%s: new peer route/neigh/fdb %v/%v/%v", h.Name, ps.route, ps.neigh, ps.fdb)
			}
		}
		return nil
	})
	if err := pings(l, all, lab.PingOptions{}); err != nil {
		t.Errorf("after the outage: %v", err)
	}
	for i := range l.Hosts {
		if pid := l.WeftdPID(i); pid != pids[i] {
			t.Errorf("%s: weftd pid %d → %d: restarted", l.Hosts[i].Name, pids[i], pid)
		}
		if cur, ok := readLease(t, l, l.Hosts[i].Subnet); !ok || cur.PublicIP != l.Hosts[i].Eth0IP.String() {
			t.Errorf("%s: lease %s lost across the outage", l.Hosts[i].Name, l.Hosts[i].Subnet)
		}
	}
}
