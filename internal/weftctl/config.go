package weftctl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path"
	"slices"
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
          the change is shown as a diff with what the running weftds apply
          live and what needs a restart (and on how many hosts); a change
          that needs a restart of hosts holding leases, or that existing
          leases would not fit, is refused unless -force; -dry-run shows all
          of it and writes nothing
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
	force := fs.Bool("force", false, "set: write even if existing leases fall outside the new config or running weftds need a restart for it")
	dryRun := fs.Bool("dry-run", false, "set: show the change, what the running weftds apply live and what needs a restart, and write nothing")
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
		write, err := reviewChange(ctx, env, cli, eo.Prefix, key, data, newCfg, *force, *dryRun)
		if err != nil || !write {
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

// reviewChange shows what set changes and how the running weftds take it
// (netconf.CompareConfigs, weftd's own judgement), then decides whether to
// write. Refused unless -force: a config under which existing leases would no
// longer fit (their hosts would keep routing subnets outside the overlay), and
// a change that needs a restart of hosts holding leases (each such weftd turns
// unready and runs on the old config until restarted: writing it is the first
// step of a rolling restart, which the operator must mean). A change every
// weftd applies live is written without asking. The returned bool is whether
// to write; dryRun shows everything and writes nothing.
func reviewChange(ctx context.Context, env *Env, cli *clientv3.Client, prefix, key string, data []byte, c netconf.Config, force, dryRun bool) (bool, error) {
	cctx, cancel := context.WithTimeout(ctx, etcdCallTimeout)
	defer cancel()
	resp, err := cli.Get(cctx, key)
	if err != nil {
		return false, fmt.Errorf("get %s from etcd %s: %w", key, strings.Join(cli.Endpoints(), ","), err)
	}
	if len(resp.Kvs) == 0 {
		if dryRun {
			fmt.Fprintf(env.Stdout, "%s does not exist: the config would be written as the first one\n", key)
		}
		return !dryRun, nil // first config: nothing to compare or orphan
	}
	old := resp.Kvs[0].Value
	if d := lineDiff(prettyJSON(old), prettyJSON(data)); d != "" {
		fmt.Fprintf(env.Stdout, "--- %s (in etcd)\n+++ new\n%s", key, d)
	}
	leases, _, err := lease.NewStore(cli, prefix, nil).List(ctx)
	if err != nil {
		return false, fmt.Errorf("list leases to check the new config: %w", err)
	}
	subnets := lease.SubnetsPrefix(prefix)
	var refusals []string
	if msg := judgeForHosts(env, old, c, leases, subnets); msg != "" {
		refusals = append(refusals, msg)
	}
	var orphans []string
	for _, l := range leases {
		if l.Subnet.IsValid() && !c.Contains(l.Subnet.Masked()) {
			orphans = append(orphans, fmt.Sprintf("%s (%s)", l.Subnet, l.Attrs.PublicIP))
		}
	}
	if len(orphans) > 0 {
		refusals = append(refusals, fmt.Sprintf("%d existing lease(s) fall outside the new config (Network %s, SubnetLen %d): %s", len(orphans), c.Network, c.SubnetLen, strings.Join(orphans, ", ")))
	}
	switch {
	case dryRun:
		verdict := "would be written"
		if len(refusals) > 0 && !force {
			verdict = "would be refused without -force: " + strings.Join(refusals, "; ")
		}
		fmt.Fprintf(env.Stdout, "dry run: nothing written to %s; the config %s\n", key, verdict)
		return false, nil
	case len(refusals) == 0:
		return true, nil
	case !force:
		return false, fmt.Errorf("%s; nothing written to %s (add -force to write anyway, -dry-run to only show the change)", strings.Join(refusals, "; "), key)
	}
	fmt.Fprintf(env.Stderr, "warning: %s; writing because of -force\n", strings.Join(refusals, "; "))
	return true, nil
}

// judgeForHosts prints which changes every running weftd applies live and
// which need a restart, with how many hosts (leases under subnets) are
// affected; it returns the refusal for a restart needed by at least one host,
// "" when none is. A stored config that no longer parses cannot be compared:
// that is said, and nothing is refused for it (weftd ignores invalid values,
// so the hosts run on some older config).
func judgeForHosts(env *Env, old []byte, next netconf.Config, leases []lease.Lease, subnets string) string {
	cur, _, err := netconf.Parse(old)
	if err != nil {
		fmt.Fprintf(env.Stdout, "the config in etcd is invalid (%v): the running weftds ignored it, so how they take the new one cannot be judged\n", err)
		return ""
	}
	all := netconf.CompareConfigs(cur, next, netip.Prefix{})
	var restartHosts []string
	reasons := all.Restart
	for _, l := range leases {
		ch := netconf.CompareConfigs(cur, next, l.Subnet)
		if len(ch.Restart) == 0 {
			continue
		}
		restartHosts = append(restartHosts, fmt.Sprintf("%s (%s)", l.Subnet, l.Attrs.PublicIP))
		for _, r := range ch.Restart {
			if !slices.Contains(reasons, r) {
				reasons = append(reasons, r)
			}
		}
	}
	n := len(leases)
	switch liveHosts := n - len(restartHosts); {
	case len(all.Live) == 0:
	case len(reasons) == 0:
		fmt.Fprintf(env.Stdout, "applied live by the running weftd of each of the %d host(s) with a lease under %s, no restart: %s\n",
			n, subnets, strings.Join(all.Live, "; "))
	case len(all.Restart) > 0:
		// weftd applies nothing of a change that mixes both kinds.
		fmt.Fprintf(env.Stdout, "not applied live either, since the change also needs a restart: %s\n", strings.Join(all.Live, "; "))
	case liveHosts > 0:
		fmt.Fprintf(env.Stdout, "applied live by the running weftd of %d of the %d host(s) with a lease under %s (the others need a restart): %s\n",
			liveHosts, n, subnets, strings.Join(all.Live, "; "))
	}
	if len(reasons) == 0 {
		return ""
	}
	if len(restartHosts) == 0 {
		fmt.Fprintf(env.Stdout, "needs a restart of weftd (%s), but no host holds a lease under %s: nothing runs on the old config\n",
			strings.Join(reasons, "; "), subnets)
		return ""
	}
	fmt.Fprintf(env.Stdout, "needs a restart of weftd on %d of the %d host(s) with a lease under %s: %s\n"+
		"  until restarted each answers /readyz 503 \"restart needed\" and runs on the current config; restart them one at a time\n",
		len(restartHosts), n, subnets, strings.Join(reasons, "; "))
	return fmt.Sprintf("the change needs a restart of weftd on %d host(s) (%s): %s", len(restartHosts), strings.Join(restartHosts, ", "), strings.Join(reasons, "; "))
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
