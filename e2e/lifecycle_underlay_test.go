package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/internal/lab"
	"github.com/weft-net/weft/internal/rtnl"
)

// recreateEth0 deletes host i's eth0 (a veth to the lab's br-int) and
// creates it again with addr, as a hot-plugged or re-bonded NIC comes back:
// a new ifindex, no routes, the address added last.
func recreateEth0(t *testing.T, l *lab.Lab, i int, addr netip.Addr) {
	t.Helper()
	h := l.Hosts[i]
	eth0, err := h.NS.Handle.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.NS.Handle.LinkDel(eth0); err != nil {
		t.Fatalf("delete %s eth0: %v", h.Name, err)
	}
	peer := fmt.Sprintf("h%d-int", i+1)
	if err := rtnl.VethPair(h.NS, "eth0", l.Underlay, peer); err != nil {
		t.Fatal(err)
	}
	br, err := l.Underlay.Handle.LinkByName("br-int")
	if err != nil {
		t.Fatal(err)
	}
	p, err := l.Underlay.Handle.LinkByName(peer)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Underlay.Handle.LinkSetMaster(p, br); err != nil {
		t.Fatal(err)
	}
	setEth0Addr(t, h, netip.Addr{}, addr)
}

// setEth0Addr replaces old (unless zero) by addr/24 on host h's eth0.
func setEth0Addr(t *testing.T, h *lab.Host, old, addr netip.Addr) {
	t.Helper()
	eth0, err := h.NS.Handle.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if old.IsValid() {
		if err := h.NS.Handle.AddrDel(eth0, &netlink.Addr{IPNet: hostNet(old)}); err != nil {
			t.Fatalf("%s: delete %s from eth0: %v", h.Name, old, err)
		}
	}
	if err := h.NS.Handle.AddrAdd(eth0, &netlink.Addr{IPNet: hostNet(addr)}); err != nil {
		t.Fatalf("%s: add %s to eth0: %v", h.Name, addr, err)
	}
}

// hostNet is a as a host address on a /24 (ipNet masks the address).
func hostNet(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(24, 32)}
}

// TestUnderlayNICRecreated deletes a host's NIC under its vxlan device (the
// kernel deletes flannel.1 with it) and recreates it with the same address
// while the containers ping: weftd rebuilds the dataplane on the new NIC and
// the pings come back. The recovery time (first answered ping after the
// NIC is back) is logged as MEASURED. The rebuilt device keeps the VtepMAC
// the lease publishes (dataplane.Host.VtepMAC), so peers' FDB entries stay
// right throughout.
func TestUnderlayNICRecreated(t *testing.T) {
	l := newLab(t, "vxlan", 2, "-healthz-port="+faultHealthPort)
	before, _ := readLease(t, l, l.Hosts[1].Subnet)
	if err := pings(l, []pair{{0, 1}, {1, 0}}, lab.PingOptions{}); err != nil {
		t.Fatal(err)
	}
	recreateEth0(t, l, 1, l.Hosts[1].Eth0IP)
	back := time.Now()
	waitFor(t, "NIC recreated: first ping answered both ways", back, 3*time.Second, 20*time.Second, func() error {
		return pings(l, []pair{{0, 1}, {1, 0}}, lab.PingOptions{Timeout: 100 * time.Millisecond})
	})
	after, _ := readLease(t, l, l.Hosts[1].Subnet)
	if before.BackendData.VtepMAC != after.BackendData.VtepMAC {
		t.Errorf("VtepMAC %s before, %s after the NIC was recreated: want it kept", before.BackendData.VtepMAC, after.BackendData.VtepMAC)
	}
	if after.PublicIP != l.Hosts[1].Eth0IP.String() {
		t.Errorf("lease PublicIP %s, want %s", after.PublicIP, l.Hosts[1].Eth0IP)
	}
	waitFor(t, "ready again", back, 3*time.Second, 10*time.Second, func() error { return allReadyz(l, 200, "ok") })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if r := l.Ping(ctx, 0, 1, lab.PingOptions{Count: 50, Interval: 10 * time.Millisecond}); r.Lost() != 0 {
		t.Errorf("after recovery: %v", r.Err)
	}
}

// TestUnderlayAddressChange changes a host's NIC address DHCP-style (the
// old one removed, a new one added): weftd rewrites its lease's PublicIP
// and the peers reach the host at the new address.
func TestUnderlayAddressChange(t *testing.T) {
	l := newLab(t, "vxlan", 2, "-healthz-port="+faultHealthPort)
	h := l.Hosts[1]
	newAddr := netip.MustParseAddr("10.64.3.112")
	setEth0Addr(t, h, h.Eth0IP, newAddr)
	start := time.Now()
	waitFor(t, "lease PublicIP follows the new address", start, 2*time.Second, 10*time.Second, func() error {
		v, ok := readLease(t, l, h.Subnet)
		if !ok || v.PublicIP != newAddr.String() {
			return fmt.Errorf("lease %+v", v)
		}
		return nil
	})
	waitFor(t, "peers reach the host at its new address", start, 3*time.Second, 15*time.Second, func() error {
		return pings(l, []pair{{0, 1}, {1, 0}}, lab.PingOptions{Timeout: 100 * time.Millisecond})
	})
	waitFor(t, "ready again", start, 3*time.Second, 10*time.Second, func() error { return allReadyz(l, 200, "ok") })
}
