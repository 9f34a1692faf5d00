package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/internal/lab"
)

// TestDualStack runs real weftd on a dual-stack network (EnableIPv6): each
// host's subnet.env carries FLANNEL_IPV6_*, its lease the IPv6 subnet,
// PublicIPv6 and (vxlan) the flannel-v6 device's VtepMAC, and containers
// reach each other over IPv4 and IPv6, full-size IPv6 packets with DF
// included; a third host joins and is reached over both within 1 s.
func TestDualStack(t *testing.T) {
	for _, backend := range []string{"vxlan", "host-gw"} {
		t.Run(backend, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			l := newLabWith(t, lab.Config{
				Hosts: 2, Backend: backend, IPv6: true,
				NetworkConfig: fmt.Sprintf(`{"Network":"172.30.0.0/16","SubnetLen":24,"SubnetMax":"172.30.239.0","EnableIPv6":true,"IPv6Network":"fd30::/48","IPv6SubnetLen":64,"Backend":{"Type":%q}}`, backend),
				WeftdArgs:     []string{"-ip-masq"},
			})

			for _, h := range l.Hosts {
				env, err := os.ReadFile(h.SubnetFile)
				if err != nil {
					t.Fatal(err)
				}
				for _, want := range []string{"FLANNEL_IPV6_NETWORK=fd30::/48\n", "FLANNEL_IPV6_SUBNET=" + netip.PrefixFrom(h.Subnet6.Addr().Next(), 64).String() + "\n"} {
					if !strings.Contains(string(env), want) {
						t.Errorf("%s subnet.env lacks %q:\n%s", h.Name, want, env)
					}
				}
				key := fmt.Sprintf("%s&%s-64", lab.LeaseKey(l.Config().Prefix, h.Subnet), h.Subnet6.Addr())
				resp, err := l.Etcd.Get(ctx, key)
				if err != nil || len(resp.Kvs) != 1 {
					t.Fatalf("%s: lease %s: %v (%d keys)", h.Name, key, err, len(resp.Kvs))
				}
				var v struct {
					PublicIPv6    string
					BackendV6Data *struct{ VtepMAC string }
				}
				if err := json.Unmarshal(resp.Kvs[0].Value, &v); err != nil {
					t.Fatal(err)
				}
				if v.PublicIPv6 != h.Eth0IP6.String() {
					t.Errorf("%s: lease PublicIPv6 %q, want eth0's %s", h.Name, v.PublicIPv6, h.Eth0IP6)
				}
				// -ip-masq: the IPv6 masquerade chain mirrors the IPv4 one.
				out, err := runCmd(ctx, "ip", "netns", "exec", h.Name, "ip6tables", "-t", "nat", "-S", "FLANNEL-POSTRTG")
				if err != nil || !strings.Contains(out, "-s fd30::/48 ! -d ff00::/8") || !strings.Contains(out, "MASQUERADE") {
					t.Errorf("%s: ip6tables FLANNEL-POSTRTG: %v\n%s", h.Name, err, out)
				}
				if backend == "vxlan" {
					dev, err := h.NS.Handle.LinkByName("flannel-v6.1")
					if err != nil {
						t.Fatalf("%s: flannel-v6.1: %v", h.Name, err)
					}
					vx := dev.(*netlink.Vxlan)
					if vx.VxlanId != 1 || vx.Port != 8472 || vx.Learning || dev.Attrs().MTU != 1430 {
						t.Errorf("%s: flannel-v6.1 id %d port %d learning %t mtu %d; want 1, 8472, false, 1430", h.Name, vx.VxlanId, vx.Port, vx.Learning, dev.Attrs().MTU)
					}
					if v.BackendV6Data == nil || v.BackendV6Data.VtepMAC != dev.Attrs().HardwareAddr.String() {
						t.Errorf("%s: lease BackendV6Data %+v, want the VtepMAC of flannel-v6.1 (%s)", h.Name, v.BackendV6Data, dev.Attrs().HardwareAddr)
					}
				}
			}
			all := []pair{{0, 1}, {1, 0}}
			for _, six := range []bool{false, true} {
				if err := pings(l, all, lab.PingOptions{IPv6: six, Timeout: time.Second}); err != nil {
					t.Fatalf("IPv6 %t: %v", six, err)
				}
			}
			// Full MTU with DF: 1430 − 40 (IPv6) − 8 (ICMPv6) bytes of payload.
			mtu := l.Hosts[0].MTU
			if err := pings(l, all, lab.PingOptions{IPv6: true, DF: true, Size: mtu - 48, Timeout: time.Second}); err != nil {
				t.Fatalf("full-MTU IPv6 ping (MTU %d): %v", mtu, err)
			}

			start := time.Now()
			if _, err := l.AddHost(ctx); err != nil {
				t.Fatalf("add a third host: %v", err)
			}
			t.Logf("MEASURED third host up (weftd started, subnet.env written, container built): %s", time.Since(start).Round(100*time.Microsecond))
			start = time.Now()
			waitFor(t, "third host reachable over IPv4", start, time.Second, 10*time.Second, func() error {
				return pings(l, pairsWith(l, 2), lab.PingOptions{})
			})
			waitFor(t, "third host reachable over IPv6", start, time.Second, 10*time.Second, func() error {
				return pings(l, pairsWith(l, 2), lab.PingOptions{IPv6: true})
			})
		})
	}
}
