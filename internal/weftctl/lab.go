package weftctl

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"strings"

	"github.com/weft-net/weft/internal/lab"
	"github.com/weft-net/weft/internal/netconf"
)

const labUsage = `usage: weftctl lab <up|run|status|down> [flags]

  up      build the lab, print hosts and a ping matrix, stay up until Ctrl-C,
          SIGTERM or 'weftctl lab down'; then remove everything
  run     build the lab, print, remove it; exit 0 only if every ping passed
  status  hosts and a fresh ping matrix of a running lab
  down    stop a running lab and remove whatever it left behind

flags (up, run): --name NAME (default weft), --hosts N (default 3),
  --backend vxlan|host-gw|wireguard|udp|alloc (default vxlan), --ipv6 (dual-stack:
  EnableIPv6, IPv6 on every host and container; vxlan, host-gw and wireguard), --weftd PATH (default:
  the weftd next to weftctl, else in PATH), --containers netns|docker|cni
  (default netns: a namespace on a docker0 the lab builds; docker: a real
  dockerd per host; cni: weft's flannel CNI plugin), -v (debug log)
flags (status, down): --name NAME`

// runLab is `weftctl lab`: the whole overlay of the ops note on one machine.
func runLab(ctx context.Context, env *Env, args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprintln(env.Stderr, labUsage)
		if len(args) == 0 {
			return &ExitError{Code: 2}
		}
		return nil
	}
	sub, args := args[0], args[1:]
	fs := flag.NewFlagSet("weftctl lab "+sub, flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	fs.Usage = func() { fmt.Fprintln(env.Stderr, labUsage) }
	name := fs.String("name", lab.DefaultName, "lab name: prefix of every namespace")
	var hosts *int
	var backend, weftd, containers *string
	var verbose, ipv6 *bool
	switch sub {
	case "up", "run":
		hosts = fs.Int("hosts", lab.DefaultHosts, "number of hosts")
		backend = fs.String("backend", lab.DefaultBackend, "vxlan, host-gw, wireguard, udp or alloc")
		weftd = fs.String("weftd", "", "weftd binary")
		ipv6 = fs.Bool("ipv6", false, "dual-stack overlay (IPv4 and IPv6)")
		containers = fs.String("containers", lab.ContainersNetns, "what makes each host's container: netns (a namespace on a docker0 the lab builds), docker (a real dockerd per host) or cni (weft's flannel CNI plugin)")
		verbose = fs.Bool("v", false, "debug log")
	case "status", "down":
	default:
		return &UsageError{Msg: fmt.Sprintf("unknown lab command %q (want up, run, status or down)", sub)}
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return &ExitError{Code: 2}
	}
	if fs.NArg() > 0 {
		return &UsageError{Msg: fmt.Sprintf("lab %s: unexpected argument %q", sub, fs.Arg(0))}
	}
	if err := lab.CheckRoot(); err != nil {
		return err
	}
	level := slog.LevelInfo
	if verbose != nil && *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(env.Stderr, &slog.HandlerOptions{Level: level, ReplaceAttr: dropTime}))

	switch sub {
	case "status":
		return labStatus(ctx, env.Stdout, *name)
	case "down":
		if err := lab.Down(ctx, *name, log); err != nil {
			return err
		}
		fmt.Fprintf(env.Stdout, "lab %s removed\n", *name)
		return nil
	}
	path, err := lab.FindWeftd(*weftd)
	if err != nil {
		return err
	}
	l, err := lab.Up(ctx, lab.Config{Name: *name, Hosts: *hosts, Backend: *backend, IPv6: *ipv6, Containers: *containers, WeftdPath: path, Log: log})
	if err != nil {
		return err
	}
	defer l.Close()
	fmt.Fprintln(env.Stdout)
	perr := lab.Report(ctx, env.Stdout, l.State())
	if sub == "run" {
		if err := l.Close(); err != nil {
			return err
		}
		if perr != nil {
			return &ExitError{Code: 1}
		}
		return nil
	}
	fmt.Fprintf(env.Stdout, "\nlab %s is up. Try:\n", l.Name)
	if len(l.Hosts) > 1 {
		fmt.Fprintf(env.Stdout, "  ip netns exec %s ping %s\n", l.Hosts[0].ContainerNS.Name, l.Hosts[1].ContainerIP)
	}
	if l.Config().Backend == netconf.BackendVXLAN {
		fmt.Fprintf(env.Stdout, "  ip netns exec %s ip -d link show flannel.1\n", l.Hosts[0].Name)
	} else {
		fmt.Fprintf(env.Stdout, "  ip netns exec %s ip route\n", l.Hosts[0].Name)
	}
	fmt.Fprintf(env.Stdout, "  etcdctl --endpoints %s get --prefix /kube-centos/network/subnets\n", l.EtcdEndpoint)
	fmt.Fprintf(env.Stdout, "  weftctl lab status --name %s\n", l.Name)
	fmt.Fprintf(env.Stdout, "weftd logs are in %s/<host>/weftd.log. Ctrl-C or 'weftctl lab down --name %s' removes the lab.\n", l.StateDir, l.Name)
	<-ctx.Done()
	fmt.Fprintf(env.Stdout, "removing lab %s\n", l.Name)
	return l.Close()
}

func labStatus(ctx context.Context, w io.Writer, name string) error {
	st, err := lab.ReadState(lab.StateDirFor(name))
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("no lab named %q is running (start one with: weftctl lab up --name %s)", name, name)
	}
	if err != nil {
		return err
	}
	if !st.Running() {
		return fmt.Errorf("lab %q is not running (its process %d is gone); remove its leftovers with: weftctl lab down --name %s", name, st.PID, name)
	}
	if err := lab.Report(ctx, w, st); err != nil {
		return &ExitError{Code: 1}
	}
	return nil
}

// dropTime keeps the lab's progress lines short on a terminal.
func dropTime(groups []string, a slog.Attr) slog.Attr {
	if len(groups) == 0 && a.Key == slog.TimeKey {
		return slog.Attr{}
	}
	if a.Key == slog.MessageKey {
		a.Value = slog.StringValue(strings.TrimSpace(a.Value.String()))
	}
	return a
}
