package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/lab"
	"github.com/weft-net/weft/internal/lease"
)

// putConfig writes the lab's network config.
func putConfig(t *testing.T, l *lab.Lab, cfg string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := l.Etcd.Put(ctx, lease.ConfigKey(l.Config().Prefix), cfg); err != nil {
		t.Fatalf("put network config: %v", err)
	}
}

// continuousPing pings from host i's container to host j's for d at 10 ms
// and delivers the result when done.
func continuousPing(l *lab.Lab, from, to int, d time.Duration) <-chan lab.PingResult {
	out := make(chan lab.PingResult, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), d+10*time.Second)
		defer cancel()
		out <- l.Ping(ctx, from, to, lab.PingOptions{Count: int(d / (10 * time.Millisecond)), Interval: 10 * time.Millisecond, Timeout: time.Second})
	}()
	return out
}

// TestLiveNetworkWidening widens the Network in etcd while containers
// ping: no ping is lost, every weftd stays ready, rewrites subnet.env with
// the new FLANNEL_NETWORK, and a host that joins in the widened part (the
// new SubnetMin lies outside the old Network) is accepted by the running
// hosts without a restart and reachable both ways.
func TestLiveNetworkWidening(t *testing.T) {
	l := newLab(t, "vxlan", 2, "-healthz-port="+faultHealthPort)
	pingDone := continuousPing(l, 0, 1, 4*time.Second)
	time.Sleep(500 * time.Millisecond)
	start := time.Now()
	putConfig(t, l, `{"Network":"172.16.0.0/12","SubnetLen":24,"SubnetMin":"172.31.0.0","SubnetMax":"172.31.239.0","Backend":{"Type":"vxlan"}}`)
	waitFor(t, "subnet.env of every host names the widened Network", start, 2*time.Second, 10*time.Second, func() error {
		for _, h := range l.Hosts {
			env, err := lab.ReadSubnetEnv(h.SubnetFile)
			if err != nil {
				return err
			}
			if env.Network != netip.MustParsePrefix("172.16.0.0/12") {
				return fmt.Errorf("%s: FLANNEL_NETWORK=%s", h.Name, env.Network)
			}
		}
		return nil
	})
	if r := <-pingDone; r.Lost() != 0 || r.Sent == 0 {
		t.Errorf("continuous ping across the widening: %d sent, %d lost (%v)", r.Sent, r.Lost(), r.Err)
	} else {
		t.Logf("MEASURED ping across the live widening: %d sent, 0 lost", r.Sent)
	}
	if err := allReadyz(l, 200, "ok"); err != nil {
		t.Errorf("after the widening: %v", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	joined := time.Now()
	h3, err := l.AddHost(ctx)
	if err != nil {
		t.Fatalf("add a host after the widening: %v", err)
	}
	if !netip.MustParsePrefix("172.31.0.0/16").Contains(h3.Subnet.Addr()) {
		t.Fatalf("new host's subnet %s: want one in the widened part 172.31.0.0/16", h3.Subnet)
	}
	waitFor(t, "the running hosts reach the host in the widened part", joined, 10*time.Second, 20*time.Second, func() error {
		return pings(l, []pair{{0, 2}, {2, 0}, {1, 2}, {2, 1}}, lab.PingOptions{Timeout: 200 * time.Millisecond})
	})
	// No host rejected it: the peer is not outside the (new) Network.
	for _, h := range l.Hosts[:2] {
		b, err := os.ReadFile(h.LogFile)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), "subnet_outside_network") {
			t.Errorf("%s logged subnet_outside_network after the widening", h.Name)
		}
	}
}

// TestConfigBackendChangeNeedsRestart changes the backend type in etcd:
// every weftd turns unready with a message saying a restart is needed and
// why, and sets weft_config_restart_required, while the overlay keeps
// working on the old backend; a rolling restart brings every host back,
// ready, on the new backend.
func TestConfigBackendChangeNeedsRestart(t *testing.T) {
	l := newLab(t, "vxlan", 2, "-healthz-port="+faultHealthPort)
	start := time.Now()
	putConfig(t, l, networkConfig("host-gw"))
	waitFor(t, "every host unready with a restart message", start, 2*time.Second, 10*time.Second, func() error {
		return allReadyz(l, 503, "restart needed: the network config at")
	})
	_, body, err := readyz(l.Hosts[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("/readyz: %s", body)
	if !strings.Contains(body, "Backend.Type vxlan -> host-gw") {
		t.Errorf("/readyz %q does not say what changed", body)
	}
	for _, h := range l.Hosts {
		_, m, err := hostHTTP(h, faultHealthPort, "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(m, "weft_config_restart_required 1") {
			t.Errorf("%s /metrics: weft_config_restart_required is not 1", h.Name)
		}
	}
	if err := pings(l, []pair{{0, 1}, {1, 0}}, lab.PingOptions{Count: 3, Interval: 50 * time.Millisecond}); err != nil {
		t.Errorf("the overlay must keep working on the old config: %v", err)
	}

	// Rolling restart, one host at a time.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i := range l.Hosts {
		if err := l.StopWeftd(i); err != nil {
			t.Fatal(err)
		}
		since := time.Now()
		if err := l.StartWeftd(i); err != nil {
			t.Fatal(err)
		}
		if _, err := l.WaitSubnetFile(ctx, i, since); err != nil {
			t.Fatal(err)
		}
	}
	restarted := time.Now()
	waitFor(t, "every host ready after the rolling restart", restarted, 5*time.Second, 20*time.Second, func() error {
		return allReadyz(l, 200, "ok")
	})
	waitFor(t, "every pair pings on host-gw", restarted, 5*time.Second, 20*time.Second, func() error {
		return pings(l, []pair{{0, 1}, {1, 0}}, lab.PingOptions{Timeout: 200 * time.Millisecond})
	})
	for i, h := range l.Hosts {
		v, ok := readLease(t, l, h.Subnet)
		if !ok || v.BackendType != "host-gw" {
			t.Errorf("host %d lease after the restart: %+v (found %v), want BackendType host-gw", i, v, ok)
		}
	}
}

// TestMTUTooLargeRefused: a vxlan MTU that cannot fit the NIC (eth0 1500
// minus 50) stops weftd at start with an error naming both numbers and
// the fix.
func TestMTUTooLargeRefused(t *testing.T) {
	l := newLab(t, "vxlan", 1)
	if err := l.StopWeftd(0); err != nil {
		t.Fatal(err)
	}
	putConfig(t, l, `{"Network":"172.30.0.0/16","SubnetLen":24,"SubnetMax":"172.30.239.0","Backend":{"Type":"vxlan","MTU":1460}}`)
	if err := l.StartWeftd(0); err != nil {
		t.Fatal(err)
	}
	var log string
	waitFor(t, "weftd exits with the MTU error", time.Now(), 5*time.Second, 15*time.Second, func() error {
		if running, _ := l.WeftdRunning(0); running {
			return fmt.Errorf("still running")
		}
		b, err := os.ReadFile(l.Hosts[0].LogFile)
		log = string(b)
		return err
	})
	want := "Backend.MTU 1460 does not fit interface eth0: its MTU 1500 minus the 50 bytes vxlan adds is 1450"
	if !strings.Contains(log, want) || !strings.Contains(log, "set Backend.MTU to at most 1450") {
		t.Errorf("weftd log does not have %q and the fix:\n%s", want, log)
	}
}

// vxlanDstPort is flannel.1's UDP destination port as the kernel has it.
func vxlanDstPort(h *lab.Host) (string, error) {
	out, err := h.NS.Run("ip", "-d", "link", "show", "flannel.1")
	if err != nil {
		return "", err
	}
	f := strings.Fields(out)
	for i := range f[:len(f)-1] {
		if f[i] == "dstport" {
			return f[i+1], nil
		}
	}
	return "", fmt.Errorf("no dstport in %q", out)
}

// TestLiveBackendOptionChange changes the vxlan Port (8472 → 8999) in etcd
// while containers ping: every weftd rebuilds its dataplane live (the
// kernel's flannel.1 gets dstport 8999), stays ready, and the overlay works
// on the new port. Pings lost during the rebuild are counted and logged as
// MEASURED, not judged: a device rebuilt on each host in turn can drop the
// packets in flight between the two rebuilds.
func TestLiveBackendOptionChange(t *testing.T) {
	l := newLab(t, "vxlan", 2, "-healthz-port="+faultHealthPort)
	for _, h := range l.Hosts {
		if p, err := vxlanDstPort(h); err != nil || p != "8472" {
			t.Fatalf("%s flannel.1 dstport %q (%v) before the change, want 8472", h.Name, p, err)
		}
	}
	pingDone := continuousPing(l, 0, 1, 4*time.Second)
	time.Sleep(500 * time.Millisecond)
	start := time.Now()
	putConfig(t, l, `{"Network":"172.30.0.0/16","SubnetLen":24,"SubnetMax":"172.30.239.0","Backend":{"Type":"vxlan","Port":8999}}`)
	waitFor(t, "flannel.1 of every host has dstport 8999 in the kernel", start, 3*time.Second, 15*time.Second, func() error {
		for _, h := range l.Hosts {
			if p, err := vxlanDstPort(h); err != nil || p != "8999" {
				return fmt.Errorf("%s: dstport %q (%v)", h.Name, p, err)
			}
		}
		return nil
	})
	waitFor(t, "pings both ways on the new port", start, 3*time.Second, 15*time.Second, func() error {
		return pings(l, []pair{{0, 1}, {1, 0}}, lab.PingOptions{Timeout: 100 * time.Millisecond})
	})
	r := <-pingDone
	if r.Sent == 0 {
		t.Fatalf("continuous ping sent nothing: %v", r.Err)
	}
	t.Logf("MEASURED ping across the live vxlan Port change 8472 -> 8999: %d sent at 10 ms, %d lost", r.Sent, r.Lost())
	if err := allReadyz(l, 200, "ok"); err != nil {
		t.Errorf("after the live backend change: %v", err)
	}
	for _, h := range l.Hosts {
		b, err := os.ReadFile(h.LogFile)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), "network config change applied without a restart") {
			t.Errorf("%s did not log the live change", h.Name)
		}
	}
}

// TestUnderlayMTUChange lowers a host's NIC MTU (ip link set eth0 mtu 1400):
// weftd rebuilds the dataplane on it, flannel.1's MTU becomes 1400 minus the
// 50 bytes vxlan adds, and subnet.env's FLANNEL_MTU follows; full-size
// packets (DF) of the new MTU cross the overlay.
func TestUnderlayMTUChange(t *testing.T) {
	l := newLab(t, "vxlan", 2, "-healthz-port="+faultHealthPort)
	h := l.Hosts[1]
	if _, err := h.NS.Run("ip", "link", "set", "eth0", "mtu", "1400"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	waitFor(t, "flannel.1 MTU and FLANNEL_MTU follow the NIC's 1400", start, 7*time.Second, 20*time.Second, func() error {
		link, err := h.NS.Handle.LinkByName("flannel.1")
		if err != nil {
			return err
		}
		if m := link.Attrs().MTU; m != 1350 {
			return fmt.Errorf("flannel.1 MTU %d", m)
		}
		env, err := lab.ReadSubnetEnv(h.SubnetFile)
		if err != nil {
			return err
		}
		if env.MTU != 1350 {
			return fmt.Errorf("FLANNEL_MTU=%d", env.MTU)
		}
		return nil
	})
	// 1350 - 28 bytes of IPv4 and ICMP headers: the largest DF echo.
	waitFor(t, "full-size pings both ways", start, 7*time.Second, 20*time.Second, func() error {
		return pings(l, []pair{{0, 1}, {1, 0}}, lab.PingOptions{Timeout: 200 * time.Millisecond, Size: 1322, DF: true})
	})
	waitFor(t, "ready again", start, 7*time.Second, 20*time.Second, func() error { return allReadyz(l, 200, "ok") })
}
