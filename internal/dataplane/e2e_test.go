package dataplane

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/testutil/netnstest"
)

// overlayHost is one simulated machine: a host namespace with eth0 on the
// shared underlay, a docker0-like bridge holding the lease's first address,
// and a container namespace behind it.
type overlayHost struct {
	ns, ctr *netnstest.NS
	idx     int
	public  netip.Addr
	b       Backend
	pub     Published
	loop    *Loop // set by the starters that run one
}

func newOverlayHost(t *testing.T, idx int, mtu int) *overlayHost {
	t.Helper()
	oh := &overlayHost{idx: idx, ns: netnstest.New(t, "oh"), ctr: netnstest.New(t, "oc"),
		public: netip.AddrFrom4([4]byte{100, 64, 0, byte(idx)})}
	oh.ns.MustRun(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	h := oh.ns.Handle
	la := netlink.NewLinkAttrs()
	la.Name = "docker0"
	la.MTU = mtu
	must(t, h.LinkAdd(&netlink.Bridge{LinkAttrs: la}))
	br, err := h.LinkByName("docker0")
	must(t, err)
	gw := peerSubnet(idx).Addr().Next()
	must(t, h.AddrAdd(br, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(gw, 24))}))
	must(t, h.LinkSetUp(br))
	must(t, netnstest.VethPair(oh.ns, "vc", oh.ctr, "eth0"))
	vc, err := h.LinkByName("vc")
	must(t, err)
	must(t, h.LinkSetMaster(vc, br))
	must(t, h.LinkSetMTU(vc, mtu))
	ce, err := oh.ctr.Handle.LinkByName("eth0")
	must(t, err)
	must(t, oh.ctr.Handle.LinkSetMTU(ce, mtu))
	must(t, oh.ctr.Handle.AddrAdd(ce, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(gw.Next(), 24))}))
	must(t, oh.ctr.Handle.RouteAdd(&netlink.Route{Gw: gw.AsSlice()}))
	return oh
}

func (oh *overlayHost) ctrIP() netip.Addr { return peerSubnet(oh.idx).Addr().Next().Next() }

func (oh *overlayHost) lease() lease.Lease {
	return lease.Lease{Subnet: peerSubnet(oh.idx), Attrs: lease.Attrs{PublicIP: oh.public,
		BackendType: oh.pub.BackendType, BackendData: oh.pub.BackendData}}
}

// TestOverlayPing builds two "hosts" on a veth underlay, runs the real
// backends through NewLoop with hand-made snapshots, and pings container to
// container, including a full-MTU packet with DF set.
func TestOverlayPing(t *testing.T) {
	for _, c := range []struct {
		backend string
		mtu     int
	}{{"vxlan", 1450}, {"host-gw", 1500}} {
		t.Run(c.backend, func(t *testing.T) {
			a, b := newOverlayHost(t, 1, c.mtu), newOverlayHost(t, 2, c.mtu)
			must(t, netnstest.VethPair(a.ns, "eth0", b.ns, "eth0"))
			var snaps []chan<- lease.Snapshot
			for _, oh := range []*overlayHost{a, b} {
				eth0, err := oh.ns.Handle.LinkByName("eth0")
				must(t, err)
				must(t, oh.ns.Handle.AddrAdd(eth0, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(oh.public, 24))}))
				be, pub, ch := startBackend(t, oh.ns, netconfOf(c.backend, `{}`), c.mtu)
				oh.b, oh.pub = be, pub
				snaps = append(snaps, ch)
			}
			snaps[0] <- lease.Snapshot{Own: a.lease(), Peers: []*lease.Lease{new(b.lease())}}
			snaps[1] <- lease.Snapshot{Own: b.lease(), Peers: []*lease.Lease{new(a.lease())}}
			payload := fmt.Sprint(c.mtu - 28) // IPv4 + ICMP headers
			for _, pair := range [][2]*overlayHost{{a, b}, {b, a}} {
				from, to := pair[0], pair[1]
				eventually(t, 5*time.Second, "ping "+to.ctrIP().String(), func() (bool, string) {
					out, err := from.ctr.Run("ping", "-c", "1", "-W", "1", to.ctrIP().String())
					return err == nil, out
				})
				from.ctr.MustRun(t, "ping", "-c", "3", "-i", "0.2", "-W", "1", "-M", "do", "-s", payload, to.ctrIP().String())
			}
			// One byte more must not get through with DF set: the container
			// MTU advertised by Init is the whole budget.
			if out, err := a.ctr.Run("ping", "-c", "1", "-W", "1", "-M", "do", "-s", fmt.Sprint(c.mtu-27), b.ctrIP().String()); err == nil {
				t.Errorf("ping of %d bytes with DF passed through an MTU %d path: %s", c.mtu+1, c.mtu, out)
			}
		})
	}
}
