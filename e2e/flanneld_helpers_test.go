package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/lab"
)

// The reference flanneld: scripts/flanneld.sh builds it from the module
// proxy into the cache directory once; CI (.ci/run) builds it before make
// test and passes its path as WEFT_FLANNELD.
const flanneldVersion = "v0.28.10"

// interopHealthPort is where every host's daemon serves /healthz (flanneld)
// or /metrics (weftd) on the host's own loopback.
const interopHealthPort = "9103"

// flanneldPath finds the reference flanneld. WEFT_FLANNELD set means it must
// be there (CI built it): a missing or wrong binary fails the test. Without
// it, the cache path is tried and the test is skipped when nothing is built.
func flanneldPath(t *testing.T) string {
	t.Helper()
	path, explicit := os.LookupEnv("WEFT_FLANNELD")
	if !explicit {
		cache := os.Getenv("WEFT_CACHE")
		if cache == "" {
			cache = "/var/cache/weft"
		}
		path = filepath.Join(cache, "flanneld-"+flanneldVersion, "flanneld")
		if _, err := os.Stat(path); err != nil {
			t.Skipf("reference flanneld %s not built at %s: run scripts/flanneld.sh (or set WEFT_FLANNELD)", flanneldVersion, path)
		}
	}
	out, err := exec.Command(path, "--version").CombinedOutput()
	if got := strings.TrimSpace(string(out)); err != nil || got != flanneldVersion {
		t.Fatalf("reference flanneld %s: --version gave %q (%v), want %s; rebuild it with scripts/flanneld.sh", path, got, err, flanneldVersion)
	}
	// flanneld (iptables mode) exits with status 1 at start, before any
	// lease, when it cannot see br_netfilter's sysctls ("Failed to check
	// br_netfilter"); say so here rather than in every host's log.
	// scripts/install-deps.sh loads the module.
	for _, f := range []string{"/proc/sys/net/bridge/bridge-nf-call-iptables", "/proc/sys/net/bridge/bridge-nf-call-ip6tables"} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("reference flanneld %s exits at start without br_netfilter (%v): load it with modprobe br_netfilter (scripts/install-deps.sh does)", flanneldVersion, err)
		}
	}
	return path
}

// mixedLab is a lab whose hosts run weftd or flanneld, as an operator's
// cluster does in the middle of a migration.
type mixedLab struct {
	*lab.Lab
	flanneld string // the reference binary
	shimDir  string
}

// newMixedLab brings up a lab whose host i runs daemons[i] ("weftd" or
// "flanneld"), both with the same command line and environment (the lab's:
// the ops note's flags, -iface=eth0, the host's own -subnet-file).
//
// The lab starts one binary for every host; here that binary is a shim that
// runs the daemon named in <shimDir>/h<N> (weftd when there is none), so
// the lab's PID, SIGTERM, log and restart handling apply to flanneld too,
// and a swap is: stop, rename the daemon in the file, start.
func newMixedLab(t *testing.T, backend string, daemons ...string) *mixedLab {
	t.Helper()
	return newMixedLabWith(t, lab.Config{Backend: backend, NetworkConfig: networkConfig(backend)}, daemons...)
}

// newMixedLabWith is newMixedLab for any lab config (a dual-stack one); the
// number of hosts, the daemon and the health port are the mixed lab's.
func newMixedLabWith(t *testing.T, cfg lab.Config, daemons ...string) *mixedLab {
	t.Helper()
	m := &mixedLab{flanneld: flanneldPath(t), shimDir: t.TempDir()}
	shim := filepath.Join(m.shimDir, "daemon")
	if err := os.WriteFile(shim, []byte(shimScript(m.shimDir, filepath.Join(binDir, "weftd"), m.flanneld)), 0o755); err != nil {
		t.Fatal(err)
	}
	for i, d := range daemons {
		m.setDaemon(t, i, d)
	}
	// Registered before the lab, so that it runs even when the lab does not
	// come up (the lab's log goes with its state directory).
	t.Cleanup(func() { m.reportFailedRuns(t) })
	cfg.Hosts, cfg.WeftdPath = len(daemons), shim
	cfg.WeftdArgs = append(cfg.WeftdArgs, "-healthz-port="+interopHealthPort)
	m.Lab = newLabWith(t, cfg)
	return m
}

// shimScript is the mixed lab's daemon. weftd is exec'd in place. flanneld
// runs as the flannel package's flanneld.service runs it in production (the
// ops note's CentOS unit): Restart=on-failure, after systemd's default
// RestartSec of 100 ms, and no more than 5 failures (systemd's default
// StartLimitBurst; then the shim exits with flanneld's status and the lab
// reports the host down). The shim stays flanneld's parent so that the lab's
// SIGTERM reaches flanneld and flanneld's exit status comes back to the lab;
// the whole log of each failed run is kept as <shimDir>/hN.failK.log, since
// the lab's own log is removed with the lab.
func shimScript(shimDir, weftd, flanneld string) string {
	return fmt.Sprintf(`#!/bin/sh
# The host is the name of the directory of -subnet-file (<lab>-hN), its
# daemon the path in %[1]s/hN.
for a in "$@"; do case "$a" in -subnet-file=*) f=${a#-subnet-file=};; esac; done
h=$(basename "$(dirname "$f")"); h=${h##*-}
d=%[2]s
[ -s "%[1]s/$h" ] && d=$(cat "%[1]s/$h")
[ "$d" = "%[3]s" ] || exec "$d" "$@"

stop= pid= n=0
trap 'stop=1; [ -z "$pid" ] || kill -TERM "$pid" 2>/dev/null' TERM INT
while :; do
  "$d" "$@" </dev/null &
  pid=$!
  wait "$pid"; rc=$?
  # A trapped signal interrupts wait (status > 128) before flanneld has
  # exited: wait again for its own status; 127 means it was already reaped.
  # Stopping, flanneld gets 4 s, then SIGKILL (systemd's TimeoutStopSec),
  # so that it never outlives the shim: the lab SIGKILLs the shim 5 s after
  # SIGTERM when it is removed (10 s in StopWeftd), and udp-mode flanneld
  # has been seen to ignore SIGTERM that long (one leaked a CI run).
  # Until it is reaped its PID cannot be reused; "Z" is exited.
  while [ "$rc" -gt 128 ]; do
    if [ -n "$stop" ]; then
      k=0
      while [ "$k" -lt 40 ] && [ "$(cut -d' ' -f3 /proc/$pid/stat 2>/dev/null)" != Z ] && kill -0 "$pid" 2>/dev/null; do sleep 0.1; k=$((k+1)); done
      [ "$k" -lt 40 ] || kill -KILL "$pid" 2>/dev/null
    fi
    wait "$pid"; r=$?; [ "$r" -eq 127 ] && break; rc=$r
  done
  if [ -n "$stop" ] || [ "$rc" -eq 0 ]; then exit "$rc"; fi
  n=$((n+1))
  cp "$(dirname "$f")/weftd.log" "%[1]s/$h.fail$n.log"
  if [ "$n" -ge 5 ]; then
    echo "--- shim: flanneld pid $pid exited with status $rc, its 5th failure: not restarted (StartLimitBurst=5)"
    exit "$rc"
  fi
  echo "--- shim: flanneld pid $pid exited with status $rc; restarting it in 100 ms (Restart=on-failure), log kept as %[1]s/$h.fail$n.log"
  sleep 0.1
  [ -z "$stop" ] || exit "$rc"
done
`, shimDir, weftd, flanneld)
}

// failedRuns lists the kept logs of flanneld runs that exited on their own
// with a non-zero status (the shim restarted them).
func (m *mixedLab) failedRuns() []string {
	logs, _ := filepath.Glob(filepath.Join(m.shimDir, "h*.fail*.log"))
	return logs
}

// reportFailedRuns names every failed flanneld run and, when the test
// failed, prints the whole log kept at each host's last failure (the lab
// appends every run of a host's daemon to one log, so it holds the earlier
// failures too).
func (m *mixedLab) reportFailedRuns(t *testing.T) {
	last := map[string]string{} // host → its last kept log
	for _, p := range m.failedRuns() {
		t.Logf("flanneld exited with a failure and was restarted: its log is %s", p)
		h, _, _ := strings.Cut(filepath.Base(p), ".")
		if n, best := failNumber(p), last[h]; best == "" || n > failNumber(best) {
			last[h] = p
		}
	}
	if !t.Failed() {
		return
	}
	for h, p := range last {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Logf("%s: %v", p, err)
			continue
		}
		t.Logf("%s: the whole log up to flanneld's last failure (%s):\n%s", h, filepath.Base(p), b)
	}
}

// failNumber is K of a kept log hN.failK.log.
func failNumber(path string) int {
	k, _ := strconv.Atoi(strings.TrimPrefix(filepath.Ext(strings.TrimSuffix(path, ".log")), ".fail"))
	return k
}

// setDaemon chooses what host i runs from its next start on.
func (m *mixedLab) setDaemon(t *testing.T, i int, daemon string) {
	t.Helper()
	path := filepath.Join(binDir, "weftd")
	switch daemon {
	case "weftd":
	case "flanneld":
		path = m.flanneld
	default:
		t.Fatalf("daemon %q: want weftd or flanneld", daemon)
	}
	if err := os.WriteFile(filepath.Join(m.shimDir, fmt.Sprintf("h%d", i+1)), []byte(path), 0o644); err != nil {
		t.Fatal(err)
	}
}

// addHost adds a host running daemon.
func (m *mixedLab) addHost(t *testing.T, daemon string) *lab.Host {
	t.Helper()
	m.setDaemon(t, len(m.Hosts), daemon)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	h, err := m.AddHost(ctx)
	if err != nil {
		t.Fatalf("add a %s host: %v", daemon, err)
	}
	return h
}

// flanneldBenign are the warnings and errors flanneld v0.28.10 logs in a
// cluster of flanneld hosts only, none about another host's lease: its first
// start (no previous subnet.env), etcd over http, and the cancellations of
// its SIGTERM shutdown.
var flanneldBenign = regexp.MustCompile(`no subnet found for key: FLANNEL_(IPV6_)?SUBNET in file|` +
	`no certificate provided: connecting to etcd with http|` +
	`Failed to close etcd client: context canceled|CompleteLease execute error err: canceled|` +
	`could not watch leases: context canceled`)

// flanneldTrouble lists the lines of host h's log that show flanneld
// tripping: klog errors, warnings and fatals (E…, W…, F…, such as "ignoring
// non-vxlan subnet") other than flanneldBenign, and any line that ignores a
// lease. The lab's log is shared by every run of the host's daemon; klog's
// format tells flanneld's lines from weftd's (slog text).
func flanneldTrouble(t *testing.T, h *lab.Host) []string {
	t.Helper()
	b, err := os.ReadFile(h.LogFile)
	if err != nil {
		t.Fatalf("%s: %v", h.Name, err)
	}
	klogIssue := regexp.MustCompile(`^[EWF]\d{4} `)
	klog := regexp.MustCompile(`^[IEWF]\d{4} `)
	var out []string
	for line := range strings.SplitSeq(string(b), "\n") {
		if strings.HasPrefix(line, "--- shim: flanneld pid ") && strings.Contains(line, "restarting it") {
			// A run that failed and was restarted, as its unit restarts it
			// in production: what it logged is shown, and only the runs
			// after it are judged. A weft lease that flanneld trips over
			// fails every run, and the lab then never comes up.
			t.Logf("%s: a flanneld run failed and was restarted; its complaints: %q", h.Name, out)
			out = nil
			continue
		}
		if !klog.MatchString(line) {
			continue
		}
		ignores := strings.Contains(strings.ToLower(line), "ignoring")
		if (klogIssue.MatchString(line) && !flanneldBenign.MatchString(line)) || ignores {
			out = append(out, line)
		}
	}
	return out
}

// hostGet fetches path from the daemon's health server inside host h.
func hostGet(h *lab.Host, path string) (string, error) {
	_, body, err := hostHTTP(h, interopHealthPort, path)
	if err != nil {
		return "", fmt.Errorf("%s GET %s: %w", h.Name, path, err)
	}
	return body, nil
}

// weftMetric reads one unlabelled metric of host h's weftd.
func weftMetric(h *lab.Host, name string) (float64, error) {
	body, err := hostGet(h, "/metrics")
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(body, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("%s: no metric %s", h.Name, name)
}

// weftctlLeases is `weftctl leases list -o json` against the lab's etcd.
func weftctlLeases(t *testing.T, l *lab.Lab) map[string]map[string]any {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, filepath.Join(binDir, "weftctl"), "leases", "list", "-o", "json",
		"--etcd-endpoints", l.EtcdEndpoint, "--etcd-prefix", l.Config().Prefix).Output()
	if err != nil {
		t.Fatalf("weftctl leases list: %v", err)
	}
	var list []map[string]any
	if err := json.Unmarshal(out, &list); err != nil {
		t.Fatalf("weftctl leases list -o json: %v\n%s", err, out)
	}
	bySubnet := map[string]map[string]any{}
	for _, e := range list {
		bySubnet[fmt.Sprint(e["subnet"])] = e
	}
	return bySubnet
}
