package weftctl

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/internal/daemon"
	"github.com/weft-net/weft/internal/decommission"
	"github.com/weft-net/weft/internal/extiface"
	"github.com/weft-net/weft/internal/flagenv"
	"github.com/weft-net/weft/internal/lease"
)

const decommissionUsage = `usage: weftctl decommission [weftd's flags] [--stop] [--docker-opts-file PATH]

Retire this host from the overlay: release its lease in etcd (the keys naming
its PublicIP and its node name, or none; each by a compare-and-delete) and
remove what weft created here: devices flannel.<VNI>, flannel-v6.<VNI>,
flannel0, flannel-wg(-v6), routes of protocol 87 (weft's, the blackhole route
included), traffic rules (FLANNEL-* chains, tables ip/ip6 weft, inet
weft-guard), the subnet file and the Docker options file. Takes weftd's flags
and FLANNELD_* variables (the same /etc/sysconfig/flanneld). Safe to run again.
A running weftd with the same subnet file is refused unless --stop (SIGTERM,
then wait).`

// runDecommission is `weftctl decommission`.
func runDecommission(ctx context.Context, env *Env, args []string) error {
	var o daemon.Options
	fs := o.NewFlagSet(env.Stderr)
	fs.Init("weftctl decommission", flag.ContinueOnError)
	stop := fs.Bool("stop", false, "stop a running weftd of this host first (SIGTERM, wait up to 10s)")
	dockerOpts := fs.String("docker-opts-file", "/run/flannel/docker", "Docker options file to remove (weftctl docker-opts -d, mk-docker-opts.sh)")
	fs.Usage = func() { fmt.Fprintln(env.Stderr, decommissionUsage); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return &UsageError{Msg: err.Error()}
	}
	if fs.NArg() > 0 {
		return &UsageError{Msg: fmt.Sprintf("unexpected argument %q (flags only)", fs.Arg(0))}
	}
	if err := flagenv.Apply(fs, daemon.EnvPrefix, env.LookupEnv); err != nil {
		return &UsageError{Msg: err.Error()}
	}
	if err := o.Validate(); err != nil {
		return &UsageError{Msg: err.Error()}
	}
	log := slog.New(slog.NewTextHandler(env.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	out := env.Stdout

	// 1. weftd must not be running: it would put back what is removed.
	running, err := decommission.FindWeftd(o.SubnetFile)
	if err != nil {
		return err
	}
	for _, w := range running {
		if !*stop {
			return fmt.Errorf("weftd is running on this host (pid %d, subnet file %s): nothing was changed; stop it first (systemctl stop weftd) or pass --stop", w.PID, w.SubnetFile)
		}
		fmt.Fprintf(out, "stopping weftd pid %d (SIGTERM)\n", w.PID)
		if err := decommission.Stop(w.PID, 10*time.Second); err != nil {
			return err
		}
	}

	// 2. The lease, found as weftd finds its own.
	node, _, err := daemon.ResolveNodeName(o.NodeName)
	if err != nil {
		return fmt.Errorf("this host's identity: %w", err)
	}
	publicIP, err := decommissionPublicIP(&o)
	if err != nil {
		return err
	}
	cli, err := o.Etcd.Connect(ctx)
	if err != nil {
		return err
	}
	defer cli.Close()
	store := lease.NewStore(cli, o.Etcd.Prefix, log)
	rel, err := decommission.ReleaseLease(ctx, cli, store, publicIP, node)
	if err != nil {
		return err
	}
	if len(rel) == 0 {
		fmt.Fprintf(out, "no lease names this host (PublicIP %s, node %q) under %s\n", publicIP, node, store.SubnetsPrefix())
	}
	kept := 0
	for _, r := range rel {
		if r.Kept != "" {
			kept++
			fmt.Fprintf(out, "kept lease %s: %s\n", r.Key, r.Kept)
			continue
		}
		fmt.Fprintf(out, "released lease %s (subnet %s)\n", r.Key, r.Subnet)
	}

	// 3. The kernel and the files.
	removed, err := decommission.Local(log, o.SubnetFile, *dockerOpts)
	for _, r := range removed {
		fmt.Fprintf(out, "removed %s\n", r)
	}
	if err != nil {
		return fmt.Errorf("removing weft's state on this host (the rest was done; run again after fixing): %w", err)
	}
	if len(removed) == 0 {
		fmt.Fprintln(out, "nothing of weft's left on this host")
	}
	if kept > 0 {
		return &ExitError{Code: 1}
	}
	return nil
}

// decommissionPublicIP is the PublicIP weftd would advertise: -public-ip,
// else the chosen interface's address.
func decommissionPublicIP(o *daemon.Options) (netip.Addr, error) {
	if o.PublicIP != "" {
		return extiface.ParsePublicIP("-public-ip", o.PublicIP, false)
	}
	h, err := netlink.NewHandle()
	if err != nil {
		return netip.Addr{}, fmt.Errorf("open netlink socket: %w", err)
	}
	defer h.Close()
	ext, err := extiface.Select(h, extiface.Options{Ifaces: o.Ifaces, IfaceRegex: o.IfaceRegex, CanReach: o.IfaceCanReach})
	if err != nil {
		return netip.Addr{}, fmt.Errorf("find this host's PublicIP as weftd does (%w); nothing was changed: give the -iface weftd used, or -public-ip", err)
	}
	return ext.PublicIP, nil
}
