// Command soak churns leases against one weft lease manager and reports
// whether its memory and goroutines stay flat. It is run by hand, not in CI:
//
//	go run ./bench/soak -peers 1000 -rate 200 -duration 10m
//
// A real embedded etcd holds -peers leases; -rate writes per second (puts
// and deletes of random peers) hit it while a lease.Manager follows them and
// a consumer drains its snapshots, as the reconcile loop does. Every
// -sample the process's RSS and goroutine count are printed; at the end the
// first sample after warm-up is compared with the last, and the exit status
// is 1 when either grew by more than -tolerance.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netconf"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/testutil/etcdtest"
)

func main() { os.Exit(run()) }

func run() int {
	peers := flag.Int("peers", 1000, "peer leases kept in etcd")
	rate := flag.Int("rate", 200, "lease churn events per second")
	duration := flag.Duration("duration", 10*time.Minute, "how long to churn")
	sample := flag.Duration("sample", 10*time.Second, "sampling period")
	warmup := flag.Duration("warmup", 30*time.Second, "time before the baseline sample")
	compact := flag.Bool("compact", true, "compact etcd's history at every sample, as a production etcd's auto-compaction does (the embedded etcd shares this process's RSS)")
	tolerance := flag.Float64("tolerance", 0.25, "allowed relative growth of RSS and goroutines")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	srv, err := etcdtest.Start(etcdtest.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		return 1
	}
	defer srv.Close()
	cli, err := srv.Client()
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		return 1
	}
	defer cli.Close()
	const prefix = "/weft-soak/network"
	cfg, _, err := netconf.Parse([]byte(`{"Network":"10.0.0.0/8","SubnetLen":24}`))
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		return 1
	}
	store := lease.NewStore(cli, prefix, log)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	subnet := func(i int) netip.Prefix {
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(1 + i/256), byte(i % 256), 0}), 24)
	}
	value := func(i int) string {
		return fmt.Sprintf(`{"PublicIP":"192.168.%d.%d","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:58:00:00:%02x:%02x"}}`,
			i/250, 1+i%250, i/256, i%256)
	}
	for i := range *peers {
		pctx, c := context.WithTimeout(ctx, 5*time.Second)
		_, err := cli.Put(pctx, store.Key(subnet(i), netip.Prefix{}), value(i))
		c()
		if err != nil {
			fmt.Fprintln(os.Stderr, "soak: seed leases:", err)
			return 1
		}
	}
	mgr := lease.NewManager(lease.ManagerConfig{Store: store, Network: cfg, PublicIP: netip.MustParseAddr("192.168.255.1"),
		BackendType: "vxlan", BackendData: []byte(`{"VNI":1,"VtepMAC":"0a:58:ff:ff:ff:01"}`), Logger: log})
	actx, ac := context.WithTimeout(ctx, 10*time.Second)
	if _, err := mgr.Acquire(actx); err != nil {
		ac()
		fmt.Fprintln(os.Stderr, "soak: acquire:", err)
		return 1
	}
	ac()
	go mgr.Run(ctx)
	var snaps, events atomic.Int64
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-mgr.Snapshots():
				snaps.Add(1)
			}
		}
	}()

	// Churn: each tick deletes or rewrites a random peer's lease.
	go func() {
		t := time.NewTicker(time.Second / time.Duration(*rate))
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			i := rand.IntN(*peers)
			key := store.Key(subnet(i), netip.Prefix{})
			pctx, c := context.WithTimeout(ctx, 5*time.Second)
			if rand.IntN(2) == 0 {
				cli.Delete(pctx, key)
			} else {
				cli.Put(pctx, key, value(i))
			}
			c()
			events.Add(1)
		}
	}()

	start := time.Now()
	var base, last [2]float64
	fmt.Printf("%8s %10s %10s %8s %10s\n", "elapsed", "rss_kib", "goroutines", "events", "snapshots")
	tick := time.NewTicker(*sample)
	defer tick.Stop()
	for time.Since(start) < *duration {
		<-tick.C
		if *compact {
			cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
			if r, err := cli.Get(cctx, "/", clientv3.WithCountOnly()); err == nil {
				cli.Compact(cctx, r.Header.Revision)
			}
			ccancel()
		}
		runtime.GC()
		last = [2]float64{float64(rssKiB()), float64(runtime.NumGoroutine())}
		fmt.Printf("%8s %10.0f %10.0f %8d %10d\n", time.Since(start).Round(time.Second), last[0], last[1], events.Load(), snaps.Load())
		if base[0] == 0 && time.Since(start) >= *warmup {
			base = last
		}
	}
	if base[0] == 0 {
		fmt.Println("soak: run shorter than -warmup: no verdict")
		return 0
	}
	rssGrowth, gGrowth := last[0]/base[0]-1, last[1]/base[1]-1
	fmt.Printf("RSS %.0f → %.0f KiB (%+.1f%%), goroutines %.0f → %.0f (%+.1f%%), %d events (%.0f/s), %d snapshots\n",
		base[0], last[0], 100*rssGrowth, base[1], last[1], 100*gGrowth, events.Load(), float64(events.Load())/time.Since(start).Seconds(), snaps.Load())
	if rssGrowth > *tolerance || gGrowth > *tolerance {
		fmt.Println("soak: NOT flat")
		return 1
	}
	fmt.Println("soak: flat")
	return 0
}

// rssKiB is VmRSS of this process (which also runs the embedded etcd).
func rssKiB() int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return n
		}
	}
	return 0
}
