package dataplane

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/rtnl"
)

var (
	hostAddr = netip.MustParsePrefix("100.64.255.254/16")
	swAddr   = netip.MustParsePrefix("100.64.255.253/16")
)

func TestVXLANDevice(t *testing.T) {
	l := newLab(t, hostAddr, swAddr)
	ctx := context.Background()
	b := l.backend(t, "vxlan", `{"Type":"vxlan"}`)
	pub, mtu, err := b.Init(ctx)
	must(t, err)
	if mtu != 1450 {
		t.Errorf("Init MTU = %d, want 1450 on a 1500 underlay", mtu)
	}
	link, err := l.ns.Handle.LinkByName("flannel.1")
	must(t, err)
	vx, ok := link.(*netlink.Vxlan)
	if !ok {
		t.Fatalf("flannel.1 is %T, want vxlan", link)
	}
	eth0, _ := l.ns.Handle.LinkByName("eth0")
	got := map[string]any{
		"id": vx.VxlanId, "dstport": vx.Port, "learning": vx.Learning, "mtu": vx.MTU, "local": vx.SrcAddr.String(),
		"dev": vx.VtepDevIndex, "up": vx.Flags&net.FlagUp != 0, "gbp": vx.GBP,
	}
	want := map[string]any{
		"id": 1, "dstport": 8472, "learning": false, "mtu": 1450, "local": "100.64.255.254",
		"dev": eth0.Attrs().Index, "up": true, "gbp": false,
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("flannel.1 properties (-want +got):\n%s", d)
	}
	var data VXLANLeaseData
	must(t, json.Unmarshal(pub.BackendData, &data))
	if pub.BackendType != "vxlan" || data.VNI != 1 || data.VtepMAC != vx.HardwareAddr.String() {
		t.Errorf("Published = %s %s, want vxlan VNI 1 VtepMAC %s", pub.BackendType, pub.BackendData, vx.HardwareAddr)
	}

	must(t, b.Apply(ctx, snapshot(1)))
	if d := cmp.Diff(wantVXLAN(1), kernelState(t, l.ns.Handle, "flannel.1")); d != "" {
		t.Errorf("state after empty apply (-want +got):\n%s", d)
	}

	// A restart: a new backend on a new handle reuses the device and its MAC.
	must(t, b.Close())
	b2 := l.backend(t, "vxlan", `{"Type":"vxlan"}`)
	pub2, _, err := b2.Init(ctx)
	must(t, err)
	if string(pub2.BackendData) != string(pub.BackendData) {
		t.Errorf("after restart Published = %s, want the same %s", pub2.BackendData, pub.BackendData)
	}
	link2, _ := l.ns.Handle.LinkByName("flannel.1")
	if link2.Attrs().Index != vx.Index {
		t.Errorf("device was recreated on restart (index %d → %d)", vx.Index, link2.Attrs().Index)
	}
}

func TestVXLANOptions(t *testing.T) {
	l := newLab(t, hostAddr, swAddr)
	b := l.backend(t, "VXLAN", `{"Type":"vxlan","vni":7,"Port":4789,"GBP":true,"Learning":true,"MTU":1400}`)
	pub, mtu, err := b.Init(context.Background())
	must(t, err)
	link, err := l.ns.Handle.LinkByName("flannel.7")
	must(t, err)
	vx := link.(*netlink.Vxlan)
	if vx.VxlanId != 7 || vx.Port != 4789 || !vx.GBP || !vx.Learning || vx.MTU != 1400 || mtu != 1400 {
		t.Errorf("flannel.7 = id %d port %d gbp %t learning %t mtu %d (Init %d); want 7 4789 true true 1400",
			vx.VxlanId, vx.Port, vx.GBP, vx.Learning, vx.MTU, mtu)
	}
	if string(pub.BackendData) != `{"VNI":7,"VtepMAC":"`+vx.HardwareAddr.String()+`"}` {
		t.Errorf("BackendData = %s", pub.BackendData)
	}
}

func TestNewBackendErrors(t *testing.T) {
	h := &netlink.Handle{}
	for _, c := range []struct{ typ, opts string }{
		{"udp", `{}`}, {"bogus", `{}`}, {"vxlan", `{"VNI":-1}`}, {"vxlan", `{"VNI":16777216}`},
		{"vxlan", `{"Port":70000}`}, {"vxlan", `{"MTU":20}`}, {"vxlan", `{"VNI":"x"}`},
	} {
		_, err := NewBackend(netconfOf(c.typ, c.opts), Host{}, h, nil)
		if err == nil {
			t.Errorf("NewBackend(%s %s) = nil error", c.typ, c.opts)
			continue
		}
		t.Logf("%s %s: %v", c.typ, c.opts, err)
	}
	for _, typ := range []string{"vxlan", "host-gw", "alloc", "Host-GW"} {
		b, err := NewBackend(netconfOf(typ, `{}`), Host{}, h, nil)
		if err != nil {
			t.Errorf("NewBackend(%s): %v", typ, err)
			continue
		}
		must(t, b.Close()) // its rtnetlink socket; never used, so the root namespace is untouched
	}
}

// TestVXLANStates applies a sequence of desired states, in order and then
// shuffled, and compares the whole kernel state after each.
func TestVXLANStates(t *testing.T) {
	pub := func(i int) netip.Addr { return publicIP(i) }
	p := func(i int) lease.Lease { return vxlanPeer(i, pub(i)) }
	moved := vxlanPeer(2, netip.MustParseAddr("100.64.9.9")) // same subnet, new host address
	remac := vxlanPeer(3, pub(3))
	remac.Attrs.BackendData = json.RawMessage(`{"VNI":1,"VtepMAC":"02:57:ee:ee:ee:01"}`)
	states := []struct {
		name string
		snap lease.Snapshot
		want []string
	}{
		{"empty", snapshot(1), wantVXLAN(1)},
		{"one peer", snapshot(1, p(2)), wantVXLAN(1, p(2))},
		{"three peers", snapshot(1, p(2), p(3), p(4)), wantVXLAN(1, p(2), p(3), p(4))},
		{"peer moved host", snapshot(1, moved, p(3), p(4)), wantVXLAN(1, moved, p(3), p(4))},
		{"peer new MAC", snapshot(1, moved, remac, p(4)), wantVXLAN(1, moved, remac, p(4))},
		{"peer removed", snapshot(1, p(2), p(4)), wantVXLAN(1, p(2), p(4))},
		{"own subnet changed", snapshot(5, p(2), p(4)), wantVXLAN(5, p(2), p(4))},
		{"all gone", snapshot(5), wantVXLAN(5)},
	}
	l := newLab(t, hostAddr, swAddr)
	b := l.backend(t, "vxlan", `{}`)
	ctx := context.Background()
	_, _, err := b.Init(ctx)
	must(t, err)
	check := func(i int) {
		t.Helper()
		s := states[i]
		if err := b.Apply(ctx, s.snap); err != nil {
			t.Fatalf("%s: Apply: %v", s.name, err)
		}
		if d := cmp.Diff(s.want, kernelState(t, l.ns.Handle, "flannel.1")); d != "" {
			t.Fatalf("%s (-want +got):\n%s", s.name, d)
		}
	}
	for i := range states {
		check(i)
	}
	order := rand.Perm(len(states))
	t.Logf("shuffled order: %v", order)
	for _, i := range order {
		check(i)
	}
}

// TestVXLANBadPeers: garbage in a peer's lease skips that peer, not the rest.
func TestVXLANBadPeers(t *testing.T) {
	l := newLab(t, hostAddr, swAddr)
	b := l.backend(t, "vxlan", `{}`)
	ctx := context.Background()
	_, _, err := b.Init(ctx)
	must(t, err)
	good := vxlanPeer(2, publicIP(2))
	badMAC := vxlanPeer(3, publicIP(3))
	badMAC.Attrs.BackendData = json.RawMessage(`{"VNI":1,"VtepMAC":"zz:zz"}`)
	notJSON := vxlanPeer(4, publicIP(4))
	notJSON.Attrs.BackendData = json.RawMessage(`"nope"`)
	noIP := vxlanPeer(5, netip.Addr{})
	dupMAC := vxlanPeer(6, publicIP(6))
	dupMAC.Attrs.BackendData = good.Attrs.BackendData
	hostgw := hostgwPeer(7, publicIP(7))
	self := vxlanPeer(8, hostAddr.Addr())
	must(t, b.Apply(ctx, snapshot(1, good, badMAC, notJSON, noIP, dupMAC, hostgw, self)))
	if d := cmp.Diff(wantVXLAN(1, good), kernelState(t, l.ns.Handle, "flannel.1")); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
}

// TestVXLANStartCleansUp: a restart finds leftovers of leases that no longer
// exist (a weft route, a permanent neighbour, an FDB entry, the pre-0.7.0 /16
// address) and removes them, while entries that are right are not touched —
// no netlink change event for them at all.
func TestVXLANStartCleansUp(t *testing.T) {
	l := newLab(t, hostAddr, swAddr)
	ctx := context.Background()
	p2, p3, gone := vxlanPeer(2, publicIP(2)), vxlanPeer(3, publicIP(3)), vxlanPeer(9, publicIP(9))
	first := l.backend(t, "vxlan", `{}`)
	_, _, err := first.Init(ctx)
	must(t, err)
	must(t, first.Apply(ctx, snapshot(1, p2, p3, gone)))
	must(t, first.Close())
	dev, _ := l.ns.Handle.LinkByName("flannel.1")
	must(t, l.ns.Handle.AddrAdd(dev, &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix("10.129.1.0/16"))}))
	foreign := &netlink.Route{Dst: ipNet(netip.MustParsePrefix("192.0.2.0/24")), Gw: net.ParseIP("100.64.255.253"), LinkIndex: l.eth0(t)}
	must(t, l.ns.Handle.RouteAdd(foreign)) // somebody else's route: never touched

	// Watch every change in the namespace while the second daemon starts.
	var events []string
	done := make(chan struct{})
	rch := make(chan netlink.RouteUpdate, 1000)
	nch := make(chan netlink.NeighUpdate, 1000)
	lch := make(chan netlink.LinkUpdate, 1000)
	fd := l.ns.Fd()
	must(t, netlink.RouteSubscribeWithOptions(rch, done, netlink.RouteSubscribeOptions{Namespace: &fd}))
	must(t, netlink.NeighSubscribeWithOptions(nch, done, netlink.NeighSubscribeOptions{Namespace: &fd}))
	must(t, netlink.LinkSubscribeWithOptions(lch, done, netlink.LinkSubscribeOptions{Namespace: &fd}))
	defer close(done)

	second := l.backend(t, "vxlan", `{}`)
	_, _, err = second.Init(ctx)
	must(t, err)
	must(t, second.Apply(ctx, snapshot(1, p2, p3)))
	if d := cmp.Diff(append(wantVXLAN(1, p2, p3), "route 192.0.2.0/24 via 100.64.255.253 dev eth0"),
		kernelStateAll(t, l.ns.Handle)); d != "" {
		t.Errorf("after restart (-want +got):\n%s", d)
	}
	// Let the notifications of the apply arrive, then classify them.
	time.Sleep(100 * time.Millisecond) // only to collect stragglers; the assertions follow
collect:
	for {
		select {
		case u := <-rch:
			if u.Type == unix.RTM_NEWROUTE {
				events = append(events, "route add "+u.Dst.String())
			} else {
				events = append(events, "route del "+u.Dst.String())
			}
		case u := <-nch:
			kind := "neigh"
			if u.Family == unix.AF_BRIDGE {
				kind = "fdb"
			}
			op := " add "
			if u.Type == unix.RTM_DELNEIGH {
				op = " del "
			}
			e := kind + op + u.IP.String()
			if kind == "fdb" {
				e += " " + u.HardwareAddr.String()
			}
			events = append(events, e)
		case u := <-lch:
			events = append(events, "link "+u.Attrs().Name)
		default:
			break collect
		}
	}
	gw := gone.Subnet.Addr().String()
	allowed := map[string]bool{
		"route del " + gone.Subnet.String(): true,
		// deleting a neighbour first notifies its move to FAILED
		"neigh add " + gw: true,
		"neigh del " + gw: true,
		"fdb del " + publicIP(9).String() + " " + mac(9).String(): true,
		// the /16 address takes its connected, local and broadcast routes with it
		"route del 10.129.0.0/16": true, "route del 10.129.1.0/32": true, "route del 10.129.255.255/32": true,
	}
	for _, e := range events {
		if !allowed[e] {
			t.Errorf("unexpected kernel change at restart: %s", e)
		}
	}
	t.Logf("changes at restart: %q", events)
}

func (l *lab) eth0(t testing.TB) int {
	e, err := l.ns.Handle.LinkByName("eth0")
	must(t, err)
	return e.Attrs().Index
}

// kernelStateAll is kernelState plus every non-kernel IPv4 main-table route,
// to show that foreign routes survive.
func kernelStateAll(t testing.TB, h *netlink.Handle) []string {
	out := kernelState(t, h, "flannel.1")
	rs, err := h.RouteList(nil, netlink.FAMILY_V4)
	must(t, err)
	for _, r := range rs {
		if r.Protocol == unix.RTPROT_BOOT && r.Dst != nil {
			out = append(out, "route "+r.Dst.String()+" via "+r.Gw.String()+" dev eth0")
		}
	}
	return sortStrings(out)
}

// TestVXLANRepair runs the loop and damages the kernel state by hand: each
// piece comes back (by netlink event, well before the 10 s resync), and a
// deleted device is recreated with its MAC and fully re-programmed in < 1 s.
func TestVXLANRepair(t *testing.T) {
	l := newLab(t, hostAddr, swAddr)
	b := l.backend(t, "vxlan", `{}`)
	_, _, err := b.Init(context.Background())
	must(t, err)
	peers := []lease.Lease{vxlanPeer(2, publicIP(2)), vxlanPeer(3, publicIP(3)), vxlanPeer(4, publicIP(4))}
	want := wantVXLAN(1, peers...)
	snaps, loop := runLoop(t, b, time.Minute) // resync far away: repairs must come from events
	snaps <- snapshot(1, peers...)
	converged := func() (bool, string) {
		got := kernelState(t, l.ns.Handle, "flannel.1")
		d := cmp.Diff(want, got)
		return d == "", d
	}
	eventually(t, 5*time.Second, "initial apply", converged)
	h := l.ns.Handle
	dev, _ := h.LinkByName("flannel.1")
	oldMAC := dev.Attrs().HardwareAddr

	must(t, h.RouteDel(&netlink.Route{Dst: ipNet(peers[0].Subnet), Table: unix.RT_TABLE_MAIN, Protocol: rtnl.ProtWeft}))
	took := eventually(t, time.Second, "deleted route restored", converged)
	t.Logf("route restored in %v", took)

	must(t, h.NeighDel(&netlink.Neigh{LinkIndex: dev.Attrs().Index, Family: netlink.FAMILY_V4, IP: peers[1].Subnet.Addr().AsSlice()}))
	took = eventually(t, time.Second, "deleted neighbour restored", converged)
	t.Logf("neighbour restored in %v", took)

	must(t, h.NeighDel(&netlink.Neigh{LinkIndex: dev.Attrs().Index, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF,
		State: netlink.NUD_PERMANENT, HardwareAddr: mac(4), IP: publicIP(4).AsSlice()}))
	took = eventually(t, time.Second, "deleted FDB entry restored", converged)
	t.Logf("FDB entry restored in %v", took)

	must(t, h.LinkSetDown(dev))
	eventually(t, time.Second, "device set up again", func() (bool, string) {
		d, err := h.LinkByName("flannel.1")
		return err == nil && d.Attrs().Flags&net.FlagUp != 0, "down"
	})

	start := time.Now()
	must(t, h.LinkDel(dev))
	eventually(t, time.Second, "deleted device recreated and re-programmed", converged)
	t.Logf("device recreated and re-programmed in %v", time.Since(start))
	dev2, err := h.LinkByName("flannel.1")
	must(t, err)
	if dev2.Attrs().HardwareAddr.String() != oldMAC.String() {
		t.Errorf("recreated device MAC = %s, want the published %s", dev2.Attrs().HardwareAddr, oldMAC)
	}
	if last, err := loop.Status(); err != nil || last.IsZero() {
		t.Errorf("Status() = %v, %v; want a recent apply and no error", last, err)
	}
}

// TestVXLANResync: drift no event reports (a wrong MAC written over a
// neighbour) is repaired by the periodic resync.
func TestVXLANResync(t *testing.T) {
	l := newLab(t, hostAddr, swAddr)
	b := l.backend(t, "vxlan", `{}`)
	_, _, err := b.Init(context.Background())
	must(t, err)
	p := vxlanPeer(2, publicIP(2))
	snaps, _ := runLoop(t, b, 300*time.Millisecond)
	snaps <- snapshot(1, p)
	want := wantVXLAN(1, p)
	converged := func() (bool, string) {
		d := cmp.Diff(want, kernelState(t, l.ns.Handle, "flannel.1"))
		return d == "", d
	}
	eventually(t, 5*time.Second, "initial apply", converged)
	dev, _ := l.ns.Handle.LinkByName("flannel.1")
	must(t, l.ns.Handle.NeighSet(&netlink.Neigh{LinkIndex: dev.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
		IP: p.Subnet.Addr().AsSlice(), HardwareAddr: mac(99)}))
	eventually(t, 2*time.Second, "overwritten neighbour repaired by resync", converged)
}

func TestVXLANIncompatibleDevice(t *testing.T) {
	l := newLab(t, hostAddr, swAddr)
	la := netlink.NewLinkAttrs()
	la.Name = "flannel.1"
	la.HardwareAddr = net.HardwareAddr{0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee}
	must(t, l.ns.Handle.LinkAdd(&netlink.Vxlan{LinkAttrs: la, VxlanId: 1, Port: 4789, Learning: true, VtepDevIndex: l.eth0(t),
		SrcAddr: hostAddr.Addr().AsSlice()}))
	b := l.backend(t, "vxlan", `{}`)
	pub, _, err := b.Init(context.Background())
	must(t, err)
	link, _ := l.ns.Handle.LinkByName("flannel.1")
	vx := link.(*netlink.Vxlan)
	if vx.Port != 8472 || vx.Learning || vx.HardwareAddr.String() != "02:aa:bb:cc:dd:ee" {
		t.Errorf("after Init: dstport %d learning %t mac %s; want 8472 false 02:aa:bb:cc:dd:ee (MAC kept)", vx.Port, vx.Learning, vx.HardwareAddr)
	}
	if want := `{"VNI":1,"VtepMAC":"02:aa:bb:cc:dd:ee"}`; string(pub.BackendData) != want {
		t.Errorf("BackendData = %s, want %s", pub.BackendData, want)
	}
}

// TestVXLANDirectRouting: a peer on the underlay subnet gets a plain route
// via its address; a peer elsewhere gets the vxlan triple.
func TestVXLANDirectRouting(t *testing.T) {
	l := newLab(t, hostAddr, swAddr)
	b := l.backend(t, "vxlan", `{"DirectRouting":true}`)
	ctx := context.Background()
	_, _, err := b.Init(ctx)
	must(t, err)
	near := vxlanPeer(2, publicIP(2))
	far := vxlanPeer(3, netip.MustParseAddr("198.51.100.3"))
	must(t, b.Apply(ctx, snapshot(1, near, far)))
	want := sortStrings(append(wantVXLAN(1, far), "route 10.128.2.0/24 via 100.64.0.3 dev eth0"))
	if d := cmp.Diff(want, kernelState(t, l.ns.Handle, "flannel.1")); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
}

func TestBlackholeRoute(t *testing.T) {
	l := newLab(t, hostAddr, swAddr)
	host := l.host
	host.BlackholeRoute = true
	b := l.backendHost(t, "vxlan", `{}`, host)
	ctx := context.Background()
	_, _, err := b.Init(ctx)
	must(t, err)
	must(t, b.Apply(ctx, snapshot(1)))
	want := sortStrings(append(wantVXLAN(1), "route blackhole 10.128.1.0/24 metric 65536"))
	if d := cmp.Diff(want, kernelState(t, l.ns.Handle, "flannel.1")); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
}
