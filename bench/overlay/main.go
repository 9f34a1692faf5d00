// Command overlay measures weft's control plane and dataplane against the
// figures of issues 2 and 3, each beside flanneld's reference and weft's
// target, and prints a Markdown table (BENCHMARKS.md is made from it).
//
// Method (issue 3): fake remote leases are preloaded in a real embedded
// etcd — distinct PublicIPs and VTEP MACs, all on one etcd lease, written in
// one transaction (the embedded etcd runs with a MaxTxnOps of 20,000 for
// that); the real weftd binary runs in a network namespace host that reaches
// etcd at 127.0.0.1:2379 through a proxy in this process; completion is
// judged in the kernel, from route and neighbour/FDB notifications
// subscribed to in the host namespace before weftd starts (and checked by a
// dump afterwards), never from weftd's log. Every run builds a fresh
// namespace world and a fresh etcd prefix and removes them afterwards.
//
// At 10,000 and 20,000 peers (issue 12: -figure scale10k,scale20k, not part
// of "all") that notification socket may overflow while weftd writes in
// batches, so the scale figures judge completion by dumps of the kernel's
// routes, neighbours and flannel.1's FDB: made when a route subscription
// has seen every route added, every second otherwise, every -dump-poll once
// that subscription lost messages (see waitKernel). Each run gives: start →
// first route; start → all routes+neigh+fdb; weftd's CPU (utime+stime) from
// start to that moment; idle CPU over -idle after 5 s to settle; VmHWM read
// after that (≥ 12 s after convergence, one resync); and at 10,000 the join
// figure's join/leave p50/p99 (-joins samples, notification-judged: one
// peer's three entries at a time). The fake peers go in as one transaction
// on one etcd lease at every size (etcd's MaxTxnOps is raised to 25,000,
// its request limit and the client's send limit to 16 MiB).
//
// Run as root (it creates network namespaces; nothing is added to the root
// namespace's networking):
//
//	go run ./bench/overlay -figure all -runs 5
//	go run ./bench/overlay -figure join,bulk -runs 5
//	go run ./bench/overlay -figure scale10k,scale20k -runs 3
//
// For diagnosis: -samples FILE writes every join/leave sample with its
// wall-clock times (µs), to line up with weftd's log (-keep-logs).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/weft-net/weft/internal/lab"
	"github.com/weft-net/weft/internal/testutil/etcdtest"
)

// maxTxnBytes bounds one request to etcd, both sides.
const maxTxnBytes = 16 << 20

type env struct {
	log   *slog.Logger
	weftd string
	tmp   string
	etcd  *etcdtest.Server
	cli   *clientv3.Client
	seq   int
	opts  options
	labs  map[string]*lab.Lab
	// samples receives every join and leave sample (-samples), or is nil.
	samples *os.File
}

type options struct {
	runs    int
	joins   int
	idle    time.Duration
	iperfT  time.Duration
	verbose bool
	// weftdArgs are appended to every weftd command line of the
	// one-host figures (diagnosis, e.g. -v=1).
	weftdArgs []string
	keepLogs  string
	samples   string
	perfDir   string
	weftdEnv  []string
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "overlay bench:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		figs   = flag.String("figure", "all", "comma-separated figures, or all: "+strings.Join(figureNames(), ","))
		weftd  = flag.String("weftd", "", "weftd binary (default: go build ./cmd/weftd into a temporary directory)")
		before = flag.String("weftd-before", "", "a second weftd binary, from before a change: each run of each figure is made with it, then with -weftd, and both columns are printed")
		o      options
	)
	flag.IntVar(&o.runs, "runs", 5, "runs of each figure (min/median/max are over these)")
	flag.IntVar(&o.joins, "joins", 100, "join and leave samples per run of the join figure")
	flag.DurationVar(&o.idle, "idle", 60*time.Second, "CPU sampling window of the idle figure")
	flag.DurationVar(&o.iperfT, "iperf-time", 5*time.Second, "duration of each iperf3 run of the tcp figure")
	flag.BoolVar(&o.verbose, "v", false, "log progress to stderr")
	flag.DurationVar(&pollInterval, "poll", pollInterval, "sleep of the kernel watch between drains of its netlink socket (resolution of every time measured in the kernel)")
	flag.Func("route-proto", "protocol number of the daemon's routes (default 87, weft's; 3 for flanneld with -weftd pointing at it)", func(v string) error {
		n, err := strconv.ParseUint(v, 10, 8)
		if err != nil {
			return fmt.Errorf("%q: want a route protocol number 0-255", v)
		}
		routeProto = netlink.RouteProtocol(n)
		return nil
	})
	flag.DurationVar(&dumpPoll, "dump-poll", dumpPoll, "sleep between the kernel dumps that judge completion of the scale figures once their route subscription lost messages")
	flag.DurationVar(&convergeTimeout, "timeout", convergeTimeout, "bound on each wait for the kernel to reach the expected state")
	flag.Func("weftd-env", "extra weftd environment variable NAME=VALUE (repeatable), e.g. GODEBUG=gctrace=1", func(s string) error {
		if !strings.Contains(s, "=") {
			return fmt.Errorf("%q: want NAME=VALUE", s)
		}
		o.weftdEnv = append(o.weftdEnv, s)
		return nil
	})
	flag.StringVar(&o.perfDir, "perf", "", "record `perf record -g` of weftd during each start → converged run into this directory (diagnosis; slows weftd)")
	flag.StringVar(&o.samples, "samples", "", "append every join/leave sample to this CSV file: kind,peers,subnet,sent_us,answered_us,kernel_us,ms (diagnosis)")
	flag.StringVar(&o.keepLogs, "keep-logs", "", "copy each weftd log into this directory (diagnosis)")
	flag.Func("weftd-arg", "extra weftd argument (repeatable), e.g. -weftd-arg=-v=1", func(s string) error {
		o.weftdArgs = append(o.weftdArgs, s)
		return nil
	})
	flag.Parse()
	if os.Geteuid() != 0 {
		return errors.New("must run as root: it creates network namespaces (sudo go run ./bench/overlay)")
	}
	selected, err := selectFigures(*figs)
	if err != nil {
		return err
	}
	level := slog.LevelWarn
	if o.verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	tmp, err := os.MkdirTemp("", "weft-overlay-bench-")
	if err != nil {
		return fmt.Errorf("create temporary directory: %w", err)
	}
	defer os.RemoveAll(tmp)
	e := &env{log: log, tmp: tmp, opts: o, labs: map[string]*lab.Lab{}}
	defer e.closeLabs()
	if o.samples != "" {
		if e.samples, err = os.OpenFile(o.samples, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err != nil {
			return fmt.Errorf("open -samples file: %w", err)
		}
		defer e.samples.Close()
	}
	if e.weftd, err = buildWeftd(*weftd, tmp); err != nil {
		return err
	}
	linksServer, err := linksEtcdServer(e.weftd)
	if err != nil {
		return err
	}
	// One transaction holds every fake peer (maxFakes puts, ~170 bytes
	// each: 4 MiB at 25,000), so both etcd's limits and the client's send
	// limit (2 MiB by default) are raised.
	if e.etcd, err = etcdtest.Start(etcdtest.Options{Dir: filepath.Join(tmp, "etcd"), MaxTxnOps: maxFakes, MaxRequestBytes: maxTxnBytes}); err != nil {
		return err
	}
	defer e.etcd.Close()
	if e.cli, err = clientv3.New(clientv3.Config{
		Endpoints:          []string{e.etcd.Endpoint},
		DialTimeout:        5 * time.Second,
		Logger:             zap.NewNop(),
		MaxCallSendMsgSize: maxTxnBytes,
	}); err != nil {
		return fmt.Errorf("etcd client: %w", err)
	}
	defer e.cli.Close()

	// With -weftd-before, every run of every figure is made with the
	// binary before a change and then with the one after it, one after the
	// other, so both columns see the same machine (issue 12's A/B rule).
	bins, labels := []string{e.weftd}, []string{""}
	if *before != "" {
		b, err := buildWeftd(*before, tmp)
		if err != nil {
			return err
		}
		bins, labels = []string{b, e.weftd}, []string{"before", "after"}
	}
	m := machine()
	rows := make([][]*row, len(bins))
	var failures []string
	for _, f := range selected {
		frs := make([][]*row, len(bins))
		for b := range bins {
			frs[b] = f.rows()
			rows[b] = append(rows[b], frs[b]...)
		}
		for r := range o.runs {
			for b, bin := range bins {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				e.weftd = bin
				log.Info("figure", "name", f.name, "run", r+1, "weftd", labels[b])
				vals, err := f.run(ctx, e)
				if len(bins) > 1 {
					e.closeLabs() // a lab's hosts run the binary they started with
				}
				if err != nil {
					if ctx.Err() != nil {
						return err
					}
					// A figure that cannot complete is a result too: note
					// it and go on with the others.
					log.Error("figure failed", "name", f.name, "run", r+1, "weftd", labels[b], "err", err)
					failures = append(failures, fmt.Sprintf("%s, run %d %s: %v", f.name, r+1, labels[b], firstLine(err.Error())))
					for _, row := range frs[b] {
						row.failed++
					}
					continue
				}
				for i, v := range vals {
					frs[b][i].vals = append(frs[b][i].vals, v)
				}
			}
		}
		e.closeLabs()
	}
	m.loadEnd = loadavg()
	if len(bins) == 1 {
		printTable(os.Stdout, m, rows[0], o, linksServer)
	} else {
		printCompare(os.Stdout, m, bins, rows[0], rows[1], o)
	}
	if len(failures) > 0 {
		fmt.Println("\nFailed runs:")
		for _, f := range failures {
			fmt.Println("- " + f)
		}
		return fmt.Errorf("%d runs failed", len(failures))
	}
	return nil
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

// buildWeftd builds the real daemon from this checkout (or takes the given
// binary) — the figures are of the binary an operator runs, so it is built
// as `make build` builds it (static, -trimpath).
func buildWeftd(explicit, dir string) (string, error) {
	if explicit != "" {
		return filepath.Abs(explicit)
	}
	out := filepath.Join(dir, "weftd")
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, "./cmd/weftd")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/weftd (run from the repository root): %w: %s", err, b)
	}
	return out, nil
}

// linksEtcdServer reports whether the binary contains etcd's server module
// (the issue requires weftd not to).
func linksEtcdServer(bin string) (bool, error) {
	b, err := exec.Command("go", "version", "-m", bin).Output()
	if err != nil {
		return false, fmt.Errorf("go version -m %s: %w", bin, err)
	}
	return strings.Contains(string(b), "go.etcd.io/etcd/server/"), nil
}

func (e *env) closeLabs() {
	for k, l := range e.labs {
		if err := l.Close(); err != nil {
			e.log.Warn("close lab", "lab", k, "err", err)
		}
		delete(e.labs, k)
	}
}

type machineInfo struct {
	nproc              int
	kernel, cpu        string
	date               string
	loadStart, loadEnd string
}

func machine() machineInfo {
	m := machineInfo{nproc: runtime.NumCPU(), date: time.Now().UTC().Format("2006-01-02 15:04 UTC"), loadStart: loadavg()}
	if b, err := exec.Command("uname", "-r").Output(); err == nil {
		m.kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	return m
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// row is one line of the table: a figure, its references and its values.
type row struct {
	name, flanneld, target, unit string
	// limit is the target as a number (0: none); higher says whether larger
	// values are better (throughput ratios).
	limit  float64
	higher bool
	vals   []float64
	failed int // runs that could not complete
}

func stats(v []float64) (lo, med, hi float64) {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n == 0 {
		return 0, 0, 0
	}
	med = s[n/2]
	if n%2 == 0 {
		med = (s[n/2-1] + s[n/2]) / 2
	}
	return s[0], med, s[n-1]
}

func fmtVal(v float64, unit string) string {
	switch {
	case unit == "ratio" || unit == "%":
		return fmt.Sprintf("%.3g", v)
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

func printTable(w *os.File, m machineInfo, rows []*row, o options, linksServer bool) {
	fmt.Fprintf(w, "Machine: %d CPUs (%s), kernel %s; %s; load average (1/5/15 min) %s at start, %s at end.\n",
		m.nproc, m.cpu, m.kernel, m.date, m.loadStart, m.loadEnd)
	fmt.Fprintf(w, "Runs per figure: %d. weftd links the etcd server: %t.\n\n", o.runs, linksServer)
	fmt.Fprintln(w, "| figure | flanneld | weft target | min | median | max | unit | median meets target | runs |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|")
	for _, r := range rows {
		lo, med, hi := stats(r.vals)
		meets := "—"
		if r.limit != 0 && len(r.vals) > 0 {
			ok := med <= r.limit
			if r.higher {
				ok = med >= r.limit
			}
			meets = map[bool]string{true: "yes", false: "**no**"}[ok]
		}
		var all []string
		for _, v := range r.vals {
			all = append(all, fmtVal(v, r.unit))
		}
		if r.failed > 0 {
			all = append(all, fmt.Sprintf("**%d failed**", r.failed))
			if len(r.vals) == 0 {
				meets = "**no** (did not complete)"
			}
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.name, r.flanneld, r.target,
			fmtVal(lo, r.unit), fmtVal(med, r.unit), fmtVal(hi, r.unit), r.unit, meets, strings.Join(all, ", "))
	}
}

// printCompare prints the figures of two binaries measured in one
// interleaved run: the median (min–max) of each, and the change.
func printCompare(w io.Writer, m machineInfo, bins []string, before, after []*row, o options) {
	fmt.Fprintf(w, "Machine: %d CPUs, %s, kernel %s; %s; load average %s at start, %s at end.\n",
		m.nproc, m.cpu, m.kernel, m.date, m.loadStart, m.loadEnd)
	fmt.Fprintf(w, "Runs per figure and binary: %d, interleaved (before, after, before, …).\nbefore: %s\nafter: %s\n\n", o.runs, bins[0], bins[1])
	fmt.Fprintln(w, "| figure | before: median (min–max) | after: median (min–max) | after / before | unit |")
	fmt.Fprintln(w, "|---|---|---|---|---|")
	for i, a := range after {
		b := before[i]
		cell := func(r *row) string {
			if len(r.vals) == 0 {
				return "failed"
			}
			lo, med, hi := stats(r.vals)
			return fmt.Sprintf("%s (%s–%s)", fmtVal(med, r.unit), fmtVal(lo, r.unit), fmtVal(hi, r.unit))
		}
		ratio := "—"
		if len(a.vals) > 0 && len(b.vals) > 0 {
			if _, mb, _ := stats(b.vals); mb != 0 {
				_, ma, _ := stats(a.vals)
				ratio = fmt.Sprintf("%.2f", ma/mb)
			}
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s |\n", a.name, cell(b), cell(a), ratio, a.unit)
	}
}
