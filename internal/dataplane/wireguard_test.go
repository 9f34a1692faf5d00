package dataplane

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netconf"
	"github.com/weft-net/weft/internal/wgengine"
)

func wgPeerLease(data, data6 string) *lease.Lease {
	l := &lease.Lease{Attrs: lease.Attrs{BackendType: netconf.BackendWireGuard, BackendData: json.RawMessage(data)}}
	if data6 != "" {
		l.Attrs.BackendV6Data = json.RawMessage(data6)
	}
	return l
}

// TestWireGuardPeerData: a peer's BackendData as flannel (no Port) and weft
// (Port) write it, and what is refused, each with a message naming the value.
func TestWireGuardPeerData(t *testing.T) {
	w := &wgDev{opts: wgOptions{port: 51820}, port: 51820, v4: true}
	k, _ := wgengine.GenerateKey()
	pub := k.PublicKey().String()
	for _, tc := range []struct {
		data string
		port uint16
		err  string
	}{
		{`{"PublicKey":"` + pub + `"}`, 51820, ""},
		{`{"PublicKey":"` + pub + `","Port":0}`, 51820, ""},
		{`{"PublicKey":"` + pub + `","Port":4000}`, 4000, ""},
		{`{"PublicKey":"` + pub + `","Port":70000}`, 0, "Port 70000"},
		{`{"PublicKey":"` + pub + `","Port":-1}`, 0, "Port -1"},
		{`{"PublicKey":"not-a-key"}`, 0, "not-a-key"},
		{`{"PublicKey":"AAAA"}`, 0, "3 bytes"},
		{`{"PublicKey":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}`, 0, "all zeros"},
		{`{}`, 0, "PublicKey"},
		{`[1,2]`, 0, "not a wireguard object"},
		{``, 0, "no BackendData"},
	} {
		key, port, err := w.peerData(wgPeerLease(tc.data, ""))
		switch {
		case tc.err == "" && (err != nil || port != tc.port || key.String() != pub):
			t.Errorf("%s: %s:%d, %v; want %s:%d", tc.data, key, port, err, pub, tc.port)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%s: err %v, want one containing %q", tc.data, err, tc.err)
		}
	}
	// A single dual-stack device: BackendV6Data must name the same key.
	k2, _ := wgengine.GenerateKey()
	w.v6 = true
	if _, _, err := w.peerData(wgPeerLease(`{"PublicKey":"`+pub+`"}`, `{"PublicKey":"`+k2.PublicKey().String()+`"}`)); err == nil || !strings.Contains(err.Error(), "differs") {
		t.Errorf("BackendData and BackendV6Data with two keys: err %v, want one saying they differ", err)
	}
	// flannel-wg-v6 reads BackendV6Data, its port defaulting to ListenPortV6.
	w6 := &wgDev{opts: wgOptions{port6: 51821}, port: 51821, v6: true}
	if key, port, err := w6.peerData(wgPeerLease(`{"PublicKey":"`+k2.PublicKey().String()+`"}`, `{"PublicKey":"`+pub+`"}`)); err != nil || key.String() != pub || port != 51821 {
		t.Errorf("flannel-wg-v6 peer: %s:%d, %v; want %s:51821", key, port, err, pub)
	}
}

// TestWireGuardPlan: which peers each Mode's devices get, with which
// endpoint and allowed IPs, and what is skipped in which family.
func TestWireGuardPlan(t *testing.T) {
	key, _ := wgengine.GenerateKey()
	host := Host{IfaceAddr: netip.MustParseAddr("10.64.3.1"), PublicIP: netip.MustParseAddr("10.64.3.1"),
		IfaceAddr6: netip.MustParseAddr("fd64::1"), PublicIP6: netip.MustParseAddr("fd64::1")}
	peer := func(n int, pub4, pub6 string) *lease.Lease {
		k, _ := wgengine.GenerateKey()
		data := `{"PublicKey":"` + k.PublicKey().String() + `","Port":51820}`
		data6 := `{"PublicKey":"` + k.PublicKey().String() + `","Port":51821}`
		l := wgPeerLease(data, data6)
		l.Subnet = netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 30, byte(n), 0}), 24)
		l.IPv6Subnet = netip.MustParsePrefix("fd30:0:0:" + string(rune('0'+n)) + "::/64")
		l.Attrs.PublicIP, l.Attrs.PublicIPv6 = netip.MustParseAddr(pub4), netip.MustParseAddr(pub6)
		return l
	}
	snap := lease.Snapshot{
		Own: lease.Lease{Subnet: netip.MustParsePrefix("172.30.1.0/24"), IPv6Subnet: netip.MustParsePrefix("fd30:0:0:1::/64")},
		Peers: []*lease.Lease{
			peer(2, "10.64.3.2", "fd64::2"),
			peer(3, "10.64.3.3", "2001:db8::3"), // private IPv4, public IPv6
			peer(4, "10.64.3.4", "fd64::4"),
		},
	}
	snap.Peers[2].Attrs.BackendV6Data = json.RawMessage(`{"PublicKey":"not-a-key"}`)
	dev := func(mode string, port int, v4, v6 bool) *wgDev {
		return &wgDev{tunDev: tunDev{host: host}, key: key, pub: key.PublicKey(), opts: wgOptions{port: 51820, port6: 51821, mode: mode}, port: port, v4: v4, v6: v6}
	}
	for _, tc := range []struct {
		name      string
		w         *wgDev
		endpoints []string // per peer, "" = none
		allowed   int
		skipped   [2]int
	}{
		{"separate flannel-wg", dev(wgSeparate, 51820, true, false), []string{"10.64.3.2:51820", "10.64.3.3:51820", "10.64.3.4:51820"}, 1, [2]int{0, 0}},
		{"separate flannel-wg-v6", dev(wgSeparate, 51821, false, true), []string{"[fd64::2]:51821", "[2001:db8::3]:51821", ""}, 1, [2]int{0, 1}},
		{"auto", dev(wgAuto, 51820, true, true), []string{"10.64.3.2:51820", "10.64.3.3:51820", ""}, 2, [2]int{1, 1}},
		{"ipv6", dev(wgIPv6, 51820, true, true), []string{"[fd64::2]:51820", "[2001:db8::3]:51820", ""}, 2, [2]int{1, 1}},
		{"ipv4", dev(wgIPv4, 51820, true, true), []string{"10.64.3.2:51820", "10.64.3.3:51820", ""}, 2, [2]int{1, 1}},
	} {
		peers, skipped := tc.w.plan(snap)
		var got []string
		for _, p := range peers {
			got = append(got, p.Endpoint.String())
			if len(p.AllowedIPs) != tc.allowed {
				t.Errorf("%s: peer %s allowed IPs %v, want %d prefixes", tc.name, p.Endpoint, p.AllowedIPs, tc.allowed)
			}
		}
		var want []string
		for _, e := range tc.endpoints {
			if e != "" {
				want = append(want, e)
			}
		}
		if strings.Join(got, " ") != strings.Join(want, " ") || len(skipped[0]) != tc.skipped[0] || len(skipped[1]) != tc.skipped[1] {
			t.Errorf("%s: endpoints %v, skipped %d/%d; want %v, %d/%d (%v)", tc.name, got, len(skipped[0]), len(skipped[1]), want, tc.skipped[0], tc.skipped[1], skipped)
		}
	}
	// Auto with public addresses on our side: the peer with a private IPv4
	// and a public IPv6 address is reached over IPv6.
	w := dev(wgAuto, 51820, true, true)
	w.host.PublicIP6 = netip.MustParseAddr("2001:db8::1")
	peers, _ := w.plan(snap)
	if len(peers) < 2 || peers[0].Endpoint.String() != "10.64.3.2:51820" || peers[1].Endpoint.String() != "[2001:db8::3]:51820" {
		t.Errorf("auto with a public IPv6 address: %+v, want 10.64.3.2:51820 and [2001:db8::3]:51820", peers)
	}
}

// FuzzWireGuardPeerData: BackendData comes from etcd; whatever it holds,
// decoding never panics and an accepted peer has a non-zero key and a port.
func FuzzWireGuardPeerData(f *testing.F) {
	f.Add(`{"PublicKey":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","Port":1}`)
	f.Add(`{"PublicKey":"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="}`)
	f.Add(`{"PublicKey":null,"Port":"x"}`)
	w := &wgDev{opts: wgOptions{port: 51820}, port: 51820, v4: true, v6: true}
	f.Fuzz(func(t *testing.T, data string) {
		key, port, err := w.peerData(wgPeerLease(data, data))
		if err == nil && (key.IsZero() || port == 0) {
			t.Fatalf("%q accepted with key %s port %d", data, key, port)
		}
	})
}
