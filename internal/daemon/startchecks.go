package daemon

import (
	"flag"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/weft-net/weft/internal/extiface"
	"github.com/weft-net/weft/internal/netconf"
)

// flagGiven reports whether the flag was set on the command line; it must
// run before flagenv.Apply, which sets flags from the environment.
func flagGiven(fs *flag.FlagSet, name string) bool {
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == name })
	return given
}

// warnSecrets logs, once at start, where the etcd password is exposed:
// on the command line (/proc/<pid>/cmdline and ps show it to every local
// user; the environment and -etcd-password-file do not), and on endpoints
// without TLS (anyone on the path reads it).
func warnSecrets(o *Options, passwordOnCmdline bool, log *slog.Logger) {
	if passwordOnCmdline && o.Etcd.Password != "" {
		log.Warn("the etcd password was given on the command line, where every local user can read it (ps, /proc/<pid>/cmdline): use -etcd-password-file or FLANNELD_ETCD_PASSWORD_FILE (or FLANNELD_ETCD_PASSWORD) instead")
	}
	if eps := o.Etcd.PlaintextEndpoints(); len(eps) > 0 {
		log.Warn("the etcd password is sent without TLS to these endpoints: use https:// endpoints with -etcd-cafile", "endpoints", eps)
	}
}

// publicOutsideOverlay refuses an advertised address inside the overlay:
// every peer would route the address into the overlay (towards the host
// owning that subnet), so encapsulated traffic to this host would loop or
// reach another host, and the host would be cut off.
func publicOutsideOverlay(cfg netconf.Config, ext extiface.ExtIface) error {
	check := func(a netip.Addr, flagName, key string, network netip.Prefix) error {
		if !a.IsValid() || !network.Contains(a) {
			return nil
		}
		source := fmt.Sprintf("address of interface %s", ext.Name)
		if a != ext.IfaceAddr && a != ext.IfaceAddr6 {
			source = flagName
		}
		return fmt.Errorf("public address %s (%s) lies inside the overlay's %s %s: peers would route it into the overlay and this host would be cut off; refusing to start (pick another -iface or %s, or another %s)",
			a, source, key, network, flagName, key)
	}
	if cfg.EnableIPv4 {
		if err := check(ext.PublicIP, "-public-ip", "Network", cfg.Network); err != nil {
			return err
		}
	}
	if cfg.EnableIPv6 {
		return check(ext.PublicIPv6, "-public-ipv6", "IPv6Network", cfg.IPv6Network)
	}
	return nil
}
