// Package etcdopts holds the etcd connection options shared by weftd and
// weftctl (flanneld's -etcd-* flags) and builds an etcd v3 client from them.
package etcdopts

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
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
	fs.StringVar(&o.Password, "etcd-password", "", "etcd password (never logged)")
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
	return nil
}

// LogValue keeps the password out of every log line.
func (o Options) LogValue() slog.Value {
	pw := ""
	if o.Password != "" {
		pw = "<redacted>"
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
	var tlsCfg *tls.Config
	if o.CertFile != "" || o.CAFile != "" {
		info := transport.TLSInfo{CertFile: o.CertFile, KeyFile: o.KeyFile, TrustedCAFile: o.CAFile}
		var err error
		if tlsCfg, err = info.ClientConfig(); err != nil {
			return nil, fmt.Errorf("etcd TLS (cert %q, key %q, ca %q): %w", o.CertFile, o.KeyFile, o.CAFile, err)
		}
	}
	dt := o.DialTimeout
	if dt == 0 {
		dt = 5 * time.Second
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            o.EndpointList(),
		TLS:                  tlsCfg,
		Username:             o.Username,
		Password:             o.Password,
		DialTimeout:          dt,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		AutoSyncInterval:     0,
		Logger:               zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client for %s: %w", o.Endpoints, err)
	}
	return cli, nil
}

// Ping checks that etcd answers within d, naming the endpoints on failure.
func Ping(ctx context.Context, cli *clientv3.Client, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	if _, err := cli.Get(ctx, "/", clientv3.WithCountOnly()); err != nil {
		return fmt.Errorf("etcd %s: %w", strings.Join(cli.Endpoints(), ","), err)
	}
	return nil
}
