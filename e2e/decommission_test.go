package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/lab"
	"github.com/weft-net/weft/internal/lease"
)

// preStart records each host's kernel dump and the etcd dump as they were
// before any weftd started (lab.Config.BeforeWeftd).
type preStart struct {
	kernel map[string]string // host name -> kernelDump
	etcd   []string
}

// newLabPreStart is newLab, recording the hosts before weft touched them.
func newLabPreStart(t *testing.T, backend string, hosts int, weftdArgs ...string) (*lab.Lab, *preStart) {
	t.Helper()
	pre := &preStart{kernel: map[string]string{}}
	cfg := lab.Config{Hosts: hosts, Backend: backend, NetworkConfig: networkConfig(backend), WeftdArgs: weftdArgs}
	cfg.BeforeWeftd = func(l *lab.Lab, h *lab.Host) {
		pre.kernel[h.Name] = kernelDump(t, h)
		if pre.etcd == nil {
			pre.etcd = etcdDump(t, l)
		}
	}
	return newLabWith(t, cfg), pre
}

// compareWithPreStart checks that after a decommission host h's kernel is
// as it was before its weftd first started — apart from the lab's stand-in
// for Docker (docker0 and the container's veth, which decommission leaves by
// design) — and that etcd holds what it held then plus the other hosts'
// leases.
// checkDecommissioned checks a finished decommission of h (its output out
// names every want), waits for peer to drop h's route (timed from start),
// and compares h's kernel and etcd with the dumps from before weftd first
// started; it returns the kernel dump.
func checkDecommissioned(t *testing.T, l *lab.Lab, pre *preStart, h, peer *lab.Host, start time.Time, out string, want ...string) string {
	t.Helper()
	t.Logf("decommission:\n%s", out)
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("decommission output lacks %q", w)
		}
	}
	waitFor(t, "peer drops the decommissioned host's route", start, 2*time.Second, 10*time.Second, func() error {
		if r, _ := peer.NS.Run("ip", "route", "show", h.Subnet.String()); strings.TrimSpace(r) != "" {
			return fmt.Errorf("peer still routes %s: %s", h.Subnet, r)
		}
		return nil
	})
	dump, etcd := kernelDump(t, h), etcdDump(t, l)
	assertNoWeft(t, dump, etcd, h)
	compareWithPreStart(t, l, pre, h, dump, etcd)
	return dump
}

func compareWithPreStart(t *testing.T, l *lab.Lab, pre *preStart, h *lab.Host, dump string, etcd []string) {
	t.Helper()
	if want, got := pre.kernel[h.Name], withoutContainer(dump); want != got {
		t.Errorf("kernel state of %s after decommission differs from before its weftd started:\n%s", h.Name, diffLines(want, got))
	}
	var rest []string
	for _, kv := range etcd {
		other := false
		for _, o := range l.Hosts {
			if o != h && strings.HasPrefix(kv, lease.SubnetsPrefix(l.Config().Prefix)+strings.Replace(o.Subnet.String(), "/", "-", 1)+"=") {
				other = true
			}
		}
		if !other {
			rest = append(rest, kv)
		}
	}
	if !slices.Equal(rest, pre.etcd) {
		t.Errorf("etcd after decommission (other hosts' leases aside) %q, before any weftd started %q", rest, pre.etcd)
	}
}

// withoutContainer drops the lines of the lab's container (docker0, its
// veth vethc1), which stand for Docker's and are not weft's to remove.
func withoutContainer(dump string) string {
	var keep []string
	for _, line := range strings.Split(dump, "\n") {
		if !strings.Contains(line, "docker0") && !strings.Contains(line, "vethc1") {
			keep = append(keep, line)
		}
	}
	return strings.Join(keep, "\n")
}

// decommissionArgs is weftctl decommission for host h of l, as the ops
// note's host runs it.
func decommissionArgs(l *lab.Lab, h *lab.Host, docker string) []string {
	return []string{filepath.Join(binDir, "weftctl"), "decommission", "-etcd-endpoints=" + labHostEtcd, "-etcd-prefix=" + l.Config().Prefix,
		"-iface=eth0", "-subnet-file=" + h.SubnetFile, "-docker-opts-file=" + docker,
		"-node-name=" + h.Name} // the lab names each host's weftd so (its hosts share /etc/machine-id)
}

// TestDecommission retires a vxlan host with -ip-masq (devices, routes,
// FDB, neighbours, masquerade and forward chains, underlay guard, files):
// once with weftd stopped, then — after it joined again — with weftd
// running (refused without --stop, done with it). After each decommission
// the host's kernel and etcd are as they were before its weftd first
// started (the lab's container aside; etcd: the peer's lease aside); a
// second run changes nothing; the peer drops its route to the host within
// its watch latency.
func TestDecommission(t *testing.T) {
	l, pre := newLabPreStart(t, "vxlan", 2, "-ip-masq")
	h := l.Hosts[1]
	peer := l.Hosts[0]
	weftctl := filepath.Join(binDir, "weftctl")
	docker := filepath.Join(filepath.Dir(h.SubnetFile), "docker-opts")
	args := decommissionArgs(l, h, docker)
	run := func(extra ...string) (string, error) { return h.NS.Run(append(args, extra...)...) }

	if _, err := h.NS.Run(weftctl, "docker-opts", "-f", h.SubnetFile, "-d", docker); err != nil {
		t.Fatalf("write docker options: %v", err)
	}
	// 1. weftd running, no --stop: refused, nothing changed.
	out, err := run()
	if err == nil || !strings.Contains(out, fmt.Sprintf("weftd is running on this host (pid %d", l.WeftdPID(1))) {
		t.Fatalf("decommission with weftd running: err %v, output %q; want a refusal naming pid %d", err, out, l.WeftdPID(1))
	}
	if st := kernelDump(t, h); !strings.Contains(st, "flannel.1") {
		t.Fatalf("refused decommission removed flannel.1:\n%s", st)
	}

	// 2. Stopped weftd: decommission, and the peer converges.
	if err := l.StopWeftd(1); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if out, err = run(); err != nil {
		t.Fatalf("decommission: %v\n%s", err, out)
	}
	after1 := checkDecommissioned(t, l, pre, h, peer, start, out,
		"released lease", "removed device flannel.1", "FLANNEL-POSTRTG", "table inet weft-guard", "removed file "+h.SubnetFile, "removed file "+docker)
	if out, err = run(); err != nil || !strings.Contains(out, "nothing of weft's left") || !strings.Contains(out, "no lease names this host") {
		t.Fatalf("second decommission: %v\n%s", err, out)
	}
	if again := kernelDump(t, h); again != after1 {
		t.Errorf("second decommission changed the host:\n%s", diffLines(after1, again))
	}

	// 3. The host joins again; decommission --stop with weftd running.
	since := time.Now()
	if err := l.StartWeftd(1); err != nil {
		t.Fatal(err)
	}
	if _, err := l.WaitSubnetFile(context.Background(), 1, since); err != nil {
		t.Fatal(err)
	}
	if _, err := h.NS.Run(weftctl, "docker-opts", "-f", h.SubnetFile, "-d", docker); err != nil {
		t.Fatal(err)
	}
	if out, err = run("--stop"); err != nil || !strings.Contains(out, "stopping weftd pid") {
		t.Fatalf("decommission --stop: %v\n%s", err, out)
	}
	after2, etcd2 := kernelDump(t, h), etcdDump(t, l)
	compareWithPreStart(t, l, pre, h, after2, etcd2)
	if running, _ := l.WeftdRunning(1); running {
		t.Errorf("weftd still running after decommission --stop")
	}
}

// TestDecommissionBackends retires a host-gw host with -ip-blackhole-route
// (peer routes and the blackhole route, weft's protocol 87) and a udp host
// (flannel0, its userspace engine stopped first): each host's kernel and
// etcd end as they were before its weftd started, and the peer drops its
// route to the host.
func TestDecommissionBackends(t *testing.T) {
	for _, tc := range []struct {
		backend string
		args    []string
		before  []string // in the kernel dump before decommission
		out     []string // in decommission's output
	}{
		{"host-gw", []string{"-ip-blackhole-route"}, []string{"proto 87", "blackhole"}, []string{"released lease", "removed route"}},
		{"udp", nil, []string{"flannel0"}, []string{"released lease", "removed device flannel0"}},
	} {
		t.Run(tc.backend, func(t *testing.T) {
			l, pre := newLabPreStart(t, tc.backend, 2, tc.args...)
			h, peer := l.Hosts[1], l.Hosts[0]
			docker := filepath.Join(filepath.Dir(h.SubnetFile), "docker-opts")
			before := kernelDump(t, h)
			for _, want := range tc.before {
				if !strings.Contains(before, want) {
					t.Fatalf("%s host before decommission lacks %q:\n%s", tc.backend, want, before)
				}
			}
			if err := l.StopWeftd(1); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			out, err := h.NS.Run(decommissionArgs(l, h, docker)...)
			if err != nil {
				t.Fatalf("decommission: %v\n%s", err, out)
			}
			checkDecommissioned(t, l, pre, h, peer, start, out, tc.out...)
		})
	}
}

var dumpVolatile = regexp.MustCompile(`(?m)(counter packets \d+ bytes \d+|valid_lft \S+ preferred_lft \S+|\bused \S+|\b\w+_timer\s+[\d.]+|\s+$)`)

// kernelDump is what a decommission must leave as it was: links,
// addresses, routes of every table, permanent neighbours and FDB entries,
// the nf_tables ruleset — counters, lifetimes and learned entries left out.
func kernelDump(t *testing.T, h *lab.Host) string {
	t.Helper()
	// Links brought up lately (the NICs before weftd's first start, the
	// lab's docker0 and container veth after it) run IPv6 duplicate
	// address detection on their link-local addresses for a second or
	// two: "tentative", then settled with a local route. A dump taken
	// meanwhile would differ from the next one with nothing changed.
	waitFor(t, h.Name+" link-local addresses settled", time.Now(), 5*time.Second, 10*time.Second, func() error {
		if out, _ := h.NS.Run("ip", "-6", "addr", "show", "tentative"); strings.TrimSpace(out) != "" {
			return fmt.Errorf("tentative: %s", out)
		}
		return nil
	})
	var b strings.Builder
	for _, cmd := range [][]string{
		{"ip", "-d", "-o", "link", "show"},
		{"ip", "-o", "addr", "show"},
		{"ip", "route", "show", "table", "all"},
		{"ip", "-6", "route", "show", "table", "all"},
		{"ip", "nexthop", "show"}, // weftd's vxlan routes go through nexthop objects
		{"ip", "neigh", "show", "nud", "permanent"},
		{"bridge", "fdb", "show", "state", "permanent"},
		{"nft", "list", "ruleset"},
	} {
		// Standard output only: ip resolves link-netns names by asking the
		// kernel about every entry of /var/run/netns, and one another test
		// is deleting at that moment makes it print "Error: Peer netns
		// reference is invalid." on standard error (the names it prints
		// are unaffected), which is no state of this host.
		var stderr strings.Builder
		c := exec.Command("ip", append([]string{"netns", "exec", h.NS.Name}, cmd...)...)
		c.Stderr = &stderr
		out, err := c.Output()
		if err != nil {
			t.Fatalf("dump: in netns %s: %s: %v: %s", h.NS.Name, strings.Join(cmd, " "), err, stderr.String())
		}
		fmt.Fprintf(&b, "## %s\n%s\n", strings.Join(cmd, " "), dumpVolatile.ReplaceAllString(string(out), ""))
	}
	return b.String()
}

// etcdDump is every key of the lab's etcd with its value, "key=value",
// in key order.
func etcdDump(t *testing.T, l *lab.Lab) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := l.Etcd.Get(ctx, "/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var kvs []string
	for _, kv := range resp.Kvs {
		kvs = append(kvs, string(kv.Key)+"="+string(kv.Value))
	}
	return kvs
}

func assertNoWeft(t *testing.T, dump string, etcd []string, h *lab.Host) {
	t.Helper()
	for _, bad := range []string{"flannel.1", "proto 87", "FLANNEL-", "table ip weft", "weft-guard", "blackhole"} {
		if strings.Contains(dump, bad) {
			t.Errorf("after decommission the host still has %q:\n%s", bad, dump)
		}
	}
	sub := strings.Replace(h.Subnet.String(), "/", "-", 1)
	for _, kv := range etcd {
		if strings.Contains(kv, "/"+sub+"=") {
			t.Errorf("after decommission etcd still has %s", kv)
		}
	}
}

func diffLines(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	var out []string
	for _, x := range al {
		if !slices.Contains(bl, x) {
			out = append(out, "- "+x)
		}
	}
	for _, x := range bl {
		if !slices.Contains(al, x) {
			out = append(out, "+ "+x)
		}
	}
	return strings.Join(out, "\n")
}

// labHostEtcd is etcd as a lab host sees it: the lab's proxy on the host
// namespace's loopback (one etcd member).
const labHostEtcd = "http://127.0.0.1:2379"
