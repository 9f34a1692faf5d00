package doctor

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/testutil/etcdtest"
	"github.com/weft-net/weft/internal/testutil/netnstest"
)

const (
	prefix   = "/kube-centos/network"
	ownMAC   = "86:4b:9c:65:f2:12"
	peer1MAC = "d6:51:2e:80:5c:69"
	peer2MAC = "d6:51:2e:80:5c:70"
	goodEnv  = "FLANNEL_NETWORK=172.30.0.0/16\nFLANNEL_SUBNET=172.30.19.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
)

// host is the ops note's machine, healthy, in a namespace: eth0 10.64.3.7/26
// (private), eth2 120.92.8.114/28 (public, default route), flannel.1 on eth0
// with 172.30.19.0/32, docker0 172.30.19.1/24, two peers programmed, and the
// leases in a real etcd.
type host struct {
	t      *testing.T
	ns     *netnstest.NS
	etcd   *etcdtest.Server
	cli    *clientv3.Client
	subnet string // subnet.env path
	now    time.Time
}

func leaseValue(pub, mac string) string {
	return fmt.Sprintf(`{"PublicIP":%q,"PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":%q}}`, pub, mac)
}

func newHost(t *testing.T) *host {
	t.Helper()
	ns := netnstest.New(t, "doc")
	far := netnstest.New(t, "docf")
	if err := netnstest.VethPair(ns, "eth0", far, "p0"); err != nil {
		t.Fatal(err)
	}
	if err := netnstest.VethPair(ns, "eth2", far, "p2"); err != nil {
		t.Fatal(err)
	}
	h := &host{t: t, ns: ns, subnet: filepath.Join(t.TempDir(), "subnet.env")}
	h.run(
		"ip addr add 10.64.3.7/26 dev eth0",
		"ip addr add 120.92.8.114/28 dev eth2",
		"ip route add default via 120.92.8.126 dev eth2",
		"ip link add flannel.1 address "+ownMAC+" mtu 1450 type vxlan id 1 local 10.64.3.7 dev eth0 dstport 8472 nolearning",
		"ip addr add 172.30.19.0/32 dev flannel.1",
		"ip link set flannel.1 up",
		"ip link add docker0 mtu 1450 type bridge",
		"ip addr add 172.30.19.1/24 dev docker0",
		"ip link set docker0 up",
		"sysctl -qw net.ipv4.ip_forward=1",
	)
	h.run(peerCmds("add", "172.30.83.0", peer1MAC, "10.64.3.8")...)
	h.run(peerCmds("add", "172.30.60.0", peer2MAC, "10.64.3.9")...)
	h.writeEnv(goodEnv)

	h.etcd = etcdtest.New(t)
	h.cli = etcdtest.NewClient(t, h.etcd)
	ctx := context.Background()
	put := func(k, v string, opts ...clientv3.OpOption) {
		if _, err := h.cli.Put(ctx, prefix+k, v, opts...); err != nil {
			t.Fatal(err)
		}
	}
	put("/config", `{"Network":"172.30.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}`)
	gr, err := h.cli.Grant(ctx, 24*3600)
	if err != nil {
		t.Fatal(err)
	}
	put("/subnets/172.30.19.0-24", leaseValue("10.64.3.7", ownMAC), clientv3.WithLease(gr.ID))
	put("/subnets/172.30.83.0-24", leaseValue("10.64.3.8", peer1MAC), clientv3.WithLease(gr.ID))
	put("/subnets/172.30.60.0-24", leaseValue("10.64.3.9", peer2MAC)) // a reservation
	return h
}

// peerCmds adds or deletes the three entries the vxlan backend programs for
// one peer.
func peerCmds(op, gw, mac, pub string) []string {
	route := fmt.Sprintf("ip route %s %s/24 via %s dev flannel.1 onlink proto 87", op, gw, gw)
	neigh := fmt.Sprintf("ip neigh %s %s lladdr %s dev flannel.1 nud permanent", op, gw, mac)
	fdb := fmt.Sprintf("bridge fdb %s %s dev flannel.1 dst %s self permanent", op, mac, pub)
	if op == "del" {
		return []string{route, neigh, fdb}
	}
	return []string{fdb, neigh, route}
}

func (h *host) run(cmds ...string) {
	h.t.Helper()
	for _, c := range cmds {
		h.ns.MustRun(h.t, strings.Fields(c)...)
	}
}

func (h *host) writeEnv(s string) {
	h.t.Helper()
	if err := os.WriteFile(h.subnet, []byte(s), 0o644); err != nil {
		h.t.Fatal(err)
	}
}

func (h *host) check() Report {
	h.t.Helper()
	fd := h.ns.Fd()
	st := Observe(context.Background(), Inputs{
		Etcd: h.cli, Prefix: prefix, SubnetFile: h.subnet, Handle: h.ns.Handle, NS: &fd,
		Sysctl: func(name string) (v string, err error) {
			// /proc/sys/net answers for the namespace of the thread that opens it.
			derr := h.ns.Do(func() error { v, err = ProcSysctl(name); return nil })
			if derr != nil {
				return "", derr
			}
			return v, err
		},
		Now: h.now,
	})
	return Check(st)
}

func dump(r Report) string {
	var b strings.Builder
	r.WriteText(&b)
	return b.String()
}

func (h *host) wantHealthy() {
	h.t.Helper()
	r := h.check()
	if !r.Healthy {
		h.t.Fatalf("want healthy, got:\n%s", dump(r))
	}
	for _, v := range r.Checks {
		if v.Status != Pass {
			h.t.Fatalf("want every check PASS, got:\n%s", dump(r))
		}
	}
}

func (h *host) want(check string, st Status, substr string) {
	h.t.Helper()
	r := h.check()
	v, ok := r.Find(check)
	if !ok {
		h.t.Fatalf("no verdict %q in:\n%s", check, dump(r))
	}
	if v.Status != st || !strings.Contains(v.What, substr) {
		h.t.Fatalf("want %s %s containing %q, got:\n%s", st, check, substr, dump(r))
	}
	if st == Fail && r.Healthy {
		h.t.Fatalf("a failed check must make the report unhealthy:\n%s", dump(r))
	}
	if st != Pass && v.Fix == "" {
		h.t.Fatalf("%s: no fix given", v)
	}
	h.t.Logf("%s", v)
}

// TestBrokenStates builds each broken state of the ops note in the kernel (or
// etcd, or subnet.env), checks the verdict, repairs it and checks the host is
// healthy again.
func TestBrokenStates(t *testing.T) {
	h := newHost(t)
	h.wantHealthy()

	cases := []struct {
		name     string
		brk, fix func()
		check    string
		status   Status
		substr   string
	}{
		{
			name: "pre-0.7.0 /16 on flannel.1",
			// Add before delete: removing a device's last address flushes its routes.
			brk:   func() { h.run("ip addr add 172.30.19.0/16 dev flannel.1", "ip addr del 172.30.19.0/32 dev flannel.1") },
			fix:   func() { h.run("ip addr add 172.30.19.0/32 dev flannel.1", "ip addr del 172.30.19.0/16 dev flannel.1") },
			check: CheckDevAddr, status: Fail, substr: "pre-0.7.0 /16",
		},
		{
			name:  "device MTU differs from FLANNEL_MTU",
			brk:   func() { h.run("ip link set flannel.1 mtu 1400") },
			fix:   func() { h.run("ip link set flannel.1 mtu 1450") },
			check: CheckDevMTU, status: Fail, substr: "mtu 1400, but FLANNEL_MTU=1450",
		},
		{
			name:  "docker0 on 192.168.0.1/20 (Docker started first)",
			brk:   func() { h.run("ip addr flush dev docker0", "ip addr add 192.168.0.1/20 dev docker0") },
			fix:   func() { h.run("ip addr flush dev docker0", "ip addr add 172.30.19.1/24 dev docker0") },
			check: "bridge-docker0", status: Fail, substr: "192.168.0.1/20, outside the lease 172.30.19.0/24",
		},
		{
			name:  "docker0 MTU above FLANNEL_MTU",
			brk:   func() { h.run("ip link set docker0 mtu 1500") },
			fix:   func() { h.run("ip link set docker0 mtu 1450") },
			check: "bridge-docker0", status: Fail, substr: "mtu 1500 > FLANNEL_MTU=1450",
		},
		{
			name:  "ip_forward off",
			brk:   func() { h.run("sysctl -qw net.ipv4.ip_forward=0") },
			fix:   func() { h.run("sysctl -qw net.ipv4.ip_forward=1") },
			check: CheckIPForward, status: Fail, substr: "ip_forward = 0",
		},
		{
			name:  "stale route for a lease that is gone",
			brk:   func() { h.run("ip route add 172.30.99.0/24 via 172.30.99.0 dev flannel.1 onlink proto 87") },
			fix:   func() { h.run("ip route del 172.30.99.0/24") },
			check: CheckRoutes, status: Fail, substr: "1 stale routes (no lease behind them): 172.30.99.0/24",
		},
		{
			name:  "missing route",
			brk:   func() { h.run("ip route del 172.30.83.0/24") },
			fix:   func() { h.run("ip route add 172.30.83.0/24 via 172.30.83.0 dev flannel.1 onlink proto 87") },
			check: CheckRoutes, status: Fail, substr: "1 of 2 routes missing: 172.30.83.0/24 via 172.30.83.0 onlink",
		},
		{
			name:  "missing FDB entry",
			brk:   func() { h.run("bridge fdb del " + peer1MAC + " dev flannel.1 dst 10.64.3.8 self") },
			fix:   func() { h.run("bridge fdb add " + peer1MAC + " dev flannel.1 dst 10.64.3.8 self permanent") },
			check: CheckFDB, status: Fail, substr: "FDB entries missing: " + peer1MAC + " dst 10.64.3.8",
		},
		{
			name:  "missing neighbour",
			brk:   func() { h.run("ip neigh del 172.30.60.0 dev flannel.1") },
			fix:   func() { h.run("ip neigh add 172.30.60.0 lladdr " + peer2MAC + " dev flannel.1 nud permanent") },
			check: CheckNeighbours, status: Fail, substr: "neighbours missing: 172.30.60.0 lladdr " + peer2MAC,
		},
		{
			name: "lease deleted in etcd (the note's etcdctl rmdir) leaves stale entries",
			brk: func() {
				if _, err := h.cli.Delete(context.Background(), prefix+"/subnets/172.30.60.0-24"); err != nil {
					t.Fatal(err)
				}
			},
			fix: func() {
				if _, err := h.cli.Put(context.Background(), prefix+"/subnets/172.30.60.0-24", leaseValue("10.64.3.9", peer2MAC)); err != nil {
					t.Fatal(err)
				}
			},
			check: CheckFDB, status: Fail, substr: "stale FDB entries (no lease behind them): " + peer2MAC + " dst 10.64.3.9",
		},
		{
			name:  "lease about to expire",
			brk:   func() { h.now = time.Now().Add(23*time.Hour + 58*time.Minute) },
			fix:   func() { h.now = time.Time{} },
			check: CheckLease, status: Fail, substr: "172.30.19.0/24 expires in",
		},
		{
			name:  "lease renewal overdue",
			brk:   func() { h.now = time.Now().Add(23*time.Hour + 30*time.Minute) },
			fix:   func() { h.now = time.Time{} },
			check: CheckLease, status: Warn, substr: "renewal overdue",
		},
		{
			name:  "subnet.env names another host's lease",
			brk:   func() { h.writeEnv(strings.Replace(goodEnv, "172.30.19.1/24", "172.30.83.1/24", 1)) },
			fix:   func() { h.writeEnv(goodEnv) },
			check: CheckSubnetEnv, status: Fail, substr: "belongs to PublicIP 10.64.3.8",
		},
		{
			name:  "subnet.env lease gone from etcd",
			brk:   func() { h.writeEnv(strings.Replace(goodEnv, "172.30.19.1/24", "172.30.44.1/24", 1)) },
			fix:   func() { h.writeEnv(goodEnv) },
			check: CheckSubnetEnv, status: Fail, substr: "etcd has no lease 172.30.44.0/24",
		},
		{
			name:  "subnet.env missing",
			brk:   func() { os.Remove(h.subnet) },
			fix:   func() { h.writeEnv(goodEnv) },
			check: CheckSubnetEnv, status: Fail, substr: "subnet.env",
		},
		{
			name:  "vxlan device deleted",
			brk:   func() { h.run("ip link del flannel.1") },
			fix:   func() { h.rebuildDevice() },
			check: CheckDevAddr, status: Fail, substr: "flannel.1 does not exist",
		},
		{
			name:  "etcd down",
			brk:   func() { h.etcd.Stop() },
			fix:   func() { h.restartEtcd() },
			check: CheckEtcd, status: Fail, substr: "unreachable",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h.t = t
			defer func() { h.t = t }()
			c.brk()
			h.want(c.check, c.status, c.substr)
			c.fix()
			h.wantHealthy()
		})
	}
}

func (h *host) rebuildDevice() {
	h.run(
		"ip link add flannel.1 address "+ownMAC+" mtu 1450 type vxlan id 1 local 10.64.3.7 dev eth0 dstport 8472 nolearning",
		"ip addr add 172.30.19.0/32 dev flannel.1",
		"ip link set flannel.1 up",
	)
	h.run(peerCmds("add", "172.30.83.0", peer1MAC, "10.64.3.8")...)
	h.run(peerCmds("add", "172.30.60.0", peer2MAC, "10.64.3.9")...)
}

// restartEtcd restarts the server and waits until the client reaches it again.
func (h *host) restartEtcd() {
	h.t.Helper()
	if err := h.etcd.Restart(); err != nil {
		h.t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := h.cli.Get(ctx, prefix+"/config")
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("etcd not back after restart: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
