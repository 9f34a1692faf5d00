// Package weftctl is the admin CLI: what the ops note does with raw etcdctl
// and shell (network config, leases, Docker options), a doctor for a host's
// overlay, and a lab that runs a whole multi-host overlay on one machine.
// Each command lives in its own file; this file only dispatches.
package weftctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
)

// Env is what a command may touch of the outside world, so tests can run
// commands in-process.
type Env struct {
	Stdout io.Writer
	Stderr io.Writer
	Stdin  io.Reader
	// LookupEnv reads environment variables (os.LookupEnv in production).
	LookupEnv func(string) (string, bool)
}

// UsageError makes Run exit with status 2 after printing the message.
type UsageError struct{ Msg string }

func (e *UsageError) Error() string { return e.Msg }

// ExitError makes Run exit with a given status without printing (the command
// has already said what it had to say, e.g. doctor's failed checks).
type ExitError struct{ Code int }

func (e *ExitError) Error() string { return fmt.Sprintf("exit status %d", e.Code) }

type command struct {
	summary string
	run     func(ctx context.Context, env *Env, args []string) error
}

var commands = map[string]command{
	"docker-opts":  {"write Docker options from subnet.env (mk-docker-opts.sh)", runDockerOpts},
	"config":       {"get, set or validate the network config in etcd", runConfig},
	"decommission": {"retire this host: release its lease, remove weft's devices, routes, rules and files", runDecommission},
	"doctor":       {"check this host's overlay: device, bridge, routes, lease, etcd", runDoctor},
	"leases":       {"list, show, rm, reserve, unreserve subnet leases", runLeases},
	"lab":          {"run a multi-host overlay in network namespaces on this machine", runLab},
	"migrate-v2":   {"copy the network config and leases from etcd's v2 store to v3 (dry run unless --apply)", runMigrateV2},
	"version":      {"print the version", runVersion},
}

// Version is set at build time with -ldflags "-X ...weftctl.Version=...".
var Version = "dev"

func runVersion(_ context.Context, env *Env, _ []string) error {
	fmt.Fprintln(env.Stdout, "weftctl", Version)
	return nil
}

// Run executes one weftctl command line and returns the process exit status.
func Run(ctx context.Context, args []string, env *Env) int {
	if env.LookupEnv == nil {
		env.LookupEnv = os.LookupEnv
	}
	if env.Stdin == nil {
		env.Stdin = os.Stdin
	}
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(env.Stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	c, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(env.Stderr, "weftctl: unknown command %q\n", args[0])
		usage(env.Stderr)
		return 2
	}
	err := c.run(ctx, env, args[1:])
	var ue *UsageError
	var ee *ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.Code
	case errors.As(err, &ue):
		fmt.Fprintf(env.Stderr, "weftctl %s: %s\n", args[0], ue.Msg)
		return 2
	default:
		fmt.Fprintf(env.Stderr, "weftctl %s: %v\n", args[0], err)
		return 1
	}
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: weftctl <command> [flags]\n\ncommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-12s %s\n", n, commands[n].summary)
	}
}
