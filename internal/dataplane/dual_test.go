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

// dualHost is an overlayHost whose bridge, container and underlay also
// carry IPv6.
type dualHost struct {
	*overlayHost
	public6 netip.Addr
}

func newDualHost(t *testing.T, idx, mtu int) *dualHost {
	t.Helper()
	dh := &dualHost{overlayHost: newOverlayHost(t, idx, mtu), public6: netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x64, 15: byte(idx)})}
	enableIPv6(t, dh.ns)
	enableIPv6(t, dh.ctr)
	gw := peerSubnet6(idx).Addr().Next()
	addAddr6(t, dh.ns.Handle, "docker0", netip.PrefixFrom(gw, 64))
	addAddr6(t, dh.ctr.Handle, "eth0", netip.PrefixFrom(gw.Next(), 64))
	dh.ctr.MustRun(t, "ip", "-6", "route", "add", "default", "via", gw.String())
	return dh
}

func (dh *dualHost) ctrIP6() netip.Addr { return peerSubnet6(dh.idx).Addr().Next().Next() }

func (dh *dualHost) lease() lease.Lease {
	l := dh.overlayHost.lease()
	l.IPv6Subnet = peerSubnet6(dh.idx)
	l.Attrs.PublicIPv6 = dh.public6
	l.Attrs.BackendV6Data = dh.pub.BackendV6Data
	return l
}

// TestDualStackOverlayPing: two dual-stack hosts on a veth underlay run the
// dual backends through the loop; containers ping each other over IPv4 and
// IPv6, full-MTU packets with DF set included, and one byte more does not
// pass.
func TestDualStackOverlayPing(t *testing.T) {
	for _, c := range []struct {
		backend string
		mtu     int // the container MTU Init must advertise
	}{{"vxlan", 1430}, {"host-gw", 1500}} {
		t.Run(c.backend, func(t *testing.T) {
			a, b := newDualHost(t, 1, c.mtu), newDualHost(t, 2, c.mtu)
			must(t, netnstest.VethPair(a.ns, "eth0", b.ns, "eth0"))
			var snaps []chan<- lease.Snapshot
			for _, dh := range []*dualHost{a, b} {
				eth0, err := dh.ns.Handle.LinkByName("eth0")
				must(t, err)
				must(t, dh.ns.Handle.AddrAdd(eth0, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(dh.public, 24))}))
				addAddr6(t, dh.ns.Handle, "eth0", netip.PrefixFrom(dh.public6, 64))
				be, pub, ch := startBackend(t, dh.ns, dualConf(c.backend, `{}`), c.mtu)
				dh.b, dh.pub = be, pub
				snaps = append(snaps, ch)
			}
			own := func(dh *dualHost) lease.Lease {
				l := dh.lease()
				l.Attrs = lease.Attrs{} // the own lease's attributes do not matter to the dataplane
				return l
			}
			snaps[0] <- lease.Snapshot{Own: own(a), Peers: []*lease.Lease{new(b.lease())}}
			snaps[1] <- lease.Snapshot{Own: own(b), Peers: []*lease.Lease{new(a.lease())}}
			// IPv6 neighbour discovery on fresh links (link-local addresses
			// still in DAD) can cost a lost first packet and a second; wait
			// for the container→bridge and host→host hops first so that the
			// overlay's own latency shows below.
			for _, hop := range []struct {
				ns  *netnstest.NS
				dst netip.Addr
			}{{a.ctr, peerSubnet6(1).Addr().Next()}, {b.ctr, peerSubnet6(2).Addr().Next()}, {a.ns, b.public6}, {b.ns, a.public6}} {
				took := eventually(t, 5*time.Second, "ping "+hop.dst.String(), func() (bool, string) {
					out, err := hop.ns.Run("ping", "-6", "-c", "1", "-W", "1", hop.dst.String())
					return err == nil, out
				})
				t.Logf("%s reaches %s after %v", hop.ns.Name, hop.dst, took)
			}
			for _, pair := range [][2]*dualHost{{a, b}, {b, a}} {
				from, to := pair[0], pair[1]
				for _, fam := range []struct {
					flag   string
					dst    netip.Addr
					header int // IP + ICMP headers
				}{{"-4", to.ctrIP(), 28}, {"-6", to.ctrIP6(), 48}} {
					dst := fam.dst.String()
					took := eventually(t, 5*time.Second, "ping "+dst, func() (bool, string) {
						out, err := from.ctr.Run("ping", fam.flag, "-c", "1", "-W", "1", dst)
						return err == nil, out
					})
					t.Logf("%s → %s reachable after %v", from.ctrIP(), dst, took)
					from.ctr.MustRun(t, "ping", fam.flag, "-c", "3", "-i", "0.2", "-W", "1", "-M", "do", "-s", fmt.Sprint(c.mtu-fam.header), dst)
					if out, err := from.ctr.Run("ping", fam.flag, "-c", "1", "-W", "1", "-M", "do", "-s", fmt.Sprint(c.mtu-fam.header+1), dst); err == nil {
						t.Errorf("ping %s of %d bytes with DF passed through an MTU %d path: %s", fam.flag, c.mtu+1, c.mtu, out)
					}
				}
			}
		})
	}
}
