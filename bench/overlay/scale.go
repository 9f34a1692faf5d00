package main

import (
	"context"
	"fmt"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/rtnl"
	"github.com/weft-net/weft/internal/testutil/netnstest"
)

// The scale figures (issue 12): one weftd, vxlan, 10,000 or 20,000 fake
// peers preloaded. kwatch alone cannot judge them: weft writes its entries
// in batches faster than a subscriber drains them, a socket can overflow
// (ENOBUFS) and the notifications lost leave the count short or void. So
// completion is judged by dumps of the kernel's state (waitKernel); a
// route-group subscription gives the first weft route and says when to
// dump.

// dumpPoll is the sleep between two dump passes of waitKernel once the
// route subscription lost messages (-dump-poll): then the resolution of
// "all routes" and "CPU to converge".
var dumpPoll = 20 * time.Millisecond

func scaleRows(n int, join bool) []*row {
	N := fmt.Sprintf("N = %s", thousands(n))
	rows := []*row{
		{name: "scale, vxlan, " + N + ": start → first weft route (notification)", unit: "ms"},
		{name: "scale, " + N + ": start → all routes+neigh+fdb (kernel dump)", unit: "ms"},
		{name: "scale, " + N + ": CPU to converge (utime+stime, start → all)", unit: "ms"},
		{name: "(scale, " + N + ": of which in the kernel, stime)", unit: "ms"},
		{name: "scale, " + N + ": peak RSS (VmHWM) after convergence, resyncs and the idle window", unit: "MiB"},
		{name: "scale, " + N + ": idle CPU (utime+stime, children included)", target: "≤ 1 % (issue 12, at 10,000)", unit: "%"},
	}
	if n >= 20000 {
		rows[4].target, rows[4].limit = "≤ 40 MiB (issue 12)", 40
	}
	if n == 10000 {
		rows[5].limit = 1
	}
	if join {
		rows = append(rows,
			&row{name: "scale, " + N + ": join p50", target: "within 1 ms of N = 1,000", unit: "ms"},
			&row{name: "scale, " + N + ": join p99", unit: "ms"},
			&row{name: "scale, " + N + ": leave p50", target: "within 1 ms of N = 1,000", unit: "ms"},
			&row{name: "scale, " + N + ": leave p99", unit: "ms"},
			&row{name: "(scale, " + N + ": etcd Put round trip p50)", unit: "ms"},
		)
	}
	return rows
}

func thousands(n int) string {
	if n < 1000 {
		return fmt.Sprint(n)
	}
	return fmt.Sprintf("%d,%03d", n/1000, n%1000)
}

// figScale: n fake peers preloaded in one transaction, weftd started; the
// first weft route, every entry present (dump), weftd's CPU by then; idle
// CPU over -idle after 5 s to settle; VmHWM after that (at least 12 s after
// convergence, so one periodic resync has run); then, with join, the join
// figure's samples at this size.
func figScale(n int, join bool) func(ctx context.Context, e *env) ([]float64, error) {
	return func(ctx context.Context, e *env) ([]float64, error) {
		c, err := e.newCluster(ctx, 1, "vxlan")
		if err != nil {
			return nil, err
		}
		defer c.close()
		lid, err := c.putFakes(ctx, "vxlan", 0, n)
		if err != nil {
			return nil, err
		}
		h := c.hosts[0]
		fr, err := watchRoutes(h.ns, n)
		if err != nil {
			return nil, err
		}
		defer fr.close()
		fd := h.ns.Fd()
		rt, err := rtnl.Open(&fd)
		if err != nil {
			return nil, err
		}
		defer rt.Close()
		t0, err := h.start()
		if err != nil {
			return nil, err
		}
		perf, err := e.startPerf(h, fmt.Sprintf("scale-%d", n))
		if err != nil {
			return nil, err
		}
		tFirst, err := fr.firstRoute(ctx, h, convergeTimeout)
		if err != nil {
			perf.stop()
			return nil, err
		}
		tAll, err := waitKernel(ctx, rt, fr, h, n, convergeTimeout)
		perf.stop()
		fr.close()
		if err != nil {
			return nil, err
		}
		pid := h.proc.pid()
		cpuUser, cpuSys, err := procCPU(pid)
		if err != nil {
			return nil, err
		}
		if err := verify(h, n, true); err != nil {
			return nil, err
		}
		idle, err := idleCPU(ctx, pid, e.opts.idle)
		if err != nil {
			return nil, err
		}
		if err := sleepCtx(ctx, time.Until(tAll.Add(12*time.Second))); err != nil {
			return nil, err
		}
		hwm, err := procStatusKB(pid, "VmHWM")
		if err != nil {
			return nil, err
		}
		const hz = 100 // USER_HZ, the unit of /proc/PID/stat
		out := []float64{ms(tFirst.Sub(t0)), ms(tAll.Sub(t0)), float64(cpuUser+cpuSys) * 1000 / hz, float64(cpuSys) * 1000 / hz, float64(hwm) / 1024, idle}
		if !join {
			return out, nil
		}
		// A watch of its own, opened now: the convergence's burst is over.
		kw, err := newKwatch(h.ns)
		if err != nil {
			return nil, err
		}
		defer kw.close()
		jl, err := joinLeave(ctx, e, c, kw, lid, n)
		if err != nil {
			return nil, err
		}
		return append(out, jl...), nil
	}
}

// idleCPU is pid's CPU over window, after 5 s to settle, in % of one core.
func idleCPU(ctx context.Context, pid int, window time.Duration) (float64, error) {
	if err := sleepCtx(ctx, 5*time.Second); err != nil {
		return 0, err
	}
	c0, err := procCPUTicks(pid)
	if err != nil {
		return 0, err
	}
	t0 := time.Now()
	if err := sleepCtx(ctx, window); err != nil {
		return 0, err
	}
	c1, err := procCPUTicks(pid)
	if err != nil {
		return 0, err
	}
	const hz = 100 // USER_HZ, the unit of /proc/PID/stat
	return float64(c1-c0) / hz / time.Since(t0).Seconds() * 100, nil
}

// kernelCounts is what a dump found: weft's IPv4 main-table routes,
// permanent IPv4 neighbours and fake-MAC FDB entries of flannel.1.
type kernelCounts struct{ routes, neighs, fdb int }

// waitKernel waits until dumps of the host's kernel find n of each entry.
// A dump pass costs the kernel (and this process, which shares weftd's 2
// cores) a walk of every route: 16 ms at 20,000, so polling dumps every
// 20 ms took 40 % of a core while weftd converged. Dumps are therefore
// made when the route watch w says all n routes were added (the backends
// write a peer's FDB entry and neighbour before its route), and otherwise
// every second as a safety net — every -dump-poll once w lost messages.
// The time returned is that of the last route's notification when the
// dump right after it confirms everything; else the end of the route dump
// of the pass that did (w lost messages, or the hint came early).
func waitKernel(ctx context.Context, rt *rtnl.Conn, w *routeWatch, h *host, n int, d time.Duration) (time.Time, error) {
	deadline := time.Now().Add(d)
	link := 0
	var (
		last   kernelCounts
		passes int
		dumped time.Duration // the bench's own cost, reported with -v
		hint   time.Time
	)
	for {
		wait := time.Second
		if w.lostAny() {
			wait = dumpPoll
		}
		select {
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-h.proc.done:
			return time.Time{}, fmt.Errorf("weftd in %s exited (%v); log:\n%s", h.ns.Name, h.proc.err, h.logTail())
		case hint = <-w.full:
		case <-time.After(wait):
		}
		passes++
		td := time.Now()
		routes, err := rtnl.RetryDump(func() (int, error) {
			k := 0
			err := rt.DumpRoutes(unix.AF_INET, func(r rtnl.Route) {
				if r.Protocol == uint8(routeProto) {
					k++
				}
			})
			return k, err
		})
		tr := time.Now()
		if err != nil {
			return time.Time{}, fmt.Errorf("dump routes in %s: %w", h.ns.Name, err)
		}
		last.routes = routes
		if routes == n {
			if link == 0 {
				dev, err := h.ns.Handle.LinkByName("flannel.1")
				if err != nil {
					return time.Time{}, fmt.Errorf("find flannel.1 in %s: %w", h.ns.Name, err)
				}
				link = dev.Attrs().Index
			}
			if last, err = dumpEntries(rt, link); err != nil {
				return time.Time{}, fmt.Errorf("dump neighbours and FDB in %s: %w", h.ns.Name, err)
			}
			last.routes = routes
			if last.neighs == n && last.fdb == n {
				dumped += time.Since(td)
				at, by := tr, "dump"
				if !hint.IsZero() && w.complete() {
					at, by = hint, "last route's notification, confirmed by a dump"
				}
				h.c.e.log.Info("kernel complete", "peers", n, "judgedBy", by, "dumpPasses", passes, "dumpTime", dumped.Round(time.Millisecond), "notificationsLost", w.lostAny())
				return at, nil
			}
		}
		hint = time.Time{}
		dumped += time.Since(td)
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("kernel in %s: %d routes, %d permanent neighbours, %d FDB entries after %s, want %d each; weftd log:\n%s",
				h.ns.Name, last.routes, last.neighs, last.fdb, d, n, h.logTail())
		}
	}
}

func dumpEntries(rt *rtnl.Conn, link int) (kernelCounts, error) {
	var k kernelCounts
	neighs, err := rtnl.RetryDump(func() (int, error) {
		c := 0
		err := rt.DumpNeighs(unix.AF_INET, link, func(nb rtnl.Neigh) {
			if nb.State&unix.NUD_PERMANENT != 0 {
				c++
			}
		})
		return c, err
	})
	if err != nil {
		return k, err
	}
	fdb, err := rtnl.RetryDump(func() (int, error) {
		c := 0
		err := rt.DumpFDB(link, func(nb rtnl.Neigh) {
			if nb.MACLen == 6 && nb.MAC[0] == fakeMACByte0 && nb.MAC[1] == fakeMACByte1 {
				c++
			}
		})
		return c, err
	})
	k.neighs, k.fdb = neighs, fdb
	return k, err
}

// routeWatch follows weft's IPv4 routes in a namespace from a route-group
// notification socket drained every pollInterval: the moment the first one
// appears, and the moment the set reached a target size — a hint for
// waitKernel, which judges by dumps. Messages lost to an overflow make the
// hint void (lost), never the first route: the first message queued is
// never the one dropped.
type routeWatch struct {
	done chan struct{}
	at   chan time.Time
	fd   int

	mu      sync.Mutex
	present map[string]bool
	target  int
	full    chan time.Time // receives when len(present) reaches target
	lost    bool
}

func watchRoutes(ns *netnstest.NS, target int) (*routeWatch, error) {
	fd, err := openMonitor(ns, unix.RTMGRP_IPV4_ROUTE)
	if err != nil {
		return nil, err
	}
	w := &routeWatch{done: make(chan struct{}), at: make(chan time.Time, 1), fd: fd,
		present: map[string]bool{}, target: target, full: make(chan time.Time, 1)}
	go w.read()
	return w, nil
}

func (w *routeWatch) read() {
	defer unix.Close(w.fd)
	buf := make([]byte, 1<<20)
	first := true
	for {
		select {
		case <-w.done:
			return
		default:
		}
		n, _, err := unix.Recvfrom(w.fd, buf, 0)
		if err == unix.EAGAIN || err == unix.EINTR {
			time.Sleep(pollInterval)
			continue
		}
		if err == unix.ENOBUFS {
			w.mu.Lock()
			w.lost = true
			w.mu.Unlock()
			continue
		}
		if err != nil {
			w.mu.Lock()
			w.lost = true
			w.mu.Unlock()
			return
		}
		now := time.Now()
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			continue
		}
		w.mu.Lock()
		for i := range msgs {
			typ := msgs[i].Header.Type
			if typ != unix.RTM_NEWROUTE && typ != unix.RTM_DELROUTE {
				continue
			}
			key, ok := weftRouteKey(&msgs[i])
			if !ok {
				continue
			}
			if typ == unix.RTM_DELROUTE {
				delete(w.present, key)
				continue
			}
			w.present[key] = true
			if first {
				first = false
				w.at <- now
			}
			if len(w.present) == w.target && !w.lost {
				select {
				case w.full <- now:
				default:
				}
			}
		}
		w.mu.Unlock()
	}
}

// complete reports whether the notifications seen hold the whole target,
// none having been lost.
func (w *routeWatch) complete() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return !w.lost && len(w.present) == w.target
}

func (w *routeWatch) lostAny() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lost
}

func (w *routeWatch) firstRoute(ctx context.Context, h *host, d time.Duration) (time.Time, error) {
	select {
	case t := <-w.at:
		return t, nil
	case <-ctx.Done():
		return time.Time{}, ctx.Err()
	case <-h.proc.done:
		return time.Time{}, fmt.Errorf("weftd in %s exited (%v) before its first route; log:\n%s", h.ns.Name, h.proc.err, h.logTail())
	case <-time.After(d):
		return time.Time{}, fmt.Errorf("kernel in %s: no weft route within %s; weftd log:\n%s", h.ns.Name, d, h.logTail())
	}
}

// close stops the reader; it may be called more than once.
func (w *routeWatch) close() {
	select {
	case <-w.done:
	default:
		close(w.done)
	}
}
