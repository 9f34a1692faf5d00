package e2e

// Real dockerd on lab hosts, configured only as the ops note's Docker unit
// with weft's drop-in is: `dockerd $DOCKER_NETWORK_OPTIONS` from the host's
// /run/flannel/docker (internal/lab/docker.go).

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/internal/lab"
	"github.com/weft-net/weft/internal/netconf"
)

func needDocker(t *testing.T) {
	t.Helper()
	if err := lab.DockerAvailable(); err != nil {
		t.Skipf("skipped: %v", err)
	}
}

func dockerLab(t *testing.T, weftdArgs ...string) *lab.Lab {
	t.Helper()
	needDocker(t)
	return newLabWith(t, lab.Config{Hosts: 2, Backend: netconf.BackendVXLAN, NetworkConfig: networkConfig(netconf.BackendVXLAN),
		Containers: lab.ContainersDocker, WeftdArgs: weftdArgs})
}

// docker0Addrs lists docker0's IPv4 addresses in host i.
func docker0Addrs(t *testing.T, l *lab.Lab, i int) []netip.Prefix {
	t.Helper()
	nl := l.Hosts[i].NS.Handle
	br, err := nl.LinkByName("docker0")
	if err != nil {
		t.Fatalf("%s: docker0: %v", l.Hosts[i].Name, err)
	}
	as, err := nl.AddrList(br, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	var out []netip.Prefix
	for _, a := range as {
		ip, _ := netip.AddrFromSlice(a.IP.To4())
		ones, _ := a.Mask.Size()
		out = append(out, netip.PrefixFrom(ip, ones))
	}
	return out
}

// iptablesLines is iptables-save of host i without comments and counters:
// the rules and chains themselves.
func iptablesLines(t *testing.T, h *lab.Host) []string {
	t.Helper()
	out := h.NS.MustRun(t, "iptables-save")
	var lines []string
	for _, line := range strings.Split(out, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(line, ":") { // ":CHAIN POLICY [pkts:bytes]"
			if f := strings.Fields(line); len(f) >= 2 {
				line = f[0] + " " + f[1]
			}
		}
		lines = append(lines, line)
	}
	return lines
}

func linesWith(lines []string, subs ...string) []string {
	var out []string
	for _, l := range lines {
		for _, s := range subs {
			if strings.Contains(l, s) {
				out = append(out, l)
				break
			}
		}
	}
	return out
}

// Two hosts with real dockerd and weftd -ip-masq: the Docker containers
// ping across hosts; dockerd took the lease's --bip and, since weft
// masquerades, no MASQUERADE of its own; weft's resync of its rules leaves
// every Docker chain and rule as it was, and Docker's FORWARD policy DROP
// does not stop the overlay; a weftd restart under a continuous ping loses
// nothing beyond one resync.
func TestDockerContainers(t *testing.T) {
	l := dockerLab(t, "-ip-masq", "-iptables-resync=1")
	ctx := context.Background()
	both := []pair{{0, 1}, {1, 0}}
	if err := pings(l, both, lab.PingOptions{Count: 3, Interval: 20 * time.Millisecond, Timeout: time.Second}); err != nil {
		t.Fatalf("Docker containers across hosts: %v", err)
	}
	for i, h := range l.Hosts {
		env, err := lab.ReadSubnetEnv(h.SubnetFile)
		if err != nil {
			t.Fatal(err)
		}
		if got := docker0Addrs(t, l, i); !slices.Equal(got, []netip.Prefix{env.Subnet}) {
			t.Errorf("%s: docker0 has %v, want FLANNEL_SUBNET %s (--bip)", h.Name, got, env.Subnet)
		}
		if !h.Subnet.Contains(h.ContainerIP) {
			t.Errorf("%s: container %s outside the lease %s", h.Name, h.ContainerIP, h.Subnet)
		}
		out, err := l.Docker(ctx, i, "inspect", "-f", "{{.State.Running}}", "c1")
		if err != nil || strings.TrimSpace(out) != "true" {
			t.Errorf("%s: docker inspect c1: %q, %v", h.Name, out, err)
		}
	}

	// dockerd sets FORWARD's policy to DROP where it turns ip_forward on
	// itself (a host booted with it off); the lab's hosts forward already,
	// so set it as such a host has it: the overlay must pass by weft's
	// FLANNEL-FWD rules.
	for _, h := range l.Hosts {
		h.NS.MustRun(t, "iptables", "-P", "FORWARD", "DROP")
	}
	if err := pings(l, both, lab.PingOptions{Count: 3, Interval: 20 * time.Millisecond, Timeout: time.Second}); err != nil {
		t.Fatalf("Docker containers across hosts with FORWARD policy DROP: %v", err)
	}

	// Rules: Docker's and weft's side by side in host 0.
	h := l.Hosts[0]
	before := iptablesLines(t, h)
	dockerBefore := linesWith(before, "DOCKER", "docker0")
	if len(dockerBefore) == 0 || !slices.Contains(before, ":FORWARD DROP") {
		t.Fatalf("%s: no Docker rules or FORWARD policy not DROP; iptables-save:\n%s", h.Name, strings.Join(before, "\n"))
	}
	if masq := linesWith(dockerBefore, "MASQUERADE"); len(masq) > 0 {
		t.Errorf("%s: dockerd masquerades although weftd -ip-masq does (docker-opts must give --ip-masq=false): %q", h.Name, masq)
	}
	weftFwd := linesWith(before, "-A FLANNEL-FWD ")
	if len(weftFwd) == 0 || len(linesWith(before, "-j FLANNEL-FWD")) == 0 {
		t.Fatalf("%s: no weft FLANNEL-FWD rules or no jump to them; iptables-save:\n%s", h.Name, strings.Join(before, "\n"))
	}
	// Force a resync that must repair: flush weft's chain, wait until its
	// rules are back.
	h.NS.MustRun(t, "iptables", "-F", "FLANNEL-FWD")
	waitFor(t, "weft restores its FLANNEL-FWD rules next to Docker's", time.Now(), 3*time.Second, 10*time.Second, func() error {
		if got := linesWith(iptablesLines(t, h), "-A FLANNEL-FWD "); !slices.Equal(got, weftFwd) {
			return fmt.Errorf("FLANNEL-FWD holds %q, want %q", got, weftFwd)
		}
		return nil
	})
	after := iptablesLines(t, h)
	if dockerAfter := linesWith(after, "DOCKER", "docker0"); !slices.Equal(dockerBefore, dockerAfter) {
		t.Errorf("%s: Docker's rules changed across a weft resync:\nbefore %q\nafter  %q", h.Name, dockerBefore, dockerAfter)
	}
	if !slices.Contains(after, ":FORWARD DROP") {
		t.Errorf("%s: Docker's FORWARD policy DROP changed across a weft resync", h.Name)
	}
	if err := pings(l, both, lab.PingOptions{Count: 3, Interval: 20 * time.Millisecond, Timeout: time.Second}); err != nil {
		t.Fatalf("after the resync: %v", err)
	}

	// weftd restarted while the containers run, under a ping every 10 ms
	// both ways.
	const interval = 10 * time.Millisecond
	const count = 400
	res := make([]lab.PingResult, 2)
	done := make(chan struct{})
	go func() {
		defer close(done)
		ch := make(chan struct{}, 2)
		for k, p := range both {
			go func() {
				res[k] = l.Ping(ctx, p.from, p.to, lab.PingOptions{Count: count, Interval: interval, Timeout: time.Second})
				ch <- struct{}{}
			}()
		}
		<-ch
		<-ch
	}()
	time.Sleep(500 * time.Millisecond)
	since := time.Now()
	if err := l.StopWeftd(0); err != nil {
		t.Fatal(err)
	}
	if err := l.StartWeftd(0); err != nil {
		t.Fatal(err)
	}
	if _, err := l.WaitSubnetFile(ctx, 0, since); err != nil {
		t.Fatal(err)
	}
	t.Logf("MEASURED weftd restart on %s: subnet.env rewritten %s after the stop", h.Name, time.Since(since).Round(time.Millisecond))
	<-done
	// One resync is -iptables-resync=1 s: at most that many pings.
	bound := int(time.Second / interval)
	for k, p := range both {
		r := res[k]
		t.Logf("MEASURED pings %s -> %s across a weftd restart: %d sent, %d lost", l.Hosts[p.from].Name, l.Hosts[p.to].Name, r.Sent, r.Lost())
		if r.Sent < count/2 || r.Lost() > bound {
			t.Errorf("%s -> %s across a weftd restart: %d sent, %d lost (bound %d, one resync)", l.Hosts[p.from].Name, l.Hosts[p.to].Name, r.Sent, r.Lost(), bound)
		}
	}
}

// The ops note's pitfall with real dockerd: on a freshly booted host
// dockerd starts before weftd (its EnvironmentFile /run/flannel/docker does
// not exist yet) for the first time, so docker0 takes Docker's own
// 172.17.0.1/16. weftctl
// doctor names it and the fix; following the fix step by step gives
// docker0 the lease's --bip, and the containers ping across hosts.
func TestDocker0Pitfall(t *testing.T) {
	l := dockerLab(t)
	ctx := context.Background()
	h := l.Hosts[0]
	optsFile := filepath.Join(filepath.Dir(h.SubnetFile), "docker")
	weftctl := filepath.Join(binDir, "weftctl")

	// A reboot: weftd and Docker stop, docker0 and /run go.
	if err := l.StopWeftd(0); err != nil {
		t.Fatal(err)
	}
	if err := l.StopDockerd(ctx, 0); err != nil {
		t.Fatal(err)
	}
	delDocker0(t, h)
	// Docker's first start: it remembers the bridge's last --bip otherwise.
	if err := l.ForgetDocker(0); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{optsFile, h.SubnetFile} {
		if err := os.Remove(f); err != nil {
			t.Fatal(err)
		}
	}
	// Docker first.
	if err := l.StartDockerd(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if err := l.RunDockerContainer(ctx, 0); err != nil {
		t.Fatal(err)
	}
	stale := docker0Addrs(t, l, 0)
	if len(stale) != 1 || h.Subnet.Overlaps(stale[0]) {
		t.Fatalf("%s: docker0 has %v with dockerd started first, want one address outside the lease %s", h.Name, stale, h.Subnet)
	}
	t.Logf("%s: dockerd started before weftd: docker0 %s, container %s", h.Name, stale[0], h.ContainerIP)
	// Then weftd, and its unit's ExecStartPost.
	since := time.Now()
	if err := l.StartWeftd(0); err != nil {
		t.Fatal(err)
	}
	env, err := l.WaitSubnetFile(ctx, 0, since)
	if err != nil {
		t.Fatal(err)
	}
	h.NS.MustRun(t, weftctl, "docker-opts", "-f", h.SubnetFile, "-k", "DOCKER_NETWORK_OPTIONS", "-d", optsFile)
	if err := l.Ping(ctx, 1, 0, lab.PingOptions{Timeout: 300 * time.Millisecond}).Err; err == nil {
		t.Errorf("a container on Docker's own %s answers from another host", stale[0])
	}

	doctor := func() (string, int) {
		cmd := exec.Command("ip", "netns", "exec", h.NS.Name, weftctl, "doctor",
			"--etcd-endpoints", "http://127.0.0.1:2379", "--etcd-prefix", l.Config().Prefix, "--subnet-file", h.SubnetFile)
		out, err := cmd.CombinedOutput()
		if err != nil && exitCode(err) < 0 {
			t.Fatalf("weftctl doctor: %v\n%s", err, out)
		}
		return string(out), exitCode(err)
	}
	out, code := doctor()
	t.Logf("%s: weftctl doctor with docker0 on %s: exit %d\n%s", h.Name, stale[0], code, out)
	fails := linesWith(strings.Split(out, "\n"), "FAIL")
	if code != 1 || len(fails) != 1 {
		t.Fatalf("doctor: exit %d, FAIL lines %q: want exit 1 and one FAIL (docker0)", code, fails)
	}
	for _, want := range []string{"bridge-docker0", "docker0 has " + stale[0].String() + ", outside the lease " + h.Subnet.String(),
		"systemctl stop docker.socket docker; ip link del docker0", optsFile + " holds --bip=" + env.Subnet.String(),
		"$DOCKER_NETWORK_OPTIONS", "docker0 gets " + env.Subnet.String()} {
		if !strings.Contains(fails[0], want) {
			t.Errorf("doctor's FAIL line lacks %q:\n%s", want, fails[0])
		}
	}

	// The fix, as the doctor spells it.
	if err := l.StopDockerd(ctx, 0); err != nil { // systemctl stop docker.socket docker
		t.Fatal(err)
	}
	delDocker0(t, h) // ip link del docker0
	opts, err := lab.DockerNetworkOptions(optsFile)
	if err != nil || !slices.Contains(opts, "--bip="+env.Subnet.String()) {
		t.Fatalf("%s: DOCKER_NETWORK_OPTIONS %q (%v): no --bip=%s", optsFile, opts, err, env.Subnet)
	}
	if err := l.StartDockerd(ctx, 0); err != nil { // systemctl start docker
		t.Fatal(err)
	}
	if err := l.RunDockerContainer(ctx, 0); err != nil { // recreate the containers
		t.Fatal(err)
	}
	if got := docker0Addrs(t, l, 0); !slices.Equal(got, []netip.Prefix{env.Subnet}) {
		t.Fatalf("%s: docker0 has %v after the fix, want %s", h.Name, got, env.Subnet)
	}
	out, code = doctor()
	if code != 0 || !strings.Contains(out, "PASS bridge-docker0") {
		t.Errorf("doctor after the fix: exit %d\n%s", code, out)
	}
	if err := pings(l, []pair{{0, 1}, {1, 0}}, lab.PingOptions{Count: 3, Interval: 20 * time.Millisecond, Timeout: time.Second}); err != nil {
		t.Fatalf("after the fix: %v", err)
	}
}

func delDocker0(t *testing.T, h *lab.Host) {
	t.Helper()
	br, err := h.NS.Handle.LinkByName("docker0")
	if err != nil {
		t.Fatalf("%s: docker0: %v", h.Name, err)
	}
	if err := h.NS.Handle.LinkDel(br); err != nil {
		t.Fatalf("%s: ip link del docker0: %v", h.Name, err)
	}
}
