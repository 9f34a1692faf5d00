package dataplane

import (
	"context"
	"fmt"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/lease"
)

// Benchmarks run in a fresh namespace on the real kernel:
//
//	sudo go test ./internal/dataplane -run '^$' -bench . -benchtime 5x
func benchPeers(n int, mk func(i int) lease.Lease) lease.Snapshot {
	peers := make([]lease.Lease, n)
	for i := range peers {
		peers[i] = mk(i + 2)
	}
	return snapshot(1, peers...)
}

// benchSizes are the peer counts of the apply benchmarks: the overlay's
// sizes in BENCHMARKS.md, up to the 10,000 of the scale figures.
var benchSizes = []int{1000, 5000, 10000}

func benchApply(b *testing.B, typ string, mk func(i int) lease.Lease, noop bool) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("peers=%d", n), func(b *testing.B) {
			l := newLab(b, hostAddr, swAddr)
			be := l.backend(b, typ, `{}`)
			ctx := context.Background()
			_, _, err := be.Init(ctx)
			must(b, err)
			full, empty := benchPeers(n, mk), snapshot(1)
			if noop {
				must(b, be.Apply(ctx, full))
			}
			cpu0 := cpuTime()
			b.ResetTimer()
			for range b.N {
				if !noop {
					b.StopTimer()
					must(b, be.Apply(ctx, empty))
					b.StartTimer()
				}
				if err := be.Apply(ctx, full); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			if noop {
				// CPU of this process (user+sys, including the kernel work
				// done on its behalf); for the resync budget at 10 s.
				b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/1000/float64(b.N), "cpu-ms/op")
			}
			if got, want := len(kernelState(b, l.ns.Handle, "flannel.1")), len(kernelStateWant(typ, full)); got != want {
				b.Fatalf("kernel holds %d entries, want %d", got, want)
			}
		})
	}
}

func kernelStateWant(typ string, s lease.Snapshot) []string {
	if typ == "vxlan" {
		return wantVXLAN(1, values(s.Peers)...)
	}
	return wantHostGW(values(s.Peers)...)
}

// BenchmarkVXLANApply: all routes + neighbours + FDB entries from empty.
func BenchmarkVXLANApply(b *testing.B) {
	benchApply(b, "vxlan", func(i int) lease.Lease { return vxlanPeer(i, publicIP(i)) }, false)
}

// BenchmarkVXLANApplyNoop: the periodic resync when nothing drifted.
func BenchmarkVXLANApplyNoop(b *testing.B) {
	benchApply(b, "vxlan", func(i int) lease.Lease { return vxlanPeer(i, publicIP(i)) }, true)
}

func BenchmarkHostGWApply(b *testing.B) {
	benchApply(b, "host-gw", func(i int) lease.Lease { return hostgwPeer(i, publicIP(i)) }, false)
}

func BenchmarkHostGWApplyNoop(b *testing.B) {
	benchApply(b, "host-gw", func(i int) lease.Lease { return hostgwPeer(i, publicIP(i)) }, true)
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchJoinLeave: with n peers programmed, one more peer joins and leaves
// (two applies per op), through the delta path or through full passes.
func benchJoinLeave(b *testing.B, typ string, mk func(i int) lease.Lease, delta bool) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("peers=%d", n), func(b *testing.B) {
			l := newLab(b, hostAddr, swAddr)
			be := l.backend(b, typ, `{}`)
			ctx := context.Background()
			_, _, err := be.Init(ctx)
			must(b, err)
			base := benchPeers(n, mk)
			joined := snapshot(1, append(values(base.Peers), mk(n+2))...)
			must(b, be.Apply(ctx, base))
			apply := be.Apply
			if delta {
				apply = be.(deltaApplier).ApplyDelta
			}
			cpu0 := cpuTime()
			b.ResetTimer()
			for range b.N {
				must(b, apply(ctx, joined))
				must(b, apply(ctx, base))
			}
			b.StopTimer()
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/1000/float64(b.N), "cpu-ms/op")
			if got, want := len(kernelState(b, l.ns.Handle, "flannel.1")), len(kernelStateWant(typ, base)); got != want {
				b.Fatalf("kernel holds %d entries, want %d", got, want)
			}
		})
	}
}

// BenchmarkVXLANJoinLeaveDelta: one peer joins and leaves, applied as deltas.
func BenchmarkVXLANJoinLeaveDelta(b *testing.B) {
	benchJoinLeave(b, "vxlan", func(i int) lease.Lease { return vxlanPeer(i, publicIP(i)) }, true)
}

// BenchmarkVXLANJoinLeaveFull: the same through full passes (dump and diff).
func BenchmarkVXLANJoinLeaveFull(b *testing.B) {
	benchJoinLeave(b, "vxlan", func(i int) lease.Lease { return vxlanPeer(i, publicIP(i)) }, false)
}

func BenchmarkHostGWJoinLeaveDelta(b *testing.B) {
	benchJoinLeave(b, "host-gw", func(i int) lease.Lease { return hostgwPeer(i, publicIP(i)) }, true)
}

func BenchmarkHostGWJoinLeaveFull(b *testing.B) {
	benchJoinLeave(b, "host-gw", func(i int) lease.Lease { return hostgwPeer(i, publicIP(i)) }, false)
}

// BenchmarkVXLANResyncIdle10000: the periodic full pass at 10,000 peers
// when nothing drifted, as an idle weftd runs it: the collections of the
// interval before it have emptied the sync scratch pool. B/op is the
// garbage one such pass leaves (issue 12's idle garbage).
func BenchmarkVXLANResyncIdle10000(b *testing.B) {
	const n = 10000
	l := newLab(b, hostAddr, swAddr)
	be := l.backend(b, "vxlan", `{}`)
	ctx := context.Background()
	_, _, err := be.Init(ctx)
	must(b, err)
	full := benchPeers(n, func(i int) lease.Lease { return vxlanPeer(i, publicIP(i)) })
	must(b, be.Apply(ctx, full))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		runtime.GC() // a sync.Pool survives one collection, not two
		runtime.GC()
		b.StartTimer()
		must(b, be.Apply(ctx, full))
	}
}
