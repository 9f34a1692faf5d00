package daemon

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"time"

	"github.com/weft-net/weft/internal/etcdopts"
	"github.com/weft-net/weft/internal/extiface"
	"github.com/weft-net/weft/internal/flagenv"
	"github.com/weft-net/weft/internal/lease"
)

// Options are flanneld's command line, with its names and defaults
// (shared/docs/COMPAT.md), so the ops note's /etc/sysconfig/flanneld works.
type Options struct {
	Etcd etcdopts.Options

	Ifaces        flagenv.Strings
	IfaceRegex    flagenv.Strings
	IfaceCanReach string
	PublicIP      string
	PublicIPv6    string

	SubnetFile        string
	RenewMarginMinute int
	// SubnetLeaseTTL is the etcd lease TTL of this host's subnet (weft's
	// own flag; flanneld's is fixed at 24h, the default).
	SubnetLeaseTTL time.Duration
	// NodeName is this host's identity in its lease (weft's own flag);
	// empty: /etc/machine-id, else the hostname (ResolveNodeName).
	NodeName string

	IPMasq                   bool
	IPMasqFullyRandomDisable bool
	IPTablesResyncSeconds    int
	IPTablesForwardRules     bool
	IPBlackholeRoute         bool

	HealthzIP   string
	HealthzPort int

	// MemoryLimit is the floor of the Go runtime's soft memory limit
	// (weft's own flag; flanneld has none). GOMEMLIMIT, when set, wins.
	MemoryLimit MemoryLimit

	Version   bool
	Verbosity int

	// KubeSubnetMgr is accepted only to refuse it clearly.
	KubeSubnetMgr bool
}

// EnvPrefix is the prefix of the environment variables that fill flags not
// given on the command line.
const EnvPrefix = "FLANNELD_"

// NewFlagSet registers every flag on a new FlagSet writing usage to w.
func (o *Options) NewFlagSet(w io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("weftd", flag.ContinueOnError)
	fs.SetOutput(w)
	o.Etcd.AddFlags(fs)
	fs.Var(&o.Ifaces, "iface", "interface name or IP for inter-host traffic (repeatable, tried in order)")
	fs.Var(&o.IfaceRegex, "iface-regex", "regex over addresses, then names, of the interface to use (repeatable)")
	fs.StringVar(&o.IfaceCanReach, "iface-can-reach", "", "use the interface that routes to this address")
	fs.StringVar(&o.PublicIP, "public-ip", "", "IPv4 address advertised in the lease (default: the interface's)")
	fs.StringVar(&o.PublicIPv6, "public-ipv6", "", "IPv6 address advertised in the lease")
	fs.StringVar(&o.SubnetFile, "subnet-file", "/run/flannel/subnet.env", "file written with the leased subnet")
	fs.IntVar(&o.RenewMarginMinute, "subnet-lease-renew-margin", 60, "minutes before expiry to renew the lease (1..1439)")
	fs.DurationVar(&o.SubnetLeaseTTL, "subnet-lease-ttl", DefaultSubnetLeaseTTL, "etcd lease TTL of this host's subnet, e.g. 24h (1m..8760h); a dead host's subnet is freed after it")
	fs.StringVar(&o.NodeName, "node-name", "", "this host's identity in its lease (default: /etc/machine-id, else the hostname)")
	fs.BoolVar(&o.IPMasq, "ip-masq", false, "masquerade traffic leaving the overlay")
	fs.BoolVar(&o.IPMasqFullyRandomDisable, "ip-masq-fully-random-disable", false, "no --random-fully on MASQUERADE")
	fs.IntVar(&o.IPTablesResyncSeconds, "iptables-resync", 5, "seconds between checks of the traffic rules")
	fs.BoolVar(&o.IPTablesForwardRules, "iptables-forward-rules", true, "ACCEPT the overlay in FORWARD")
	fs.BoolVar(&o.IPBlackholeRoute, "ip-blackhole-route", false, "blackhole route for this host's subnet")
	fs.StringVar(&o.HealthzIP, "healthz-ip", "127.0.0.1", "address of /healthz, /readyz and /metrics")
	fs.IntVar(&o.HealthzPort, "healthz-port", 0, "port of /healthz, /readyz and /metrics (0 = off)")
	o.MemoryLimit = DefaultMemoryLimit
	fs.Var(&o.MemoryLimit, "memory-limit", "soft memory limit of the Go runtime while the live heap is under it, e.g. 16MiB (0 = off; GOMEMLIMIT, when set, wins)")
	fs.BoolVar(&o.Version, "version", false, "print the version and exit")
	fs.IntVar(&o.Verbosity, "v", 0, "log verbosity (0 info, 1+ debug)")
	fs.BoolVar(&o.KubeSubnetMgr, "kube-subnet-mgr", false, "not supported: weft uses etcd")
	return fs
}

// Validate checks values the flag package cannot; each error names the
// flag, the value and the rule.
func (o *Options) Validate() error {
	if o.KubeSubnetMgr {
		return fmt.Errorf("-kube-subnet-mgr: not supported: weft uses etcd (drop the flag and give -etcd-endpoints)")
	}
	if err := o.Etcd.Validate(); err != nil {
		return err
	}
	if o.RenewMarginMinute < 1 || o.RenewMarginMinute > 1439 {
		return fmt.Errorf("-subnet-lease-renew-margin %d: must be between 1 and 1439 minutes", o.RenewMarginMinute)
	}
	if o.SubnetLeaseTTL < MinSubnetLeaseTTL || o.SubnetLeaseTTL > MaxSubnetLeaseTTL || o.SubnetLeaseTTL%time.Second != 0 {
		return fmt.Errorf("-subnet-lease-ttl %s: must be whole seconds between %s and %s (etcd lease TTLs are seconds; shorter would make a host that misses a few renewals lose its subnet)",
			o.SubnetLeaseTTL, MinSubnetLeaseTTL, MaxSubnetLeaseTTL)
	}
	if o.NodeName != "" {
		if err := lease.CheckNodeName(o.NodeName); err != nil {
			return fmt.Errorf("-node-name: %w", err)
		}
	}
	if o.IPTablesResyncSeconds < 1 {
		return fmt.Errorf("-iptables-resync %d: must be at least 1 second", o.IPTablesResyncSeconds)
	}
	if o.HealthzPort < 0 || o.HealthzPort > 65535 {
		return fmt.Errorf("-healthz-port %d: must be between 0 and 65535", o.HealthzPort)
	}
	if o.HealthzPort != 0 {
		a, err := netip.ParseAddr(o.HealthzIP)
		if err != nil {
			return fmt.Errorf("-healthz-ip %q: not an IP address", o.HealthzIP)
		}
		// A zone is refused like in every address flag: one rule for all.
		if a.Zone() != "" {
			return fmt.Errorf("-healthz-ip %q: a zone (%%%s) is not allowed", o.HealthzIP, a.Zone())
		}
	}
	if o.PublicIP != "" {
		if _, err := extiface.ParsePublicIP("-public-ip", o.PublicIP, false); err != nil {
			return err
		}
	}
	if o.PublicIPv6 != "" {
		if _, err := extiface.ParsePublicIP("-public-ipv6", o.PublicIPv6, true); err != nil {
			return err
		}
	}
	if o.SubnetFile == "" {
		return fmt.Errorf("-subnet-file: must not be empty")
	}
	return nil
}

// Bounds of -subnet-lease-ttl. The renewal runs RenewMargin before expiry,
// or at half the TTL when the margin is not shorter than it.
const (
	DefaultSubnetLeaseTTL = lease.DefaultTTL
	MinSubnetLeaseTTL     = time.Minute
	MaxSubnetLeaseTTL     = 365 * 24 * time.Hour
)

// RenewMargin is -subnet-lease-renew-margin as a duration.
func (o *Options) RenewMargin() time.Duration {
	return time.Duration(o.RenewMarginMinute) * time.Minute
}

// LogValue logs the options without the etcd password.
func (o *Options) LogValue() slog.Value {
	return slog.GroupValue(
		slog.Any("etcd", o.Etcd),
		slog.Any("iface", []string(o.Ifaces)),
		slog.Any("iface-regex", []string(o.IfaceRegex)),
		slog.String("iface-can-reach", o.IfaceCanReach),
		slog.String("public-ip", o.PublicIP),
		slog.String("subnet-file", o.SubnetFile),
		slog.Int("subnet-lease-renew-margin", o.RenewMarginMinute),
		slog.Duration("subnet-lease-ttl", o.SubnetLeaseTTL),
		slog.String("node-name", o.NodeName),
		slog.Bool("ip-masq", o.IPMasq),
		slog.Bool("iptables-forward-rules", o.IPTablesForwardRules),
		slog.Int("iptables-resync", o.IPTablesResyncSeconds),
		slog.Bool("ip-blackhole-route", o.IPBlackholeRoute),
		slog.String("healthz", fmt.Sprintf("%s:%d", o.HealthzIP, o.HealthzPort)),
		slog.String("memory-limit", o.MemoryLimit.String()),
	)
}
