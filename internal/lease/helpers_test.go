package lease

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/netconf"
	"github.com/weft-net/weft/internal/testutil/etcdtest"
)

const testPrefix = "/weft-test/network"

// logBuf collects log output so tests can assert what was said, and how often.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuf) Count(s string) int { return strings.Count(l.String(), s) }

func newLogger() (*slog.Logger, *logBuf) {
	lb := &logBuf{}
	return slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug})), lb
}

// testNet is 172.30.0.0/16 with /24 leases in [172.30.1.0, 172.30.199.0].
// A manager picks its own subnet at random among the free ones in that
// pool, so tests write their peers' leases at 172.30.200.0/24 and above
// (in the network, outside the pool): a peer can then never overwrite
// the subnet the manager under test took.
func testNet() netconf.Config {
	return netconf.Config{
		EnableIPv4:  true,
		Network:     netip.MustParsePrefix("172.30.0.0/16"),
		SubnetLen:   24,
		SubnetMin:   netip.MustParsePrefix("172.30.1.0/24"),
		SubnetMax:   netip.MustParsePrefix("172.30.199.0/24"),
		BackendType: "vxlan",
	}
}

func smallNet(min, max string) netconf.Config {
	c := testNet()
	c.SubnetMin, c.SubnetMax = netip.MustParsePrefix(min), netip.MustParsePrefix(max)
	return c
}

func newTestStore(t testing.TB) (*etcdtest.Server, *clientv3.Client, *Store, *logBuf) {
	t.Helper()
	srv := etcdtest.New(t)
	cli := etcdtest.NewClient(t, srv)
	log, lb := newLogger()
	return srv, cli, NewStore(cli, testPrefix, log), lb
}

func hostIP(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, 64, byte(i >> 8), byte(i)})
}

// newTestManager is a vxlan host; its VtepMAC is derived from ip, as each
// real host has its own (a shared one would be a clash every host rejects).
func newTestManager(s *Store, cfg netconf.Config, ip netip.Addr, log *slog.Logger) *Manager {
	b := ip.As4()
	return NewManager(ManagerConfig{
		Store: s, Network: cfg, PublicIP: ip, BackendType: "vxlan",
		BackendData: []byte(fmt.Sprintf(`{"VNI":1,"VtepMAC":"d6:51:%02x:%02x:%02x:%02x"}`, b[0], b[1], b[2], b[3])), Logger: log,
	})
}

func put(t testing.TB, cli *clientv3.Client, key, val string, opts ...clientv3.OpOption) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Put(ctx, key, val, opts...)
	if err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
	return resp.Header.Revision
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitSnap reads snapshots until one satisfies cond, failing after d.
func waitSnap(t testing.TB, m *Manager, d time.Duration, what string, cond func(Snapshot) bool) Snapshot {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	var last Snapshot
	for {
		select {
		case s := <-m.Snapshots():
			if cond(s) {
				return s
			}
			last = s
		case <-timer.C:
			t.Fatalf("timed out after %s waiting for snapshot with %s; last: own %v, %d peers, rev %d", d, what, last.Own.Subnet, len(last.Peers), last.Revision)
		}
	}
}

func peerSubnets(s Snapshot) []string {
	var out []string
	for _, p := range s.Peers {
		out = append(out, p.Subnet.String())
	}
	return out
}

// runManager acquires and runs m until the test ends.
func runManager(t testing.TB, m *Manager) Lease {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	actx, acancel := context.WithTimeout(ctx, 10*time.Second)
	defer acancel()
	own, err := m.Acquire(actx)
	if err != nil {
		cancel()
		t.Fatalf("Acquire: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v on cancel", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("Run did not return within 5s of cancel")
		}
	})
	return own
}
