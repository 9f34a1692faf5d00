package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/lab"
)

// TestDecommission retires a vxlan host with -ip-masq (devices, routes,
// FDB, neighbours, masquerade and forward chains, underlay guard, files):
// once with weftd stopped, then — after it joined again — with weftd
// running (refused without --stop, done with it). The host's kernel state
// and the etcd keys after each decommission are identical, hold nothing of
// weft's and no key naming the host; a second run changes nothing; the
// peer drops its route to the host within its watch latency.
func TestDecommission(t *testing.T) {
	l := newLab(t, "vxlan", 2, "-ip-masq")
	h := l.Hosts[1]
	peer := l.Hosts[0]
	weftctl := filepath.Join(binDir, "weftctl")
	docker := filepath.Join(filepath.Dir(h.SubnetFile), "docker-opts")
	args := []string{weftctl, "decommission", "-etcd-endpoints=" + labHostEtcd, "-etcd-prefix=" + l.Config().Prefix,
		"-iface=eth0", "-subnet-file=" + h.SubnetFile, "-docker-opts-file=" + docker}
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
	t.Logf("decommission:\n%s", out)
	for _, want := range []string{"released lease", "removed device flannel.1", "FLANNEL-POSTRTG", "table inet weft-guard", "removed file " + h.SubnetFile, "removed file " + docker} {
		if !strings.Contains(out, want) {
			t.Errorf("decommission output lacks %q", want)
		}
	}
	waitFor(t, "peer drops the decommissioned host's route", start, 2*time.Second, 10*time.Second, func() error {
		if r, _ := peer.NS.Run("ip", "route", "show", h.Subnet.String()); strings.TrimSpace(r) != "" {
			return fmt.Errorf("peer still routes %s: %s", h.Subnet, r)
		}
		return nil
	})
	after1, keys1 := kernelDump(t, h), etcdKeys(t, l)
	assertNoWeft(t, after1, keys1, h)
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
	after2, keys2 := kernelDump(t, h), etcdKeys(t, l)
	if after2 != after1 {
		t.Errorf("kernel state after the second decommission differs from the first:\n%s", diffLines(after1, after2))
	}
	if !slices.Equal(keys1, keys2) {
		t.Errorf("etcd keys after the second decommission %v, after the first %v", keys2, keys1)
	}
	if running, _ := l.WeftdRunning(1); running {
		t.Errorf("weftd still running after decommission --stop")
	}
}

var dumpVolatile = regexp.MustCompile(`(?m)(counter packets \d+ bytes \d+|valid_lft \S+ preferred_lft \S+|\bused \S+|\b\w+_timer\s+[\d.]+|\s+$)`)

// kernelDump is what a decommission must leave as it was: links,
// addresses, routes of every table, permanent neighbours and FDB entries,
// the nf_tables ruleset — counters, lifetimes and learned entries left out.
func kernelDump(t *testing.T, h *lab.Host) string {
	t.Helper()
	var b strings.Builder
	for _, cmd := range [][]string{
		{"ip", "-d", "-o", "link", "show"},
		{"ip", "-o", "addr", "show"},
		{"ip", "route", "show", "table", "all"},
		{"ip", "-6", "route", "show", "table", "all"},
		{"ip", "neigh", "show", "nud", "permanent"},
		{"bridge", "fdb", "show", "state", "permanent"},
		{"nft", "list", "ruleset"},
	} {
		out, err := h.NS.Run(cmd...)
		if err != nil {
			t.Fatalf("dump: %v", err)
		}
		fmt.Fprintf(&b, "## %s\n%s\n", strings.Join(cmd, " "), dumpVolatile.ReplaceAllString(out, ""))
	}
	return b.String()
}

func etcdKeys(t *testing.T, l *lab.Lab) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := l.Etcd.Get(ctx, "/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, kv := range resp.Kvs {
		keys = append(keys, string(kv.Key))
	}
	return keys
}

func assertNoWeft(t *testing.T, dump string, keys []string, h *lab.Host) {
	t.Helper()
	for _, bad := range []string{"flannel.1", "proto 87", "FLANNEL-", "table ip weft", "weft-guard", "blackhole"} {
		if strings.Contains(dump, bad) {
			t.Errorf("after decommission the host still has %q:\n%s", bad, dump)
		}
	}
	sub := strings.Replace(h.Subnet.String(), "/", "-", 1)
	for _, k := range keys {
		if strings.HasSuffix(k, sub) {
			t.Errorf("after decommission etcd still has %s", k)
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
