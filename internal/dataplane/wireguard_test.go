package dataplane

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/wgengine"
)

// TestWireGuardPeerData: a peer's BackendData as flannel (no Port) and weft
// (Port) write it, and what is refused, each with a message naming the value.
func TestWireGuardPeerData(t *testing.T) {
	w := &wgDev{opts: wgOptions{port: 51820}}
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
		{``, 0, "not a wireguard object"},
	} {
		key, port, err := w.peerData(json.RawMessage(tc.data))
		switch {
		case tc.err == "" && (err != nil || port != tc.port || key.String() != pub):
			t.Errorf("%s: %s:%d, %v; want %s:%d", tc.data, key, port, err, pub, tc.port)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%s: err %v, want one containing %q", tc.data, err, tc.err)
		}
	}
}

// FuzzWireGuardPeerData: BackendData comes from etcd; whatever it holds,
// decoding never panics and an accepted peer has a non-zero key and a port.
func FuzzWireGuardPeerData(f *testing.F) {
	f.Add(`{"PublicKey":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","Port":1}`)
	f.Add(`{"PublicKey":"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="}`)
	f.Add(`{"PublicKey":null,"Port":"x"}`)
	w := &wgDev{opts: wgOptions{port: 51820}}
	f.Fuzz(func(t *testing.T, data string) {
		key, port, err := w.peerData(json.RawMessage(data))
		if err == nil && (key.IsZero() || port == 0) {
			t.Fatalf("%q accepted with key %s port %d", data, key, port)
		}
	})
}
