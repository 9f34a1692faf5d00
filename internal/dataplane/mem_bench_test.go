package dataplane

import (
	"runtime"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/lease"
)

// BenchmarkRenderMemory20000 is issue 12's dataplane side at 20,000 peers,
// without a kernel: the heap one desired state of the vxlan backend keeps
// per peer (routes, neighbours, FDB entries and, as on a kernel that makes
// them, nexthop objects), and what rendering it allocated per peer. It
// renders as the driver does (spec.render), not through Render, which
// also spells out the nexthop objects for its callers. The leases
// themselves are not counted: the lease manager owns them
// (lease.BenchmarkManagerMemory20000).
func BenchmarkRenderMemory20000(b *testing.B) {
	const n = 20000
	host := Host{IfaceName: "eth0", IfaceIndex: 2, IfaceAddr: publicIP(0), PublicIP: publicIP(0)}
	peers := make([]lease.Lease, n)
	for i := range peers {
		peers[i] = vxlanPeer(i+2, publicIP(i+2))
	}
	snap := snapshot(1, peers...)
	specs, err := specsFor(netconfOf("vxlan", `{}`), host)
	if err != nil {
		b.Fatal(err)
	}
	f := Facts{Dev: 7, Nexthops: true}
	var live, alloc float64
	for b.Loop() {
		b.StopTimer()
		var ms0, ms1 runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&ms0)
		b.StartTimer()
		d := specs[0].render(snap, f, nil)
		b.StopTimer()
		if d.Family != unix.AF_INET || d.NumRoutes() != n || d.NumNeighs() != n || d.NumFDB() != n || d.nhCount != n {
			b.Fatalf("rendered %d routes, %d neighbours, %d FDB entries, %d nexthops; want %d each", d.NumRoutes(), d.NumNeighs(), d.NumFDB(), d.nhCount, n)
		}
		runtime.ReadMemStats(&ms1)
		alloc += float64(ms1.TotalAlloc - ms0.TotalAlloc)
		runtime.GC()
		runtime.ReadMemStats(&ms1)
		live += float64(ms1.HeapAlloc) - float64(ms0.HeapAlloc)
		runtime.KeepAlive(d)
		b.StartTimer()
	}
	b.ReportMetric(live/float64(b.N)/n, "live-B/peer")
	b.ReportMetric(alloc/float64(b.N)/n, "alloc-B/peer")
}
