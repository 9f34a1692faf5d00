package dataplane

import (
	"context"
	"testing"

	"github.com/weft-net/weft/internal/lease"
)

// BenchmarkVXLANDeleteAllDelta is bench/overlay's bulk figure in the
// backend: all 5,000 peers leave in one delta, then come back in one.
func BenchmarkVXLANDeleteAllDelta(b *testing.B) {
	l := newLab(b, hostAddr, swAddr)
	be := l.backend(b, "vxlan", `{}`)
	ctx := context.Background()
	_, _, err := be.Init(ctx)
	must(b, err)
	full, empty := benchPeers(5000, func(i int) lease.Lease { return vxlanPeer(i, publicIP(i)) }), snapshot(1)
	must(b, be.Apply(ctx, full))
	d := be.(deltaApplier)
	b.ResetTimer()
	for range b.N {
		must(b, d.ApplyDelta(ctx, empty))
		b.StopTimer()
		must(b, d.ApplyDelta(ctx, full))
		b.StartTimer()
	}
}
