package lab

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/weft-net/weft/internal/lease"
)

// MaxEtcdMembers is the largest lab etcd cluster: each member has its own
// loopback port inside every host namespace (hostEtcdAddrs).
const MaxEtcdMembers = 3

// hostEtcdAddrs is where member i is reachable inside a host namespace.
// Member 0 keeps the ops note's 127.0.0.1:2379, so a one-member lab runs
// weftd with exactly the ops note's flags.
var hostEtcdAddrs = [MaxEtcdMembers]string{"127.0.0.1:2379", "127.0.0.1:22379", "127.0.0.1:32379"}

// etcdMember is one embedded etcd member of the lab. Its ports are fixed
// when the lab comes up, so a restarted member is back at the address the
// host proxies dial, with the same data directory.
type etcdMember struct {
	name     string
	endpoint string // client URL on the root namespace's loopback
	cfg      embed.Config

	mu      sync.Mutex
	etcd    *embed.Etcd // nil while stopped
	stopped bool
}

// startEtcdCluster starts n members with data under dir. The members are
// started together: each waits for a quorum before it is ready.
func startEtcdCluster(dir string, n int) ([]*etcdMember, error) {
	type urls struct{ client, peer *url.URL }
	us := make([]urls, n)
	var initial []string
	used := map[int]bool{}
	for i := range n {
		cp, err := stablePort(used)
		if err != nil {
			return nil, err
		}
		pp, err := stablePort(used)
		if err != nil {
			return nil, err
		}
		us[i].client, _ = url.Parse(fmt.Sprintf("http://127.0.0.1:%d", cp))
		us[i].peer, _ = url.Parse(fmt.Sprintf("http://127.0.0.1:%d", pp))
		initial = append(initial, fmt.Sprintf("%s=%s", memberName(n, i), us[i].peer))
	}
	ms := make([]*etcdMember, n)
	for i := range n {
		cfg := embed.NewConfig()
		cfg.Name = memberName(n, i)
		// One member keeps the layout it always had (<state>/etcd/data).
		cfg.Dir = filepath.Join(dir, "data")
		if n > 1 {
			cfg.Dir = filepath.Join(dir, cfg.Name)
		}
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*us[i].client}, []url.URL{*us[i].client}
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*us[i].peer}, []url.URL{*us[i].peer}
		cfg.InitialCluster = strings.Join(initial, ",")
		cfg.InitialClusterToken = "weft-lab"
		cfg.UnsafeNoFsync = true
		cfg.LogLevel = "error"
		cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
		ms[i] = &etcdMember{name: cfg.Name, endpoint: us[i].client.String(), cfg: *cfg}
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, m := range ms {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = m.start(30 * time.Second) }()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		for _, m := range ms {
			m.stop()
		}
		return nil, err
	}
	return ms, nil
}

func memberName(n, i int) string {
	if n == 1 {
		return "weft-lab"
	}
	return fmt.Sprintf("m%d", i)
}

// start runs the member and waits up to ready for it to serve. A member that
// is not ready in time (a restart without quorum) is left running, so that
// the next member restarted can complete the quorum.
func (m *etcdMember) start(ready time.Duration) error {
	var e *embed.Etcd
	var err error
	// The ports were just released by stop: retry briefly while the kernel
	// lets go of them.
	for range 50 {
		cfg := m.cfg // StartEtcd fills in fields; keep the original clean
		if e, err = embed.StartEtcd(&cfg); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("start etcd member %s in %s: %w", m.name, m.cfg.Dir, err)
	}
	m.mu.Lock()
	m.etcd, m.stopped = e, false
	m.mu.Unlock()
	select {
	case <-e.Server.ReadyNotify():
		return nil
	case <-time.After(ready):
		return fmt.Errorf("etcd member %s (%s) not ready after %s (no quorum?)", m.name, m.endpoint, ready)
	}
}

// stop closes the member, keeping its data; it reports whether it was
// running.
func (m *etcdMember) stop() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.etcd == nil || m.stopped {
		return false
	}
	m.etcd.Close()
	m.etcd, m.stopped = nil, true
	return true
}

// isLeader reports whether the member is running and is the raft leader.
func (m *etcdMember) isLeader() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.etcd == nil || m.stopped {
		return false
	}
	s := m.etcd.Server
	return s.Leader() == s.MemberID()
}

// stablePort finds a free loopback port below the kernel's ephemeral range,
// so that while a member is stopped no outgoing connection can take its
// port and its restart fails.
func stablePort(used map[int]bool) (int, error) {
	lo, hi := 20000, 32767
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		var a, z int
		if _, err := fmt.Sscan(string(b), &a, &z); err == nil && a > 11000 {
			hi = a - 1
			lo = max(10000, hi-12000)
		}
	}
	for range 200 {
		p := lo + rand.IntN(hi-lo+1)
		if used[p] {
			continue
		}
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		ln.Close()
		used[p] = true
		return p, nil
	}
	return 0, fmt.Errorf("no free loopback port in %d-%d for etcd", lo, hi)
}

func (l *Lab) member(i int) (*etcdMember, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, errors.New("lab is closed")
	}
	if i < 0 || i >= len(l.members) {
		return nil, fmt.Errorf("etcd member %d: the lab has members 0..%d", i, len(l.members)-1)
	}
	return l.members[i], nil
}

// StopEtcd stops etcd member i, keeping its data and its address: the host
// proxies stay up and refuse nothing, but their connections to the member
// fail, as when an etcd process dies.
func (l *Lab) StopEtcd(member int) error {
	m, err := l.member(member)
	if err != nil {
		return err
	}
	if !m.stop() {
		return fmt.Errorf("etcd member %d (%s): already stopped", member, m.endpoint)
	}
	l.log.Info("etcd member stopped", "member", member, "endpoint", m.endpoint)
	return nil
}

// RestartEtcd starts etcd member i again (stopping it first if it runs) on
// the same address and data directory, and waits up to 30 s for it to serve
// — which needs a quorum of running members.
func (l *Lab) RestartEtcd(member int) error {
	m, err := l.member(member)
	if err != nil {
		return err
	}
	m.stop()
	start := time.Now()
	if err := m.start(30 * time.Second); err != nil {
		return err
	}
	l.log.Info("etcd member restarted", "member", member, "endpoint", m.endpoint, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// EtcdLeader returns the index of the running member that is raft leader,
// waiting up to 10 s for the running members to elect one.
func (l *Lab) EtcdLeader() (int, error) {
	l.mu.Lock()
	ms := append([]*etcdMember(nil), l.members...)
	l.mu.Unlock()
	const wait = 10 * time.Second
	deadline := time.Now().Add(wait)
	for {
		for i, m := range ms {
			if m.isLeader() {
				return i, nil
			}
		}
		if time.Now().After(deadline) {
			return -1, fmt.Errorf("no etcd leader among the lab's %d members after %s", len(ms), wait)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// CompactEtcd compacts the etcd history up to the current revision, so that
// a watch from any earlier revision fails with "compacted".
//
// It uses a client of its own: right after RestartEtcd, Lab.Etcd may still
// be waiting out its reconnection back-off, and a test compacting "now"
// means before the daemons' clients are back.
func (l *Lab) CompactEtcd(ctx context.Context) error {
	cli, err := l.NewEtcdClient()
	if err != nil {
		return err
	}
	defer cli.Close()
	resp, err := cli.Get(ctx, lease.ConfigKey(l.cfg.Prefix), clientv3.WithCountOnly())
	if err != nil {
		return fmt.Errorf("read the current etcd revision: %w", err)
	}
	rev := resp.Header.Revision
	if _, err := cli.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		return fmt.Errorf("compact etcd to revision %d: %w", rev, err)
	}
	l.log.Info("etcd compacted", "revision", rev)
	return nil
}

// EtcdMemberEndpoint is member i's client URL on the root namespace's
// loopback ("" for no such member).
func (l *Lab) EtcdMemberEndpoint(i int) string {
	m, err := l.member(i)
	if err != nil {
		return ""
	}
	return m.endpoint
}

// hostEndpoints is weftd's -etcd-endpoints: every member through the
// host's own loopback.
func (l *Lab) hostEndpoints() string {
	eps := make([]string, len(l.members))
	for i := range l.members {
		eps[i] = "http://" + hostEtcdAddrs[i]
	}
	return strings.Join(eps, ",")
}

// NewEtcdClient returns a new client of every member, with a fresh
// connection (no back-off inherited from an outage); the caller closes it.
func (l *Lab) NewEtcdClient() (*clientv3.Client, error) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: l.EtcdEndpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return nil, fmt.Errorf("etcd client for %s: %w", strings.Join(l.EtcdEndpoints, ","), err)
	}
	return cli, nil
}
