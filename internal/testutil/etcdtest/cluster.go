package etcdtest

import (
	"context"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Cluster is several embedded etcd members forming one cluster on
// loopback, to test leader loss and quorum loss.
type Cluster struct {
	Members []*Server
}

// NewCluster starts n members and removes them when the test ends.
func NewCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	dir := t.TempDir()
	type urls struct{ client, peer *url.URL }
	us := make([]urls, n)
	var initial []string
	for i := range n {
		cp, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		pp, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		us[i].client, _ = url.Parse(fmt.Sprintf("http://127.0.0.1:%d", cp))
		us[i].peer, _ = url.Parse(fmt.Sprintf("http://127.0.0.1:%d", pp))
		initial = append(initial, fmt.Sprintf("m%d=%s", i, us[i].peer))
	}
	c := &Cluster{}
	for i := range n {
		cfg := embed.NewConfig()
		cfg.Name = fmt.Sprintf("m%d", i)
		cfg.Dir = filepath.Join(dir, cfg.Name)
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*us[i].client}, []url.URL{*us[i].client}
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*us[i].peer}, []url.URL{*us[i].peer}
		cfg.InitialCluster = strings.Join(initial, ",")
		cfg.InitialClusterToken = "weft-test-cluster"
		cfg.UnsafeNoFsync = true
		cfg.LogLevel = "error"
		cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
		c.Members = append(c.Members, &Server{Dir: cfg.Dir, Endpoint: us[i].client.String(), cfg: cfg})
	}
	// Members wait for each other before they are ready: start together.
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, m := range c.Members {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = m.start() }()
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, m := range c.Members {
			m.Stop()
		}
	})
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// Endpoints is every member's client URL, comma-separated (-etcd-endpoints).
func (c *Cluster) Endpoints() string {
	var eps []string
	for _, m := range c.Members {
		eps = append(eps, m.Endpoint)
	}
	return strings.Join(eps, ",")
}

// Leader returns the index of the member that is leader, waiting up to d
// for the running members to agree on one.
func (c *Cluster) Leader(d time.Duration) (int, error) {
	deadline := time.Now().Add(d)
	for {
		for i, m := range c.Members {
			m.mu.Lock()
			e, stopped := m.etcd, m.stopped
			m.mu.Unlock()
			if e == nil || stopped {
				continue
			}
			if e.Server.MemberID() == e.Server.Leader() {
				return i, nil
			}
		}
		if time.Now().After(deadline) {
			return -1, fmt.Errorf("no etcd leader among %d members after %s", len(c.Members), d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Client returns a client of every member; the caller closes it.
func (c *Cluster) Client() (*clientv3.Client, error) {
	var eps []string
	for _, m := range c.Members {
		eps = append(eps, m.Endpoint)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return nil, fmt.Errorf("etcd client for %s: %w", c.Endpoints(), err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Get(ctx, "/"); err != nil {
		cli.Close()
		return nil, fmt.Errorf("etcd cluster %s: %w", c.Endpoints(), err)
	}
	return cli, nil
}
