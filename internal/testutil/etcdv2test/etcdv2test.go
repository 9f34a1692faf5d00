// Package etcdv2test runs Debian's etcd 3.4 (/usr/bin/etcd, package
// etcd-server) with its v2 store on (--enable-v2) for tests of the v2
// migration, and writes v2 keys the way the ops note does: with Debian's
// etcdctl and ETCDCTL_API=2. The embedded etcd of etcdtest is 3.6+, which
// has no v2 store: flannel 0.7's data can only come from a real old etcd.
package etcdv2test

import (
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Binaries the package runs.
const (
	EtcdBinary    = "/usr/bin/etcd"
	EtcdctlBinary = "/usr/bin/etcdctl"
)

// Server is one etcd 3.4 process serving v2 and v3 on one loopback URL.
type Server struct {
	Endpoint string // http://127.0.0.1:<port>
	cmd      *exec.Cmd
}

// Start runs etcd with its data in t.TempDir() on free loopback ports, and
// kills it (by its PID) when the test ends. It skips the test when Debian's
// etcd or etcdctl is not installed (apt-get install etcd-server etcd-client;
// scripts/install-deps.sh does it).
func Start(t testing.TB) *Server {
	t.Helper()
	for _, b := range []string{EtcdBinary, EtcdctlBinary} {
		if _, err := os.Stat(b); err != nil {
			t.Skipf("%s not installed (Debian etcd-server and etcd-client, see scripts/install-deps.sh): the v2 store needs a real etcd 3.4: %v", b, err)
		}
	}
	dir := t.TempDir()
	client, peer := freePort(t), freePort(t)
	cu := "http://127.0.0.1:" + strconv.Itoa(client)
	pu := "http://127.0.0.1:" + strconv.Itoa(peer)
	logf, err := os.Create(filepath.Join(dir, "etcd.log"))
	if err != nil {
		t.Fatalf("create etcd log: %v", err)
	}
	cmd := exec.Command(EtcdBinary,
		"--name", "v2test", "--data-dir", filepath.Join(dir, "data"), "--enable-v2",
		"--listen-client-urls", cu, "--advertise-client-urls", cu,
		"--listen-peer-urls", pu, "--initial-advertise-peer-urls", pu,
		"--initial-cluster", "v2test="+pu)
	cmd.Stdout, cmd.Stderr = logf, logf
	// The environment of the test must not configure this etcd
	// (ETCD_* variables would override the flags' siblings).
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start %s: %v", EtcdBinary, err)
	}
	s := &Server{Endpoint: cu, cmd: cmd}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		logf.Close()
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(cu + "/v2/keys/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s
			}
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "etcd.log"))
			t.Fatalf("etcd 3.4 on %s did not serve v2 within 20s (last: %v); its log:\n%s", cu, err, tail(log, 3000))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// MkV2 runs `ETCDCTL_API=2 etcdctl --endpoints <s> mk [--ttl N] key value`,
// the ops note's command; ttl 0 writes a key without TTL.
func (s *Server) MkV2(t testing.TB, key, value string, ttl int) {
	t.Helper()
	args := []string{"--endpoints", s.Endpoint, "mk"}
	if ttl > 0 {
		args = append(args, "--ttl", strconv.Itoa(ttl))
	}
	args = append(args, key, value)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, EtcdctlBinary, args...)
	cmd.Env = []string{"PATH=/usr/bin:/bin", "ETCDCTL_API=2"}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ETCDCTL_API=2 etcdctl %q: %v: %s", args, err, out)
	}
}

// Client is a v3 client of the same etcd, closed when the test ends.
func (s *Server) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{s.Endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("etcd v3 client for %s: %v", s.Endpoint, err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free loopback port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
