package weftctl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/etcdopts"
	"github.com/weft-net/weft/internal/flagenv"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netconf"
)

const configUsage = `usage: weftctl config get [etcd flags]
       weftctl config set [etcd flags] FILE|-
       weftctl config validate [etcd flags] [FILE|-]

get       print the network config stored at <etcd-prefix>/config
set       validate FILE (- = stdin) and write it; an invalid config is refused,
          the change is shown as a diff, and a config that existing leases
          would not fit is refused unless -force
validate  check FILE (- = stdin), or the stored config when no FILE is given

etcd flags (also read from FLANNELD_* environment variables, as weftd does):`

// etcdCallTimeout bounds each etcd call, so that an unreachable etcd gives an
// error naming the endpoints instead of a hang.
const etcdCallTimeout = 10 * time.Second

// runConfig is the network config at <prefix>/config: what the ops note does
// with `etcdctl get/mk <prefix>/config`, plus validation before writing, so
// that a typo is caught here rather than by every weftd in the cluster.
func runConfig(ctx context.Context, env *Env, args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		printConfigUsage(env.Stderr, nil)
		if len(args) == 0 {
			return &UsageError{Msg: "missing subcommand: get, set or validate"}
		}
		return nil
	}
	sub := args[0]
	switch sub {
	case "get", "set", "validate":
	default:
		printConfigUsage(env.Stderr, nil)
		return &UsageError{Msg: fmt.Sprintf("unknown subcommand %q (want get, set or validate)", sub)}
	}

	fs := flag.NewFlagSet("weftctl config "+sub, flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	var eo etcdopts.Options
	eo.AddFlags(fs)
	force := fs.Bool("force", false, "set: write even if existing leases fall outside the new config")
	fs.Usage = func() { printConfigUsage(env.Stderr, fs) }
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		// The flag package has printed the error and the usage.
		return &ExitError{Code: 2}
	}
	if err := flagenv.Apply(fs, "FLANNELD_", env.LookupEnv); err != nil {
		return &UsageError{Msg: err.Error()}
	}
	pos := fs.Args()
	key := path.Join(eo.Prefix, "config")

	switch sub {
	case "get":
		if len(pos) != 0 {
			return &UsageError{Msg: fmt.Sprintf("get takes no arguments, got %q", pos)}
		}
		data, err := getConfig(ctx, eo, key)
		if err != nil {
			return err
		}
		if len(data) > 0 && data[len(data)-1] != '\n' {
			data = append(data, '\n')
		}
		_, err = env.Stdout.Write(data)
		return err

	case "set":
		if len(pos) != 1 {
			return &UsageError{Msg: "set needs exactly one FILE (or - for stdin)"}
		}
		data, err := readInput(env, pos[0])
		if err != nil {
			return err
		}
		if _, err := checkConfig(env, pos[0], data); err != nil {
			return fmt.Errorf("%w; nothing written to %s", err, key)
		}
		newCfg, _, _ := netconf.Parse(data) // valid: checked above
		cli, err := eo.Connect(ctx)
		if err != nil {
			return err
		}
		defer cli.Close()
		if err := reviewChange(ctx, env, cli, eo.Prefix, key, data, newCfg, *force); err != nil {
			return err
		}
		cctx, cancel := context.WithTimeout(ctx, etcdCallTimeout)
		defer cancel()
		if _, err := cli.Put(cctx, key, string(data)); err != nil {
			return fmt.Errorf("put %s to etcd %s: %w", key, eo.Endpoints, err)
		}
		fmt.Fprintf(env.Stdout, "wrote %s\n", key)
		return nil

	default: // validate
		if len(pos) > 1 {
			return &UsageError{Msg: "validate takes at most one FILE (or - for stdin)"}
		}
		var data []byte
		var err error
		name := key
		if len(pos) == 1 {
			name = pos[0]
			data, err = readInput(env, name)
		} else {
			data, err = getConfig(ctx, eo, key)
		}
		if err != nil {
			return err
		}
		c, err := checkConfig(env, name, data)
		if err != nil {
			return err
		}
		fmt.Fprintf(env.Stdout, "%s: valid\n%s", name, describe(c))
		return nil
	}
}

// reviewChange shows what set changes and refuses a config under which
// existing leases would no longer fit (a new Network, SubnetLen or range):
// their hosts would keep routing subnets that no longer belong to the overlay.
// -force writes anyway (weftd then moves each host to a subnet that fits).
func reviewChange(ctx context.Context, env *Env, cli *clientv3.Client, prefix, key string, data []byte, c netconf.Config, force bool) error {
	cctx, cancel := context.WithTimeout(ctx, etcdCallTimeout)
	defer cancel()
	resp, err := cli.Get(cctx, key)
	if err != nil {
		return fmt.Errorf("get %s from etcd %s: %w", key, strings.Join(cli.Endpoints(), ","), err)
	}
	if len(resp.Kvs) == 0 {
		return nil // first config: nothing to compare or orphan
	}
	old := resp.Kvs[0].Value
	if d := lineDiff(prettyJSON(old), prettyJSON(data)); d != "" {
		fmt.Fprintf(env.Stdout, "--- %s (in etcd)\n+++ new\n%s", key, d)
	}
	leases, _, err := lease.NewStore(cli, prefix, nil).List(ctx)
	if err != nil {
		return fmt.Errorf("list leases to check the new config: %w", err)
	}
	var orphans []string
	for _, l := range leases {
		if l.Subnet.IsValid() && !c.Contains(l.Subnet.Masked()) {
			orphans = append(orphans, fmt.Sprintf("%s (%s)", l.Subnet, l.Attrs.PublicIP))
		}
	}
	if len(orphans) == 0 {
		return nil
	}
	msg := fmt.Sprintf("%d existing lease(s) fall outside the new config (Network %s, SubnetLen %d): %s", len(orphans), c.Network, c.SubnetLen, strings.Join(orphans, ", "))
	if !force {
		return fmt.Errorf("%s; nothing written to %s (add -force to write anyway)", msg, key)
	}
	fmt.Fprintf(env.Stderr, "warning: %s; writing because of -force\n", msg)
	return nil
}

// prettyJSON indents a JSON document one key per line, for the diff; input
// that does not parse is shown as is.
func prettyJSON(b []byte) []string {
	var buf bytes.Buffer
	if err := json.Indent(&buf, b, "", "  "); err != nil {
		return strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	}
	return strings.Split(buf.String(), "\n")
}

// lineDiff is a minimal line diff (longest common subsequence): "-" lines
// only in a, "+" lines only in b, " " common; "" when equal.
func lineDiff(a, b []string) string {
	n, m := len(a), len(b)
	lcs := make([][]int, n+1)
	for i := range lcs {
		lcs[i] = make([]int, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if a[i] == b[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var out strings.Builder
	changed := false
	i, j := 0, 0
	for i < n || j < m {
		switch {
		case i < n && j < m && a[i] == b[j]:
			out.WriteString(" " + a[i] + "\n")
			i, j = i+1, j+1
		case j < m && (i == n || lcs[i][j+1] >= lcs[i+1][j]):
			out.WriteString("+" + b[j] + "\n")
			j, changed = j+1, true
		default:
			out.WriteString("-" + a[i] + "\n")
			i, changed = i+1, true
		}
	}
	if !changed {
		return ""
	}
	return out.String()
}

func printConfigUsage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprintln(w, configUsage)
	if fs == nil {
		fs = flag.NewFlagSet("", flag.ContinueOnError)
		new(etcdopts.Options).AddFlags(fs)
	}
	fs.SetOutput(w)
	fs.PrintDefaults()
}

// getConfig reads <prefix>/config; a missing key is an error naming it.
func getConfig(ctx context.Context, eo etcdopts.Options, key string) ([]byte, error) {
	cli, err := eo.Connect(ctx)
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	cctx, cancel := context.WithTimeout(ctx, etcdCallTimeout)
	defer cancel()
	resp, err := cli.Get(cctx, key, clientv3.WithLimit(1))
	if err != nil {
		return nil, fmt.Errorf("get %s from etcd %s: %w", key, eo.Endpoints, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("no network config: key %s does not exist in etcd %s (write one with: weftctl config set FILE)", key, eo.Endpoints)
	}
	return resp.Kvs[0].Value, nil
}

// readInput reads FILE, or stdin for "-".
func readInput(env *Env, name string) ([]byte, error) {
	if name == "-" {
		data, err := io.ReadAll(env.Stdin)
		if err != nil {
			return nil, fmt.Errorf("read config from stdin: %w", err)
		}
		return data, nil
	}
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return data, nil
}

// checkConfig parses data, printing warnings on stderr; the error names the
// source, the key, the value and the rule.
func checkConfig(env *Env, name string, data []byte) (netconf.Config, error) {
	c, warnings, err := netconf.Parse(data)
	for _, w := range warnings {
		fmt.Fprintf(env.Stderr, "warning: %s: %s\n", name, w)
	}
	if err != nil {
		return c, fmt.Errorf("invalid network config %s: %w", name, err)
	}
	return c, nil
}

// describe says what a valid config means, in the terms an operator checks.
func describe(c netconf.Config) string {
	var b strings.Builder
	if c.EnableIPv4 {
		fmt.Fprintf(&b, "  Network %s, SubnetLen %d: %d subnets %s … %s\n",
			c.Network, c.SubnetLen, c.SubnetCount(), c.SubnetMin, c.SubnetMax)
	}
	if c.EnableIPv6 {
		fmt.Fprintf(&b, "  IPv6Network %s, IPv6SubnetLen %d: subnets %s … %s\n",
			c.IPv6Network, c.IPv6SubnetLen, c.IPv6SubnetMin, c.IPv6SubnetMax)
	}
	fmt.Fprintf(&b, "  Backend %s", c.BackendType)
	if c.BackendType == netconf.BackendVXLAN {
		if o, err := c.VXLAN(); err == nil {
			port := "8472 (kernel default)"
			if o.Port != 0 {
				port = fmt.Sprint(o.Port)
			}
			fmt.Fprintf(&b, ": VNI %d, port %s, device flannel.%d", o.VNI, port, o.VNI)
		}
	}
	if c.BackendType == netconf.BackendUDP {
		if o, err := c.UDP(); err == nil {
			fmt.Fprintf(&b, ": port %d", o.Port)
		}
	}
	b.WriteString("\n")
	if c.EnableNFTables {
		b.WriteString("  traffic rules: nftables\n")
	}
	return b.String()
}
