package lab

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/testutil/netnstest"
)

var labSeq atomic.Int64

// uniqueName gives each test its own lab, so parallel runs never collide.
func uniqueName() string {
	return fmt.Sprintf("lt%d-%d", os.Getpid()%100000, labSeq.Add(1))
}

func fakeConfig(t *testing.T, hosts int) Config {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return Config{
		Name:      uniqueName(),
		Hosts:     hosts,
		Backend:   "host-gw",
		WeftdPath: exe,
		WeftdEnv:  []string{fakeWeftdEnv + "=1"},
		Log:       slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func upLab(t *testing.T, cfg Config) *Lab {
	t.Helper()
	netnstest.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := Up(ctx, cfg)
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func nsExists(name string) bool {
	_, err := os.Stat(filepath.Join("/run/netns", name))
	return err == nil
}

func TestUpBuildsTheOpsNoteTopology(t *testing.T) {
	l := upLab(t, fakeConfig(t, 3))
	ctx := context.Background()

	if !nsExists(l.Name + "-ul") {
		t.Errorf("underlay namespace %s-ul missing", l.Name)
	}
	for i, h := range l.Hosts {
		if want := fmt.Sprintf("%s-h%d", l.Name, i+1); h.Name != want || !nsExists(want) || !nsExists(want+"-c1") {
			t.Errorf("host %d: name %q, want %q with namespaces %s and %s-c1", i, h.Name, want, want, want)
		}
		out := h.NS.MustRun(t, "ip", "-4", "-o", "addr", "show")
		for _, want := range []string{
			fmt.Sprintf("eth0    inet 10.64.3.%d/24", 11+i),
			fmt.Sprintf("eth2    inet 120.92.8.%d/24", 11+i),
			fmt.Sprintf("docker0    inet %s", h.Subnet.Addr().Next()),
		} {
			if !strings.Contains(out, want) {
				t.Errorf("%s: addresses lack %q:\n%s", h.Name, want, out)
			}
		}
		if out := h.NS.MustRun(t, "ip", "route", "show", "default"); !strings.Contains(out, "default via 120.92.8.1 dev eth2") {
			t.Errorf("%s: default route is %q, want via 120.92.8.1 dev eth2", h.Name, out)
		}
		if out := h.NS.MustRun(t, "cat", "/proc/sys/net/ipv4/ip_forward"); strings.TrimSpace(out) != "1" {
			t.Errorf("%s: ip_forward = %q", h.Name, out)
		}
		if want := h.Subnet.Addr().Next().Next(); h.ContainerIP != want {
			t.Errorf("%s: container IP %s, want %s", h.Name, h.ContainerIP, want)
		}
		if out := h.ContainerNS.MustRun(t, "ip", "route", "show", "default"); !strings.Contains(out, "via "+h.Subnet.Addr().Next().String()+" dev eth0") {
			t.Errorf("%s: container default route %q", h.Name, out)
		}
	}
	if err := MatrixErr(l.PingMatrix(ctx, PingOptions{})); err != nil {
		t.Fatal(err)
	}

	// The table shows what the lease in etcd says: PublicIP is eth0's.
	st, err := ReadState(l.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Running() || len(st.Hosts) != 3 || st.Hosts[0].WeftdPID == 0 {
		t.Fatalf("state file: %+v", st)
	}
	rows := Rows(ctx, st, l.Etcd)
	for i, r := range rows {
		if r.PublicIP != l.Hosts[i].Eth0IP.String() || r.Subnet != l.Hosts[i].Subnet.String() {
			t.Errorf("row %d: %+v, want PublicIP %s subnet %s", i, r, l.Hosts[i].Eth0IP, l.Hosts[i].Subnet)
		}
	}
	var b strings.Builder
	if err := Report(ctx, &b, st); err != nil {
		t.Errorf("report: %v", err)
	}
	t.Logf("report:\n%s", b.String())
	if !strings.Contains(b.String(), "✓") || strings.Contains(b.String(), "✗") {
		t.Errorf("report has no passing matrix:\n%s", b.String())
	}
}

func TestStopStartAddHostAndClose(t *testing.T) {
	l := upLab(t, fakeConfig(t, 2))
	ctx := context.Background()
	before := l.Hosts[1].Subnet
	pid := l.WeftdPID(1)
	if pid == 0 {
		t.Fatal("weftd of host 1 not running")
	}
	if err := l.StopWeftd(1); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if l.WeftdPID(1) != 0 || processAlive(pid) {
		t.Fatalf("weftd pid %d still running after StopWeftd", pid)
	}
	since := time.Now()
	if err := l.StartWeftd(1); err != nil {
		t.Fatal(err)
	}
	if err := l.StartWeftd(1); err == nil {
		t.Error("a second StartWeftd of a running weftd succeeded")
	}
	env, err := l.WaitSubnetFile(ctx, 1, since)
	if err != nil {
		t.Fatal(err)
	}
	if env.Subnet.Masked() != before {
		t.Errorf("subnet after restart %s, want %s", env.Subnet.Masked(), before)
	}

	h, err := l.AddHost(ctx)
	if err != nil {
		t.Fatalf("add host: %v", err)
	}
	if h.Index != 2 || h.Name != l.Name+"-h3" || h.Eth0IP != netip.MustParseAddr("10.64.3.13") {
		t.Errorf("added host %+v", h)
	}
	// The fake programs routes every 50 ms; give the others a moment.
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := MatrixErr(l.PingMatrix(ctx, PingOptions{Timeout: 300 * time.Millisecond}))
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
	}
	st, _ := ReadState(l.StateDir)
	if len(st.Hosts) != 3 {
		t.Errorf("state file lists %d hosts after AddHost, want 3", len(st.Hosts))
	}

	pids := []int{l.WeftdPID(0), l.WeftdPID(1), l.WeftdPID(2)}
	if err := l.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if left := leftoverNamespaces(l.Name); len(left) > 0 {
		t.Errorf("namespaces left after Close: %v", left)
	}
	if _, err := os.Stat(l.StateDir); !os.IsNotExist(err) {
		t.Errorf("state dir %s left after Close: %v", l.StateDir, err)
	}
	for _, p := range pids {
		if processAlive(p) {
			t.Errorf("weftd pid %d alive after Close", p)
		}
	}
	if err := l.StopWeftd(0); err == nil {
		t.Error("StopWeftd on a closed lab succeeded")
	}
}

func TestUpRefusesARunningLab(t *testing.T) {
	cfg := fakeConfig(t, 1)
	upLab(t, cfg)
	_, err := Up(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "already running") {
		t.Fatalf("second Up of lab %s: %v, want 'already running'", cfg.Name, err)
	}
}

func TestDownRemovesLeftovers(t *testing.T) {
	cfg := fakeConfig(t, 2)
	l := upLab(t, cfg)
	pid := l.WeftdPID(0)
	// Down from the lab's own process cannot signal itself, so this is the
	// crashed-lab path: leftovers named in the state file are removed.
	if err := Down(context.Background(), cfg.Name, nil); err != nil {
		t.Fatalf("down: %v", err)
	}
	if left := leftoverNamespaces(cfg.Name); len(left) > 0 {
		t.Errorf("namespaces left after Down: %v", left)
	}
	if !waitGone(context.Background(), pid, 5*time.Second) {
		t.Errorf("weftd pid %d alive after Down", pid)
	}
	if _, err := os.Stat(l.StateDir); !os.IsNotExist(err) {
		t.Errorf("state dir left after Down: %v", err)
	}
	if err := Down(context.Background(), cfg.Name, nil); err == nil || !strings.Contains(err.Error(), "no lab named") {
		t.Errorf("second Down: %v, want 'no lab named'", err)
	}
}

func TestWeftdThatExitsIsReportedAndCleanedUp(t *testing.T) {
	netnstest.RequireRoot(t)
	cfg := fakeConfig(t, 2)
	cfg.WeftdPath = "/bin/false"
	cfg.WeftdEnv = nil
	_, err := Up(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "exited before writing") {
		t.Fatalf("Up with a weftd that exits: %v", err)
	}
	if left := leftoverNamespaces(cfg.Name); len(left) > 0 {
		t.Errorf("namespaces left after a failed Up: %v", left)
	}
	if _, err := os.Stat(StateDirFor(cfg.Name)); !os.IsNotExist(err) {
		t.Errorf("state dir left after a failed Up: %v", err)
	}
}

func TestConfigValidation(t *testing.T) {
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{Name: "Bad_Name", WeftdPath: "x"}, `lab name "Bad_Name"`},
		{Config{Hosts: 500, WeftdPath: "x"}, "hosts 500"},
		{Config{Backend: "ipip", WeftdPath: "x"}, `backend "ipip"`},
		{Config{EtcdMembers: 4, WeftdPath: "x"}, "etcd members 4: must be between 1 and 3"},
		{Config{EtcdMembers: -1, WeftdPath: "x"}, "etcd members -1"},
		{Config{}, "go build -o bin/ ./cmd/..."},
	} {
		err := c.cfg.setDefaults()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want an error containing %q", c.cfg, err, c.want)
		}
	}
	if _, err := FindWeftd("/nonexistent/weftd"); err == nil || !strings.Contains(err.Error(), "go build") {
		t.Errorf("FindWeftd of a missing file: %v", err)
	}
}

func TestParseSubnetEnv(t *testing.T) {
	good := "FLANNEL_NETWORK=172.30.0.0/16\nFLANNEL_SUBNET=172.30.19.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
	env, err := parseSubnetEnv("f", []byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if env.Subnet != netip.MustParsePrefix("172.30.19.1/24") || env.MTU != 1450 || env.Network.Bits() != 16 || env.IPMasq {
		t.Errorf("parsed %+v", env)
	}
	for _, bad := range []string{
		"FLANNEL_NETWORK=172.30.0.0/16\nFLANNEL_SUBNET=172.30.19.1/24\n",
		"FLANNEL_NETWORK=172.30.0.0/16\nFLANNEL_SUBNET=x\nFLANNEL_MTU=1450\n",
		"FLANNEL_NETWORK=172.30.0.0/16\nFLANNEL_SUBNET=172.30.19.1/24\nFLANNEL_MTU=9\n",
		"garbage\n",
	} {
		if _, err := parseSubnetEnv("f", []byte(bad)); err == nil {
			t.Errorf("%q parsed without error", bad)
		}
	}
}

func TestInterruptedUpRemovesEverything(t *testing.T) {
	netnstest.RequireRoot(t)
	cfg := fakeConfig(t, 2)
	cfg.WeftdEnv = append(cfg.WeftdEnv, fakeHangEnv+"=1")
	ctx, cancel := context.WithCancel(context.Background())
	// Cancel (as Ctrl-C does) once every host's weftd is running.
	go func() {
		defer cancel()
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			if st, err := ReadState(StateDirFor(cfg.Name)); err == nil && len(st.Hosts) == 2 && st.Hosts[1].WeftdPID > 0 {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	_, err := Up(ctx, cfg)
	if err == nil || !strings.Contains(err.Error(), "interrupted") {
		t.Fatalf("Up cancelled while waiting for weftd: %v, want 'interrupted'", err)
	}
	if left := leftoverNamespaces(cfg.Name); len(left) > 0 {
		t.Errorf("namespaces left after an interrupted Up: %v", left)
	}
	if _, err := os.Stat(StateDirFor(cfg.Name)); !os.IsNotExist(err) {
		t.Errorf("state dir left after an interrupted Up: %v", err)
	}
}
