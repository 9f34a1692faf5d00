package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/internal/lab"
)

// host-gw on the ops note's topology: a route per peer via its eth0
// address; the same events as vxlan where they apply. One lab, in order.
func TestHostGW(t *testing.T) {
	l := newLab(t, "host-gw", 3)
	ctx := context.Background()

	routesEverywhere := func() error {
		for i, h := range l.Hosts {
			for j, p := range l.Hosts {
				if i == j {
					continue
				}
				ok, err := hostgwRoute(h, p.Subnet, p.Eth0IP)
				if err != nil {
					return err
				}
				if !ok {
					return fmt.Errorf("%s: no route to %s via %s dev eth0", h.Name, p.Subnet, p.Eth0IP)
				}
			}
		}
		return nil
	}

	t.Run("topology", func(t *testing.T) {
		for _, h := range l.Hosts {
			v, ok := readLease(t, l, h.Subnet)
			if !ok || v.PublicIP != h.Eth0IP.String() || v.BackendType != "host-gw" {
				t.Errorf("%s: lease %+v (present %v), want host-gw with PublicIP %s", h.Name, v, ok, h.Eth0IP)
			}
			b, _ := os.ReadFile(h.SubnetFile)
			want := fmt.Sprintf("FLANNEL_NETWORK=172.30.0.0/16\nFLANNEL_SUBNET=%s/24\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=false\n", h.Subnet.Addr().Next())
			if string(b) != want {
				t.Errorf("%s: subnet.env\n%s\nwant\n%s", h.Name, b, want)
			}
			if _, err := h.NS.Handle.LinkByName("flannel.1"); err == nil {
				t.Errorf("%s: host-gw created flannel.1", h.Name)
			}
		}
		if err := routesEverywhere(); err != nil {
			t.Error(err)
		}
		if err := lab.MatrixErr(l.PingMatrix(ctx, lab.PingOptions{})); err != nil {
			t.Error(err)
		}
		if err := lab.MatrixErr(l.PingMatrix(ctx, lab.PingOptions{Size: 1472, DF: true})); err != nil {
			t.Errorf("full-MTU (1500) ping with DF: %v", err)
		}
	})

	t.Run("restart loses no ping", func(t *testing.T) { restartNoLoss(t, l) })

	t.Run("own lease deleted", func(t *testing.T) {
		h := l.Hosts[1]
		pid := l.WeftdPID(1)
		start := time.Now()
		if _, err := l.Etcd.Delete(ctx, lab.LeaseKey(l.Config().Prefix, h.Subnet)); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "host-gw own lease deleted → same subnet and pings", start, time.Second, 10*time.Second, func() error {
			if v, ok := readLease(t, l, h.Subnet); !ok || v.PublicIP != h.Eth0IP.String() {
				return fmt.Errorf("lease %s not re-acquired", h.Subnet)
			}
			return pings(l, pairsWith(l, 1), lab.PingOptions{Timeout: 100 * time.Millisecond})
		})
		if got := l.WeftdPID(1); got != pid {
			t.Errorf("weftd pid %d, was %d", got, pid)
		}
	})

	t.Run("hand-deleted route restored", func(t *testing.T) {
		h, p := l.Hosts[0], l.Hosts[1]
		eth0, err := h.NS.Handle.LinkByName("eth0")
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if err := h.NS.Handle.RouteDel(&netlink.Route{Dst: ipNet(p.Subnet), LinkIndex: eth0.Attrs().Index, Gw: p.Eth0IP.AsSlice()}); err != nil {
			t.Fatalf("delete route: %v", err)
		}
		waitFor(t, "host-gw hand-deleted route restored", start, 11*time.Second, 30*time.Second, func() error {
			if ok, err := hostgwRoute(h, p.Subnet, p.Eth0IP); err != nil || !ok {
				return fmt.Errorf("route to %s missing (%v)", p.Subnet, err)
			}
			return nil
		})
	})

	t.Run("host joins", func(t *testing.T) {
		joinMeasured(t, l, routesEverywhere)
	})

	t.Run("host leaves", func(t *testing.T) {
		last := len(l.Hosts) - 1
		gone := l.Hosts[last]
		if err := l.StopWeftd(last); err != nil {
			t.Errorf("SIGTERM: %v", err)
		}
		start := time.Now()
		if _, err := l.Etcd.Delete(ctx, lab.LeaseKey(l.Config().Prefix, gone.Subnet)); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "host-gw lease deleted → route gone on every other host", start, time.Second, 15*time.Second, func() error {
			for _, h := range l.Hosts[:last] {
				if ok, err := hostgwRoute(h, gone.Subnet, gone.Eth0IP); err != nil || ok {
					return fmt.Errorf("%s still routes %s (%v)", h.Name, gone.Subnet, err)
				}
			}
			return nil
		})
	})
}

// -ip-masq: the masquerade and forward chains in COMPAT.md's order, restored
// after a flush, and removed when the network switches to nftables.
func TestIPMasqRules(t *testing.T) {
	l := newLab(t, "vxlan", 2, "-ip-masq", "-iptables-resync=1")
	ctx := context.Background()
	h := l.Hosts[0]
	network, own := "172.30.0.0/16", h.Subnet.String()
	wantMasq := [][]string{
		{"--mark 0x4000/0x4000", "-j RETURN"},
		{"-s " + own, "-d " + network, "-j RETURN"},
		{"-s " + network, "-d " + own, "-j RETURN"},
		{"! -s " + network, "-d " + own, "-j RETURN"},
		{"-s " + network, "! -d 224.0.0.0/4", "-j MASQUERADE"},
		{"! -s " + network, "-d " + network, "-j MASQUERADE"},
	}
	wantFwd := [][]string{{"-s " + network, "-j ACCEPT"}, {"-d " + network, "-j ACCEPT"}}
	chainRules := func(table, chain string) ([]string, error) {
		out, err := h.NS.Run("iptables", "-w", "-t", table, "-S", chain)
		if err != nil {
			return nil, err
		}
		var rules []string
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(line, "-A ") {
				rules = append(rules, line)
			}
		}
		return rules, nil
	}
	check := func(table, chain string, want [][]string) error {
		rules, err := chainRules(table, chain)
		if err != nil {
			return err
		}
		if len(rules) != len(want) {
			return fmt.Errorf("%s %s has %d rules, want %d:\n%s", table, chain, len(rules), len(want), strings.Join(rules, "\n"))
		}
		for i, parts := range want {
			for _, p := range parts {
				if !strings.Contains(rules[i], p) {
					return fmt.Errorf("%s %s rule %d %q lacks %q", table, chain, i+1, rules[i], p)
				}
			}
		}
		return nil
	}
	jumps := func() error {
		for _, x := range []struct{ table, chain, target string }{
			{"nat", "POSTROUTING", "FLANNEL-POSTRTG"}, {"filter", "FORWARD", "FLANNEL-FWD"},
		} {
			out, err := h.NS.Run("iptables", "-w", "-t", x.table, "-S", x.chain)
			if err != nil {
				return err
			}
			if !strings.Contains(out, "-j "+x.target) {
				return fmt.Errorf("%s %s has no jump to %s:\n%s", x.table, x.chain, x.target, out)
			}
		}
		return nil
	}
	all := func() error {
		if err := jumps(); err != nil {
			return err
		}
		if err := check("nat", "FLANNEL-POSTRTG", wantMasq); err != nil {
			return err
		}
		return check("filter", "FLANNEL-FWD", wantFwd)
	}
	if err := all(); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(h.SubnetFile)
	if !strings.Contains(string(b), "FLANNEL_IPMASQ=true") {
		t.Errorf("subnet.env with -ip-masq:\n%s", b)
	}

	start := time.Now()
	if _, err := h.NS.Run("iptables", "-w", "-t", "nat", "-F", "FLANNEL-POSTRTG"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "flushed FLANNEL-POSTRTG restored (-iptables-resync=1)", start, 2*time.Second, 15*time.Second, all)

	// Switch to nftables: a restarted weftd removes the iptables chains.
	if _, err := l.Etcd.Put(ctx, l.Config().Prefix+"/config",
		`{"Network":"172.30.0.0/16","SubnetLen":24,"EnableNFTables":true,"Backend":{"Type":"vxlan"}}`); err != nil {
		t.Fatal(err)
	}
	if err := l.StopWeftd(0); err != nil {
		t.Errorf("SIGTERM: %v", err)
	}
	since := time.Now()
	if err := l.StartWeftd(0); err != nil {
		t.Fatal(err)
	}
	if _, err := l.WaitSubnetFile(ctx, 0, since); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "mode switch to nftables → iptables chains gone, table ip weft present", since, 2*time.Second, 15*time.Second, func() error {
		for _, x := range []struct{ table, chain string }{{"nat", "FLANNEL-POSTRTG"}, {"filter", "FLANNEL-FWD"}} {
			if _, err := h.NS.Run("iptables", "-w", "-t", x.table, "-S", x.chain); err == nil {
				return fmt.Errorf("iptables %s %s still exists", x.table, x.chain)
			}
		}
		for _, x := range []struct{ table, chain string }{{"nat", "POSTROUTING"}, {"filter", "FORWARD"}} {
			out, _ := h.NS.Run("iptables", "-w", "-t", x.table, "-S", x.chain)
			if strings.Contains(out, "FLANNEL-") {
				return fmt.Errorf("iptables %s %s still jumps to a FLANNEL chain:\n%s", x.table, x.chain, out)
			}
		}
		if _, err := h.NS.Run("nft", "list", "table", "ip", "weft"); err != nil {
			return fmt.Errorf("nftables table ip weft missing: %w", err)
		}
		return nil
	})
	if err := pings(l, []pair{{0, 1}, {1, 0}}, lab.PingOptions{}); err != nil {
		t.Error(err)
	}
}
