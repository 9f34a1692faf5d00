package lease

import (
	"math/rand/v2"
	"net/netip"
	"testing"
)

// TestPeerMapMatchesMap: a peerMap over a list (in an order that is not
// the subnets', as etcd's key order is not), then random puts and deletes
// of listed and new keys — IPv4-only, dual-stack and IPv6-only — agrees
// with a plain map after every step: get, len and all.
func TestPeerMapMatchesMap(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	key := func() [2]netip.Prefix {
		n := byte(r.IntN(64))
		v4 := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, n, 0}), 24)
		var v6 netip.Prefix
		switch r.IntN(8) {
		case 0, 1:
			v6 = netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfc, 7: n}), 64)
		case 2:
			v4, v6 = netip.Prefix{}, netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 7: n}), 64)
		}
		return [2]netip.Prefix{v4, v6}
	}
	ref := map[[2]netip.Prefix]*Lease{}
	var list []Lease
	for range 60 {
		if k := key(); ref[k] == nil {
			ref[k] = &Lease{}
			list = append(list, Lease{Subnet: k[0], IPv6Subnet: k[1]})
		}
	}
	p := newPeerMap(list)
	for i := range list {
		ref[[2]netip.Prefix{list[i].Subnet, list[i].IPv6Subnet}] = &list[i]
	}
	check := func(step int) {
		t.Helper()
		if p.len() != len(ref) {
			t.Fatalf("step %d: len %d, want %d", step, p.len(), len(ref))
		}
		for k, want := range ref {
			if got, ok := p.get(k[0], k[1]); !ok || got != want {
				t.Fatalf("step %d: get %v = %p, %v; want %p", step, k, got, ok, want)
			}
		}
		seen := map[*Lease]bool{}
		for l := range p.all() {
			if seen[l] || ref[[2]netip.Prefix{l.Subnet, l.IPv6Subnet}] != l {
				t.Fatalf("step %d: all yields %v %v twice or not stored", step, l.Subnet, l.IPv6Subnet)
			}
			seen[l] = true
		}
		if len(seen) != len(ref) {
			t.Fatalf("step %d: all yields %d leases, want %d", step, len(seen), len(ref))
		}
	}
	check(0)
	for step := 1; step <= 3000; step++ {
		k := key()
		if r.IntN(2) == 0 {
			l := &Lease{Subnet: k[0], IPv6Subnet: k[1]}
			p.put(l)
			ref[k] = l
		} else {
			p.del(k[0], k[1])
			delete(ref, k)
		}
		if k := key(); ref[k] == nil {
			if l, ok := p.get(k[0], k[1]); ok {
				t.Fatalf("step %d: get %v = %p, want none", step, k, l)
			}
		}
		check(step)
	}
}
