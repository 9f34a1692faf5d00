package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/internal/lab"
)

// The migration's live swap, flanneld → weftd and back (the rollback), on a
// host whose containers ping other hosts' containers every 10 ms and are
// pinged by them: same flags, env and files; same subnet; the existing
// flannel.1 and routes adopted; no other host reprograms anything.
func TestFlanneldSwapVXLAN(t *testing.T)  { liveSwap(t, "vxlan") }
func TestFlanneldSwapHostGW(t *testing.T) { liveSwap(t, "host-gw") }

// swapPings is how long each swap is pinged across: 10 ms apart, from the
// swapped host's container to each other host's and back.
const swapPings = 500

func liveSwap(t *testing.T, backend string) {
	// Host 0 is swapped; its peers are a weftd host and a flanneld host.
	m := newMixedLab(t, backend, "flanneld", "weftd", "flanneld")
	l := m.Lab
	waitFor(t, backend+" swap lab: every container pair pings", time.Now(), 10*time.Second, 30*time.Second, func() error {
		return pings(l, livePairs(0, 1, 2), lab.PingOptions{Timeout: 300 * time.Millisecond})
	})
	for _, to := range []string{"weftd", "flanneld"} {
		swapOnce(t, m, backend, to)
	}
}

// swapOnce stops host 0's daemon and starts `to` in its place while pings
// run, and checks what the swap must leave alone.
func swapOnce(t *testing.T, m *mixedLab, backend, to string) {
	l := m.Lab
	h := l.Hosts[0]
	from := map[string]string{"weftd": "flanneld", "flanneld": "weftd"}[to]
	what := fmt.Sprintf("%s swap %s → %s", backend, from, to)
	env0, err := os.ReadFile(h.SubnetFile)
	if err != nil {
		t.Fatal(err)
	}
	self0 := swapState(t, h, backend)
	peers0 := []string{swapState(t, l.Hosts[1], backend), swapState(t, l.Hosts[2], backend)}
	mons := []*netMonitor{startMonitor(t, l.Hosts[1]), startMonitor(t, l.Hosts[2])}

	o := lab.PingOptions{Count: swapPings, Interval: 10 * time.Millisecond, Timeout: time.Second}
	type run struct {
		from, to int
		r        lab.PingResult
	}
	var wg sync.WaitGroup
	runs := []*run{{0, 1, lab.PingResult{}}, {1, 0, lab.PingResult{}}, {0, 2, lab.PingResult{}}, {2, 0, lab.PingResult{}}}
	for _, r := range runs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.r = l.Ping(context.Background(), r.from, r.to, o)
		}()
	}
	// The swap falls inside the pings, with time on both sides of it.
	time.Sleep(time.Second)
	start := time.Now()
	if err := l.StopWeftd(0); err != nil {
		t.Errorf("%s: SIGTERM %s: %v (want exit status 0)", what, from, err)
	}
	m.setDaemon(t, 0, to)
	since := time.Now()
	if err := l.StartWeftd(0); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	env, err := l.WaitSubnetFile(ctx, 0, since)
	cancel()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	t.Logf("MEASURED %s: SIGTERM to %s's subnet.env written: %s", what, to, time.Since(start).Round(time.Millisecond))
	wg.Wait()
	// Let the new daemon's first reconcile and its peers' watches settle
	// before the kernel is compared.
	time.Sleep(500 * time.Millisecond)

	for _, r := range runs {
		t.Logf("MEASURED %s: ping %s → %s every 10 ms: %d sent, %d lost (bound 0)", what, l.Hosts[r.from].Name, l.Hosts[r.to].Name, r.r.Sent, r.r.Lost())
		if r.r.Sent < swapPings/2 || r.r.Lost() != 0 {
			t.Errorf("%s: ping %s → %s: %d sent, %d lost: %v", what, l.Hosts[r.from].Name, l.Hosts[r.to].Name, r.r.Sent, r.r.Lost(), r.r.Err)
		}
	}
	if env1, _ := os.ReadFile(h.SubnetFile); env.Subnet.Masked() != h.Subnet || string(env1) != string(env0) {
		t.Errorf("%s: subnet.env was\n%s\nis\n%s", what, env0, env1)
	}
	if self1 := swapState(t, h, backend); self1 != self0 {
		// Adopting may re-own routes (weft marks its own): a change, not a
		// flush; the pings above say whether traffic noticed.
		t.Logf("%s: %s's own kernel state changed:\n--- before\n%s--- after\n%s", what, h.Name, self0, self1)
		if backend == "vxlan" && linkLine(self0) != linkLine(swapState(t, h, backend)) {
			t.Errorf("%s: flannel.1 was not adopted: was %q, is %q", what, linkLine(self0), linkLine(self1))
		}
	}
	for i, p := range []*lab.Host{l.Hosts[1], l.Hosts[2]} {
		events := mons[i].stop(t, h)
		if after := swapState(t, p, backend); after != peers0[i] {
			t.Errorf("%s: peer %s reprogrammed:\n--- before\n%s--- after\n%s", what, p.Name, peers0[i], after)
		}
		t.Logf("MEASURED %s: peer %s (%s) netlink route/neigh events about %s: %d", what, p.Name, []string{"weftd", "flanneld"}[i], h.Name, len(events))
		if i == 0 && len(events) > 0 {
			t.Errorf("%s: weftd peer %s reprogrammed %s:\n%s", what, p.Name, h.Name, strings.Join(events, "\n"))
		}
	}
	for _, i := range []int{0, 2} {
		if to == "flanneld" || i == 2 {
			if bad := flanneldTrouble(t, l.Hosts[i]); len(bad) > 0 {
				t.Errorf("%s: %s: flanneld logged:\n%s", what, l.Hosts[i].Name, strings.Join(bad, "\n"))
			}
		}
	}
}

// swapState renders what host h holds for the overlay as text. vxlan: the
// device's identity (index, MAC, vxlan options) and kernelState (routes,
// neighbours, FDB entries); host-gw: the main routing table.
func swapState(t *testing.T, h *lab.Host, backend string) string {
	t.Helper()
	if backend != "vxlan" {
		return h.NS.MustRun(t, "ip", "route", "show", "table", "main")
	}
	link, err := h.NS.Handle.LinkByName("flannel.1")
	if err != nil {
		t.Fatalf("%s: flannel.1: %v", h.Name, err)
	}
	vx, ok := link.(*netlink.Vxlan)
	if !ok {
		t.Fatalf("%s: flannel.1 is a %s, want vxlan", h.Name, link.Type())
	}
	ks, err := kernelState(h)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("flannel.1 index %d mac %s id %d local %s dev %d port %d learning %v mtu %d\n%s\n",
		vx.Index, vx.HardwareAddr, vx.VxlanId, vx.SrcAddr, vx.VtepDevIndex, vx.Port, vx.Learning, vx.MTU, ks)
}

func linkLine(state string) string {
	line, _, _ := strings.Cut(state, "\n")
	return line
}

// netMonitor records a host's route and neighbour notifications: any write
// of one, even with the same values, is a reprogramming.
type netMonitor struct {
	cmd *exec.Cmd
	out *strings.Builder
}

func startMonitor(t *testing.T, h *lab.Host) *netMonitor {
	t.Helper()
	out := &strings.Builder{}
	cmd := exec.Command("ip", "netns", "exec", h.NS.Name, "ip", "-o", "monitor", "route", "neigh")
	cmd.Stdout = out
	if err := cmd.Start(); err != nil {
		t.Fatalf("ip monitor in %s: %v", h.Name, err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	// ip monitor subscribes before reading; give it that moment.
	time.Sleep(100 * time.Millisecond)
	return &netMonitor{cmd: cmd, out: out}
}

// stop ends the monitor (our own process, by PID) and returns the events
// about the swapped host's overlay: routes to its subnet, its neighbour and
// FDB entry (its overlay address, its PublicIP).
func (n *netMonitor) stop(t *testing.T, swapped *lab.Host) []string {
	t.Helper()
	n.cmd.Process.Signal(syscall.SIGTERM)
	n.cmd.Wait()
	var ev []string
	for line := range strings.SplitSeq(n.out.String(), "\n") {
		if strings.Contains(line, "dev eth0 lladdr") {
			continue // the underlay's ARP entry ageing: the kernel's, no daemon's
		}
		if strings.Contains(line, swapped.Subnet.Masked().Addr().String()) || strings.Contains(line, swapped.Eth0IP.String()+" ") {
			ev = append(ev, line)
		}
	}
	return ev
}
