package doctor

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netconf"
	"github.com/weft-net/weft/internal/wgengine"
)

// TestWireGuardCheck: a device whose peers are what the leases ask passes;
// a missing, a stale and a wrong peer (endpoint, PSK) are each named with
// its key, and an unreachable socket fails with the fix; a dual-stack
// network in Mode separate checks flannel-wg-v6 against BackendV6Data.
func TestWireGuardCheck(t *testing.T) {
	cfg, _, err := netconf.Parse([]byte(`{"Network":"172.30.0.0/16","EnableIPv6":true,"IPv6Network":"fd30::/48","Backend":{"Type":"wireguard","PSK":"` + mustKey(t).String() + `"}}`))
	if err != nil {
		t.Fatal(err)
	}
	psk, _ := wgengine.ParseKey(mustJSON(t, cfg.Backend, "PSK"))
	ours, a, b := mustKey(t), mustKey(t), mustKey(t)
	mk := func(n int, k wgengine.Key) lease.Lease {
		data := `{"PublicKey":"` + k.PublicKey().String() + `","Port":51820}`
		data6 := `{"PublicKey":"` + k.PublicKey().String() + `","Port":51821}`
		return lease.Lease{
			Subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 30, byte(n), 0}), 24), IPv6Subnet: netip.MustParsePrefix("fd30:0:0:" + string(rune('0'+n)) + "::/64"),
			Attrs: lease.Attrs{PublicIP: netip.AddrFrom4([4]byte{10, 64, 3, byte(n)}), PublicIPv6: netip.MustParseAddr("fd64::" + string(rune('0'+n))),
				BackendType: "wireguard", BackendData: json.RawMessage(data), BackendV6Data: json.RawMessage(data6)},
		}
	}
	st := State{Etcd: EtcdState{Config: cfg, Leases: []lease.Lease{mk(1, ours), mk(2, a), mk(3, b)}}}
	st.Env.Subnet = netip.MustParsePrefix("172.30.1.1/24")
	peer := func(k wgengine.Key, n int, six bool) wgengine.PeerStatus {
		p := wgengine.Peer{PublicKey: k.PublicKey(), PSK: psk,
			Endpoint: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 64, 3, byte(n)}), 51820), AllowedIPs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 30, byte(n), 0}), 24)}}
		if six {
			p.Endpoint = netip.AddrPortFrom(netip.MustParseAddr("fd64::"+string(rune('0'+n))), 51821)
			p.AllowedIPs = []netip.Prefix{netip.MustParsePrefix("fd30:0:0:" + string(rune('0'+n)) + "::/64")}
		}
		return wgengine.PeerStatus{Peer: p}
	}
	good := func() []WireGuardState {
		return []WireGuardState{
			{Name: "flannel-wg", Device: wgengine.Device{PublicKey: ours.PublicKey(), ListenPort: 51820, Peers: []wgengine.PeerStatus{peer(a, 2, false), peer(b, 3, false)}}},
			{Name: "flannel-wg-v6", Device: wgengine.Device{PublicKey: ours.PublicKey(), ListenPort: 51821, Peers: []wgengine.PeerStatus{peer(a, 2, true), peer(b, 3, true)}}},
		}
	}
	st.WireGuard = good()
	vs := checkWireGuard(st)
	if len(vs) != 2 || vs[0].Status != Pass || vs[1].Status != Pass || !strings.Contains(vs[1].What, "flannel-wg-v6: 2 peers") {
		t.Fatalf("matching devices: %v", vs)
	}

	// flannel-wg: b missing, a stranger stale, a's endpoint and PSK wrong.
	st.WireGuard = good()
	stranger := mustKey(t)
	wrongA := peer(a, 2, false)
	wrongA.Endpoint = netip.MustParseAddrPort("10.64.3.99:51820")
	wrongA.PSK = wgengine.Key{}
	st.WireGuard[0].Device.Peers = []wgengine.PeerStatus{wrongA, peer(stranger, 9, false)}
	v := checkWireGuard(st)[0]
	for _, want := range []string{
		"1 missing peers: " + b.PublicKey().String() + " (172.30.3.0/24 at 10.64.3.3:51820)",
		a.PublicKey().String() + ": endpoint 10.64.3.99:51820, lease asks 10.64.3.2:51820, pre-shared key is not the config's PSK",
		"1 stale peers (no lease asks for them): " + stranger.PublicKey().String(),
	} {
		if v.Status != Fail || !strings.Contains(v.What, want) || v.Fix != restartFix {
			t.Errorf("broken flannel-wg: no %q in\n%s", want, v)
		}
	}

	// The device's key is not the one the lease publishes; the v6 socket
	// does not answer.
	st.WireGuard = good()
	st.WireGuard[0].Device.PublicKey = stranger.PublicKey()
	st.WireGuard[1].Err = errTest("dial unix /var/run/wireguard/flannel-wg-v6.sock: connect: no such file or directory")
	vs = checkWireGuard(st)
	if vs[0].Status != Fail || !strings.Contains(vs[0].What, "lease publishes "+ours.PublicKey().String()) {
		t.Errorf("wrong key: %s", vs[0])
	}
	if vs[1].Status != Fail || !strings.Contains(vs[1].What, "flannel-wg-v6.sock") || !strings.Contains(vs[1].Fix, "restart weftd") {
		t.Errorf("no socket: %s", vs[1])
	}

	// Other backends: no verdict.
	st.Etcd.Config.BackendType = netconf.BackendVXLAN
	if vs := checkWireGuard(st); len(vs) != 0 {
		t.Errorf("vxlan: %v", vs)
	}
}

type errTest string

func (e errTest) Error() string { return string(e) }

func mustKey(t *testing.T) wgengine.Key {
	t.Helper()
	k, err := wgengine.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustJSON(t *testing.T, raw json.RawMessage, field string) string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	s, _ := m[field].(string)
	return s
}
