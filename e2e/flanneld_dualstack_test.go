package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/lab"
)

// dualStackConfig is the dual-stack network of the mixed test: TestDualStack's,
// with SubnetMax and IPv6SubnetMax keeping 172.30.240.0 and up and
// fd30:0:0:f000:: and up for the test's own leases (weft picks IPv6 subnets
// anywhere in the range, not paired with the IPv4 one as flannel does).
const dualStackConfig = `{"Network":"172.30.0.0/16","SubnetLen":24,"SubnetMax":"172.30.239.0","EnableIPv6":true,"IPv6Network":"fd30::/48","IPv6SubnetLen":64,"IPv6SubnetMax":"fd30:0:0:efff::","Backend":{"Type":"vxlan"}}`

// dualStackKey is a dual-stack lease's key, as flannel and weft write it:
// <prefix>/subnets/<v4>-<len>&<v6>-<len>.
func dualStackKey(l *lab.Lab, subnet, subnet6 netip.Prefix) string {
	return fmt.Sprintf("%s&%s-%d", lab.LeaseKey(l.Config().Prefix, subnet), subnet6.Masked().Addr(), subnet6.Bits())
}

// dualStackLease is the part of a dual-stack vxlan lease both sides read.
type dualStackLease struct {
	PublicIP, BackendType string
	PublicIPv6            *string
	BackendData           struct{ VtepMAC string }
	BackendV6Data         *struct{ VtepMAC string }
}

// TestFlanneldMixedDualStack: flanneld v0.28.10 next to weftd hosts on a
// dual-stack vxlan network (EnableIPv6, flannel-v6.1): every container pair
// pings over IPv4 and IPv6; flanneld's lease carries its IPv6 subnet, eth0's
// IPv6 address and flannel-v6.1's MAC, and weftctl shows it so; a lease
// with fields neither side knows (a later weft's, say) is programmed by
// both sides and dropped when deleted; a weftd host joining is reached by
// flanneld's container over both families; weft never writes flanneld's
// lease and flanneld logs no error or warning about any weft lease.
func TestFlanneldMixedDualStack(t *testing.T) {
	m := newMixedLabWith(t, lab.Config{Backend: "vxlan", IPv6: true, NetworkConfig: dualStackConfig}, "weftd", "weftd", "flanneld")
	l := m.Lab
	ctx := context.Background()
	const fl = 2 // the flanneld host

	pingBoth := func(what string, hosts ...int) {
		t.Helper()
		waitFor(t, what, time.Now(), 10*time.Second, 30*time.Second, func() error {
			for _, six := range []bool{false, true} {
				if err := pings(l, livePairs(hosts...), lab.PingOptions{IPv6: six, Timeout: 300 * time.Millisecond}); err != nil {
					return fmt.Errorf("IPv6 %t: %w", six, err)
				}
			}
			return nil
		})
	}
	pingBoth("dual-stack 2 weftd + 1 flanneld: every container pair pings over IPv4 and IPv6", 0, 1, fl)

	// flanneld's lease: its key names both subnets, its value eth0's IPv6
	// address and flannel-v6.1's MAC.
	h := l.Hosts[fl]
	key := dualStackKey(l, h.Subnet, h.Subnet6)
	resp, err := l.Etcd.Get(ctx, key)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("%s (flanneld): lease %s: %v (%d keys)", h.Name, key, err, len(resp.Kvs))
	}
	flannelKV := leaseKV{string(resp.Kvs[0].Value), resp.Kvs[0].ModRevision}
	t.Logf("flanneld %s dual-stack lease %s = %s", flanneldVersion, key, flannelKV.value)
	var v dualStackLease
	if err := json.Unmarshal(resp.Kvs[0].Value, &v); err != nil {
		t.Fatalf("%s: %v", key, err)
	}
	dev6, err := h.NS.Handle.LinkByName("flannel-v6.1")
	if err != nil {
		t.Fatalf("%s (flanneld): flannel-v6.1: %v", h.Name, err)
	}
	if v.PublicIP != h.Eth0IP.String() || v.PublicIPv6 == nil || *v.PublicIPv6 != h.Eth0IP6.String() ||
		v.BackendType != "vxlan" || v.BackendV6Data == nil || v.BackendV6Data.VtepMAC != dev6.Attrs().HardwareAddr.String() {
		t.Errorf("%s (flanneld): lease %s, want PublicIP %s, PublicIPv6 %s, BackendType vxlan, BackendV6Data.VtepMAC %s (flannel-v6.1)",
			h.Name, flannelKV.value, h.Eth0IP, h.Eth0IP6, dev6.Attrs().HardwareAddr)
	}
	if e, ok := weftctlLeases(t, l)[h.Subnet.String()]; !ok {
		t.Errorf("weftctl leases list: no %s (flanneld's lease)", h.Subnet)
	} else if e["ipv6Subnet"] != h.Subnet6.String() || e["publicIPv6"] != h.Eth0IP6.String() || e["vtepMAC"] != v.BackendData.VtepMAC {
		t.Errorf("weftctl leases list shows flanneld's dual-stack lease %s as %v; etcd holds %s", h.Subnet, e, flannelKV.value)
	}
	// weft's own leases, as flanneld read them: logged for the record.
	for _, i := range []int{0, 1} {
		r, err := l.Etcd.Get(ctx, dualStackKey(l, l.Hosts[i].Subnet, l.Hosts[i].Subnet6))
		if err != nil || len(r.Kvs) != 1 {
			t.Fatalf("%s (weftd): dual-stack lease: %v", l.Hosts[i].Name, err)
		}
		t.Logf("weftd %s dual-stack lease = %s", l.Hosts[i].Name, r.Kvs[0].Value)
	}

	// A lease with fields neither flannel v0.28 nor this weft knows, at the
	// top level and inside the backend data: both sides must program it
	// (route, neighbour and FDB entry on flannel.1 and flannel-v6.1), as
	// flannel's own decoder ignores unknown fields.
	extra := dualStackPeer{
		subnet: netip.MustParsePrefix("172.30.240.0/24"), subnet6: netip.MustParsePrefix("fd30:0:0:f000::/64"),
		publicIP: netip.MustParseAddr("10.64.3.240"), publicIP6: netip.MustParseAddr("fd64:3::f0"),
		mac: "0a:58:0a:40:03:f0", mac6: "0a:58:fd:64:03:f0",
	}
	value := fmt.Sprintf(`{"PublicIP":%q,"PublicIPv6":%q,"BackendType":"vxlan",`+
		`"BackendData":{"VNI":1,"VtepMAC":%q,"GBP":false,"FutureField":"weft-x"},`+
		`"BackendV6Data":{"VNI":1,"VtepMAC":%q,"FutureField":"weft-x"},`+
		`"Node":{"Name":"not-a-flannel-field","Labels":["a","b"]},"Revision":7}`,
		extra.publicIP, extra.publicIP6, extra.mac, extra.mac6)
	grant, err := l.Etcd.Grant(ctx, 600)
	if err != nil {
		t.Fatal(err)
	}
	extraKey := dualStackKey(l, extra.subnet, extra.subnet6)
	start := time.Now()
	if _, err := l.Etcd.Put(ctx, extraKey, value, clientv3.WithLease(grant.ID)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a lease with unknown fields programmed by every weftd and flanneld host (IPv4 and IPv6)", start, 2*time.Second, 15*time.Second, func() error {
		for _, h := range l.Hosts {
			if err := extra.programmed(h, true); err != nil {
				return err
			}
		}
		return nil
	})
	start = time.Now()
	if _, err := l.Etcd.Delete(ctx, extraKey); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the lease with unknown fields deleted: dropped by every weftd and flanneld host", start, 2*time.Second, 15*time.Second, func() error {
		for _, h := range l.Hosts {
			if err := extra.programmed(h, false); err != nil {
				return err
			}
		}
		return nil
	})

	// A weftd host joins: flanneld's container reaches it over both families.
	m.addHost(t, "weftd")
	pingBoth("dual-stack: a weftd host joined: every container pair pings over IPv4 and IPv6", 0, 1, fl, 3)

	if resp, err := l.Etcd.Get(ctx, key); err != nil || len(resp.Kvs) != 1 ||
		(leaseKV{string(resp.Kvs[0].Value), resp.Kvs[0].ModRevision}) != flannelKV {
		t.Errorf("flanneld's lease %s was rewritten or lost (%v): now %v, flanneld wrote %+v", key, err, resp.Kvs, flannelKV)
	}
	if bad := flanneldTrouble(t, h); len(bad) > 0 {
		t.Errorf("%s: flanneld logged %d errors or warnings next to dual-stack weft hosts:\n%s", h.Name, len(bad), strings.Join(bad, "\n"))
	}
}

// dualStackPeer is a dual-stack vxlan lease the test writes itself.
type dualStackPeer struct {
	subnet, subnet6     netip.Prefix
	publicIP, publicIP6 netip.Addr
	mac, mac6           string
}

// programmed checks that host h holds (want) or no longer holds (!want)
// everything for peer p on both vxlan devices: on flannel.1 the route,
// neighbour and FDB entry (vxlanPeerState), on flannel-v6.1 the route to
// the IPv6 subnet, the neighbour of its first address and the FDB entry
// towards PublicIPv6.
func (p dualStackPeer) programmed(h *lab.Host, want bool) error {
	ps, err := vxlanPeerState(h, p.subnet, p.mac, p.publicIP)
	if err != nil {
		return err
	}
	route6, err := h.NS.Run("ip", "-6", "route", "show", p.subnet6.String(), "dev", "flannel-v6.1")
	if err != nil {
		return err
	}
	neigh6, err := h.NS.Run("ip", "-6", "neigh", "show", p.subnet6.Addr().String(), "dev", "flannel-v6.1")
	if err != nil {
		return err
	}
	fdb6, err := h.NS.Run("bridge", "fdb", "show", "dev", "flannel-v6.1")
	if err != nil {
		return err
	}
	has := [...]bool{ps.route, ps.neigh, ps.fdb,
		strings.Contains(route6, p.subnet6.String()),
		strings.Contains(neigh6, "lladdr "+p.mac6),
		strings.Contains(fdb6, p.mac6+" dst "+p.publicIP6.String())}
	for i, got := range has {
		if got != want {
			return fmt.Errorf("%s for peer %s/%s: IPv4 route/neigh/fdb = %v/%v/%v, IPv6 route/neigh/fdb = %v/%v/%v, want all %v (check %d)\nip -6 route: %s\nip -6 neigh: %s\nfdb flannel-v6.1: %s",
				h.Name, p.subnet, p.subnet6, has[0], has[1], has[2], has[3], has[4], has[5], want, i, route6, neigh6, fdb6)
		}
	}
	return nil
}
