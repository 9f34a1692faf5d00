// Package etcdopts holds the etcd connection options shared by weftd and
// weftctl (flanneld's -etcd-* flags) and builds an etcd v3 client from them.
package etcdopts

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/weft-net/weft/internal/lease"
)

// DefaultEndpoints and DefaultPrefix are flanneld's defaults.
const (
	DefaultEndpoints = "http://127.0.0.1:4001,http://127.0.0.1:2379"
	DefaultPrefix    = "/coreos.com/network"
)

// Options are the -etcd-* flags.
type Options struct {
	Endpoints string
	Prefix    string
	KeyFile   string
	CertFile  string
	CAFile    string
	Username  string
	Password  string
	// PasswordFile holds the password (-etcd-password-file): a file keeps
	// it out of /proc/<pid>/cmdline and the environment, both readable by
	// more than root. It is read on every connection attempt, so a fixed
	// file is picked up without a restart.
	PasswordFile string
	// DialTimeout bounds connecting; each call has its own deadline too.
	DialTimeout time.Duration
}

// AddFlags registers the flags with flanneld's names and defaults.
func (o *Options) AddFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.Endpoints, "etcd-endpoints", DefaultEndpoints, "comma-separated etcd v3 endpoints")
	fs.StringVar(&o.Prefix, "etcd-prefix", DefaultPrefix, "etcd key prefix of the network")
	fs.StringVar(&o.KeyFile, "etcd-keyfile", "", "TLS client key file for etcd")
	fs.StringVar(&o.CertFile, "etcd-certfile", "", "TLS client certificate file for etcd")
	fs.StringVar(&o.CAFile, "etcd-cafile", "", "CA file that signs etcd's server certificate")
	fs.StringVar(&o.Username, "etcd-username", "", "etcd username")
	fs.StringVar(&o.Password, "etcd-password", "", "etcd password (never logged; prefer -etcd-password-file or FLANNELD_ETCD_PASSWORD: a flag is visible in the process list)")
	fs.StringVar(&o.PasswordFile, "etcd-password-file", "", "file holding the etcd password (one trailing newline ignored; must not be readable by group or others)")
}

// password is the password to authenticate with: -etcd-password, or the
// content of -etcd-password-file.
func (o Options) password() (string, error) {
	if o.PasswordFile == "" {
		return o.Password, nil
	}
	f, err := os.Open(o.PasswordFile)
	if err != nil {
		return "", fmt.Errorf("-etcd-password-file %q: %w", o.PasswordFile, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("-etcd-password-file %q: %w", o.PasswordFile, err)
	}
	// Like ssh with a private key: a secret others can read is no secret,
	// and refusing is the only way the operator learns it.
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return "", fmt.Errorf("-etcd-password-file %q: mode %04o lets group or others access the password: must be readable by its owner only (chmod 600)", o.PasswordFile, perm)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("-etcd-password-file %q: not a regular file", o.PasswordFile)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxPasswordFile+1))
	if err != nil {
		return "", fmt.Errorf("-etcd-password-file %q: %w", o.PasswordFile, err)
	}
	if len(b) > maxPasswordFile {
		return "", fmt.Errorf("-etcd-password-file %q: longer than %d bytes: not a password file", o.PasswordFile, maxPasswordFile)
	}
	// Editors and `echo` end the file with a newline; it is not part of
	// the password.
	pw := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	if pw == "" {
		return "", fmt.Errorf("-etcd-password-file %q: empty", o.PasswordFile)
	}
	return pw, nil
}

// maxPasswordFile bounds what is read from -etcd-password-file.
const maxPasswordFile = 4096

// PlaintextEndpoints returns the endpoints a password would cross
// unencrypted: http://, or no scheme without a TLS certificate or CA. Empty
// when no password is given.
func (o Options) PlaintextEndpoints() []string {
	if o.Password == "" && o.PasswordFile == "" {
		return nil
	}
	withTLS := o.CertFile != "" || o.CAFile != ""
	var plain []string
	for _, ep := range o.EndpointList() {
		switch {
		case strings.HasPrefix(ep, "https://"), strings.HasPrefix(ep, "unix://"), strings.HasPrefix(ep, "unixs://"):
		case strings.HasPrefix(ep, "http://"), !withTLS:
			plain = append(plain, ep)
		}
	}
	return plain
}

// EndpointList splits Endpoints, dropping empty items.
func (o Options) EndpointList() []string {
	var eps []string
	for _, e := range strings.Split(o.Endpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			eps = append(eps, e)
		}
	}
	return eps
}

// Validate checks the options without connecting.
func (o Options) Validate() error {
	if len(o.EndpointList()) == 0 {
		return fmt.Errorf("-etcd-endpoints %q: at least one endpoint is required", o.Endpoints)
	}
	if !strings.HasPrefix(o.Prefix, "/") {
		return fmt.Errorf("-etcd-prefix %q: must start with /", o.Prefix)
	}
	if (o.KeyFile == "") != (o.CertFile == "") {
		return fmt.Errorf("-etcd-keyfile %q and -etcd-certfile %q: give both or neither", o.KeyFile, o.CertFile)
	}
	if o.Password != "" && o.PasswordFile != "" {
		return fmt.Errorf("-etcd-password and -etcd-password-file %q: give one or the other", o.PasswordFile)
	}
	if _, err := o.password(); err != nil {
		return err
	}
	return nil
}

// LogValue keeps the password out of every log line.
func (o Options) LogValue() slog.Value {
	pw := ""
	if o.Password != "" {
		pw = "<redacted>"
	}
	if o.PasswordFile != "" {
		pw = "<from " + o.PasswordFile + ">"
	}
	return slog.GroupValue(
		slog.String("endpoints", o.Endpoints),
		slog.String("prefix", o.Prefix),
		slog.String("certfile", o.CertFile),
		slog.String("keyfile", o.KeyFile),
		slog.String("cafile", o.CAFile),
		slog.String("username", o.Username),
		slog.String("password", pw),
	)
}

// Client builds an etcd v3 client. It does not wait for a connection: the
// first call does, under the caller's deadline.
func (o Options) Client() (*clientv3.Client, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	tlsCfg, err := o.tlsConfig()
	if err != nil {
		return nil, err
	}
	pw, err := o.password()
	if err != nil {
		return nil, err
	}
	dt := o.DialTimeout
	if dt == 0 {
		dt = 5 * time.Second
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            o.EndpointList(),
		TLS:                  tlsCfg,
		Username:             o.Username,
		Password:             pw,
		DialTimeout:          dt,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		AutoSyncInterval:     0,
		Logger:               zap.NewNop(),
		DialOptions: []grpc.DialOption{
			// gRPC's default reconnect backoff grows to 120 s: after an etcd
			// restart a host would stay blind to lease changes for seconds.
			// Reconnecting at most every 2 s costs etcd nothing.
			grpc.WithConnectParams(grpc.ConnectParams{
				Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
				MinConnectTimeout: 2 * time.Second,
			}),
		},
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client for %s: %w", o.Endpoints, err)
	}
	return cli, nil
}

// TLSConfig is the client TLS of the options (nil when TLS is not asked
// for), for clients that are not the v3 one: weftctl migrate-v2 reads etcd's
// v2 API over plain HTTP(S).
func (o Options) TLSConfig() (*tls.Config, error) { return o.tlsConfig() }

// Credentials returns the username and the password (from -etcd-password or
// -etcd-password-file, with the file's checks), for HTTP basic auth on etcd's
// v2 API; both empty when no user is given.
func (o Options) Credentials() (user, password string, err error) {
	if o.Username == "" {
		return "", "", nil
	}
	pw, err := o.password()
	return o.Username, pw, err
}

// tlsConfig is the client TLS of the options; nil when TLS is not asked for.
func (o Options) tlsConfig() (*tls.Config, error) {
	if o.CertFile == "" && o.CAFile == "" {
		return nil, nil
	}
	info := transport.TLSInfo{CertFile: o.CertFile, KeyFile: o.KeyFile, TrustedCAFile: o.CAFile}
	cfg, err := info.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("etcd TLS (cert %q, key %q, ca %q): %w", o.CertFile, o.KeyFile, o.CAFile, err)
	}
	return cfg, nil
}

// ConnectTimeout bounds Connect: an operator learns within it whether etcd
// is reachable and, when not, why.
const ConnectTimeout = 5 * time.Second

// Connect builds the client and checks that etcd answers a read of
// <prefix>/config within ConnectTimeout. On failure it returns one error
// naming each endpoint and the cause (wrong CA, expired certificate, bad
// password, refused connection…), and no client.
func (o Options) Connect(ctx context.Context) (*clientv3.Client, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if _, err := o.tlsConfig(); err != nil {
		return nil, err
	}
	cli, err := o.Client()
	if err != nil {
		// clientv3.New authenticates at once when a username is given.
		return nil, fmt.Errorf("etcd %s: %s", o.Endpoints, o.Diagnose(err))
	}
	if err := o.Check(ctx, cli); err != nil {
		cli.Close()
		return nil, err
	}
	return cli, nil
}

// Check reads <prefix>/config through cli (a key the weft user must be
// allowed to read, unlike "/") and, when that fails, asks each endpoint on
// its own why, so that the error names the endpoint and the cause. It
// returns within ConnectTimeout.
func (o Options) Check(ctx context.Context, cli *clientv3.Client) error {
	deadline := time.Now().Add(ConnectTimeout - 200*time.Millisecond)
	key := lease.ConfigKey(o.Prefix)
	gctx, cancel := context.WithDeadline(ctx, time.Now().Add(ConnectTimeout/2))
	_, err := cli.Get(gctx, key, clientv3.WithCountOnly())
	cancel()
	if err == nil || ctx.Err() != nil {
		return err
	}
	eps := o.EndpointList()
	causes := make([]string, len(eps))
	var wg sync.WaitGroup
	for i, ep := range eps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			causes[i] = ep + ": " + o.probe(ctx, ep, key, deadline)
		}()
	}
	wg.Wait()
	if len(eps) == 1 {
		return fmt.Errorf("etcd %s", causes[0])
	}
	return fmt.Errorf("etcd: no endpoint usable: %s", strings.Join(causes, "; "))
}

// probe reads key from one endpoint and describes the outcome.
func (o Options) probe(ctx context.Context, ep, key string, deadline time.Time) string {
	if cause := o.transportProbe(ctx, ep, deadline); cause != "" {
		return cause
	}
	one := o
	one.Endpoints = ep
	cli, err := one.Client()
	if err != nil {
		return o.Diagnose(err)
	}
	defer cli.Close()
	pctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	if _, err = cli.Get(pctx, key, clientv3.WithCountOnly()); err == nil {
		return "answers now (it did not a moment ago)"
	}
	return o.Diagnose(err)
}

// transportProbe dials ep itself, with the client's TLS when it has one,
// because gRPC reports a failed handshake only as a timeout. It returns the
// cause of a TCP or TLS failure, or "" when the transport is fine.
func (o Options) transportProbe(ctx context.Context, ep string, deadline time.Time) string {
	host := ep
	if u, err := url.Parse(ep); err == nil && u.Host != "" {
		host = u.Host
	}
	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(dctx, "tcp", host)
	if err != nil {
		return o.Diagnose(err)
	}
	defer conn.Close()
	cfg, err := o.tlsConfig()
	if err != nil || cfg == nil {
		return ""
	}
	cfg = cfg.Clone()
	if h, _, err := net.SplitHostPort(host); err == nil && cfg.ServerName == "" {
		cfg.ServerName = h
	}
	cfg.NextProtos = []string{"h2"}
	tc := tls.Client(conn, cfg)
	if err := tc.HandshakeContext(dctx); err != nil {
		return o.Diagnose(err)
	}
	// With TLS 1.3 the server judges our certificate after the client's
	// handshake is done: its verdict is an alert on the first read.
	tc.SetReadDeadline(time.Now().Add(min(300*time.Millisecond, time.Until(deadline))))
	if _, err := tc.Read(make([]byte, 1)); err != nil && strings.Contains(err.Error(), "remote error") {
		return o.Diagnose(err)
	}
	return ""
}

// Diagnose turns an etcd client error into the cause an operator can act
// on. gRPC carries TLS and auth failures as text, so they are matched by
// their messages; the original error is kept at the end.
func (o Options) Diagnose(err error) string {
	msg := err.Error()
	has := func(s ...string) bool {
		for _, x := range s {
			if strings.Contains(msg, x) {
				return true
			}
		}
		return false
	}
	var cause string
	switch {
	case errors.Is(err, rpctypes.ErrAuthFailed) || has("authentication failed"):
		pw := "-etcd-password"
		if o.PasswordFile != "" {
			pw = fmt.Sprintf("password in -etcd-password-file %q", o.PasswordFile)
		}
		cause = fmt.Sprintf("authentication failed: unknown -etcd-username %q or wrong %s", o.Username, pw)
	case errors.Is(err, rpctypes.ErrPermissionDenied) || has("permission denied"):
		cause = fmt.Sprintf("permission denied: user %q may not read %s", o.Username, o.Prefix)
	case errors.Is(err, rpctypes.ErrUserEmpty) || has("user name is empty", "user name not found"):
		cause = "etcd requires authentication: give -etcd-username and -etcd-password"
	case has("certificate signed by unknown authority"):
		cause = fmt.Sprintf("TLS: etcd's server certificate is not signed by the CA in -etcd-cafile %q", o.CAFile)
	case has("x509: certificate has expired", "certificate has expired or is not yet valid"):
		cause = "TLS: etcd's server certificate has expired or is not yet valid"
	case has("x509: certificate is valid for", "x509: cannot validate certificate"):
		cause = "TLS: etcd's server certificate does not name this endpoint's host"
	case has("tls: expired certificate"):
		cause = fmt.Sprintf("TLS: etcd rejected the client certificate -etcd-certfile %q: expired", o.CertFile)
	case has("tls: certificate required"):
		cause = "TLS: etcd requires a client certificate: give -etcd-certfile and -etcd-keyfile"
	case has("tls: bad certificate", "tls: unknown certificate authority", "tls: unknown certificate"):
		cause = fmt.Sprintf("TLS: etcd rejected the client certificate -etcd-certfile %q (not signed by a CA it trusts)", o.CertFile)
	case has("first record does not look like a TLS handshake"):
		cause = "TLS: the endpoint does not speak TLS (use http://, or the right port)"
	case has("connection refused"):
		cause = "connection refused: nothing listens there"
	case has("no such host"):
		cause = "unknown host"
	case errors.Is(err, context.DeadlineExceeded) || has("deadline exceeded"):
		cause = "no answer in time (unreachable, or a TLS endpoint reached with http://)"
	default:
		cause = "unreachable"
	}
	return cause + " (" + msg + ")"
}
