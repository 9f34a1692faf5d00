package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/lab"
)

// figure is one measurement; run returns one value per row, per run.
type figure struct {
	name string
	rows func() []*row
	run  func(ctx context.Context, e *env) ([]float64, error)
}

// convergeTimeout bounds every wait for the kernel (-timeout).
var convergeTimeout = 120 * time.Second

func figures() []figure {
	return []figure{
		{"start", func() []*row {
			return []*row{{name: "start → subnet.env, no peers (vxlan)", flanneld: "171 ms", target: "≤ 60 ms", unit: "ms", limit: 60}}
		}, figStart},
		{"start3", func() []*row {
			return []*row{{name: "start → subnet.env, 3 hosts starting together (slowest host)", flanneld: "300–600 ms", target: "< 300 ms (beat flanneld)", unit: "ms", limit: 300}}
		}, figStart3},
		{"vxlan-1000", func() []*row {
			return []*row{{name: "start → all routes+neigh+fdb, vxlan, N = 1,000", flanneld: "1,253 ms", target: "≤ 200 ms", unit: "ms", limit: 200}}
		}, figConverge("vxlan", 1000)},
		{"vxlan-5000", func() []*row {
			return []*row{{name: "start → all routes+neigh+fdb, vxlan, N = 5,000", flanneld: "6,832 ms", target: "≤ 1,000 ms", unit: "ms", limit: 1000}}
		}, figConverge("vxlan", 5000)},
		{"hostgw-1000", func() []*row {
			return []*row{{name: "start → all routes, host-gw, N = 1,000", flanneld: "2,566 ms", target: "≤ 200 ms", unit: "ms", limit: 200}}
		}, figConverge("host-gw", 1000)},
		{"hostgw-5000", func() []*row {
			return []*row{{name: "start → all routes, host-gw, N = 5,000", flanneld: "50,215 ms", target: "≤ 1,000 ms", unit: "ms", limit: 1000}}
		}, figConverge("host-gw", 5000)},
		{"join", func() []*row {
			return []*row{
				{name: "join: lease put → route+neigh+fdb, N = 1,000, p50", flanneld: "2.97 ms", target: "≤ 3 ms", unit: "ms", limit: 3},
				{name: "join, p99", flanneld: "5.61 ms", target: "≤ 6 ms", unit: "ms", limit: 6},
				{name: "leave: lease delete → all gone, N = 1,000, p50", flanneld: "1.89 ms", target: "≤ 2 ms", unit: "ms", limit: 2},
				{name: "leave, p99", flanneld: "3.58 ms", target: "≤ 4 ms", unit: "ms", limit: 4},
				{name: "(join: of which the etcd Put round trip, p50)", unit: "ms"},
			}
		}, figJoin},
		{"bulk", func() []*row {
			return []*row{
				{name: "delete all 5,000 in one txn → all gone (vxlan)", flanneld: "964 ms", target: "≤ 500 ms", unit: "ms", limit: 500},
				{name: "re-add all 5,000 in one txn → all present (vxlan)", flanneld: "3,783 ms", target: "≤ 1,000 ms", unit: "ms", limit: 1000},
			}
		}, figBulk},
		{"rss", func() []*row {
			return []*row{
				{name: "peak RSS (VmHWM), 5,000 peers, vxlan, after start + one resync", flanneld: "50.6 MiB", target: "≤ 30 MiB", unit: "MiB", limit: 30},
				{name: "(of the current RSS then: anonymous memory)", unit: "MiB"},
				{name: "(of the current RSS then: file-backed, i.e. the binary)", unit: "MiB"},
			}
		}, figRSS(5000)},
		{"rss0", func() []*row {
			return []*row{
				{name: "(peak RSS (VmHWM) with no peers, for scale)", unit: "MiB"},
				{name: "(of the current RSS then: anonymous memory)", unit: "MiB"},
				{name: "(of the current RSS then: file-backed, i.e. the binary)", unit: "MiB"},
			}
		}, figRSS(0)},
		{"idle", func() []*row {
			return []*row{{name: "idle CPU (utime+stime, children included), 1,000 peers, vxlan", flanneld: "0.8 %", target: "≤ 0.2 %", unit: "%", limit: 0.2}}
		}, figIdle},
		{"floor", func() []*row {
			return []*row{
				{name: "(kernel floor: ip/bridge -batch of the same entries, vxlan, N = 1,000)", unit: "ms"},
				{name: "(kernel floor, vxlan, N = 5,000)", target: "~500 ms per the issue", unit: "ms"},
				{name: "(kernel floor, host-gw, N = 1,000)", unit: "ms"},
				{name: "(kernel floor, host-gw, N = 5,000)", unit: "ms"},
				{name: "(kernel floor: deleting them, vxlan, N = 5,000)", unit: "ms"},
			}
		}, figFloor},
		{"scale10k", func() []*row { return scaleRows(10000, true) }, figScale(10000, true)},
		{"scale20k", func() []*row { return scaleRows(20000, false) }, figScale(20000, false)},
		{"tcp", func() []*row {
			return []*row{
				{name: "TCP pod→pod over vxlan / raw underlay", flanneld: "0.68", target: "≈ 0.68 (kernel path)", unit: "ratio"},
				{name: "TCP pod→pod over host-gw / raw underlay", flanneld: "0.76", target: "≈ 0.76 (kernel path)", unit: "ratio"},
				{name: "(raw underlay TCP, vxlan lab)", unit: "Gbit/s"},
				{name: "(raw underlay TCP, host-gw lab)", unit: "Gbit/s"},
			}
		}, figTCP},
	}
}

// byNameOnly are the figures "all" leaves out: the scale figures take
// minutes and machine-wide memory of their own, and "all" keeps the set
// the BENCHMARKS.md tables were made with.
var byNameOnly = map[string]bool{"scale10k": true, "scale20k": true}

func figureNames() []string {
	var n []string
	for _, f := range figures() {
		n = append(n, f.name)
	}
	return n
}

func selectFigures(spec string) ([]figure, error) {
	all := figures()
	if spec == "all" {
		return slices.DeleteFunc(all, func(f figure) bool { return byNameOnly[f.name] }), nil
	}
	var out []figure
	for _, name := range strings.Split(spec, ",") {
		i := slices.IndexFunc(all, func(f figure) bool { return f.name == strings.TrimSpace(name) })
		if i < 0 {
			return nil, fmt.Errorf("-figure %q: unknown figure %q (known: all, %s)", spec, name, strings.Join(figureNames(), ", "))
		}
		out = append(out, all[i])
	}
	return out, nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// figStart: fork of weftd → subnet.env renamed into place, etcd warm.
func figStart(ctx context.Context, e *env) ([]float64, error) {
	c, err := e.newCluster(ctx, 1, "vxlan")
	if err != nil {
		return nil, err
	}
	defer c.close()
	h := c.hosts[0]
	fw, err := watchFile(h.subnetFile)
	if err != nil {
		return nil, err
	}
	defer fw.close()
	t0, err := h.start()
	if err != nil {
		return nil, err
	}
	t1, err := fw.wait(h, 30*time.Second)
	if err != nil {
		return nil, err
	}
	return []float64{ms(t1.Sub(t0))}, nil
}

// figStart3: three hosts forked back to back; the slowest host's time from
// the first fork to its subnet.env.
func figStart3(ctx context.Context, e *env) ([]float64, error) {
	c, err := e.newCluster(ctx, 3, "vxlan")
	if err != nil {
		return nil, err
	}
	defer c.close()
	var fws []*fileWatch
	for _, h := range c.hosts {
		fw, err := watchFile(h.subnetFile)
		if err != nil {
			return nil, err
		}
		defer fw.close()
		fws = append(fws, fw)
	}
	var first time.Time
	for i, h := range c.hosts {
		t0, err := h.start()
		if err != nil {
			return nil, err
		}
		if i == 0 {
			first = t0
		}
	}
	var slowest time.Duration
	for i, h := range c.hosts {
		t, err := fws[i].wait(h, 30*time.Second)
		if err != nil {
			return nil, err
		}
		slowest = max(slowest, t.Sub(first))
	}
	return []float64{ms(slowest)}, nil
}

// converged builds a one-host cluster with n fake peers preloaded, starts
// weftd and waits until the kernel holds every peer's entries. It returns
// the time from fork to that moment.
func converged(ctx context.Context, e *env, backend string, n int) (*cluster, *kwatch, clientv3.LeaseID, time.Duration, error) {
	c, err := e.newCluster(ctx, 1, backend)
	if err != nil {
		return nil, nil, 0, 0, err
	}
	fail := func(err error) (*cluster, *kwatch, clientv3.LeaseID, time.Duration, error) {
		c.close()
		return nil, nil, 0, 0, err
	}
	lid, err := c.putFakes(ctx, backend, 0, n)
	if err != nil {
		return fail(err)
	}
	h := c.hosts[0]
	kw, err := newKwatch(h.ns)
	if err != nil {
		return fail(err)
	}
	ch := kw.expect(kernelKeys(backend, 0, n), true)
	fw, err := watchFile(h.subnetFile)
	if err != nil {
		kw.close()
		return fail(err)
	}
	defer fw.close()
	t0, err := h.start()
	if err != nil {
		kw.close()
		return fail(err)
	}
	// Attached after the fork: it misses process start-up, not the first
	// apply, which is what it is for.
	perf, err := e.startPerf(h, fmt.Sprintf("start-%s-%d", backend, n))
	if err != nil {
		return fail(err)
	}
	t1, err := kw.wait(ctx, ch, h, convergeTimeout)
	perf.stop()
	if err == nil {
		// subnet.env comes before any peer is programmed; with no peers
		// it is what says weftd is up.
		_, err = fw.wait(h, convergeTimeout)
	}
	if err != nil {
		kw.close()
		return fail(err)
	}
	if err := verify(h, n, backend == "vxlan"); err != nil {
		kw.close()
		return fail(err)
	}
	return c, kw, lid, t1.Sub(t0), nil
}

func figConverge(backend string, n int) func(ctx context.Context, e *env) ([]float64, error) {
	return func(ctx context.Context, e *env) ([]float64, error) {
		c, kw, _, d, err := converged(ctx, e, backend, n)
		if err != nil {
			return nil, err
		}
		kw.close()
		c.close()
		return []float64{ms(d)}, nil
	}
}

// figJoin: with 1,000 peers programmed, one more lease is put (on the
// peers' etcd lease) and later deleted, -joins times; the p50 and p99 of
// put → all three entries present, and delete → all three gone.
func figJoin(ctx context.Context, e *env) ([]float64, error) {
	const n = 1000
	c, kw, lid, _, err := converged(ctx, e, "vxlan", n)
	if err != nil {
		return nil, err
	}
	defer c.close()
	defer kw.close()
	return joinLeave(ctx, e, c, kw, lid, n)
}

// joinLeave runs the join figure's samples on a converged cluster of n
// fake peers: fakes n, n+1, … join and leave one at a time. It returns
// join p50, p99, leave p50, p99 and the etcd Put round trip p50, in ms.
func joinLeave(ctx context.Context, e *env, c *cluster, kw *kwatch, lid clientv3.LeaseID, n int) ([]float64, error) {
	h := c.hosts[0]
	perf, err := e.startPerf(h, fmt.Sprintf("join-%d", n))
	if err != nil {
		return nil, err
	}
	defer perf.stop()
	var joins, leaves, puts []time.Duration
	for j := range e.opts.joins {
		f := fakeHost(n + j)
		keys := f.kernelKeys("vxlan")
		ch := kw.expect(keys, true)
		t0 := time.Now()
		if _, err := e.cli.Put(ctx, f.key(c.prefix), f.value("vxlan"), clientv3.WithLease(lid)); err != nil {
			return nil, fmt.Errorf("put joining lease %s: %w", f.subnet, err)
		}
		tPut := time.Now()
		puts = append(puts, tPut.Sub(t0))
		t1, err := kw.wait(ctx, ch, h, 10*time.Second)
		if err != nil {
			return nil, fmt.Errorf("join of %s: %w", f.subnet, err)
		}
		joins = append(joins, t1.Sub(t0))
		e.sample("join", n, f, t0, tPut, t1)
		ch = kw.expect(keys, false)
		t0 = time.Now()
		if _, err := e.cli.Delete(ctx, f.key(c.prefix)); err != nil {
			return nil, fmt.Errorf("delete leaving lease %s: %w", f.subnet, err)
		}
		tDel := time.Now()
		t1, err = kw.wait(ctx, ch, h, 10*time.Second)
		if err != nil {
			return nil, fmt.Errorf("leave of %s: %w", f.subnet, err)
		}
		leaves = append(leaves, t1.Sub(t0))
		e.sample("leave", n, f, t0, tDel, t1)
	}
	return []float64{ms(pct(joins, 50)), ms(pct(joins, 99)), ms(pct(leaves, 50)), ms(pct(leaves, 99)), ms(pct(puts, 50))}, nil
}

// sample writes one join or leave to the -samples file (diagnosis: the
// times, in µs since the epoch, line up with an instrumented weftd's log):
// kind, peers, subnet, etcd request sent, its answer, kernel done, latency.
func (e *env) sample(kind string, n int, f fake, sent, answered, done time.Time) {
	if e.samples == nil {
		return
	}
	fmt.Fprintf(e.samples, "%s,%d,%s,%d,%d,%d,%.3f\n", kind, n, f.subnet, sent.UnixMicro(), answered.UnixMicro(), done.UnixMicro(), ms(done.Sub(sent)))
}

// pct is the p-th percentile by nearest rank.
func pct(d []time.Duration, p int) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	i := (p*len(s) + 99) / 100
	return s[max(i-1, 0)]
}

// figBulk: with 5,000 peers programmed, all are deleted in one transaction,
// then re-added in one transaction on a new etcd lease.
func figBulk(ctx context.Context, e *env) ([]float64, error) {
	const n = 5000
	c, kw, _, _, err := converged(ctx, e, "vxlan", n)
	if err != nil {
		return nil, err
	}
	defer c.close()
	defer kw.close()
	h := c.hosts[0]
	keys := kernelKeys("vxlan", 0, n)
	ch := kw.expect(keys, false)
	t0 := time.Now()
	if err := c.deleteFakes(ctx, 0, n); err != nil {
		return nil, err
	}
	t1, err := kw.wait(ctx, ch, h, convergeTimeout)
	if err != nil {
		return nil, fmt.Errorf("delete all: %w", err)
	}
	del := t1.Sub(t0)
	if err := verify(h, 0, true); err != nil {
		return nil, err
	}
	g, err := e.cli.Grant(ctx, 3600)
	if err != nil {
		return nil, fmt.Errorf("grant an etcd lease: %w", err)
	}
	ch = kw.expect(keys, true)
	t0 = time.Now()
	if err := c.putFakesOn(ctx, "vxlan", 0, n, g.ID); err != nil {
		return nil, err
	}
	t1, err = kw.wait(ctx, ch, h, convergeTimeout)
	if err != nil {
		return nil, fmt.Errorf("re-add all: %w", err)
	}
	if err := verify(h, n, true); err != nil {
		return nil, err
	}
	return []float64{ms(del), ms(t1.Sub(t0))}, nil
}

// figRSS: VmHWM of weftd with 5,000 peers, read after the first apply and
// one periodic resync (DefaultResync 10 s ± 10 %), which re-reads the
// kernel's whole state.
func figRSS(n int) func(ctx context.Context, e *env) ([]float64, error) {
	return func(ctx context.Context, e *env) ([]float64, error) {
		c, kw, _, _, err := converged(ctx, e, "vxlan", n)
		if err != nil {
			return nil, err
		}
		defer c.close()
		kw.close() // not needed past convergence
		if err := sleepCtx(ctx, 12*time.Second); err != nil {
			return nil, err
		}
		var out []float64
		for _, f := range []string{"VmHWM", "RssAnon", "RssFile"} {
			kb, err := procStatusKB(c.hosts[0].proc.pid(), f)
			if err != nil {
				return nil, err
			}
			out = append(out, float64(kb)/1024)
		}
		return out, nil
	}
}

// figIdle: weftd's utime+stime over the idle window with 1,000 peers, after
// 5 s to settle, as a percentage of one core.
func figIdle(ctx context.Context, e *env) ([]float64, error) {
	c, kw, _, _, err := converged(ctx, e, "vxlan", 1000)
	if err != nil {
		return nil, err
	}
	defer c.close()
	kw.close() // not needed past convergence; its polling must not load the machine
	idle, err := idleCPU(ctx, c.hosts[0].proc.pid(), e.opts.idle)
	if err != nil {
		return nil, err
	}
	return []float64{idle}, nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func procStatusKB(pid int, field string) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read status of weftd pid %d: %w", pid, err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && k == field {
			f := strings.Fields(v)
			if len(f) > 0 {
				return strconv.Atoi(f[0])
			}
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no %s line", pid, field)
}

// procCPUTicks is utime+stime of all threads plus cutime+cstime of waited-for
// children (fields 14–17 of stat): a daemon that forks rule checkers must
// pay for them too.
func procCPUTicks(pid int) (int64, error) {
	user, sys, err := procCPU(pid)
	return user + sys, err
}

// procCPU is procCPUTicks split: user (utime+cutime) and kernel
// (stime+cstime) time.
func procCPU(pid int) (user, sys int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, fmt.Errorf("read stat of weftd pid %d: %w", pid, err)
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	f := strings.Fields(s[i+1:]) // f[0] is field 3
	if len(f) < 15 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	var t [4]int64 // utime, stime, cutime, cstime
	for k, v := range f[11:15] {
		if t[k], err = strconv.ParseInt(v, 10, 64); err != nil {
			return 0, 0, fmt.Errorf("/proc/%d/stat: CPU time field %q: not a number", pid, v)
		}
	}
	return t[0] + t[2], t[1] + t[3], nil
}

// figTCP: iperf3 TCP single stream in the lab (two hosts, the ops note's
// topology, docker0 and a container on each), container → container over
// the overlay, and host eth0 → host eth0 over the underlay bridge, each
// twice in one run; the ratio is mean overlay / mean underlay. One lab per backend is kept
// for all runs.
func figTCP(ctx context.Context, e *env) ([]float64, error) {
	var ratios, raws []float64
	for _, backend := range []string{"vxlan", "host-gw"} {
		l, err := e.labFor(ctx, backend)
		if err != nil {
			return nil, err
		}
		a, b := l.Hosts[0], l.Hosts[1]
		// raw, pod, pod, raw: drift of a shared machine over the run hits
		// both sides alike.
		var raw, pod float64
		for _, step := range []string{"raw", "pod", "pod", "raw"} {
			srv, addr, cli := b.NS.Name, b.Eth0IP.String(), a.NS.Name
			if step == "pod" {
				srv, addr, cli = b.ContainerNS.Name, b.ContainerIP.String(), a.ContainerNS.Name
			}
			bps, err := iperf(ctx, srv, addr, cli, e.opts.iperfT)
			if err != nil {
				return nil, fmt.Errorf("%s lab, %s: %w", backend, step, err)
			}
			if step == "pod" {
				pod += bps / 2
			} else {
				raw += bps / 2
			}
		}
		ratios = append(ratios, pod/raw)
		raws = append(raws, raw/1e9)
	}
	return []float64{ratios[0], ratios[1], raws[0], raws[1]}, nil
}

func (e *env) labFor(ctx context.Context, backend string) (*lab.Lab, error) {
	if l, ok := e.labs[backend]; ok {
		return l, nil
	}
	name := fmt.Sprintf("wbo%d-%s", os.Getpid()%100000, strings.ReplaceAll(backend, "-", ""))
	l, err := lab.Up(ctx, lab.Config{Name: name, Hosts: 2, Backend: backend, WeftdPath: e.weftd, Log: e.log})
	if err != nil {
		return nil, fmt.Errorf("lab up (%s): %w", backend, err)
	}
	e.labs[backend] = l
	return l, nil
}

// iperf runs an iperf3 server in srvNS (bound to addr) and a client in
// cliNS for d, and returns the receiver's bits per second. Both processes
// are this program's own; the server is killed by its PID.
func iperf(ctx context.Context, srvNS, addr, cliNS string, d time.Duration) (float64, error) {
	srv := exec.Command("ip", "netns", "exec", srvNS, "iperf3", "-s", "-B", addr, "-p", "5201")
	srv.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := srv.Start(); err != nil {
		return 0, fmt.Errorf("start iperf3 server in %s: %w", srvNS, err)
	}
	defer func() {
		srv.Process.Kill()
		srv.Wait()
	}()
	var last error
	// The server needs a moment to listen: retry a refused client.
	for attempt := 0; attempt < 50; attempt++ {
		out, err := exec.CommandContext(ctx, "ip", "netns", "exec", cliNS, "iperf3", "-c", addr, "-p", "5201",
			"-t", strconv.Itoa(int(d.Seconds())), "-J").Output()
		var res struct {
			End struct {
				SumReceived struct {
					BitsPerSecond float64 `json:"bits_per_second"`
				} `json:"sum_received"`
			} `json:"end"`
			Error string `json:"error"`
		}
		if jerr := json.Unmarshal(out, &res); jerr == nil && res.Error == "" && res.End.SumReceived.BitsPerSecond > 0 {
			return res.End.SumReceived.BitsPerSecond, nil
		} else if res.Error != "" {
			last = fmt.Errorf("iperf3 -c %s in %s: %s", addr, cliNS, res.Error)
		} else {
			last = fmt.Errorf("iperf3 -c %s in %s: %v (output %.200q)", addr, cliNS, err, out)
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return 0, err
		}
	}
	return 0, last
}

// perfRun is a `perf record` of one weftd, or nothing when -perf is unset.
type perfRun struct{ cmd *exec.Cmd }

func (e *env) startPerf(h *host, name string) (*perfRun, error) {
	d := e.opts.perfDir
	if d == "" {
		return &perfRun{}, nil
	}
	if err := os.MkdirAll(d, 0o755); err != nil {
		return nil, fmt.Errorf("create perf directory: %w", err)
	}
	cmd := exec.Command("perf", "record", "-q", "-F", "999", "-g", "-p", strconv.Itoa(h.proc.pid()),
		"-o", filepath.Join(d, fmt.Sprintf("%s-%s.data", name, h.ns.Name)))
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start perf record: %w", err)
	}
	return &perfRun{cmd: cmd}, nil
}

// stop ends the recording (SIGINT to our own perf, by PID) and waits for it
// to write its file.
func (p *perfRun) stop() {
	if p.cmd == nil {
		return
	}
	p.cmd.Process.Signal(os.Interrupt)
	p.cmd.Wait()
	p.cmd = nil
}

// figFloor: what the kernel alone needs for the same entries, programmed
// by iproute2 in batch mode (one process, one netlink socket per tool) in a
// fresh namespace with the same devices weftd would create.
func figFloor(ctx context.Context, e *env) ([]float64, error) {
	var out []float64
	var del5000 time.Duration
	for _, backend := range []string{"vxlan", "host-gw"} {
		for _, n := range []int{1000, 5000} {
			add, del, err := e.floorOnce(ctx, backend, n)
			if err != nil {
				return nil, fmt.Errorf("kernel floor, %s, N = %d: %w", backend, n, err)
			}
			out = append(out, ms(add))
			if backend == "vxlan" && n == 5000 {
				del5000 = del
			}
		}
	}
	return append(out, ms(del5000)), nil
}

func (e *env) floorOnce(ctx context.Context, backend string, n int) (add, del time.Duration, err error) {
	c, err := e.newCluster(ctx, 1, backend)
	if err != nil {
		return 0, 0, err
	}
	defer c.close()
	h := c.hosts[0]
	var fdb, neigh, route, fdbDel, neighDel, routeDel strings.Builder
	for i := range n {
		f := fakeHost(i)
		if backend == "vxlan" {
			fmt.Fprintf(&fdb, "fdb append %s dev flannel.1 dst %s self permanent\n", f.mac, f.public)
			fmt.Fprintf(&neigh, "neigh replace %s lladdr %s dev flannel.1 nud permanent\n", f.subnet.Addr(), f.mac)
			fmt.Fprintf(&route, "route replace %s via %s dev flannel.1 onlink proto 87\n", f.subnet, f.subnet.Addr())
			fmt.Fprintf(&fdbDel, "fdb del %s dev flannel.1 dst %s self\n", f.mac, f.public)
			fmt.Fprintf(&neighDel, "neigh del %s dev flannel.1\n", f.subnet.Addr())
			fmt.Fprintf(&routeDel, "route del %s\n", f.subnet)
		} else {
			fmt.Fprintf(&route, "route replace %s via %s dev eth0 proto 87\n", f.subnet, f.public)
			fmt.Fprintf(&routeDel, "route del %s\n", f.subnet)
		}
	}
	type batch struct {
		tool, file string
	}
	write := func(list *[]batch, tool, name, content string) error {
		if content == "" {
			return nil
		}
		p := filepath.Join(h.dir, name)
		*list = append(*list, batch{tool, p})
		return os.WriteFile(p, []byte(content), 0o644)
	}
	var batches, delBatches []batch
	if backend == "vxlan" {
		if out, err := exec.Command("ip", "-n", h.ns.Name, "link", "add", "flannel.1", "type", "vxlan", "id", "1",
			"dev", "eth0", "local", h.ip.String(), "dstport", "8472", "nolearning").CombinedOutput(); err != nil {
			return 0, 0, fmt.Errorf("create flannel.1: %w: %s", err, out)
		}
		if out, err := exec.Command("ip", "-n", h.ns.Name, "link", "set", "flannel.1", "up").CombinedOutput(); err != nil {
			return 0, 0, fmt.Errorf("set flannel.1 up: %w: %s", err, out)
		}
	}
	// Adds in weftd's order (FDB, neighbour, route), deletes in reverse.
	for _, b := range []struct {
		list                *[]batch
		tool, name, content string
	}{
		{&batches, "bridge", "fdb.batch", fdb.String()}, {&batches, "ip", "neigh.batch", neigh.String()}, {&batches, "ip", "route.batch", route.String()},
		{&delBatches, "ip", "route-del.batch", routeDel.String()}, {&delBatches, "ip", "neigh-del.batch", neighDel.String()}, {&delBatches, "bridge", "fdb-del.batch", fdbDel.String()},
	} {
		if err := write(b.list, b.tool, b.name, b.content); err != nil {
			return 0, 0, err
		}
	}
	// Judged as weftd is: by the kernel's notifications, with the same
	// subscriber listening (its cost to the kernel is then the same too).
	kw, err := newKwatch(h.ns)
	if err != nil {
		return 0, 0, err
	}
	defer kw.close()
	keys := kernelKeys(backend, 0, n)
	run := func(list []batch, on bool) (time.Duration, error) {
		ch := kw.expect(keys, on)
		t0 := time.Now()
		for _, b := range list {
			if out, err := exec.CommandContext(ctx, b.tool, "-n", h.ns.Name, "-batch", b.file).CombinedOutput(); err != nil {
				return 0, fmt.Errorf("%s -batch %s: %w: %.300s", b.tool, b.file, err, out)
			}
		}
		select {
		case t1 := <-ch:
			return t1.Sub(t0), kw.err()
		case <-time.After(convergeTimeout):
			return 0, fmt.Errorf("kernel in %s: iproute2's changes not all seen within %s", h.ns.Name, convergeTimeout)
		}
	}
	if add, err = run(batches, true); err != nil {
		return 0, 0, err
	}
	if err := verify(h, n, backend == "vxlan"); err != nil {
		return 0, 0, err
	}
	if del, err = run(delBatches, false); err != nil {
		return 0, 0, err
	}
	return add, del, verify(h, 0, backend == "vxlan")
}
