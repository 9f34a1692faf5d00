package dataplane

import (
	"testing"

	"github.com/weft-net/weft/internal/lease"
)

// The in-kernel path serves a peer only when its lease says it decapsulates
// in the kernel (WeftUDPKernelDecap), and its counters (UDPKernelStats, the
// weft_udp_kernel_* metrics) show it: zero while the leases do not say so
// (the engines forward), then both directions counted on both hosts.
func TestUDPKernelDecapAndStats(t *testing.T) {
	hosts, _ := udpHosts(t, 1472, 1472)
	a, b := hosts[0], hosts[1]
	sa, sb := startUDP(t, a), startUDP(t, b)
	if !UDPKernelDecap(a.b) || !UDPKernelDecap(b.b) {
		t.Skip("the kernel refused the in-kernel path (needs tcx, ≥ 6.6)")
	}
	snap := func(own, peer *overlayHost, decap bool) {
		s := udpSnap(own, peer)
		s.Peers[0].Attrs.UDPKernelDecap = decap
		map[*overlayHost]chan<- lease.Snapshot{a: sa, b: sb}[own] <- s
	}
	snap(a, b, false)
	snap(b, a, false)
	pingOK(t, a, b)
	pingOK(t, b, a)
	for _, h := range hosts {
		if st := UDPKernelStats(h.b)(); st.Encapsulated != 0 || st.Decapsulated != 0 {
			t.Errorf("host %d: in-kernel counters %+v with peers that do not decapsulate in the kernel, want 0", h.idx, st)
		}
	}
	snap(a, b, true)
	snap(b, a, true)
	pingOK(t, a, b)
	pingOK(t, b, a)
	eng := a.b.(*backend).udpDev.Stats()
	for i := 0; i < 3; i++ {
		pingOK(t, a, b)
	}
	if after := a.b.(*backend).udpDev.Stats(); after != eng {
		t.Errorf("host 1's engine counters moved across pings in the kernel: %+v -> %+v", eng, after)
	}
	for _, h := range hosts {
		if st := UDPKernelStats(h.b)(); st.Encapsulated < 3 || st.Decapsulated < 3 {
			t.Errorf("host %d: in-kernel counters %+v after pings both ways, want at least 3 each", h.idx, st)
		}
	}
}
