package decommission

import (
	"slices"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/testutil/netnstest"
)

// TestLocalRemovesNexthops: in a namespace holding weftd's vxlan state in
// its nexthop form, Local leaves no weft nexthop object (proto 87): the
// ones on flannel.1 go with the device (the kernel removes a device's
// nexthops, so Local does not name them), one on another device is
// deleted with the route through it and named; another owner's nexthop
// and its route stay; a second run removes nothing.
func TestLocalRemovesNexthops(t *testing.T) {
	ns := netnstest.New(t, "dcn")
	if _, err := ns.Run("ip", "nexthop", "show"); err != nil {
		t.Skipf("this kernel or iproute2 has no nexthop objects: %v", err)
	}
	for _, c := range []string{
		"ip link add eth0 type veth peer name eth1",
		"ip link set eth0 up",
		"ip link set eth1 up",
		"ip link add flannel.1 type vxlan id 1 dstport 8472 nolearning dev eth0",
		"ip link set flannel.1 up",
		"ip nexthop add id 167838208 via 10.1.2.0 dev flannel.1 onlink proto 87",
		"ip route add 10.1.2.0/24 nhid 167838208 proto 87",
		"ip nexthop add id 167838464 via 10.9.0.1 dev eth0 onlink proto 87",
		"ip route add 10.1.3.0/24 nhid 167838464 proto 87",
		"ip nexthop add id 7 via 10.9.0.2 dev eth0 onlink proto static",
		"ip route add 10.1.7.0/24 nhid 7 proto static",
	} {
		ns.MustRun(t, strings.Fields(c)...)
	}

	var removed []string
	if err := ns.Do(func() (err error) { removed, err = Local(nil); return err }); err != nil {
		t.Fatalf("Local: %v (removed %q)", err, removed)
	}
	t.Logf("removed: %q", removed)
	if !slices.Contains(removed, "device flannel.1") || !slices.ContainsFunc(removed, func(s string) bool {
		return strings.HasPrefix(s, "nexthop id 167838464 via 10.9.0.1")
	}) {
		t.Errorf("removed %q, want device flannel.1 and nexthop id 167838464 via 10.9.0.1", removed)
	}
	if slices.ContainsFunc(removed, func(s string) bool { return strings.HasPrefix(s, "nexthop id 167838208") }) {
		t.Errorf("removed %q names flannel.1's nexthop, which went with the device", removed)
	}
	if out := ns.MustRun(t, "ip", "nexthop", "show", "proto", "87"); strings.TrimSpace(out) != "" {
		t.Errorf("weft nexthops left: %q", out)
	}
	if out := ns.MustRun(t, "ip", "route", "show", "proto", "87"); strings.TrimSpace(out) != "" {
		t.Errorf("weft routes left: %q", out)
	}
	if out := ns.MustRun(t, "ip", "nexthop", "show", "id", "7"); !strings.Contains(out, "via 10.9.0.2") {
		t.Errorf("another owner's nexthop 7 was removed: %q", out)
	}
	if out := ns.MustRun(t, "ip", "route", "show", "10.1.7.0/24"); !strings.Contains(out, "nhid 7") {
		t.Errorf("another owner's route through nexthop 7 was removed: %q", out)
	}

	if err := ns.Do(func() (err error) { removed, err = Local(nil); return err }); err != nil || len(removed) != 0 {
		t.Errorf("second run: removed %q, err %v; want nothing", removed, err)
	}
}
