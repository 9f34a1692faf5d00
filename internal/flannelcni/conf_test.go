package flannelcni_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/google/go-cmp/cmp"

	"github.com/weft-net/weft/internal/flannelcni"
)

const dualEnv = "FLANNEL_NETWORK=172.30.0.0/16\nFLANNEL_SUBNET=172.30.19.1/24\nFLANNEL_IPV6_NETWORK=fd30::/48\nFLANNEL_IPV6_SUBNET=fd30:0:0:13::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"

// TestDelegate: kube-flannel's stock config (cni-conf.json) on a
// dual-stack subnet.env gives the delegate config flannel's plugin gives.
func TestDelegate(t *testing.T) {
	n, err := flannelcni.ParseConf([]byte(`{"cniVersion":"1.0.0","name":"cbr0","type":"flannel",
		"delegate":{"hairpinMode":true,"isDefaultGateway":true}}`))
	if err != nil {
		t.Fatal(err)
	}
	if n.SubnetFile != flannelcni.DefaultSubnetFile || n.DataDir != flannelcni.DefaultDataDir {
		t.Errorf("defaults: subnetFile %q dataDir %q", n.SubnetFile, n.DataDir)
	}
	env, err := flannelcni.ParseEnv("subnet.env", []byte(dualEnv))
	if err != nil {
		t.Fatal(err)
	}
	d, err := flannelcni.Delegate(n, env)
	if err != nil {
		t.Fatal(err)
	}
	got := roundTrip(t, d)
	want := roundTrip(t, map[string]any{
		"cniVersion": "1.0.0", "name": "cbr0", "type": "bridge", "hairpinMode": true, "isDefaultGateway": true,
		"isGateway": true, "ipMasq": false, "mtu": 1450,
		"ipam": map[string]any{
			"type":   "host-local",
			"ranges": [][]map[string]string{{{"subnet": "172.30.19.0/24"}}, {{"subnet": "fd30:0:0:13::/64"}}},
			"routes": []map[string]string{{"dst": "172.30.0.0/16"}, {"dst": "fd30::/48"}},
		},
	})
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("delegate config (-want +got):\n%s", diff)
	}
}

// TestDelegateKeepsGiven: what the config gives wins over what the plugin
// would set, and given ipam fields and routes pass on untouched.
func TestDelegateKeepsGiven(t *testing.T) {
	n, err := flannelcni.ParseConf([]byte(`{"cniVersion":"0.3.1","name":"n","type":"flannel",
		"delegate":{"type":"ipvlan","ipMasq":true,"mtu":1400,"master":"eth0"},
		"ipam":{"type":"other","dataDir":"/x","routes":[{"dst":"10.0.0.0/8","gw":"172.30.19.1","priority":5}]},
		"runtimeConfig":{"portMappings":[]}}`))
	if err != nil {
		t.Fatal(err)
	}
	env, err := flannelcni.ParseEnv("subnet.env", []byte("FLANNEL_NETWORK=172.30.0.0/16\nFLANNEL_SUBNET=172.30.19.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"))
	if err != nil {
		t.Fatal(err)
	}
	d, err := flannelcni.Delegate(n, env)
	if err != nil {
		t.Fatal(err)
	}
	got := roundTrip(t, d)
	want := roundTrip(t, map[string]any{
		"cniVersion": "0.3.1", "name": "n", "type": "ipvlan", "ipMasq": true, "mtu": 1400, "master": "eth0",
		"runtimeConfig": map[string]any{"portMappings": []any{}},
		"ipam": map[string]any{
			"type": "other", "dataDir": "/x",
			"ranges": [][]map[string]string{{{"subnet": "172.30.19.0/24"}}},
			"routes": []map[string]any{{"dst": "10.0.0.0/8", "gw": "172.30.19.1", "priority": 5}, {"dst": "172.30.0.0/16"}},
		},
	})
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("delegate config (-want +got):\n%s", diff)
	}
	if n.Delegate["name"] != nil || n.IPAM["ranges"] != nil {
		t.Errorf("Delegate changed its input: %v %v", n.Delegate, n.IPAM)
	}
}

func roundTrip(t *testing.T, v any) map[string]any {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// FuzzParseConf: any config is refused with a CNI error or gives a delegate
// config that encodes, names a delegate and never carries the input's own
// name or ipam over the plugin's.
func FuzzParseConf(f *testing.F) {
	for _, s := range []string{
		`{"cniVersion":"1.0.0","name":"cbr0","type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true}}`,
		`{"name":"n","delegate":{"type":"ipvlan"},"ipam":{"routes":[{"dst":"10.0.0.0/8"}]},"subnetFile":"/a","dataDir":"/b"}`,
		`{"name":"n","delegate":{"type":7}}`,
		`{"name":"n","ipam":{"routes":"x"}}`,
		`{"name":"n","delegate":null,"ipam":null,"runtimeConfig":{"a":1}}`,
		`[]`, `{`,
	} {
		f.Add([]byte(s))
	}
	env, err := flannelcni.ParseEnv("subnet.env", []byte(dualEnv))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		n, err := flannelcni.ParseConf(data)
		if err != nil {
			var e *types.Error
			if !errors.As(err, &e) || e.Code == 0 || e.Msg == "" {
				t.Fatalf("not a CNI error with a code: %#v", err)
			}
			return
		}
		d, err := flannelcni.Delegate(n, env)
		if err != nil {
			t.Fatalf("accepted config, Delegate failed: %v", err)
		}
		if _, err := json.Marshal(d); err != nil {
			t.Fatalf("delegate config does not encode: %v", err)
		}
		if typ, ok := d["type"].(string); !ok || typ == "" {
			t.Fatalf("delegate type %v", d["type"])
		}
		if d["name"] != n.Name {
			t.Fatalf("delegate name %v, want %q", d["name"], n.Name)
		}
		if ipam, ok := d["ipam"].(map[string]any); !ok || ipam["ranges"] == nil {
			t.Fatalf("delegate ipam %v has no ranges", d["ipam"])
		}
	})
}

// FuzzParseEnv: any subnet.env is refused with a CNI error naming the file,
// or has a subnet inside its network and a usable MTU.
func FuzzParseEnv(f *testing.F) {
	for _, s := range []string{
		dualEnv,
		"FLANNEL_NETWORK=172.30.0.0/16\nFLANNEL_SUBNET=172.30.19.1/24\n",
		"FLANNEL_IPV6_NETWORK=fd30::/48\nFLANNEL_IPV6_SUBNET=fd30:0:0:13::1/64\nFLANNEL_MTU=1280\nFLANNEL_IPMASQ=false\n",
		"FLANNEL_NETWORK=10.0.0.0/16,10.1.0.0/16\nFLANNEL_SUBNET=10.0.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
		"export FLANNEL_MTU='1450'\n# c\n", "FLANNEL_MTU", "\x00=",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := flannelcni.ParseEnv("/run/flannel/subnet.env", data)
		if err != nil {
			var ce *types.Error
			if !errors.As(err, &ce) || ce.Code == 0 || !strings.Contains(ce.Msg, "/run/flannel/subnet.env") {
				t.Fatalf("not a CNI error naming the file: %#v", err)
			}
			return
		}
		if !e.Subnet.IsValid() && !e.IPv6Subnet.IsValid() {
			t.Fatal("accepted without a subnet")
		}
		if e.Subnet.IsValid() && !e.Network.Contains(e.Subnet.Addr()) || e.IPv6Subnet.IsValid() && !e.IPv6Network.Contains(e.IPv6Subnet.Addr()) {
			t.Fatalf("accepted a subnet outside its network: %+v", e)
		}
		if e.MTU < 68 {
			t.Fatalf("accepted MTU %d", e.MTU)
		}
	})
}
