// Command udpbench measures weft's udp backend against the kernel's vxlan and
// the raw underlay, in one run, on this machine (root required; not in CI).
//
// It builds three identical two-host topologies in network namespaces it
// creates and deletes (nothing touches the root namespace's networking):
//
//	container A ─veth─ host A ═ underlay veth (MTU 1500) ═ host B ─veth─ container B
//
// raw:   iperf3 between host A and host B over the underlay veth (the limit);
// vxlan: container to container over weft's vxlan backend (kernel vxlan);
// udp:   container to container over weft's udp backend (engine in this process);
// (udp runs with WEFT_UDP_BPF=off: the engine alone);
// udpbpf: the udp backend with its in-kernel path (internal/udpbpf's tc BPF
// programs beside the engine), both peers' leases naming a weft host, so
// both directions are encapsulated in the kernel;
// udpbpf1: the same but only host A (the iperf3 client's) sees its peer as
// a weft host, so what A sends goes out through BPF and is received by B's
// engine: the kernel path toward a user-space receiver such as flanneld
// (-bpf-underlay-tx-off: with A's underlay offloads off);
// wireguard: container to container over weft's wireguard backend
// (userspace WireGuard in this process);
// wggo: container to container over a stock wireguard-go process per host
// (scripts/wireguard-go.sh; configured with wg), the anchor the wireguard
// backend must match.
//
// For each mode and each of -runs rounds (modes interleaved, so drift on a
// shared machine hits all of them alike) it runs iperf3 TCP single stream,
// TCP -P 4, and UDP 64-byte datagrams at unlimited rate, and records the
// machine's CPU (from /proc/stat, all cores) during each. It prints medians
// and the udp/vxlan ratios as a Markdown table.
//
//	go run ./bench/udp -t 10 -runs 3
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netconf"
	"github.com/weft-net/weft/internal/testutil/netnstest"
	"github.com/weft-net/weft/internal/wgengine"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "udpbench:", err)
		os.Exit(1)
	}
}

var network = netip.MustParsePrefix("10.128.0.0/9")

type host struct {
	ns, ctr *netnstest.NS
	public  netip.Addr
	subnet  netip.Prefix
	be      dataplane.Backend
	pub     dataplane.Published
}

func (h *host) ctrIP() netip.Addr { return h.subnet.Addr().Next().Next() }

type topo struct {
	mode  string
	a, b  *host
	all   []*netnstest.NS
	procs []*exec.Cmd // wireguard-go processes (wggo), killed by PID
	dir   string      // key files and UAPI sockets (wireguard, wggo)
}

func (t *topo) close() {
	for _, h := range []*host{t.a, t.b} {
		if h != nil && h.be != nil {
			h.be.Close()
		}
	}
	for _, p := range t.procs {
		p.Process.Kill()
		p.Wait()
	}
	if t.dir != "" {
		os.RemoveAll(t.dir)
	}
	for _, n := range t.all {
		n.Close()
	}
}

func newNS(t *topo, prefix string) (*netnstest.NS, error) {
	n, err := netnstest.Create(netnstest.UniqueName(prefix))
	if err != nil {
		return nil, err
	}
	t.all = append(t.all, n)
	return n, nil
}

func ipNet(p netip.Prefix) *netlink.Addr {
	a, _ := netlink.ParseAddr(p.String())
	return a
}

// build makes the two hosts, their containers and (for vxlan/udp) the
// backend, programmed with hand-made snapshots.
func build(mode string, log *slog.Logger) (*topo, error) {
	t := &topo{mode: mode}
	hs := make([]*host, 2)
	for i := range hs {
		ns, err := newNS(t, "bh")
		if err != nil {
			return t, err
		}
		ctr, err := newNS(t, "bc")
		if err != nil {
			return t, err
		}
		hs[i] = &host{ns: ns, ctr: ctr, public: netip.AddrFrom4([4]byte{100, 64, 0, byte(i + 1)}),
			subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 128, byte(i + 1), 0}), 24)}
	}
	t.a, t.b = hs[0], hs[1]
	if err := netnstest.VethPair(t.a.ns, "eth0", t.b.ns, "eth0"); err != nil {
		return t, err
	}
	mtu := map[string]int{"raw": 1500, "vxlan": 1450, "udp": 1472, "udpbpf": 1472, "udpbpf1": 1472, "wireguard": 1420, "wggo": 1420}[mode]
	for _, h := range hs {
		if _, err := h.ns.Run("sysctl", "-qw", "net.ipv4.ip_forward=1"); err != nil {
			return t, err
		}
		eth0, err := h.ns.Handle.LinkByName("eth0")
		if err != nil {
			return t, err
		}
		if err := h.ns.Handle.AddrAdd(eth0, ipNet(netip.PrefixFrom(h.public, 24))); err != nil {
			return t, err
		}
		if err := netnstest.VethPair(h.ns, "vc", h.ctr, "eth0"); err != nil {
			return t, err
		}
		gw := h.subnet.Addr().Next()
		for _, x := range []struct {
			n    *netnstest.NS
			name string
			a    netip.Prefix
		}{{h.ns, "vc", netip.PrefixFrom(gw, 24)}, {h.ctr, "eth0", netip.PrefixFrom(h.ctrIP(), 24)}} {
			l, err := x.n.Handle.LinkByName(x.name)
			if err != nil {
				return t, err
			}
			if err := x.n.Handle.LinkSetMTU(l, mtu); err != nil {
				return t, err
			}
			if err := x.n.Handle.AddrAdd(l, ipNet(x.a)); err != nil {
				return t, err
			}
		}
		if err := h.ctr.Handle.RouteAdd(&netlink.Route{Gw: gw.AsSlice()}); err != nil {
			return t, err
		}
	}
	if mode == "raw" {
		return t, nil
	}
	if mode == "wireguard" || mode == "wggo" {
		dir, err := os.MkdirTemp("", "weft-wgbench-")
		if err != nil {
			return t, err
		}
		t.dir = dir
	}
	if mode == "wggo" {
		return t, buildWGGo(t)
	}
	for i, h := range hs {
		fd := h.ns.Fd()
		cfg := netconf.Config{BackendType: backendType(mode), Backend: json.RawMessage(`{}`), Network: network}
		if mode == "wireguard" {
			// Each host its own key (Init reads the environment); no
			// UAPI socket.
			os.Setenv(wgengine.KeyFileEnv, filepath.Join(t.dir, fmt.Sprintf("h%d.key", i)))
			os.Setenv(wgengine.SocketDirEnv, "-")
		}
		// The backend reads it when its engine starts (in Init).
		bpf := "off"
		if mode == "udpbpf" || mode == "udpbpf1" {
			bpf = ""
		}
		os.Setenv(dataplane.UDPBPFEnv, bpf)
		be, err := dataplane.NewBackend(cfg, dataplane.Host{IfaceName: "eth0", NetNS: &fd}, h.ns.Handle, log)
		if err != nil {
			return t, err
		}
		h.be = be
		if h.pub, _, err = be.Init(context.Background()); err != nil {
			return t, err
		}
	}
	for _, p := range [][2]*host{{t.a, t.b}, {t.b, t.a}} {
		own, peer := p[0], p[1]
		snap := lease.Snapshot{
			Own: lease.Lease{Subnet: own.subnet, Attrs: lease.Attrs{PublicIP: own.public, BackendType: backendType(mode)}},
			Peers: []*lease.Lease{{Subnet: peer.subnet, Attrs: lease.Attrs{PublicIP: peer.public,
				BackendType: peer.pub.BackendType, BackendData: peer.pub.BackendData}}},
		}
		if mode == "udpbpf" || (mode == "udpbpf1" && own == t.a) {
			// A weft peer whose lease says it decapsulates in the kernel
			// (as weftd writes it): the udp backend serves it there.
			snap.Peers[0].Attrs.NodeName = peer.ns.Name
			snap.Peers[0].Attrs.UDPKernelDecap = dataplane.UDPKernelDecap(peer.be)
			if !snap.Peers[0].Attrs.UDPKernelDecap {
				return t, fmt.Errorf("%s: host %s: the in-kernel udp path is not attached", mode, peer.ns.Name)
			}
			if *bpfTxOff {
				// The stack then completes inner checksums and segments
				// UDP-tunnel GSO packets before the veth, as a NIC without
				// those offloads makes it do.
				if _, err := own.ns.Run("ethtool", "-K", "eth0", "tx", "off"); err != nil {
					return t, err
				}
			}
		}
		if err := own.be.Apply(context.Background(), snap); err != nil {
			return t, err
		}
	}
	return t, nil
}

// backendType is the backend a mode runs (udpbpf runs udp's).
func backendType(mode string) string {
	if mode == "udpbpf" || mode == "udpbpf1" {
		return netconf.BackendUDP
	}
	return mode
}

// buildWGGo runs a stock wireguard-go on each host, configured with wg as
// flannel's backend would: key, port 51820, the other host as peer (its
// subnet, its address), the peer subnet routed through the device.
func buildWGGo(t *topo) error {
	bin := os.Getenv("WEFT_WIREGUARD_GO")
	if bin == "" {
		out, err := exec.Command("scripts/wireguard-go.sh").Output()
		if err != nil {
			return fmt.Errorf("scripts/wireguard-go.sh (run from the repository root): %w", err)
		}
		bin = strings.TrimSpace(string(out))
	}
	hs := []*host{t.a, t.b}
	keys := make([]wgengine.Key, 2)
	for i, h := range hs {
		keys[i], _ = wgengine.GenerateKey()
		run := filepath.Join(t.dir, fmt.Sprintf("run%d", i))
		if err := os.MkdirAll(run, 0o700); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(run, "key"), []byte(keys[i].String()), 0o600); err != nil {
			return err
		}
		cmd := exec.Command("ip", "netns", "exec", h.ns.Name, "sh", "-c", "mount --bind "+run+" /run && exec "+bin+" -f wg0")
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("start wireguard-go: %w", err)
		}
		t.procs = append(t.procs, cmd)
		sock := filepath.Join(run, "wireguard", "wg0.sock")
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			if _, err := os.Stat(sock); err == nil {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("wireguard-go in %s: no UAPI socket %s", h.ns.Name, sock)
			}
		}
	}
	for i, h := range hs {
		peer := hs[1-i]
		script := fmt.Sprintf("mount --bind %s /run && wg set wg0 private-key /run/key listen-port 51820 peer %s endpoint %s:51820 allowed-ips %s"+
			" && ip link set wg0 mtu 1420 up && ip route add %s dev wg0",
			filepath.Join(t.dir, fmt.Sprintf("run%d", i)), keys[1-i].PublicKey(), peer.public, peer.subnet, peer.subnet)
		if _, err := h.ns.Run("sh", "-c", script); err != nil {
			return err
		}
	}
	return nil
}

// endpoints: where the iperf3 client and server run, and the server address.
func (t *topo) endpoints() (client, server *netnstest.NS, addr string) {
	if t.mode == "raw" {
		return t.a.ns, t.b.ns, t.b.public.String()
	}
	return t.a.ctr, t.b.ctr, t.b.ctrIP().String()
}

// cpuBusy returns busy and total jiffies over all cores from /proc/stat.
func cpuBusy() (busy, total uint64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)[1:]
	for i, s := range f {
		v, _ := strconv.ParseUint(s, 10, 64)
		total += v
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy, total
}

type result struct {
	gbps float64 // received
	pps  float64 // UDP: datagrams received per second
	loss float64 // UDP: percent
	// With -drops: the part of the sent datagrams dropped on the path
	// (links, TUN, engine sockets) and at the receiving iperf3's socket.
	pathLoss, rcvLoss float64
	cpu               float64 // cores busy (machine-wide), e.g. 1.5 = 150 %
	selfCPU           float64 // cores used by this process (the udp engine)
	// iperf3's own CPU (its cpu_utilization_percent: the process's user +
	// system time over the test, in cores) at the sending and receiving
	// end, and UDP datagrams sent per second: with pps and selfCPU they give
	// each party's CPU per packet.
	sndCPU, rcvCPU, sentPPS float64
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// iperf runs one iperf3 test and returns what the receiver saw.
func iperf(t *topo, secs int, args ...string) (result, error) {
	cli, srv, addr := t.endpoints()
	server := exec.Command("ip", append([]string{"netns", "exec", srv.Name}, pinned(1, "iperf3", "-s", "-1")...)...)
	if err := server.Start(); err != nil {
		return result{}, fmt.Errorf("start iperf3 server in %s: %w", srv.Name, err)
	}
	defer func() {
		server.Process.Kill() // our own child, by PID
		server.Wait()
	}()
	var (
		out []byte
		err error
	)
	// Wait for the server to listen rather than sleeping a guessed time.
	deadline := time.Now().Add(5 * time.Second)
	for {
		o, _ := exec.Command("ip", "netns", "exec", srv.Name, "ss", "-Hltn", "sport = :5201").Output()
		if len(strings.TrimSpace(string(o))) > 0 {
			break
		}
		if time.Now().After(deadline) {
			return result{}, errors.New("iperf3 server did not listen within 5s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	var (
		d0                  dropSnap
		pathDrops, rcvDrops uint64
	)
	udp := slices.Contains(args, "-u")
	if *showDrops {
		if d0, err = snapDrops(t); err != nil {
			return result{}, err
		}
	}
	b0, t0 := cpuBusy()
	s0 := selfCPU()
	start := time.Now()
	out, err = exec.Command("ip", append([]string{"netns", "exec", cli.Name}, pinned(0, append([]string{"iperf3", "-c", addr, "-J", "-t", strconv.Itoa(secs)}, args...)...)...)...).Output()
	wall := time.Since(start)
	b1, t1 := cpuBusy()
	s1 := selfCPU()
	if *showDrops && err == nil {
		d1, derr := snapDrops(t)
		if derr != nil {
			return result{}, derr
		}
		fmt.Fprintf(os.Stderr, "drops %-5s %s\n", t.mode, dropReport(t, d0, d1))
		pathDrops, rcvDrops = dropSplit(t, d0, d1)
	}
	if err != nil {
		return result{}, fmt.Errorf("iperf3 %s to %s: %w: %s", strings.Join(args, " "), addr, err, out)
	}
	var r struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
			Sum struct {
				BitsPerSecond float64 `json:"bits_per_second"`
				Seconds       float64 `json:"seconds"`
				Packets       float64 `json:"packets"`
				LostPackets   float64 `json:"lost_packets"`
				LostPercent   float64 `json:"lost_percent"`
			} `json:"sum"`
			CPU struct {
				Host   float64 `json:"host_total"`
				Remote float64 `json:"remote_total"`
			} `json:"cpu_utilization_percent"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return result{}, fmt.Errorf("parse iperf3 JSON: %w", err)
	}
	if r.Error != "" {
		return result{}, fmt.Errorf("iperf3: %s", r.Error)
	}
	res := result{gbps: r.End.SumReceived.BitsPerSecond / 1e9, sndCPU: r.End.CPU.Host / 100, rcvCPU: r.End.CPU.Remote / 100}
	if udp {
		s := r.End.Sum
		res.gbps = s.BitsPerSecond / 1e9 * (1 - s.LostPercent/100)
		res.loss = s.LostPercent
		if s.Seconds > 0 {
			res.pps = (s.Packets - s.LostPackets) / s.Seconds
			res.sentPPS = s.Packets / s.Seconds
		}
		if s.Packets > 0 && *showDrops {
			res.pathLoss = 100 * float64(pathDrops) / s.Packets
			res.rcvLoss = 100 * float64(rcvDrops) / s.Packets
		}
	}
	if t1 > t0 {
		res.cpu = float64(b1-b0) / float64(t1-t0) * float64(runtime.NumCPU())
	}
	res.selfCPU = float64(s1-s0) / float64(wall)
	return res, nil
}

// pin places the iperf3 client and server on CPUs ("0,1": client on 0,
// server on 1): the same test gives two different results depending on
// whether the scheduler puts the two ends on one core or on two.
var pin = flag.String("pin", "", "CPU of the iperf3 client and of the server, e.g. 0,1 (default: the scheduler's choice)")

// pinned prefixes cmd with taskset for end 0 (client) or 1 (server) when
// -pin is set.
func pinned(end int, cmd ...string) []string {
	cpus := strings.Split(*pin, ",")
	if *pin == "" || end >= len(cpus) {
		return cmd
	}
	return append([]string{"taskset", "-c", cpus[end]}, cmd...)
}

// loadAvg is the 1-minute load average, printed with every figure: on a
// shared machine it says how much the other load may have moved it.
func loadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// showDrops: print where each test's packets were lost (drops.go).
var showDrops = flag.Bool("drops", false, "after each test, print the kernel counters (sent, received, drops) that moved, per namespace; split UDP loss into path and receiver")

// bpfTxOff turns the underlay's transmit offloads off on hosts running udpbpf.
var bpfTxOff = flag.Bool("bpf-underlay-tx-off", false, "udpbpf modes: ethtool -K eth0 tx off on the hosts running the BPF path")

// txqlen overrides the TUN devices' queue length (an experiment knob).
var txqlen = flag.Int("txqlen", 0, "set the udp/wireguard TUN devices' txqueuelen (0: leave the backend's)")

func run() error {
	secs := flag.Int("t", 10, "seconds per iperf3 test")
	runs := flag.Int("runs", 3, "rounds (medians are reported)")
	modesFlag := flag.String("modes", "raw,vxlan,udp", "modes to measure")
	verbose := flag.Bool("v", false, "log the backends")
	testsFlag := flag.String("tests", "", "tests to run, of tcp1,tcp4,udp64 (default: all)")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of this process (the udp engine) to this file")
	flag.Parse()
	if os.Geteuid() != 0 {
		return errors.New("must run as root: it creates network namespaces")
	}
	log := slog.New(slog.DiscardHandler)
	if *verbose {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	modes := strings.Split(*modesFlag, ",")
	topos := map[string]*topo{}
	defer func() {
		for _, t := range topos {
			t.close()
		}
	}()
	for _, m := range modes {
		t, err := build(m, log)
		topos[m] = t
		if err != nil {
			return fmt.Errorf("build %s topology: %w", m, err)
		}
		cli, _, addr := t.endpoints()
		ok := false
		for range 50 { // the data path is up when a ping gets through
			if _, err := cli.Run("ping", "-c", "1", "-W", "1", addr); err == nil {
				ok = true
				break
			}
		}
		if !ok {
			return fmt.Errorf("%s: no ping from %s to %s", m, cli.Name, addr)
		}
		if *txqlen > 0 && (m == "udp" || m == "udpbpf" || m == "wireguard") {
			dev := map[string]string{"udp": dataplane.UDPDeviceName, "udpbpf": dataplane.UDPDeviceName, "wireguard": "flannel-wg"}[m]
			for _, h := range []*host{t.a, t.b} {
				if _, err := h.ns.Run("ip", "link", "set", dev, "txqueuelen", strconv.Itoa(*txqlen)); err != nil {
					return err
				}
			}
		}
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return fmt.Errorf("create CPU profile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("start CPU profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	tests := []struct {
		name string
		args []string
	}{
		{"tcp1", nil},
		{"tcp4", []string{"-P", "4"}},
		{"udp64", []string{"-u", "-l", "64", "-b", "0"}},
	}
	if *testsFlag != "" {
		want := strings.Split(*testsFlag, ",")
		tests = slices.DeleteFunc(tests, func(tc struct {
			name string
			args []string
		}) bool {
			return !slices.Contains(want, tc.name)
		})
	}
	res := map[string]map[string][]result{}
	for r := 0; r < *runs; r++ {
		for _, tc := range tests {
			for _, m := range modes {
				x, err := iperf(topos[m], *secs, tc.args...)
				if err != nil {
					return fmt.Errorf("%s %s round %d: %w", m, tc.name, r+1, err)
				}
				if res[m] == nil {
					res[m] = map[string][]result{}
				}
				res[m][tc.name] = append(res[m][tc.name], x)
				fmt.Fprintf(os.Stderr, "round %d %-5s %-5s %7.3f Gbit/s  %9.0f pps  loss %5.1f%% (path %.1f%%, receiver %.1f%%)  cpu %4.0f%%  self %4.0f%%  iperf3 snd %4.0f%% rcv %4.0f%%  load %s\n",
					r+1, m, tc.name, x.gbps, x.pps, x.loss, x.pathLoss, x.rcvLoss, x.cpu*100, x.selfCPU*100, x.sndCPU*100, x.rcvCPU*100, loadAvg())
				if x.sentPPS > 0 && x.pps > 0 {
					// Each party's CPU per datagram: the sender's per datagram
					// sent, the engine's and the receiver's per datagram delivered.
					fmt.Fprintf(os.Stderr, "cpu/pkt %-5s %-5s sender %.2f µs (%.0f pps sent)  engine %.2f µs  receiver %.2f µs (%.0f pps read)\n",
						m, tc.name, x.sndCPU/x.sentPPS*1e6, x.sentPPS, x.selfCPU/x.pps*1e6, x.rcvCPU/x.pps*1e6, x.pps)
				}
			}
		}
	}
	med := func(m, test string, f func(result) float64) float64 {
		var xs []float64
		for _, x := range res[m][test] {
			xs = append(xs, f(x))
		}
		return median(xs)
	}
	gbps := func(x result) float64 { return x.gbps }
	fmt.Printf("iperf3 %d s per test, %d rounds, medians; %d cores (%s)\n\n", *secs, *runs, runtime.NumCPU(), time.Now().UTC().Format("2006-01-02"))
	fmt.Println("| mode | TCP 1 stream Gbit/s | TCP -P 4 Gbit/s | CPU cores busy (1 stream) | CPU cores per Gbit/s (1 stream) | UDP 64 B received pps | UDP 64 B loss % |")
	fmt.Println("|---|---|---|---|---|---|---|")
	for _, m := range modes {
		g1 := med(m, "tcp1", gbps)
		c1 := med(m, "tcp1", func(x result) float64 { return x.cpu })
		cpg := med(m, "tcp1", func(x result) float64 { return x.cpu / x.gbps })
		fmt.Printf("| %s | %.2f | %.2f | %.2f | %.3f | %.0f | %.1f |\n", m, g1, med(m, "tcp4", gbps), c1, cpg,
			med(m, "udp64", func(x result) float64 { return x.pps }), med(m, "udp64", func(x result) float64 { return x.loss }))
	}
	if *showDrops {
		fmt.Println()
		for _, m := range modes {
			fmt.Printf("%s UDP 64 B loss: %.1f %% on the path, %.1f %% at the receiving iperf3's socket\n", m,
				med(m, "udp64", func(x result) float64 { return x.pathLoss }), med(m, "udp64", func(x result) float64 { return x.rcvLoss }))
		}
	}
	// ratio is a/b in percent, or n/a when a test was not run (-tests).
	ratio := func(a, b float64) string {
		if a == 0 || b == 0 {
			return "n/a"
		}
		return fmt.Sprintf("%.0f %%", 100*a/b)
	}
	pps := func(x result) float64 { return x.pps }
	self := func(x result) float64 { return x.selfCPU }
	if res["udp"] != nil && res["vxlan"] != nil {
		fmt.Println()
		for _, tc := range []string{"tcp1", "tcp4"} {
			fmt.Printf("udp / vxlan %s: %s\n", tc, ratio(med("udp", tc, gbps), med("vxlan", tc, gbps)))
		}
		fmt.Printf("udp / vxlan udp64 pps: %s\n", ratio(med("udp", "udp64", pps), med("vxlan", "udp64", pps)))
		fmt.Printf("udp engine (this process) CPU during TCP 1 stream: %.0f %% of a core\n", 100*med("udp", "tcp1", self))
	}
	if res["udpbpf"] != nil && res["vxlan"] != nil {
		fmt.Println()
		for _, tc := range []string{"tcp1", "tcp4"} {
			fmt.Printf("udpbpf / vxlan %s: %s\n", tc, ratio(med("udpbpf", tc, gbps), med("vxlan", tc, gbps)))
		}
		fmt.Printf("udpbpf / vxlan udp64 pps: %s\n", ratio(med("udpbpf", "udp64", pps), med("vxlan", "udp64", pps)))
		fmt.Printf("udpbpf: this process's CPU during TCP 1 stream (the engine, idle if BPF carries all): %.0f %% of a core\n", 100*med("udpbpf", "tcp1", self))
	}
	if res["wireguard"] != nil && res["wggo"] != nil {
		for _, tc := range []string{"tcp1", "tcp4"} {
			fmt.Printf("wireguard / wggo %s: %s\n", tc, ratio(med("wireguard", tc, gbps), med("wggo", tc, gbps)))
		}
		fmt.Printf("wireguard / wggo udp64 pps: %s\n", ratio(med("wireguard", "udp64", pps), med("wggo", "udp64", pps)))
		fmt.Printf("wireguard (this process) CPU during TCP 1 stream: %.0f %% of a core\n", 100*med("wireguard", "tcp1", self))
	}
	if res["udp"] != nil && res["raw"] != nil {
		fmt.Printf("udp / raw tcp1: %s\n", ratio(med("udp", "tcp1", gbps), med("raw", "tcp1", gbps)))
	}
	return nil
}
