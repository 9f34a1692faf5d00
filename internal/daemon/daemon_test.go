package daemon

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/internal/flagenv"
	"github.com/weft-net/weft/internal/subnetenv"
	"github.com/weft-net/weft/internal/testutil/etcdtest"
	"github.com/weft-net/weft/internal/testutil/netnstest"
)

func noEnv(string) (string, bool) { return "", false }

func TestBadFlagsExitTwoWithAMessage(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"-no-such-flag"}, "flag provided but not defined: -no-such-flag"},
		{[]string{"-subnet-lease-renew-margin", "0"}, "-subnet-lease-renew-margin 0: must be between 1 and 1439"},
		{[]string{"--subnet-lease-renew-margin=1440"}, "-subnet-lease-renew-margin 1440: must be between 1 and 1439"},
		{[]string{"-subnet-lease-renew-margin=abc"}, `invalid value "abc" for flag -subnet-lease-renew-margin`},
		{[]string{"-kube-subnet-mgr"}, "-kube-subnet-mgr: not supported: weft uses etcd"},
		{[]string{"-public-ip", "10.0.0.300"}, `-public-ip "10.0.0.300": not an IPv4 address`},
		{[]string{"-public-ipv6=fe80::1%eth0"}, `-public-ipv6 "fe80::1%eth0": a zone (%eth0) is not allowed`},
		{[]string{"-public-ipv6=fe80::1"}, `-public-ipv6 "fe80::1": a link-local address is not allowed`},
		{[]string{"-public-ipv6=ff02::1"}, `-public-ipv6 "ff02::1": a multicast address is not allowed`},
		{[]string{"-public-ip=127.0.0.1"}, `-public-ip "127.0.0.1": a loopback address is not allowed`},
		{[]string{"-public-ip=0.0.0.0"}, `-public-ip "0.0.0.0": the unspecified address is not allowed`},
		{[]string{"-healthz-port=1", "-healthz-ip=fe80::1%lo"}, `-healthz-ip "fe80::1%lo": a zone (%lo) is not allowed`},
		{[]string{"-etcd-prefix", "coreos.com/network"}, `-etcd-prefix "coreos.com/network": must start with /`},
		{[]string{"-etcd-certfile", "/x.pem"}, "give both or neither"},
		{[]string{"-healthz-port", "70000"}, "-healthz-port 70000: must be between 0 and 65535"},
		{[]string{"extra"}, `unexpected argument "extra"`},
	}
	for _, c := range cases {
		var out, errb bytes.Buffer
		code := Main(context.Background(), c.args, &out, &errb, noEnv)
		if code != 2 {
			t.Errorf("weftd %v: exit %d, want 2 (stderr %q)", c.args, code, errb.String())
		}
		if !strings.Contains(errb.String(), c.want) {
			t.Errorf("weftd %v: stderr %q does not say %q", c.args, errb.String(), c.want)
		}
	}
}

func TestBadEnvValueExitsTwo(t *testing.T) {
	env := func(k string) (string, bool) {
		if k == "FLANNELD_SUBNET_LEASE_RENEW_MARGIN" {
			return "soon", true
		}
		return "", false
	}
	var out, errb bytes.Buffer
	if code := Main(context.Background(), nil, &out, &errb, env); code != 2 {
		t.Fatalf("exit %d, want 2", code)
	}
	if !strings.Contains(errb.String(), `FLANNELD_SUBNET_LEASE_RENEW_MARGIN="soon"`) {
		t.Fatalf("stderr %q does not name the variable and value", errb.String())
	}
}

func TestVersion(t *testing.T) {
	var out, errb bytes.Buffer
	if code := Main(context.Background(), []string{"--version"}, &out, &errb, noEnv); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if strings.TrimSpace(out.String()) != Version {
		t.Fatalf("printed %q", out.String())
	}
}

// Flags win over FLANNELD_* variables, which win over defaults; empty
// variables are ignored; repeatable flags take comma lists from the env.
func TestEnvironmentFillsFlagsNotGiven(t *testing.T) {
	env := map[string]string{
		"FLANNELD_ETCD_ENDPOINTS":            "http://10.64.3.7:2379",
		"FLANNELD_ETCD_PREFIX":               "/kube-centos/network",
		"FLANNELD_IFACE":                     "eth0,eth1",
		"FLANNELD_IP_MASQ":                   "true",
		"FLANNELD_SUBNET_FILE":               "",
		"FLANNELD_SUBNET_LEASE_RENEW_MARGIN": "30",
	}
	var o Options
	fs := o.NewFlagSet(&bytes.Buffer{})
	if err := fs.Parse([]string{"--etcd-prefix=/from/flag", "-iptables-resync", "7"}); err != nil {
		t.Fatal(err)
	}
	if err := flagenv.Apply(fs, EnvPrefix, func(k string) (string, bool) { v, ok := env[k]; return v, ok }); err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprintf("%s %s %v %v %s %d %d", o.Etcd.Endpoints, o.Etcd.Prefix, []string(o.Ifaces), o.IPMasq, o.SubnetFile, o.RenewMarginMinute, o.IPTablesResyncSeconds)
	want := "http://10.64.3.7:2379 /from/flag [eth0 eth1] true /run/flannel/subnet.env 30 7"
	if got != want {
		t.Fatalf("options\n got %s\nwant %s", got, want)
	}
}

// syncBuffer is a log sink shared by the daemon's goroutines and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// daemonRun is one in-process weftd.
type daemonRun struct {
	cancel context.CancelFunc
	done   chan int
	log    *syncBuffer
}

func startDaemon(args ...string) *daemonRun {
	ctx, cancel := context.WithCancel(context.Background())
	d := &daemonRun{cancel: cancel, done: make(chan int, 1), log: &syncBuffer{}}
	go func() { d.done <- Main(ctx, args, d.log, d.log, noEnv) }()
	return d
}

// stop is SIGTERM: the daemon must exit 0 within 1 s whatever it is doing.
func (d *daemonRun) stop(t *testing.T) {
	t.Helper()
	start := time.Now()
	d.cancel()
	select {
	case code := <-d.done:
		if code != 0 {
			t.Errorf("exit status %d after stop, want 0; log:\n%s", code, d.log)
		}
		t.Logf("stopped in %v", time.Since(start).Round(time.Millisecond))
	case <-time.After(time.Second):
		t.Fatalf("daemon still running 1s after stop; log:\n%s", d.log)
	}
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < d {
		if cond() {
			return time.Since(start)
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("timed out after %v waiting for %s", d, what)
	return 0
}

// hostUnderlay gives the current namespace the ops note's eth0 (internal,
// 10.64.3.7/26) and eth2 (public, default route) on veth pairs.
func hostUnderlay(t *testing.T) {
	t.Helper()
	for _, x := range []struct{ name, peer, addr string }{
		{"eth0", "eth0p", "10.64.3.7/26"},
		{"eth2", "eth2p", "120.92.8.114/28"},
	} {
		la := netlink.NewLinkAttrs()
		la.Name = x.name
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: x.peer}); err != nil {
			t.Fatalf("add veth %s: %v", x.name, err)
		}
		for _, n := range []string{x.name, x.peer} {
			l, _ := netlink.LinkByName(n)
			netlink.LinkSetUp(l)
		}
		l, _ := netlink.LinkByName(x.name)
		a, _ := netlink.ParseAddr(x.addr)
		if err := netlink.AddrAdd(l, a); err != nil {
			t.Fatalf("address %s on %s: %v", x.addr, x.name, err)
		}
	}
	l, _ := netlink.LinkByName("eth2")
	gw := netip.MustParseAddr("120.92.8.126").AsSlice()
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: gw}); err != nil {
		t.Fatalf("default route: %v", err)
	}
}

// The control plane alone (backend alloc): config waited for, bad configs
// reported once with the key and rule, lease taken on eth0's address,
// subnet.env written, SIGTERM honoured within 1 s at each stage.
func TestDaemonAllocLifecycle(t *testing.T) {
	if netnstest.InNewNetns(t) {
		return
	}
	hostUnderlay(t)
	srv := etcdtest.New(t)
	cli := etcdtest.NewClient(t, srv)
	ctx := context.Background()
	subnetFile := filepath.Join(t.TempDir(), "run", "subnet.env")
	args := []string{"-etcd-endpoints", srv.Endpoint, "-etcd-prefix", "/kube-centos/network",
		"-iface=eth0", "-subnet-file", subnetFile, "-etcd-password", "hunter2", "-etcd-username", ""}

	// SIGTERM while waiting for the config.
	d := startDaemon(args...)
	waitFor(t, 5*time.Second, "the daemon to say which key it waits for", func() bool {
		return strings.Contains(d.log.String(), "/kube-centos/network/config")
	})
	d.stop(t)

	d = startDaemon(args...)
	waitFor(t, 5*time.Second, "waiting message", func() bool {
		return strings.Contains(d.log.String(), "/kube-centos/network/config")
	})
	if _, err := cli.Put(ctx, "/kube-centos/network/config", `{"Network":"172.30.0.0/16","SubnetLen":33,"Backend":{"Type":"alloc"}}`); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the invalid config to be reported", func() bool {
		return strings.Contains(d.log.String(), "SubnetLen 33")
	})
	time.Sleep(300 * time.Millisecond)
	if n := strings.Count(d.log.String(), "SubnetLen 33"); n != 1 {
		t.Errorf("invalid config reported %d times, want once:\n%s", n, d.log)
	}
	if _, err := os.Stat(subnetFile); err == nil {
		t.Fatal("subnet file written for an invalid config")
	}
	written := time.Now()
	if _, err := cli.Put(ctx, "/kube-centos/network/config", `{"Network":"172.30.0.0/16","SubnetLen":24,"Backend":{"Type":"alloc"}}`); err != nil {
		t.Fatal(err)
	}
	var env subnetenv.Env
	waitFor(t, 5*time.Second, "subnet.env", func() bool {
		var err error
		env, err = subnetenv.Read(subnetFile)
		return err == nil
	})
	t.Logf("valid config written → subnet.env in %v", time.Since(written).Round(time.Millisecond))
	if env.Network.String() != "172.30.0.0/16" || env.Subnet.Bits() != 24 || env.MTU == 0 {
		t.Fatalf("subnet.env %+v", env)
	}
	lease := "/kube-centos/network/subnets/" + strings.Replace(env.Subnet.Masked().String(), "/", "-", 1)
	resp, err := cli.Get(ctx, lease)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("lease %s not in etcd: %v", lease, err)
	}
	if v := string(resp.Kvs[0].Value); !strings.Contains(v, `"PublicIP":"10.64.3.7"`) || !strings.Contains(v, `"BackendType":"alloc"`) {
		t.Fatalf("lease value %s: want PublicIP 10.64.3.7 (eth0) and BackendType alloc", v)
	}
	if resp.Kvs[0].Lease == 0 {
		t.Fatal("lease key not attached to an etcd lease")
	}
	d.stop(t)
	if strings.Contains(d.log.String(), "hunter2") {
		t.Fatal("the etcd password appears in the log")
	}

	// Restart: the same subnet, and the lease key is still there (SIGTERM
	// leaves it in place).
	d = startDaemon(args...)
	before := env.Subnet
	waitFor(t, 5*time.Second, "restarted daemon to hold its lease", func() bool {
		return strings.Contains(d.log.String(), "subnet file written")
	})
	env, err = subnetenv.Read(subnetFile)
	if err != nil || env.Subnet != before {
		t.Fatalf("after restart subnet %v (err %v), want %v", env.Subnet, err, before)
	}
	d.stop(t)
}
