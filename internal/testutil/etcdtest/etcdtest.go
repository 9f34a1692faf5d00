// Package etcdtest runs a real etcd server in-process for tests and the lab.
//
// It is the embedded etcd server (go.etcd.io/etcd/server/v3/embed), not a
// mock: leases, transactions, watches and compaction behave as in production.
// Only tests and the lab import it; weftd must not link the etcd server.
package etcdtest

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Server is one embedded etcd member listening on loopback.
type Server struct {
	Dir      string
	Endpoint string // client URL, e.g. http://127.0.0.1:41234

	mu      sync.Mutex
	etcd    *embed.Etcd
	cfg     *embed.Config
	stopped bool
}

// Options tunes the embedded server.
type Options struct {
	// Dir is the data directory; a temporary one is made when empty.
	Dir string
	// ClientAddr is host:port for clients; a free loopback port when empty.
	ClientAddr string
	// MaxTxnOps raises etcd's limit on operations in one transaction
	// (default 128), e.g. for benchmarks that write thousands of leases
	// in one revision; 0 keeps etcd's default.
	MaxTxnOps uint
	// MaxRequestBytes raises etcd's request size limit (default 1.5 MiB);
	// 0 keeps etcd's default.
	MaxRequestBytes uint
}

// Start runs an embedded etcd member. The caller must call Close.
func Start(opts Options) (*Server, error) {
	dir := opts.Dir
	if dir == "" {
		d, err := os.MkdirTemp("", "weft-etcd-")
		if err != nil {
			return nil, fmt.Errorf("create etcd data dir: %w", err)
		}
		dir = d
	}
	clientAddr := opts.ClientAddr
	if clientAddr == "" {
		p, err := freePort()
		if err != nil {
			return nil, err
		}
		clientAddr = fmt.Sprintf("127.0.0.1:%d", p)
	}
	peerPort, err := freePort()
	if err != nil {
		return nil, err
	}
	cfg := embed.NewConfig()
	cfg.Name = "weft-test"
	cfg.Dir = filepath.Join(dir, "data")
	cu, _ := url.Parse("http://" + clientAddr)
	pu, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", peerPort))
	cfg.ListenClientUrls = []url.URL{*cu}
	cfg.AdvertiseClientUrls = []url.URL{*cu}
	cfg.ListenPeerUrls = []url.URL{*pu}
	cfg.AdvertisePeerUrls = []url.URL{*pu}
	cfg.InitialCluster = fmt.Sprintf("%s=%s", cfg.Name, pu.String())
	cfg.UnsafeNoFsync = true
	if opts.MaxTxnOps > 0 {
		cfg.MaxTxnOps = opts.MaxTxnOps
	}
	if opts.MaxRequestBytes > 0 {
		cfg.MaxRequestBytes = opts.MaxRequestBytes
	}
	cfg.LogLevel = "error"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	s := &Server{Dir: dir, Endpoint: cu.String(), cfg: cfg}
	if err := s.start(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Server) start() error {
	e, err := embed.StartEtcd(s.cfg)
	if err != nil {
		return fmt.Errorf("start embedded etcd in %s: %w", s.cfg.Dir, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		e.Close()
		return fmt.Errorf("embedded etcd in %s not ready after 30s", s.cfg.Dir)
	}
	s.mu.Lock()
	s.etcd = e
	s.stopped = false
	s.mu.Unlock()
	return nil
}

// Stop stops the member but keeps its data, so Restart brings it back.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.etcd != nil && !s.stopped {
		s.etcd.Close()
		s.stopped = true
	}
}

// Restart starts a stopped member again on the same address and data.
func (s *Server) Restart() error {
	s.Stop()
	cfg := *s.cfg
	// The same URLs are reused; the old listeners are closed by Stop.
	s.cfg = &cfg
	var err error
	for i := 0; i < 50; i++ {
		if err = s.start(); err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return err
}

// Close stops the member and removes its data directory.
func (s *Server) Close() {
	s.Stop()
	os.RemoveAll(s.Dir)
}

// Client returns a new client for this member; the caller closes it.
func (s *Server) Client() (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{
		Endpoints:   []string{s.Endpoint},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
}

// New starts a member for one test and removes it when the test ends.
func New(t testing.TB) *Server {
	t.Helper()
	s, err := Start(Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// NewClient returns a client for s that is closed when the test ends.
func NewClient(t testing.TB, s *Server) *clientv3.Client {
	t.Helper()
	c, err := s.Client()
	if err != nil {
		t.Fatalf("etcd client for %s: %v", s.Endpoint, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free loopback port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
