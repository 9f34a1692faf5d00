package e2e

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/internal/doctor"
	"github.com/weft-net/weft/internal/lab"
	"github.com/weft-net/weft/internal/wgengine"
)

// TestWireGuardDualStack: three weft hosts on a dual-stack network
// (EnableIPv6) with the wireguard backend, in flannel's Mode separate (the
// default: flannel-wg-v6 on ListenPortV6 with IPv6 endpoints, the lease's
// BackendV6Data {"PublicKey","Port":51821}) and auto (flannel-wg alone
// carrying both families): every pair pings over IPv4 and IPv6, and
// `weftctl doctor`'s wireguard-peers check passes, then names a peer
// removed from a device behind weftd's back.
func TestWireGuardDualStack(t *testing.T) {
	for _, mode := range []string{"separate", "auto"} {
		t.Run(mode, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			l := newLabWith(t, lab.Config{
				Hosts: 3, Backend: "wireguard", IPv6: true,
				NetworkConfig: fmt.Sprintf(`{"Network":"172.30.0.0/16","SubnetLen":24,"SubnetMax":"172.30.239.0","EnableIPv6":true,"IPv6Network":"fd30::/48","IPv6SubnetLen":64,"Backend":{"Type":"wireguard","Mode":%q}}`, mode),
			})
			dev6, port6 := "flannel-wg-v6", 51821
			if mode == "auto" {
				dev6, port6 = "flannel-wg", 51820
			}
			keys := make([]string, len(l.Hosts)) // BackendData PublicKey, per host
			for i, h := range l.Hosts {
				key := fmt.Sprintf("%s&%s-64", lab.LeaseKey(l.Config().Prefix, h.Subnet), h.Subnet6.Addr())
				resp, err := l.Etcd.Get(ctx, key)
				if err != nil || len(resp.Kvs) != 1 {
					t.Fatalf("%s: lease %s: %v", h.Name, key, err)
				}
				var v struct {
					PublicIPv6                 string
					BackendData, BackendV6Data struct {
						PublicKey string
						Port      int
					}
				}
				if err := json.Unmarshal(resp.Kvs[0].Value, &v); err != nil {
					t.Fatal(err)
				}
				keys[i] = v.BackendData.PublicKey
				if v.PublicIPv6 != h.Eth0IP6.String() || v.BackendV6Data.PublicKey == "" || v.BackendV6Data.PublicKey != v.BackendData.PublicKey ||
					v.BackendData.Port != 51820 || v.BackendV6Data.Port != port6 {
					t.Errorf("%s: lease %s, want PublicIPv6 %s, one key in BackendData and BackendV6Data, ports 51820 and %d", h.Name, resp.Kvs[0].Value, h.Eth0IP6, port6)
				}
				link, err := h.NS.Handle.LinkByName(dev6)
				if err != nil {
					t.Fatalf("%s: %s: %v", h.Name, dev6, err)
				}
				addrs, _ := h.NS.Handle.AddrList(link, netlink.FAMILY_V6)
				want := netip.PrefixFrom(h.Subnet6.Addr(), 128).String()
				if !strings.Contains(fmt.Sprint(addrs), want) || link.Attrs().MTU != 1420 {
					t.Errorf("%s: %s addresses %v MTU %d, want %s and 1420", h.Name, dev6, addrs, link.Attrs().MTU, want)
				}
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
				waitFor(t, fmt.Sprintf("every pair pings (IPv6 %t)", six), time.Now(), wgHandshakeBound, 15*time.Second, func() error {
					return pings(l, all, lab.PingOptions{IPv6: six, Timeout: 500 * time.Millisecond})
				})
			}

			// weftctl doctor's check, as it runs on host 0.
			h := l.Hosts[0]
			sockDir := filepath.Join(hostDir(h), "wireguard") // the lab's WEFT_WIREGUARD_SOCKET_DIR
			check := func() []doctor.Verdict {
				st := doctor.Observe(ctx, doctor.Inputs{Etcd: l.Etcd, Prefix: l.Config().Prefix, SubnetFile: h.SubnetFile,
					Handle: h.NS.Handle, Sysctl: doctor.ProcSysctl, WireGuardSocketDir: sockDir})
				var vs []doctor.Verdict
				for _, v := range doctor.Check(st).Checks {
					if v.Check == doctor.CheckWireGuard {
						vs = append(vs, v)
					}
				}
				return vs
			}
			vs := check()
			wantN := map[string]int{"separate": 2, "auto": 1}[mode]
			if len(vs) != wantN {
				t.Fatalf("doctor: %d wireguard-peers verdicts, want %d: %v", len(vs), wantN, vs)
			}
			for _, v := range vs {
				if v.Status != doctor.Pass || !strings.Contains(v.What, "2 peers") {
					t.Errorf("doctor on a healthy host: %s", v)
				}
			}
			// A peer removed behind weftd's back (through the UAPI socket,
			// as `wg set <dev> peer <key> remove` does).
			peerKey, err := wgengine.ParseKey(keys[1])
			if err != nil {
				t.Fatal(err)
			}
			if err := uapiSet(filepath.Join(sockDir, dev6+".sock"), "public_key="+hex.EncodeToString(peerKey[:])+"\nremove=true\n"); err != nil {
				t.Fatal(err)
			}
			vs = check()
			bad := vs[len(vs)-1]
			if bad.Status != doctor.Fail || !strings.Contains(bad.What, dev6+": 1 missing peers: "+peerKey.String()) || !strings.Contains(bad.Fix, "restart weftd") {
				t.Errorf("doctor after removing peer %s from %s: %s", peerKey, dev6, bad)
			}
		})
	}
}

// uapiSet sends one UAPI "set" operation to a device's socket.
func uapiSet(sock, body string) error {
	c, err := net.DialTimeout("unix", sock, 3*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte("set=1\n" + body + "\n")); err != nil {
		return err
	}
	buf := make([]byte, 64)
	n, _ := c.Read(buf)
	if !strings.Contains(string(buf[:n]), "errno=0") {
		return fmt.Errorf("UAPI set on %s: %q", sock, buf[:n])
	}
	return nil
}
