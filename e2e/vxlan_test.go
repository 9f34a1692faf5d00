package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/internal/lab"
)

// The ops note's topology: three hosts, eth0 internal, eth2 public with the
// default route, weftd -iface=eth0.
func TestVXLANOpsNoteTopology(t *testing.T) {
	l := newLab(t, "vxlan", 3)
	ctx := context.Background()
	for _, h := range l.Hosts {
		v, ok := readLease(t, l, h.Subnet)
		if !ok {
			t.Fatalf("%s: no lease at %s", h.Name, lab.LeaseKey(l.Config().Prefix, h.Subnet))
		}
		if v.PublicIP != h.Eth0IP.String() {
			t.Errorf("%s: lease PublicIP %s, want eth0's %s (not eth2's %s)", h.Name, v.PublicIP, h.Eth0IP, h.PublicIP)
		}
		if v.BackendType != "vxlan" || v.BackendData.VNI != 1 {
			t.Errorf("%s: lease backend %q VNI %d, want vxlan VNI 1", h.Name, v.BackendType, v.BackendData.VNI)
		}

		link, err := h.NS.Handle.LinkByName("flannel.1")
		if err != nil {
			t.Fatalf("%s: flannel.1: %v", h.Name, err)
		}
		vx, ok := link.(*netlink.Vxlan)
		if !ok {
			t.Fatalf("%s: flannel.1 is a %s, want vxlan", h.Name, link.Type())
		}
		eth0, _ := h.NS.Handle.LinkByName("eth0")
		if vx.VxlanId != 1 || vx.Port != 8472 || vx.Learning || vx.MTU != 1450 ||
			!vx.SrcAddr.Equal(h.Eth0IP.AsSlice()) || vx.VtepDevIndex != eth0.Attrs().Index {
			t.Errorf("%s: flannel.1 id %d dstport %d learning %v mtu %d local %s dev %d; want id 1 dstport 8472 nolearning mtu 1450 local %s dev eth0 (%d)",
				h.Name, vx.VxlanId, vx.Port, vx.Learning, vx.MTU, vx.SrcAddr, vx.VtepDevIndex, h.Eth0IP, eth0.Attrs().Index)
		}
		if vx.HardwareAddr.String() != v.BackendData.VtepMAC {
			t.Errorf("%s: flannel.1 MAC %s, lease VtepMAC %s", h.Name, vx.HardwareAddr, v.BackendData.VtepMAC)
		}
		addrs, err := h.NS.Handle.AddrList(link, netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		if want := h.Subnet.Addr().String() + "/32"; len(addrs) != 1 || addrs[0].IPNet.String() != want {
			t.Errorf("%s: flannel.1 addresses %v, want only %s", h.Name, addrs, want)
		}

		b, err := os.ReadFile(h.SubnetFile)
		if err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("FLANNEL_NETWORK=172.30.0.0/16\nFLANNEL_SUBNET=%s/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n", h.Subnet.Addr().Next())
		if string(b) != want {
			t.Errorf("%s: subnet.env\n%s\nwant\n%s", h.Name, b, want)
		}

		// The ops note's ExecStartPost output, and docker0 built from it.
		b, err = os.ReadFile(filepath.Join(filepath.Dir(h.SubnetFile), "docker"))
		if err != nil {
			t.Fatal(err)
		}
		bip := h.Subnet.Addr().Next().String() + "/24"
		want = fmt.Sprintf("DOCKER_OPT_BIP=\"--bip=%s\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=true\"\nDOCKER_OPT_MTU=\"--mtu=1450\"\nDOCKER_NETWORK_OPTIONS=\" --bip=%s --ip-masq=true --mtu=1450 \"\n", bip, bip)
		if string(b) != want {
			t.Errorf("%s: docker options\n%s\nwant\n%s", h.Name, b, want)
		}
		for _, x := range []struct {
			nl   *netlink.Handle
			name string
		}{{h.NS.Handle, "docker0"}, {h.NS.Handle, "vethc1"}, {h.ContainerNS.Handle, "eth0"}} {
			if link, err := x.nl.LinkByName(x.name); err != nil {
				t.Errorf("%s: %s: %v", h.Name, x.name, err)
			} else if link.Attrs().MTU != 1450 {
				t.Errorf("%s: %s MTU %d, want FLANNEL_MTU 1450", h.Name, x.name, link.Attrs().MTU)
			}
		}
	}
	if err := allVXLANPeersProgrammed(t, l); err != nil {
		t.Error(err)
	}
	if err := lab.MatrixErr(l.PingMatrix(ctx, lab.PingOptions{})); err != nil {
		t.Error(err)
	}
	// 1422 bytes of payload + 8 ICMP + 20 IP = 1450, the overlay MTU: the
	// largest packet that must cross without fragmentation.
	if err := lab.MatrixErr(l.PingMatrix(ctx, lab.PingOptions{Size: 1422, DF: true})); err != nil {
		t.Errorf("full-MTU ping with DF: %v", err)
	}
	// One byte more must not pass with DF (the MTU is really 1450).
	if r := l.Ping(ctx, 0, 1, lab.PingOptions{Size: 1423, DF: true, Timeout: 300 * time.Millisecond}); r.Err == nil {
		t.Error("a 1451-byte DF packet crossed the overlay: its MTU is not 1450")
	}
}

// The ops note's `etcdctl rmdir …/subnets/…`: weftd takes the same subnet
// again and keeps running.
func TestVXLANOwnLeaseDeleted(t *testing.T) {
	l := newLab(t, "vxlan", 3)
	ctx := context.Background()
	h := l.Hosts[0]
	pid := l.WeftdPID(0)
	before, _ := readLease(t, l, h.Subnet)
	start := time.Now()
	if _, err := l.Etcd.Delete(ctx, lab.LeaseKey(l.Config().Prefix, h.Subnet)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "own lease deleted → same subnet re-acquired and containers ping again", start, time.Second, 10*time.Second, func() error {
		v, ok := readLease(t, l, h.Subnet)
		if !ok || v.PublicIP != h.Eth0IP.String() {
			return fmt.Errorf("lease %s not re-acquired by %s", h.Subnet, h.Name)
		}
		return pings(l, pairsWith(l, 0), lab.PingOptions{Timeout: 100 * time.Millisecond})
	})
	if got := l.WeftdPID(0); got != pid {
		t.Errorf("weftd pid %d after the lease deletion, was %d: it restarted or exited", got, pid)
	}
	after, _ := readLease(t, l, h.Subnet)
	if after.BackendData.VtepMAC != before.BackendData.VtepMAC {
		t.Errorf("VtepMAC changed from %s to %s", before.BackendData.VtepMAC, after.BackendData.VtepMAC)
	}
	env, err := lab.ReadSubnetEnv(h.SubnetFile)
	if err != nil || env.Subnet.Masked() != h.Subnet {
		t.Errorf("subnet.env after re-acquire: %+v, %v; want subnet %s", env, err, h.Subnet)
	}
}

// restartNoLoss pings between host 0 and 1 at 10 ms intervals while host
// 0's weftd is stopped with SIGTERM and started again.
func restartNoLoss(t *testing.T, l *lab.Lab) {
	ctx := context.Background()
	h := l.Hosts[0]
	mac := ""
	if v, ok := readLease(t, l, h.Subnet); ok {
		mac = v.BackendData.VtepMAC
	}
	o := lab.PingOptions{Count: 300, Interval: 10 * time.Millisecond, Timeout: time.Second}
	results := make(chan lab.PingResult, 2)
	go func() { results <- l.Ping(ctx, 1, 0, o) }()
	go func() { results <- l.Ping(ctx, 0, 1, o) }()
	// Let the pings run before the stop, so the restart falls inside them.
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	if err := l.StopWeftd(0); err != nil {
		t.Errorf("SIGTERM: %v (want exit status 0)", err)
	}
	since := time.Now()
	if err := l.StartWeftd(0); err != nil {
		t.Fatal(err)
	}
	env, err := l.WaitSubnetFile(ctx, 0, since)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("MEASURED weftd stop + start → subnet.env rewritten: %s", time.Since(start).Round(time.Millisecond))
	if env.Subnet.Masked() != h.Subnet {
		t.Errorf("subnet after restart %s, want %s", env.Subnet.Masked(), h.Subnet)
	}
	for range 2 {
		r := <-results
		t.Logf("MEASURED ping at 10 ms across the restart: %d sent, %d lost (bound 0)", r.Sent, r.Lost())
		if r.Sent < 100 || r.Lost() != 0 {
			t.Errorf("ping across the restart: %d sent, %d lost: %v", r.Sent, r.Lost(), r.Err)
		}
	}
	if v, ok := readLease(t, l, h.Subnet); !ok || v.BackendData.VtepMAC != mac {
		t.Errorf("lease after restart %+v (present %v), VtepMAC was %q", v, ok, mac)
	}
}

func TestVXLANRestartLosesNoPing(t *testing.T) {
	restartNoLoss(t, newLab(t, "vxlan", 3))
}

// A host stops and its lease is deleted: the others drop its route,
// neighbour and FDB entry.
func TestVXLANHostLeaves(t *testing.T) {
	l := newLab(t, "vxlan", 3)
	ctx := context.Background()
	gone := peerOf(t, l, 2)
	if err := l.StopWeftd(2); err != nil {
		t.Errorf("SIGTERM: %v", err)
	}
	start := time.Now()
	if _, err := l.Etcd.Delete(ctx, lab.LeaseKey(l.Config().Prefix, gone.subnet)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "lease deleted → route, neigh and FDB entry gone on every other host", start, time.Second, 15*time.Second, func() error {
		for _, h := range l.Hosts[:2] {
			ps, err := vxlanPeerState(h, gone.subnet, gone.mac, gone.publicIP)
			if err != nil {
				return err
			}
			if ps != (peerState{}) {
				return fmt.Errorf("%s still has route/neigh/fdb = %v/%v/%v", h.Name, ps.route, ps.neigh, ps.fdb)
			}
		}
		return nil
	})
	if err := pings(l, []pair{{0, 1}, {1, 0}}, lab.PingOptions{}); err != nil {
		t.Errorf("remaining hosts: %v", err)
	}
}

// A fourth host joins: every container reaches it.
func TestVXLANHostJoins(t *testing.T) {
	l := newLab(t, "vxlan", 3)
	joinMeasured(t, l, func() error { return allVXLANPeersProgrammed(t, l) })
}

// joinMeasured adds a host and measures two things: the kernel state on
// every host for the newcomer (and the newcomer's for them), from the lease
// put; and container reachability both ways, from the moment the lab has
// built the newcomer's container (before that there is nothing to ping).
func joinMeasured(t *testing.T, l *lab.Lab, programmed func() error) {
	t.Helper()
	h, err := l.AddHost(context.Background())
	if err != nil {
		t.Fatalf("add host: %v", err)
	}
	built := time.Now()
	// subnet.env is written right after the lease is put: the join's start.
	st, err := os.Stat(h.SubnetFile)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "host joins → every host programmed for it (from its lease put)", st.ModTime(), time.Second, 10*time.Second, programmed)
	waitFor(t, "host joins → every container reaches it and back (from its container's creation)", built, time.Second, 10*time.Second, func() error {
		return pings(l, pairsWith(l, h.Index), lab.PingOptions{Timeout: 100 * time.Millisecond})
	})
}

// Garbage under subnets/ must not break or stall anyone.
func TestVXLANGarbageUnderSubnets(t *testing.T) {
	l := newLab(t, "vxlan", 3)
	ctx := context.Background()
	p := l.Config().Prefix + "/subnets/"
	for k, v := range map[string]string{
		p + "172.30.250.0-24": "this is not JSON",
		p + "not-a-subnet":    `{"PublicIP":"10.64.3.99","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}}`,
		p + "172.30.251.0-24": `{"PublicIP":"10.64.3.98","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"zz:zz:zz"}}`,
		p + "172.30.252.0-24": `{"PublicIP":"10.64.3.97","BackendType":"vxlan","BackendData":"nope"}`,
		p + "172.30.253.7-24": `{"PublicIP":"10.64.3.96","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"}}`,
		p + "10.99.0.0-24":    `{"PublicIP":"10.64.3.95","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:02"}}`,
	} {
		if _, err := l.Etcd.Put(ctx, k, v); err != nil {
			t.Fatal(err)
		}
	}
	for i := range l.Hosts {
		if ok, err := l.WeftdRunning(i); !ok {
			t.Errorf("%s: weftd not running after garbage leases: %v", l.Hosts[i].Name, err)
		}
	}
	if err := lab.MatrixErr(l.PingMatrix(ctx, lab.PingOptions{})); err != nil {
		t.Error(err)
	}
	// Nothing stalled: a host joining now is still seen by everyone.
	joinMeasured(t, l, func() error { return allVXLANPeersProgrammed(t, l) })
	for i := range l.Hosts {
		if ok, err := l.WeftdRunning(i); !ok {
			t.Errorf("%s: weftd not running: %v", l.Hosts[i].Name, err)
		}
	}
}

// Hand-deleted kernel state comes back: route, neighbour and FDB entry
// within the resync period (sooner where a netlink event says so), the
// vxlan device within 1 s with every peer on it.
func TestVXLANDriftRepaired(t *testing.T) {
	l := newLab(t, "vxlan", 3)
	h := l.Hosts[0]
	nl := h.NS.Handle
	p1, p2 := peerOf(t, l, 1), peerOf(t, l, 2)
	dev, err := nl.LinkByName("flannel.1")
	if err != nil {
		t.Fatal(err)
	}
	idx := dev.Attrs().Index

	start := time.Now()
	// By destination only: a route through a nexthop object (nhid) matches
	// no delete that names a gateway or device.
	if err := nl.RouteDel(&netlink.Route{Dst: ipNet(p1.subnet), Table: 254}); err != nil { // main
		t.Fatalf("delete route: %v", err)
	}
	if err := nl.NeighDel(&netlink.Neigh{LinkIndex: idx, Family: netlink.FAMILY_V4, IP: p2.subnet.Addr().AsSlice()}); err != nil {
		t.Fatalf("delete neighbour: %v", err)
	}
	if out, err := h.NS.Run("bridge", "fdb", "del", p1.mac, "dev", "flannel.1", "dst", p1.publicIP.String()); err != nil {
		t.Fatalf("delete fdb entry: %v: %s", err, out)
	}
	// The deletions succeeded (each call above checks); weftd may already
	// have put them back from a netlink event, which is what it should do.
	resync := 11 * time.Second // weft's default resync, 10 s ± 10 %
	waitFor(t, "hand-deleted route restored", start, resync, 30*time.Second, func() error {
		if ps, err := vxlanPeerState(h, p1.subnet, p1.mac, p1.publicIP); err != nil || !ps.route {
			return fmt.Errorf("route to %s missing (%v)", p1.subnet, err)
		}
		return nil
	})
	waitFor(t, "hand-deleted neighbour restored", start, resync, 30*time.Second, func() error {
		if ps, err := vxlanPeerState(h, p2.subnet, p2.mac, p2.publicIP); err != nil || !ps.neigh {
			return fmt.Errorf("neighbour %s missing (%v)", p2.subnet.Addr(), err)
		}
		return nil
	})
	waitFor(t, "hand-deleted FDB entry restored", start, resync, 30*time.Second, func() error {
		if ps, err := vxlanPeerState(h, p1.subnet, p1.mac, p1.publicIP); err != nil || !ps.fdb {
			return fmt.Errorf("fdb %s missing (%v)", p1.mac, err)
		}
		return nil
	})

	before := dev.Attrs().HardwareAddr.String()
	start = time.Now()
	if err := nl.LinkDel(dev); err != nil {
		t.Fatalf("delete flannel.1: %v", err)
	}
	waitFor(t, "deleted flannel.1 recreated with every peer and containers ping", start, time.Second, 15*time.Second, func() error {
		if err := allVXLANPeersProgrammed(t, l); err != nil {
			return err
		}
		return pings(l, pairsWith(l, 0), lab.PingOptions{Timeout: 100 * time.Millisecond})
	})
	if dev, err := nl.LinkByName("flannel.1"); err == nil {
		v, _ := readLease(t, l, h.Subnet)
		if got := dev.Attrs().HardwareAddr.String(); got != v.BackendData.VtepMAC {
			t.Errorf("recreated flannel.1 MAC %s (was %s) differs from the lease's VtepMAC %s", got, before, v.BackendData.VtepMAC)
		}
	}
}

// weftctl lab run, the README's first command, as an operator runs it.
func TestWeftctlLabRun(t *testing.T) {
	name := uniqueName()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	out, err := runCmd(ctx, binDir+"/weftctl", "lab", "run", "--name", name)
	t.Logf("weftctl lab run:\n%s", out)
	if err != nil {
		t.Fatalf("weftctl lab run: %v", err)
	}
	for _, want := range []string{"VTEP-MAC", "all 6 pings passed", name + "-h3"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if _, err := os.Stat(lab.StateDirFor(name)); !os.IsNotExist(err) {
		t.Errorf("state dir left after lab run: %v", err)
	}
	if out, _ := runCmd(ctx, "ip", "netns", "list"); strings.Contains(out, name+"-") {
		t.Errorf("namespaces left after lab run:\n%s", out)
	}
}
