package rtnl

import (
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// TestNexthopEncoding: a nexthop weft writes carries its id, device and
// gateway, the onlink flag and proto 87, and reads back the same; a route
// through it names only the id (the kernel refuses a gateway or device
// beside one), and the delete of such a dumped route names the id, not the
// gateway the dump also reports.
func TestNexthopEncoding(t *testing.T) {
	n := Nexthop{ID: 0x0a000100, Gw: netip.MustParseAddr("10.0.1.0"), Link: 7, OnLink: true}
	b := appendNexthop(nil, n)
	if b[0] != unix.AF_INET || b[2] != uint8(ProtWeft) || native.Uint32(b[4:])&unix.RTNH_F_ONLINK == 0 {
		t.Errorf("nhmsg = % x, want family AF_INET, proto 87 and RTNH_F_ONLINK", b[:8])
	}
	got, ok := parseNexthop(b)
	want := n
	want.Family, want.Protocol = unix.AF_INET, uint8(ProtWeft)
	if !ok || got != want {
		t.Errorf("parsed %+v (ok %v), want %+v", got, ok, want)
	}
	if d, ok := parseNexthop(appendNexthopDel(nil, 42)); !ok || d.ID != 42 || !d.Other {
		t.Errorf("delete payload parses as %+v (ok %v), want id 42 without gateway", d, ok)
	}

	w := RouteSpec{Dst: netip.MustParsePrefix("10.0.1.0/24"), Gw: n.Gw, Link: 7, OnLink: true, NhID: n.ID}
	rb := appendRouteSpec(nil, unix.AF_INET, w)
	if native.Uint32(rb[8:])&unix.RTNH_F_ONLINK != 0 {
		t.Error("route through a nexthop carries RTNH_F_ONLINK; the nexthop holds it")
	}
	var types []uint16
	for a := WalkAttrs(rb[unix.SizeofRtMsg:]); a.Next(); {
		types = append(types, a.Type)
	}
	if len(types) != 2 || types[0] != unix.RTA_DST || types[1] != rtaNHID {
		t.Errorf("route attributes %v, want [RTA_DST RTA_NH_ID] only", types)
	}
	r, ok := parseRoute(rb, unix.AF_INET)
	if !ok || r.NhID != n.ID || r.Other || r.Gw.IsValid() {
		t.Errorf("parsed route %+v (ok %v), want NhID %d, no gateway, not Other", r, ok, n.ID)
	}
	r.Gw, r.Link = n.Gw, 7 // as a dump in nexthop_compat_mode reports it
	types = types[:0]
	db := appendRouteDel(nil, unix.AF_INET, r)
	for a := WalkAttrs(db[unix.SizeofRtMsg:]); a.Next(); {
		types = append(types, a.Type)
	}
	if len(types) != 2 || types[1] != rtaNHID {
		t.Errorf("delete of a nexthop route has attributes %v, want [RTA_DST RTA_NH_ID]", types)
	}
}
