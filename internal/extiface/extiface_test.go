package extiface

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/internal/testutil/netnstest"
)

// opsNoteHost builds the ops note's host inside a test namespace: eth0 is
// internal (10.64.3.7/26, 10.0.0.0/8 behind it), eth2 is public
// (120.92.8.114/28) and holds the default route; eth5 has no address.
func opsNoteHost(t *testing.T, withDefault bool) *netnstest.NS {
	t.Helper()
	host := netnstest.New(t, "xif")
	peer := netnstest.New(t, "xip")
	for _, p := range [][2]string{{"eth0", "p0"}, {"eth2", "p2"}, {"eth5", "p5"}} {
		if err := netnstest.VethPair(host, p[0], peer, p[1]); err != nil {
			t.Fatal(err)
		}
	}
	addAddr(t, host, "eth0", "10.64.3.7/26")
	addAddr(t, host, "eth2", "120.92.8.114/28")
	host.MustRun(t, "ip", "route", "add", "10.0.0.0/8", "via", "10.64.3.62", "dev", "eth0")
	if withDefault {
		host.MustRun(t, "ip", "route", "add", "default", "via", "120.92.8.126", "dev", "eth2")
	}
	return host
}

func addAddr(t *testing.T, ns *netnstest.NS, dev, cidr string) {
	t.Helper()
	l, err := ns.Handle.LinkByName(dev)
	if err != nil {
		t.Fatal(err)
	}
	ip, n, err := net.ParseCIDR(cidr)
	if err != nil {
		t.Fatal(err)
	}
	n.IP = ip
	if err := ns.Handle.AddrAdd(l, &netlink.Addr{IPNet: n}); err != nil {
		t.Fatalf("add %s to %s: %v", cidr, dev, err)
	}
}

func TestSelect(t *testing.T) {
	host := opsNoteHost(t, true)
	eth0, _ := host.Handle.LinkByName("eth0")
	eth2, _ := host.Handle.LinkByName("eth2")

	cases := []struct {
		name      string
		opts      Options
		wantName  string
		wantAddr  string
		wantPubIP string
	}{
		{"no flag: default route", Options{}, "eth2", "120.92.8.114", "120.92.8.114"},
		{"-iface=eth0", Options{Ifaces: []string{"eth0"}}, "eth0", "10.64.3.7", "10.64.3.7"},
		{"-iface by IP", Options{Ifaces: []string{"10.64.3.7"}}, "eth0", "10.64.3.7", "10.64.3.7"},
		{"-iface order: first that exists wins", Options{Ifaces: []string{"eth9", "eth2", "eth0"}}, "eth2", "120.92.8.114", "120.92.8.114"},
		{"-iface order: second", Options{Ifaces: []string{"eth0", "eth2"}}, "eth0", "10.64.3.7", "10.64.3.7"},
		{"-iface before regex", Options{Ifaces: []string{"eth2"}, IfaceRegex: []string{"^eth0$"}}, "eth2", "120.92.8.114", "120.92.8.114"},
		{"failed -iface falls through to regex", Options{Ifaces: []string{"eth9"}, IfaceRegex: []string{"^eth0$"}}, "eth0", "10.64.3.7", "10.64.3.7"},
		{"regex by address", Options{IfaceRegex: []string{`^10\.64\.`}}, "eth0", "10.64.3.7", "10.64.3.7"},
		{"regex by name", Options{IfaceRegex: []string{"^eth2$"}}, "eth2", "120.92.8.114", "120.92.8.114"},
		{"regex address before name", Options{IfaceRegex: []string{`^(eth0|120\.92\.8\.114)$`}}, "eth2", "120.92.8.114", "120.92.8.114"},
		{"regex skips loopback", Options{IfaceRegex: []string{"2"}}, "eth2", "120.92.8.114", "120.92.8.114"},
		{"regex: several, first that matches", Options{IfaceRegex: []string{"^nope", "^eth0$"}}, "eth0", "10.64.3.7", "10.64.3.7"},
		{"can-reach internal", Options{CanReach: "10.200.1.1"}, "eth0", "10.64.3.7", "10.64.3.7"},
		{"can-reach public", Options{CanReach: "192.0.2.1"}, "eth2", "120.92.8.114", "120.92.8.114"},
		{"regex before can-reach", Options{IfaceRegex: []string{"^eth2$"}, CanReach: "10.200.1.1"}, "eth2", "120.92.8.114", "120.92.8.114"},
		{"public-ip overrides", Options{Ifaces: []string{"eth0"}, PublicIP: "203.0.113.9"}, "eth0", "10.64.3.7", "203.0.113.9"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Select(host.Handle, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			if got.Name != tc.wantName || got.IfaceAddr.String() != tc.wantAddr || got.PublicIP.String() != tc.wantPubIP {
				t.Fatalf("got %s %s public %s, want %s %s public %s", got.Name, got.IfaceAddr, got.PublicIP, tc.wantName, tc.wantAddr, tc.wantPubIP)
			}
			want := eth0.Attrs()
			if tc.wantName == "eth2" {
				want = eth2.Attrs()
			}
			if got.Index != want.Index || got.MTU != want.MTU || got.MTU == 0 {
				t.Fatalf("index/mtu %d/%d, want %d/%d", got.Index, got.MTU, want.Index, want.MTU)
			}
		})
	}
}

func TestSelectPrimaryAddress(t *testing.T) {
	host := opsNoteHost(t, true)
	// A second address in the same subnet becomes secondary; one in another
	// subnet is a second primary, listed after the first.
	addAddr(t, host, "eth0", "10.64.3.8/26")
	addAddr(t, host, "eth0", "192.168.77.1/24")
	got, err := Select(host.Handle, Options{Ifaces: []string{"eth0"}})
	if err != nil {
		t.Fatal(err)
	}
	if got.IfaceAddr != netip.MustParseAddr("10.64.3.7") {
		t.Fatalf("IfaceAddr %s, want the primary 10.64.3.7", got.IfaceAddr)
	}
	// Selecting by a secondary address uses that address.
	got, err = Select(host.Handle, Options{Ifaces: []string{"10.64.3.8"}})
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != "eth0" || got.IfaceAddr != netip.MustParseAddr("10.64.3.8") {
		t.Fatalf("got %s %s, want eth0 10.64.3.8", got.Name, got.IfaceAddr)
	}
}

func TestSelectErrors(t *testing.T) {
	host := opsNoteHost(t, true)
	cases := []struct {
		name string
		opts Options
		want []string
	}{
		{"no such interface", Options{Ifaces: []string{"eth9"}}, []string{"-iface eth9: no such interface"}},
		{"no interface has address", Options{Ifaces: []string{"10.9.9.9"}}, []string{"-iface 10.9.9.9: no interface has this address"}},
		{"no IPv4 address", Options{Ifaces: []string{"eth5"}}, []string{"-iface eth5:", "eth5 has no global IPv4 address"}},
		{"regex matches nothing", Options{IfaceRegex: []string{"^foo"}}, []string{`-iface-regex "^foo": matched no address or interface name`}},
		{"regex matches only unusable", Options{IfaceRegex: []string{"^eth5$"}}, []string{`-iface-regex "^eth5$"`, "eth5 has no global IPv4 address"}},
		{"bad regex", Options{IfaceRegex: []string{"("}}, []string{`-iface-regex "(": invalid regular expression`}},
		{"can-reach not an IP", Options{CanReach: "host.example"}, []string{`-iface-can-reach "host.example": not an IPv4 address`}},
		{"all tried are named", Options{Ifaces: []string{"eth9", "10.9.9.9"}, IfaceRegex: []string{"^foo"}},
			[]string{"-iface eth9: no such interface", "-iface 10.9.9.9: no interface has this address", `-iface-regex "^foo"`}},
		{"bad public ip", Options{Ifaces: []string{"eth0"}, PublicIP: "1.2.3"}, []string{`-public-ip "1.2.3": not an IPv4 address`}},
		{"ipv6 public ip", Options{Ifaces: []string{"eth0"}, PublicIP: "fc00::1"}, []string{`-public-ip "fc00::1"`}},
		// Addresses no peer can send to: the host would be isolated.
		{"zoned public ipv6", Options{Ifaces: []string{"eth0"}, PublicIPv6: "fe80::1%eth0"},
			[]string{`-public-ipv6 "fe80::1%eth0": a zone (%eth0) is not allowed`}},
		{"zoned global public ipv6", Options{Ifaces: []string{"eth0"}, PublicIPv6: "2001:db8::1%eth0"},
			[]string{`-public-ipv6 "2001:db8::1%eth0": a zone (%eth0) is not allowed`}},
		{"link-local public ipv6", Options{Ifaces: []string{"eth0"}, PublicIPv6: "fe80::1"},
			[]string{`-public-ipv6 "fe80::1": a link-local address is not allowed`}},
		{"multicast public ipv6", Options{Ifaces: []string{"eth0"}, PublicIPv6: "ff02::1"}, []string{`-public-ipv6 "ff02::1": a multicast address`}},
		{"loopback public ipv6", Options{Ifaces: []string{"eth0"}, PublicIPv6: "::1"}, []string{`-public-ipv6 "::1": a loopback address`}},
		{"unspecified public ipv6", Options{Ifaces: []string{"eth0"}, PublicIPv6: "::"}, []string{`-public-ipv6 "::": the unspecified address`}},
		{"loopback public ip", Options{Ifaces: []string{"eth0"}, PublicIP: "127.0.0.1"}, []string{`-public-ip "127.0.0.1": a loopback address`}},
		{"unspecified public ip", Options{Ifaces: []string{"eth0"}, PublicIP: "0.0.0.0"}, []string{`-public-ip "0.0.0.0": the unspecified address`}},
		{"link-local public ip", Options{Ifaces: []string{"eth0"}, PublicIP: "169.254.1.1"}, []string{`-public-ip "169.254.1.1": a link-local address`}},
		{"multicast public ip", Options{Ifaces: []string{"eth0"}, PublicIP: "224.0.0.5"}, []string{`-public-ip "224.0.0.5": a multicast address`}},
		{"broadcast public ip", Options{Ifaces: []string{"eth0"}, PublicIP: "255.255.255.255"}, []string{`-public-ip "255.255.255.255": the broadcast address`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Select(host.Handle, tc.opts)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestSelectNoDefaultRoute(t *testing.T) {
	host := opsNoteHost(t, false)
	_, err := Select(host.Handle, Options{})
	if err == nil || !strings.Contains(err.Error(), "no IPv4 default route") || !strings.Contains(err.Error(), "-iface") {
		t.Fatalf("error %v, want one saying there is no default route and suggesting -iface", err)
	}
	// can-reach to an address with no route at all.
	_, err = Select(host.Handle, Options{CanReach: "192.0.2.1"})
	if err == nil || !strings.Contains(err.Error(), "-iface-can-reach 192.0.2.1") {
		t.Fatalf("error %v, want one naming -iface-can-reach 192.0.2.1", err)
	}
	// A flag still works without a default route.
	got, err := Select(host.Handle, Options{Ifaces: []string{"eth0"}})
	if err != nil || got.Name != "eth0" {
		t.Fatalf("got %+v, %v", got, err)
	}
}

// TestSelectIPv6: the chosen interface's global IPv6 address is found (not
// its link-local one, not a tentative one), -public-ipv6 overrides it, and an
// interface without one leaves it zero.
func TestSelectIPv6(t *testing.T) {
	host := opsNoteHost(t, true)
	host.MustRun(t, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0")
	host.MustRun(t, "ip", "link", "set", "eth0", "up")
	host.MustRun(t, "ip", "-6", "addr", "add", "fd00:64::7/64", "dev", "eth0", "nodad")
	host.MustRun(t, "ip", "-6", "addr", "add", "fe80::7/64", "dev", "eth0", "nodad")

	ext, err := Select(host.Handle, Options{Ifaces: []string{"eth0"}})
	if err != nil {
		t.Fatal(err)
	}
	if ext.IfaceAddr6 != netip.MustParseAddr("fd00:64::7") || ext.PublicIPv6 != ext.IfaceAddr6 {
		t.Errorf("IfaceAddr6 %s, PublicIPv6 %s; want fd00:64::7 for both", ext.IfaceAddr6, ext.PublicIPv6)
	}
	ext, err = Select(host.Handle, Options{Ifaces: []string{"eth0"}, PublicIPv6: "2001:db8::1"})
	if err != nil {
		t.Fatal(err)
	}
	if ext.IfaceAddr6 != netip.MustParseAddr("fd00:64::7") || ext.PublicIPv6 != netip.MustParseAddr("2001:db8::1") {
		t.Errorf("with -public-ipv6: IfaceAddr6 %s, PublicIPv6 %s", ext.IfaceAddr6, ext.PublicIPv6)
	}
	ext, err = Select(host.Handle, Options{Ifaces: []string{"eth2"}})
	if err != nil {
		t.Fatal(err)
	}
	if ext.IfaceAddr6.IsValid() {
		t.Errorf("eth2 has no global IPv6 address, got %s", ext.IfaceAddr6)
	}
	if _, err := Select(host.Handle, Options{Ifaces: []string{"eth0"}, PublicIPv6: "10.1.2.3"}); err == nil || !strings.Contains(err.Error(), "-public-ipv6") {
		t.Errorf("-public-ipv6 10.1.2.3: err %v, want one naming the flag", err)
	}
}
