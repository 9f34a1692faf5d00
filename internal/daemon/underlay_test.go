package daemon

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/internal/rtnl"
)

// TestOverlaps: in a namespace of its own, docker0 with the lease's gateway
// and flannel.1 with the lease's /32 are what weft expects; cni0 with an
// address inside the Network but outside the lease, and a bridge whose /8
// covers the Network, overlap; docker0's 192.168.x (Docker started first,
// the seed's case) lies outside the Network and is not this check's.
func TestOverlaps(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace")
	}
	ns, err := rtnl.CreateNS(fmt.Sprintf("weft-ovl-%d", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	add := func(name string, addrs ...string) {
		t.Helper()
		la := netlink.NewLinkAttrs()
		la.Name = name
		if err := ns.Handle.LinkAdd(&netlink.Bridge{LinkAttrs: la}); err != nil {
			t.Fatalf("add bridge %s: %v", name, err)
		}
		l, err := ns.Handle.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range addrs {
			p := netip.MustParsePrefix(a)
			ipn := &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}
			if err := ns.Handle.AddrAdd(l, &netlink.Addr{IPNet: ipn}); err != nil {
				t.Fatalf("add %s to %s: %v", a, name, err)
			}
		}
	}
	network, own := netip.MustParsePrefix("172.30.0.0/16"), netip.MustParsePrefix("172.30.5.0/24")
	add("docker0", "172.30.5.1/24", "192.168.0.1/20")
	add("flannel.1", "172.30.5.0/32")
	got, err := overlaps(ns.Handle, network, own)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 0 {
		t.Errorf("expected addresses reported as overlapping: %q", got)
	}
	add("cni0", "172.30.9.1/24")
	add("br-wide", "172.0.0.1/8")
	got, err = overlaps(ns.Handle, network, own)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"br-wide has 172.0.0.1/8", "cni0 has 172.30.9.1/24"}
	if !slices.Equal(got, want) {
		t.Errorf("overlaps %q, want %q", got, want)
	}
}
