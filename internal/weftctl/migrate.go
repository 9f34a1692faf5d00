package weftctl

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/weft-net/weft/internal/etcdopts"
	"github.com/weft-net/weft/internal/flagenv"
	"github.com/weft-net/weft/internal/migratev2"
)

const migrateUsage = `usage: weftctl migrate-v2 [--apply] [-etcd-* flags]

Copies the network config and the subnet leases under -etcd-prefix from etcd's
v2 store (where flannel up to 0.13 and the ops note's etcdctl ls/mk/rmdir keep
them) to the v3 store weft reads, under the same keys: each lease with an etcd
lease carrying the TTL its v2 key has left, each key without TTL (a reservation)
without lease, so that every host keeps its subnet when it moves to weft.

Without --apply nothing is written: it shows what would be. Keys already in v3
are never overwritten: the same value is "present", another one a "conflict".
A key that weft would refuse is reported with the rule and not migrated; the
rest still are. Running it again writes nothing new.

The -etcd-* flags (and FLANNELD_ETCD_* variables) are flanneld's; etcd must
serve v2 (etcd 3.4/3.5 with --enable-v2) on the same endpoints. TLS and the
username/password are used for both APIs (v2: HTTP basic auth).
Exit status: 0, or 1 when a key was in conflict, invalid or not written.`

// runMigrateV2 is `weftctl migrate-v2`: read v2, check, compare with v3,
// write what is missing.
func runMigrateV2(ctx context.Context, env *Env, args []string) error {
	fs := flag.NewFlagSet("weftctl migrate-v2", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	fs.Usage = func() { fmt.Fprintln(env.Stderr, migrateUsage) }
	var opts etcdopts.Options
	opts.AddFlags(fs)
	apply := fs.Bool("apply", false, "write to v3 (default: a dry run that only shows what would be written)")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return &UsageError{Msg: err.Error()}
	}
	if len(pos) != 0 {
		return &UsageError{Msg: fmt.Sprintf("migrate-v2 takes no arguments, got %q", pos)}
	}
	// The environment feeds the etcd flags only: writing must be asked
	// for on the command line, never by a FLANNELD_APPLY left around.
	a := *apply
	if err := flagenv.Apply(fs, "FLANNELD_", env.LookupEnv); err != nil {
		return &UsageError{Msg: err.Error()}
	}
	*apply = a

	cli, err := opts.Connect(ctx)
	if err != nil {
		return err
	}
	defer cli.Close()
	tlsCfg, err := opts.TLSConfig()
	if err != nil {
		return err
	}
	user, password, err := opts.Credentials()
	if err != nil {
		return err
	}
	read := time.Now()
	nodes, err := migratev2.NewV2Client(opts.EndpointList(), tlsCfg, user, password).List(ctx, opts.Prefix)
	if errors.Is(err, migratev2.ErrNoV2Data) {
		return fmt.Errorf("nothing to migrate: %w (is -etcd-prefix %q the prefix flanneld used?)", err, opts.Prefix)
	}
	if err != nil {
		return err
	}
	plan := migratev2.NewPlan(opts.Prefix, nodes, read)
	results, err := migratev2.Migrate(ctx, cli, plan, *apply)
	if err != nil {
		return err
	}
	if bad := printMigration(env.Stdout, plan, results, *apply); bad {
		return &ExitError{Code: 1}
	}
	return nil
}

// printMigration writes one line per key and a summary; it reports whether
// anything needs the operator (conflict, invalid, failed). Keys and values
// come from etcd and are escaped (printable).
func printMigration(w io.Writer, plan migratev2.Plan, results []migratev2.Result, apply bool) (bad bool) {
	count := map[migratev2.Action]int{}
	for _, r := range results {
		count[r.Action]++
		key := printable(r.Item.Key)
		switch r.Action {
		case migratev2.ActionWrite:
			verb := "would write"
			if r.Written {
				verb = "wrote"
			}
			fmt.Fprintf(w, "%-11s  %s  %s  %s\n", verb, key, migrateTTL(r, true), printable(r.Item.Value))
		default:
			fmt.Fprintf(w, "%-11s  %s  %s: %s\n", r.Action, key, migrateTTL(r, false), printable(r.Detail))
		}
	}
	for _, p := range plan.Problems {
		fmt.Fprintf(w, "%-11s  %s: %s: not migrated\n", "invalid", printable(p.Key), printable(p.Reason))
	}
	bad = count[migratev2.ActionConflict]+count[migratev2.ActionFailed]+len(plan.Problems) > 0

	var parts []string
	add := func(n int, what string) {
		if n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, what))
		}
	}
	add(count[migratev2.ActionPresent], "already in v3")
	add(count[migratev2.ActionSameHost], "held in v3 by the same host")
	add(count[migratev2.ActionConflict], "in conflict (not overwritten)")
	add(len(plan.Problems), "invalid (not migrated)")
	add(count[migratev2.ActionExpired], "expired")
	add(count[migratev2.ActionFailed], "failed")
	rest := ""
	if len(parts) > 0 {
		rest = "; " + strings.Join(parts, ", ")
	}
	n := count[migratev2.ActionWrite]
	switch {
	case n == 0:
		fmt.Fprintf(w, "nothing to write: v3 already has everything that can be migrated%s\n", rest)
	case !apply:
		fmt.Fprintf(w, "dry run: %d keys to write%s; nothing written (run with --apply to write)\n", n, rest)
	default:
		fmt.Fprintf(w, "wrote %d keys to v3%s\n", n, rest)
	}
	return bad
}

// migrateTTL describes the etcd lease a key gets; the TTL only for a key
// written (or to be), since for the others v2's TTL says nothing of v3.
func migrateTTL(r migratev2.Result, ttl bool) string {
	switch r.Item.Kind {
	case migratev2.KindConfig:
		return "(config, no lease)"
	case migratev2.KindReservation:
		return "(reservation, no lease)"
	}
	if !ttl {
		return "(lease)"
	}
	return fmt.Sprintf("(lease, TTL %ds)", r.TTL)
}
