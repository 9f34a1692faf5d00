package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/lab"
	"github.com/weft-net/weft/internal/wgengine"
)

// TestWireGuardInteropIPv6: a dual-stack network in flannel's Mode separate
// with one host that is not weft — two stock wireguard-go devices,
// flannel-wg (listen-port 51820, IPv4 endpoints) and flannel-wg-v6
// (listen-port 51821, IPv6 endpoints), one private key for both, configured
// with wg as flannel's backend configures them from the leases (a peer's
// IPv6 endpoint is [PublicIPv6]:BackendV6Data.Port, its allowed-ips its
// IPv6 subnet) and publishing flannel's dual-stack lease — talks with two
// weft hosts over both families, both ways.
func TestWireGuardInteropIPv6(t *testing.T) {
	needWG(t)
	wggo := wireguardGoPath(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l := newLabWith(t, lab.Config{
		Hosts: 3, Backend: "wireguard", IPv6: true,
		NetworkConfig: `{"Network":"172.30.0.0/16","SubnetLen":24,"SubnetMax":"172.30.239.0","EnableIPv6":true,"IPv6Network":"fd30::/48","IPv6SubnetLen":64,"Backend":{"Type":"wireguard","Mode":"separate"}}`,
	})
	stock := l.Hosts[2]
	if err := l.StopWeftd(2); err != nil {
		t.Fatal(err)
	}
	// weft's persistent TUNs stay after it exits; the stock devices take
	// their names.
	stock.NS.MustRun(t, "ip", "link", "del", "flannel-wg")
	stock.NS.MustRun(t, "ip", "link", "del", "flannel-wg-v6")

	runDir := t.TempDir()
	startStockWG(t, wggo, stock.NS, runDir, "flannel-wg")
	startStockWG(t, wggo, stock.NS, runDir, "flannel-wg-v6")

	leaseKey := func(h *lab.Host) string {
		return fmt.Sprintf("%s&%s-64", lab.LeaseKey(l.Config().Prefix, h.Subnet), h.Subnet6.Addr())
	}
	type dualLease struct {
		PublicIP, PublicIPv6       string
		BackendData, BackendV6Data struct {
			PublicKey string
			Port      int
		}
	}
	readLease := func(h *lab.Host) (dualLease, int64) {
		resp, err := l.Etcd.Get(ctx, leaseKey(h))
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("%s: lease %s: %v", h.Name, leaseKey(h), err)
		}
		var v dualLease
		if err := json.Unmarshal(resp.Kvs[0].Value, &v); err != nil {
			t.Fatalf("%s: lease %s: %v", h.Name, resp.Kvs[0].Value, err)
		}
		return v, resp.Kvs[0].Lease
	}

	// flannel's key file and dual-stack lease for the stock host: one
	// public key in both backend data (flannel's separate mode shares the
	// key file), no ports (a peer's Port 0 means its own listen port).
	priv, _ := wgengine.GenerateKey()
	if err := os.WriteFile(filepath.Join(runDir, "wgkey"), []byte(priv.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	_, etcdLease := readLease(stock)
	val := fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":"%s","BackendType":"wireguard","BackendData":{"PublicKey":"%s"},"BackendV6Data":{"PublicKey":"%s"}}`,
		stock.Eth0IP, stock.Eth0IP6, priv.PublicKey(), priv.PublicKey())
	if _, err := l.Etcd.Put(ctx, leaseKey(stock), val, clientv3.WithLease(clientv3.LeaseID(etcdLease))); err != nil {
		t.Fatal(err)
	}

	script := []string{
		"wg set flannel-wg private-key /run/wgkey listen-port 51820",
		"wg set flannel-wg-v6 private-key /run/wgkey listen-port 51821",
	}
	for _, h := range l.Hosts[:2] {
		v, _ := readLease(h)
		if v.BackendV6Data.Port != 51821 || v.PublicIPv6 != h.Eth0IP6.String() {
			t.Fatalf("%s: lease %+v, want PublicIPv6 %s and BackendV6Data.Port 51821", h.Name, v, h.Eth0IP6)
		}
		script = append(script,
			fmt.Sprintf("wg set flannel-wg peer %s endpoint %s:%d allowed-ips %s", v.BackendData.PublicKey, v.PublicIP, v.BackendData.Port, h.Subnet),
			fmt.Sprintf("wg set flannel-wg-v6 peer %s endpoint [%s]:%d allowed-ips %s", v.BackendV6Data.PublicKey, v.PublicIPv6, v.BackendV6Data.Port, h.Subnet6))
	}
	script = append(script,
		"ip addr add "+stock.Subnet.Addr().String()+"/32 dev flannel-wg",
		"ip -6 addr add "+stock.Subnet6.Addr().String()+"/128 dev flannel-wg-v6",
		"ip link set flannel-wg up",
		"ip link set flannel-wg-v6 up",
		"ip route replace 172.30.0.0/16 dev flannel-wg",
		"ip -6 route replace fd30::/48 dev flannel-wg-v6")
	if out, err := stockWG(stock.NS, runDir, strings.Join(script, " && ")); err != nil {
		t.Fatalf("configure the stock devices: %v\n%s", err, out)
	}

	var all []pair
	for i := range l.Hosts {
		for j := range l.Hosts {
			if i != j {
				all = append(all, pair{i, j})
			}
		}
	}
	for _, six := range []bool{false, true} {
		waitFor(t, fmt.Sprintf("weft ↔ stock wireguard-go: every pair pings (IPv6 %t)", six), time.Now(), wgHandshakeBound, 20*time.Second, func() error {
			return pings(l, all, lab.PingOptions{IPv6: six, Timeout: 500 * time.Millisecond})
		})
	}
	// The IPv6 device's handshakes ran over the IPv6 underlay: its peers'
	// endpoints are the weft hosts' IPv6 addresses on port 51821.
	out, err := stockWG(stock.NS, runDir, "wg show flannel-wg-v6 endpoints && wg show flannel-wg-v6 latest-handshakes")
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range l.Hosts[:2] {
		if !strings.Contains(out, "["+h.Eth0IP6.String()+"]:51821") {
			t.Errorf("stock flannel-wg-v6 has no endpoint [%s]:51821:\n%s", h.Eth0IP6, out)
		}
	}
	if strings.Contains(out, "\t0\n") {
		t.Errorf("stock flannel-wg-v6 lacks a handshake with a weft host:\n%s", out)
	}
}
