package weftctl

import (
	"context"
	"errors"
	"flag"
	"fmt"

	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/internal/doctor"
	"github.com/weft-net/weft/internal/etcdopts"
	"github.com/weft-net/weft/internal/flagenv"
)

const doctorUsage = `usage: weftctl doctor [etcd flags] [-subnet-file FILE] [-o text|json]

Checks this host's overlay (run it on the host, or inside a lab host's
namespace) and prints one line per check:
  PASS|FAIL|WARN <check>: <what> — fix: <how>
Exit status 0 when no check fails (warnings allowed), 1 when any fails.
Flags not given are read from FLANNELD_* environment variables, as weftd does.

flags:`

// runDoctor checks the host in the current network namespace against etcd.
func runDoctor(ctx context.Context, env *Env, args []string) error {
	fs := flag.NewFlagSet("weftctl doctor", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	var eo etcdopts.Options
	eo.AddFlags(fs)
	subnetFile := fs.String("subnet-file", "/run/flannel/subnet.env", "subnet.env written by weftd")
	output := fs.String("o", "text", "output format: text or json")
	fs.Usage = func() {
		fmt.Fprintln(env.Stderr, doctorUsage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return &ExitError{Code: 2}
	}
	if err := flagenv.Apply(fs, "FLANNELD_", env.LookupEnv); err != nil {
		return &UsageError{Msg: err.Error()}
	}
	if fs.NArg() != 0 {
		return &UsageError{Msg: fmt.Sprintf("doctor takes no arguments, got %q", fs.Args())}
	}
	if *output != "text" && *output != "json" {
		return &UsageError{Msg: fmt.Sprintf("-o %q: want text or json", *output)}
	}
	cli, err := eo.Client()
	if err != nil {
		return err
	}
	defer cli.Close()
	h, err := netlink.NewHandle()
	if err != nil {
		return fmt.Errorf("netlink handle in the current network namespace: %w", err)
	}
	defer h.Close()
	st := doctor.Observe(ctx, doctor.Inputs{
		Etcd: cli, Prefix: eo.Prefix, SubnetFile: *subnetFile,
		Handle: h, Sysctl: doctor.ProcSysctl,
	})
	rep := doctor.Check(st)
	if *output == "json" {
		err = rep.WriteJSON(env.Stdout)
	} else {
		err = rep.WriteText(env.Stdout)
	}
	if err != nil {
		return err
	}
	if !rep.Healthy {
		return &ExitError{Code: 1}
	}
	return nil
}
