package rtnl_test

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/rtnl"
	"github.com/weft-net/weft/internal/testutil/netnstest"
)

// TestNexthopsInKernel: in a namespace with a vxlan device, weft's nexthop
// (onlink, proto 87) and a route through it go in as one batch each; the
// dumps read back the nexthop and the route's id, and (nexthop_compat_mode,
// the default) its gateway, device and onlink flag; ip shows what the
// flanneld route shows plus the id; deleting the dumped route by its id
// works; removing the nexthop is notified (the kernel sends no route
// notification for the routes it takes with it).
func TestNexthopsInKernel(t *testing.T) {
	ns := netnstest.New(t, "wnh")
	ns.MustRun(t, "ip", "link", "add", "flannel.1", "type", "vxlan", "id", "1", "dstport", "8472", "nolearning")
	ns.MustRun(t, "ip", "link", "set", "flannel.1", "up")
	fd := ns.Fd()
	c, err := rtnl.Open(&fd)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ok, err := c.ProbeNexthops()
	if err != nil || !ok {
		t.Skipf("this kernel makes no nexthop objects (probe: %v, %v)", ok, err)
	}
	if out := ns.MustRun(t, "ip", "nexthop", "show"); strings.TrimSpace(out) != "" {
		t.Errorf("the probe left a nexthop behind: %q", out)
	}
	var dev int
	if err := ns.Do(func() error {
		i, err := netIndex("flannel.1")
		dev = i
		return err
	}); err != nil {
		t.Fatal(err)
	}
	updates := make(chan rtnl.NexthopUpdate, 16)
	done := make(chan struct{})
	defer close(done)
	if err := rtnl.SubscribeNexthops(&fd, updates, done, 0); err != nil {
		t.Fatal(err)
	}

	nh := rtnl.Nexthop{ID: 0x0a000100, Gw: netip.MustParseAddr("10.0.1.0"), Link: dev, OnLink: true}
	dst := netip.MustParsePrefix("10.0.1.0/24")
	var fails []error
	b := rtnl.NewBatch(c, func(_ int, err error) bool { fails = append(fails, err); return true })
	b.ReplaceNexthop(0, nh)
	b.Flush()
	b.ReplaceRoute(1, unix.AF_INET, rtnl.RouteSpec{Dst: dst, Gw: nh.Gw, Link: dev, OnLink: true, NhID: nh.ID})
	b.Flush()
	if len(fails) > 0 {
		t.Fatalf("writes failed: %v", fails)
	}
	var nhs []rtnl.Nexthop
	if err := c.DumpNexthops(func(n rtnl.Nexthop) { nhs = append(nhs, n) }); err != nil {
		t.Fatal(err)
	}
	if len(nhs) != 1 || nhs[0].ID != nh.ID || nhs[0].Gw != nh.Gw || nhs[0].Link != dev || !nhs[0].OnLink ||
		nhs[0].Protocol != uint8(rtnl.ProtWeft) || nhs[0].Other {
		t.Errorf("nexthop dump = %+v, want %v proto 87", nhs, nh)
	}
	var routes []rtnl.Route
	if err := c.DumpRoutes(unix.AF_INET, func(r rtnl.Route) {
		if r.Dst == dst {
			routes = append(routes, r)
		}
	}); err != nil {
		t.Fatal(err)
	}
	if len(routes) != 1 || routes[0].NhID != nh.ID || routes[0].Protocol != uint8(rtnl.ProtWeft) || routes[0].Other {
		t.Fatalf("route dump = %+v, want one proto 87 route with nhid %d", routes, nh.ID)
	}
	compat := strings.TrimSpace(ns.MustRun(t, "cat", "/proc/sys/net/ipv4/nexthop_compat_mode"))
	if r := routes[0]; compat == "1" && (r.Gw != nh.Gw || r.Link != dev || r.Flags&unix.RTNH_F_ONLINK == 0) {
		t.Errorf("with nexthop_compat_mode=1 the route reads %v flags %#x, want via %s dev #%d onlink", r, r.Flags, nh.Gw, dev)
	}
	out := ns.MustRun(t, "ip", "route", "show", "proto", "87")
	if !strings.Contains(out, "10.0.1.0/24 nhid 167772416 via 10.0.1.0 dev flannel.1") || !strings.Contains(out, "onlink") {
		t.Errorf("ip route shows %q, want 10.0.1.0/24 nhid 167772416 via 10.0.1.0 dev flannel.1 … onlink", out)
	}

	d := rtnl.NewBatch(c, func(_ int, err error) bool { fails = append(fails, err); return true })
	d.DeleteRoute(0, unix.AF_INET, routes[0])
	d.Flush()
	if len(fails) > 0 {
		t.Fatalf("delete of the dumped route failed: %v", fails)
	}
	if out := ns.MustRun(t, "ip", "route", "show", "proto", "87"); strings.TrimSpace(out) != "" {
		t.Errorf("route still there after its delete: %q", out)
	}
	d.DeleteNexthop(1, nh.ID)
	d.Flush()
	if len(fails) > 0 {
		t.Fatalf("delete of the nexthop failed: %v", fails)
	}
	deadline := time.After(5 * time.Second)
	for {
		select {
		case u := <-updates:
			if u.Deleted && u.ID == nh.ID {
				return
			}
		case <-deadline:
			t.Fatal("no RTM_DELNEXTHOP notification for the deleted nexthop in 5 s")
		}
	}
}

func netIndex(name string) (int, error) {
	i, err := net.InterfaceByName(name)
	if err != nil {
		return 0, err
	}
	return i.Index, nil
}
