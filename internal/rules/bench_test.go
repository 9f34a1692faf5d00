package rules

import (
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/lease"
)

// cpuTime is this process's user+system CPU time so far: Check's cost at
// idle is CPU, not wall time spent waiting on a busy machine.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// Each benchmark runs in its own test namespace. Set alternates between two
// subnets so every iteration really rewrites the chains.
func benchSet(b *testing.B, nft bool) {
	_, m := newManager(b)
	d := desired()
	d.NFTables = nft
	subnets := []netip.Prefix{netip.MustParsePrefix("172.30.19.0/24"), netip.MustParsePrefix("172.30.83.0/24")}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		d.Subnet = subnets[i%2]
		i++
		if err := m.Set(d); err != nil {
			b.Fatal(err)
		}
	}
}

func benchCheck(b *testing.B, nft bool) {
	_, m := newManager(b)
	d := desired()
	d.NFTables = nft
	if err := m.Set(d); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	start := cpuTime(b)
	for b.Loop() {
		changed, err := m.Check()
		if err != nil || changed {
			b.Fatalf("Check = %v, %v on an unchanged kernel", changed, err)
		}
	}
	perOp := float64(cpuTime(b)-start) / float64(b.N)
	b.ReportMetric(perOp, "cpu-ns/op")
	// Share of one core when Check runs every 5 s (-iptables-resync default).
	b.ReportMetric(perOp/float64(5*time.Second)*100, "%core@5s")
}

func BenchmarkSetIptables(b *testing.B)   { benchSet(b, false) }
func BenchmarkSetNFTables(b *testing.B)   { benchSet(b, true) }
func BenchmarkCheckIptables(b *testing.B) { benchCheck(b, false) }
func BenchmarkCheckNFTables(b *testing.B) { benchCheck(b, true) }

// The first Set of a fresh namespace: what weftd pays at start.
func BenchmarkFirstSetIptables(b *testing.B) {
	for b.Loop() {
		b.StopTimer()
		_, m := newManager(b)
		b.StartTimer()
		if err := m.Set(desired()); err != nil {
			b.Fatal(err)
		}
	}
}

// Set when the kernel already holds the rules (a daemon restart).
func BenchmarkSetIptablesInPlace(b *testing.B) {
	_, m := newManager(b)
	if err := m.Set(desired()); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := m.Set(desired()); err != nil {
			b.Fatal(err)
		}
	}
}

// Dual-stack: both families' rules, checked in one pass.
func benchCheckDual(b *testing.B, nft bool) {
	_, m := newManager(b)
	d := desired6()
	d.NFTables = nft
	if err := m.Set(d); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	start := cpuTime(b)
	for b.Loop() {
		changed, err := m.Check()
		if err != nil || changed {
			b.Fatalf("Check = %v, %v on an unchanged kernel", changed, err)
		}
	}
	b.ReportMetric(float64(cpuTime(b)-start)/float64(b.N), "cpu-ns/op")
}

func BenchmarkCheckIptablesDual(b *testing.B) { benchCheckDual(b, false) }
func BenchmarkCheckNFTablesDual(b *testing.B) { benchCheckDual(b, true) }

// guardPeers returns n peers with distinct PublicIPs (and PublicIPv6 when six).
func guardPeers(n int, six bool) []*lease.Lease {
	out := make([]*lease.Lease, n)
	for i := range out {
		a := netip.AddrFrom4([4]byte{10, 100 + byte(i>>16), byte(i >> 8), byte(i)})
		out[i] = &lease.Lease{Attrs: lease.Attrs{PublicIP: a}}
		if six {
			out[i].Attrs.PublicIPv6 = netip.AddrFrom16([16]byte{0xfd, 0x99, 14: byte(i >> 8), 15: byte(i)})
		}
	}
	return out
}

// One join or leave among n peers: what the rules goroutine does per
// snapshot (the set difference and one netlink batch). Iterations alternate
// a join and the matching leave.
func benchGuardJoin(b *testing.B, n int) {
	_, m := newManager(b)
	if err := m.Set(guarded(true)); err != nil {
		b.Fatal(err)
	}
	peers := guardPeers(n+1, false)
	if err := m.SetPeers(peers[:n]); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		if err := m.SetPeers(peers[:n+i%2]); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkGuardJoin1000(b *testing.B) { benchGuardJoin(b, 1000) }
func BenchmarkGuardJoin5000(b *testing.B) { benchGuardJoin(b, 5000) }

// A full write of the guard with 5,000 peers (first start, or a repair of
// a deleted table): the whole table in one transaction.
func BenchmarkGuardFullWrite5000(b *testing.B) {
	_, m := newManager(b)
	if err := m.Set(guarded(true)); err != nil {
		b.Fatal(err)
	}
	peers := guardPeers(5000, false)
	b.ReportAllocs()
	for b.Loop() {
		m.guard.written = nil
		if err := m.SetPeers(peers); err != nil {
			b.Fatal(err)
		}
	}
}

// The periodic check with the guard of 5,000 peers intact: the traffic
// rules, the guard's structure, every element of its sets and its counter.
func BenchmarkCheckGuard5000(b *testing.B) {
	_, m := newManager(b)
	if err := m.Set(guarded(true)); err != nil {
		b.Fatal(err)
	}
	if err := m.SetPeers(guardPeers(5000, false)); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	start := cpuTime(b)
	for b.Loop() {
		changed, err := m.Check()
		if err != nil || changed {
			b.Fatalf("Check = %v, %v on an unchanged kernel", changed, err)
		}
	}
	perOp := float64(cpuTime(b)-start) / float64(b.N)
	b.ReportMetric(perOp, "cpu-ns/op")
	b.ReportMetric(perOp/float64(5*time.Second)*100, "%core@5s")
}

// All 5,000 peers leave in one snapshot and come back in the next
// (bench/overlay's bulk figure): two incremental batches of 5,000 elements.
func BenchmarkGuardLeaveAll5000(b *testing.B) {
	_, m := newManager(b)
	if err := m.Set(guarded(true)); err != nil {
		b.Fatal(err)
	}
	peers := guardPeers(5000, false)
	if err := m.SetPeers(peers); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	start := cpuTime(b)
	for b.Loop() {
		if err := m.SetPeers(nil); err != nil {
			b.Fatal(err)
		}
		if err := m.SetPeers(peers); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(cpuTime(b)-start)/float64(b.N), "cpu-ns/op")
}
