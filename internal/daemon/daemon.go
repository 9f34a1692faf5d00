// Package daemon wires weftd together: options → etcd → network config →
// external interface → backend → lease → subnet.env → rules and the
// reconcile loop, plus health endpoints and a clean stop.
//
// Lifecycle: SIGTERM/SIGINT cancel ctx at any stage (waiting for config,
// acquiring, running); every stage returns promptly and the process exits 0.
// Kernel state and the etcd lease are left in place so that a restart does
// not interrupt traffic.
package daemon

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/extiface"
	"github.com/weft-net/weft/internal/flagenv"
	"github.com/weft-net/weft/internal/latest"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netconf"
	"github.com/weft-net/weft/internal/rules"
	"github.com/weft-net/weft/internal/subnetenv"
)

// Version is set at build time with -ldflags "-X .../daemon.Version=...".
var Version = "dev"

// Main runs weftd with the command line args (without the program name) and
// returns the process exit status: 0 on a clean stop, 2 for bad flags, 1
// for a fatal error.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer, lookupEnv func(string) (string, bool)) int {
	var o Options
	fs := o.NewFlagSet(stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2 // the flag package has printed the error and usage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "weftd: unexpected argument %q (flags only)\n", fs.Arg(0))
		fs.Usage()
		return 2
	}
	// Before the environment fills the flags in: only then does the
	// FlagSet know what came from the command line.
	passwordOnCmdline := flagGiven(fs, "etcd-password")
	if err := flagenv.Apply(fs, EnvPrefix, lookupEnv); err != nil {
		fmt.Fprintf(stderr, "weftd: %v\n", err)
		fs.Usage()
		return 2
	}
	if o.Version {
		fmt.Fprintln(stdout, Version)
		return 0
	}
	if err := o.Validate(); err != nil {
		fmt.Fprintf(stderr, "weftd: %v\n", err)
		return 2
	}
	level := slog.LevelInfo
	if o.Verbosity > 0 {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	warnSecrets(&o, passwordOnCmdline, log)
	stopLimit := startMemoryLimit(o.MemoryLimit, lookupEnv, log)
	defer stopLimit()
	if err := run(ctx, &o, log); err != nil {
		if ctx.Err() != nil {
			// Stopped by a signal mid-way (waiting, acquiring): whatever
			// the interrupted call reported, this is a clean stop.
			log.Info("stopped", "during", err)
			return 0
		}
		log.Error("weftd failed", "err", err)
		return 1
	}
	log.Info("stopped")
	return 0
}

func run(ctx context.Context, o *Options, log *slog.Logger) error {
	start := time.Now()
	log.Info("starting weftd", "version", Version, "options", o)

	// Health is served from the start: /healthz answers while weftd waits
	// for etcd or its config, and /readyz says what it waits for.
	h := newHealth()
	// /readyz may be reachable by more than root: it names no endpoint or
	// user (the log does).
	h.setWaiting("connecting to etcd")
	if o.HealthzPort != 0 {
		_, stopHealth, err := h.serve(o.HealthzIP, o.HealthzPort, log)
		if err != nil {
			return err
		}
		defer stopHealth()
	}

	cli, err := connectEtcd(ctx, o, h, log)
	if err != nil {
		return err
	}
	defer cli.Close()
	store := lease.NewStore(cli, o.Etcd.Prefix, log)
	h.setWaiting("waiting for the network config at " + store.ConfigKey())

	prev, err := subnetenv.Read(o.SubnetFile)
	switch {
	case err == nil:
		log.Info("previous subnet", "file", o.SubnetFile, "subnet", subnetenv.LeaseSubnet(prev))
	case errors.Is(err, os.ErrNotExist):
	default:
		log.Warn("ignoring unreadable previous subnet file", "file", o.SubnetFile, "err", err)
	}
	// A new host takes a new subnet, which may need etcd's history of
	// deletes (up to 100 ms of etcd's own delay) when the check of the
	// subnet it picks cannot answer (a window of over 2,048 revisions, a
	// freed pick): started now, the replay overlaps the rest of the start.
	var history *lease.HistoryPrefetch
	if errors.Is(err, os.ErrNotExist) {
		history = lease.PrefetchHistory(ctx, store, log)
		defer history.Stop()
	}

	cfg, err := lease.WaitConfig(ctx, store, parseConfig(log, h.metrics.ConfigRejected), log)
	if err != nil {
		return err
	}
	if !cfg.EnableIPv4 {
		return fmt.Errorf("network config at %s: only IPv4 networks are supported by this weftd (EnableIPv4 is false)", store.ConfigKey())
	}

	nl, err := netlink.NewHandle()
	if err != nil {
		return fmt.Errorf("open netlink socket: %w", err)
	}
	defer nl.Close()
	ext, err := extiface.Select(nl, extiface.Options{
		Ifaces: o.Ifaces, IfaceRegex: o.IfaceRegex, CanReach: o.IfaceCanReach, PublicIP: o.PublicIP,
		PublicIPv6: o.PublicIPv6,
	})
	if err != nil {
		return fmt.Errorf("choose the interface for inter-host traffic: %w", err)
	}
	log.Info("using interface", "iface", ext.Name, "index", ext.Index, "mtu", ext.MTU, "iface-addr", ext.IfaceAddr, "public-ip", ext.PublicIP)
	if err := publicOutsideOverlay(cfg, ext); err != nil {
		return err
	}
	// An IPv4-only network advertises only the IPv6 address it was given;
	// a dual-stack one needs the interface's when none was.
	publicV6 := ext.PublicIPv6
	if !cfg.EnableIPv6 {
		publicV6 = netip.Addr{}
		if o.PublicIPv6 != "" {
			publicV6 = netip.MustParseAddr(o.PublicIPv6)
		}
	} else {
		log.Info("dual-stack network", "ipv6-network", cfg.IPv6Network, "iface-addr6", ext.IfaceAddr6, "public-ipv6", publicV6)
	}

	// The config in force is read again with its revision: the watch of
	// live changes starts there, and a write since WaitConfig is judged.
	cfgRaw, cfgRev, err := store.GetConfig(ctx)
	if err != nil {
		return fmt.Errorf("read the network config again to watch it: %w", err)
	}
	if err := checkMTU(cfg, ext.Name, ext.MTU); err != nil {
		return fmt.Errorf("network config at %s: %w", store.ConfigKey(), err)
	}

	errc := make(chan error, 4)
	n := &engine{
		o: o, log: log, h: h, nl: nl, cfg: cfg, ext: ext, pub6: publicV6,
		extOpts: extiface.Options{
			Ifaces: o.Ifaces, IfaceRegex: o.IfaceRegex, CanReach: o.IfaceCanReach, PublicIP: o.PublicIP,
			PublicIPv6: o.PublicIPv6,
		},
		toLoop: make(chan lease.Snapshot, 1), errc: errc, decap: make(chan bool, 1),
	}
	backend, pub, mtu, err := n.buildBackend(ctx, cfg, ext)
	if err != nil {
		return err
	}
	n.backend = backend
	// Stops the loop and closes whichever backend is in force at the end;
	// deferred before the netlink handle's close runs.
	defer n.stopDataplane()

	nodeName, nodeFrom, err := ResolveNodeName(o.NodeName)
	if err != nil {
		return fmt.Errorf("this host's identity: %w", err)
	}
	log.Info("host identity", "node-name", nodeName, "from", nodeFrom)
	h.setWaiting("acquiring a subnet lease")
	mgr := lease.NewManager(lease.ManagerConfig{
		Store:         store,
		Network:       cfg,
		PublicIP:      ext.PublicIP,
		PublicIPv6:    publicV6,
		BackendType:   pub.BackendType,
		BackendData:   pub.BackendData,
		BackendV6Data: pub.BackendV6Data,
		PrevSubnet:    subnetenv.LeaseSubnet(prev),
		History:       history,
		NodeName:      nodeName,
		// The udp backend's in-kernel path, attached by Init above.
		UDPKernelDecap: n.kernelDecap,
		TTL:            o.SubnetLeaseTTL,
		RenewMargin:    o.RenewMargin(),
		Logger:         log,
		Hooks:          h.metrics.LeaseHooks(),
	})
	own, err := mgr.Acquire(ctx)
	history.Stop() // taken over, or not needed (a lease reused)
	if err != nil {
		return fmt.Errorf("acquire a subnet lease: %w", err)
	}
	n.mgr, n.own = mgr, own
	n.env = initialEnv(cfg, own, mtu, o.IPMasq)
	if err := subnetenv.Write(o.SubnetFile, n.env); err != nil {
		return fmt.Errorf("write %s: %w", o.SubnetFile, err)
	}
	log.Info("lease acquired, subnet file written", "subnet", own.Subnet, "file", o.SubnetFile,
		"mtu", mtu, "since-start", time.Since(start).Round(time.Microsecond))
	if ok, err := daemon.SdNotify(false, daemon.SdNotifyReady); err != nil {
		log.Warn("tell systemd we are ready", "err", err)
	} else if ok {
		log.Debug("told systemd we are ready")
	}

	// The underlay guard accepts the backend's encapsulation ports only
	// from peers (the snapshots below hand them over).
	if _, err := rules.EncapPorts(cfg); err != nil {
		return fmt.Errorf("underlay guard of backend %q: %w", cfg.BackendType, err)
	}
	n.rm = rules.New(log, rules.WithResyncHook(h.metrics.OnRuleResync), rules.WithGuardDropHook(h.metrics.OnUnderlayDrop))
	n.setRules(own)
	n.checkOverlap()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	n.startLoop(ctx)
	go h.logTransitions(ctx, log, time.Second)
	var wg sync.WaitGroup
	wg.Go(func() { errc <- mgr.Run(ctx) })
	wg.Go(func() { n.rm.Run(ctx, time.Duration(o.IPTablesResyncSeconds)*time.Second); errc <- nil })
	cfgCh := make(chan []byte, 1)
	latest.Send(cfgCh, cfgRaw) // judged like any later write
	wg.Go(func() { watchConfig(ctx, cli, store.ConfigKey(), cfgRev, cfgCh, log) })
	underlayWake := make(chan struct{}, 1)
	n.subscribeUnderlay(ctx, underlayWake)
	// The deferred closes of the netlink handle, the backend and the etcd
	// client must not race an apply or a renewal still in flight: stop the
	// workers first. They return promptly on cancel; the bound keeps a stuck
	// one from breaking the 1 s stop.
	defer func() {
		cancel()
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(500 * time.Millisecond):
			log.Warn("stopping: a worker did not return within 500ms")
		}
	}()

	check := time.NewTicker(underlayCheckInterval)
	defer check.Stop()
	var settle <-chan time.Time // netlink events come in bursts: check once after them
	parse := parseConfig(log, h.metrics.ConfigRejected)
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			if err != nil && ctx.Err() == nil {
				return err
			}
		case snap := <-mgr.Snapshots():
			n.relay(snap)
		case on := <-n.decap:
			n.setKernelDecap(ctx, on)
		case raw := <-cfgCh:
			n.onConfig(ctx, raw, store.ConfigKey(), parse)
		case <-underlayWake:
			if settle == nil {
				settle = time.After(50 * time.Millisecond)
			}
		case <-settle:
			settle = nil
			n.checkUnderlay(ctx)
		case <-check.C:
			n.checkUnderlay(ctx)
			n.checkOverlap()
		}
	}
}

// connectEtcd connects to etcd, retrying until it answers or ctx ends. A
// bad certificate or password is not fatal — the operator may fix the
// files or the user while weftd waits — but its cause is logged once (and
// again only when it changes), naming the endpoint.
func connectEtcd(ctx context.Context, o *Options, h *health, log *slog.Logger) (*clientv3.Client, error) {
	retry := time.Second
	lastCause := ""
	for {
		cli, err := o.Etcd.Connect(ctx)
		if err == nil {
			if lastCause != "" {
				log.Info("etcd answers", "endpoints", o.Etcd.Endpoints)
			}
			return cli, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		// The cause without the raw error, which may carry a clock time.
		cause, _, _ := strings.Cut(err.Error(), " (")
		if cause != lastCause {
			log.Error("cannot use etcd; retrying", "err", err)
			lastCause = cause
		}
		h.setWaiting("connecting to etcd: failing, the cause is in weftd's log")
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(retry):
		}
		retry = min(2*retry, 30*time.Second)
	}
}

// parseConfig parses the network config, logs its warnings and counts a
// refusal; WaitConfig calls it once per write of the key.
func parseConfig(log *slog.Logger, rejected prometheus.Counter) func([]byte) (netconf.Config, error) {
	return func(b []byte) (netconf.Config, error) {
		cfg, warnings, err := netconf.Parse(b)
		for _, w := range warnings {
			log.Warn("network config", "warning", w)
		}
		if err != nil {
			rejected.Inc()
		}
		return cfg, err
	}
}
