package etcdtest

import (
	"context"
	"fmt"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// TLS is the server side of client TLS: etcd serves https with CertFile
// and KeyFile; with ClientCAFile set it also demands a client certificate
// signed by that CA.
type TLS struct {
	CertFile, KeyFile string
	ClientCAFile      string
}

// NewTLS starts a member that serves clients over TLS only; it is removed
// when the test ends. Peers still talk plain http on loopback.
func NewTLS(t testing.TB, tls TLS) *Server {
	t.Helper()
	dir := t.TempDir()
	p, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	pp, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	cfg := embed.NewConfig()
	cfg.Name = "weft-tls"
	cfg.Dir = filepath.Join(dir, "data")
	cu, _ := url.Parse(fmt.Sprintf("https://127.0.0.1:%d", p))
	pu, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", pp))
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = cfg.Name + "=" + pu.String()
	cfg.ClientTLSInfo = transport.TLSInfo{
		CertFile: tls.CertFile, KeyFile: tls.KeyFile,
		TrustedCAFile: tls.ClientCAFile, ClientCertAuth: tls.ClientCAFile != "",
	}
	cfg.UnsafeNoFsync = true
	cfg.LogLevel = "error"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	s := &Server{Dir: dir, Endpoint: cu.String(), cfg: cfg}
	if err := s.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// EnableAuth creates the root user (needed by etcd to turn auth on) and a
// user with read-write access to keys under prefix only, then turns
// authentication on. cli must be able to reach s (before auth is on, any
// client can).
func EnableAuth(t testing.TB, cli *clientv3.Client, user, password, prefix string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	steps := []struct {
		what string
		do   func() error
	}{
		{"add root user", func() error { _, err := cli.UserAdd(ctx, "root", "root-"+password); return err }},
		{"grant root role", func() error { _, err := cli.UserGrantRole(ctx, "root", "root"); return err }},
		{"add role weft", func() error { _, err := cli.RoleAdd(ctx, "weft"); return err }},
		{"grant prefix to role weft", func() error {
			_, err := cli.RoleGrantPermission(ctx, "weft", prefix, clientv3.GetPrefixRangeEnd(prefix), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		}},
		{"add user " + user, func() error { _, err := cli.UserAdd(ctx, user, password); return err }},
		{"grant role weft to " + user, func() error { _, err := cli.UserGrantRole(ctx, user, "weft"); return err }},
		{"enable auth", func() error { _, err := cli.AuthEnable(ctx); return err }},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("etcd auth setup: %s: %v", s.what, err)
		}
	}
}
