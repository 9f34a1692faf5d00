package doctor

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

// nhid is weftd's nexthop id of a peer subnet address: the address as a
// big-endian number.
func nhid(subnet string) string {
	a := netip.MustParseAddr(subnet).As4()
	return fmt.Sprint(binary.BigEndian.Uint32(a[:]))
}

// TestPeerRoutesThroughNexthops: the ops note's host with its peer routes
// in weftd's nexthop form (`nhid N`, N a proto 87 nexthop via the peer
// subnet's address dev flannel.1 onlink) is as healthy as with `via`
// routes, also with nexthop_compat_mode=0 (the route dump then names only
// the id); a nexthop going elsewhere fails the routes check naming the
// route, the nexthop and what it should be; a weft nexthop no lease asks
// for is stale; a wanted nexthop no route uses (flanneld took the route
// over) and another owner's nexthop are left alone.
func TestPeerRoutesThroughNexthops(t *testing.T) {
	h := newHost(t)
	if _, err := h.ns.Run("ip", "nexthop", "show"); err != nil {
		t.Skipf("this kernel or iproute2 has no nexthop objects: %v", err)
	}
	id1, id2 := nhid("172.30.83.0"), nhid("172.30.60.0")
	h.run(
		"ip nexthop add id "+id1+" via 172.30.83.0 dev flannel.1 onlink proto 87",
		"ip route replace 172.30.83.0/24 nhid "+id1+" proto 87",
		"ip nexthop add id "+id2+" via 172.30.60.0 dev flannel.1 onlink proto 87",
		"ip route replace 172.30.60.0/24 nhid "+id2+" proto 87",
	)
	if r := h.ns.MustRun(t, "ip", "route", "show", "172.30.83.0/24"); !strings.Contains(r, "nhid "+id1) {
		t.Fatalf("route not through the nexthop: %q", r)
	}
	h.wantHealthy()
	if _, err := h.ns.Run("sysctl", "-qw", "net.ipv4.nexthop_compat_mode=0"); err == nil {
		if r := h.ns.MustRun(t, "ip", "route", "show", "172.30.83.0/24"); strings.Contains(r, "via") {
			t.Logf("nexthop_compat_mode=0 still shows the gateway: %q", r)
		}
		h.wantHealthy()
		h.run("sysctl -qw net.ipv4.nexthop_compat_mode=1")
	} else {
		t.Logf("nexthop_compat_mode not settable here (%v): checked with the default only", err)
	}

	h.run("ip nexthop replace id " + id1 + " via 172.30.83.9 dev flannel.1 onlink proto 87")
	h.want(CheckRoutes, Fail, "1 of 2 routes missing: 172.30.83.0/24 via 172.30.83.0 onlink (the route goes through nexthop id "+id1+" via 172.30.83.9 dev flannel.1 onlink)")
	h.want(CheckRoutes, Fail, "1 stale nexthop objects: id "+id1+" via 172.30.83.9 dev flannel.1 onlink, want id "+id1+" via 172.30.83.0 dev flannel.1 onlink")
	h.run("ip nexthop replace id " + id1 + " via 172.30.83.0 dev flannel.1 onlink proto 87")
	h.wantHealthy()

	h.run("ip nexthop add id 99 via 172.30.99.0 dev flannel.1 onlink proto 87")
	h.want(CheckRoutes, Fail, "1 stale nexthop objects: id 99 via 172.30.99.0 dev flannel.1 onlink (no lease behind it)")
	h.run("ip nexthop del id 99")

	// flanneld's takeover: its via route replaces weft's, weft's nexthop
	// stays unused; another owner's nexthop is not weft's to judge.
	h.run(
		"ip route replace 172.30.83.0/24 via 172.30.83.0 dev flannel.1 onlink",
		"ip nexthop add id 7 via 172.30.7.0 dev flannel.1 onlink proto static",
	)
	h.wantHealthy()
}
