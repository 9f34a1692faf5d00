package lease

import (
	"context"
	"net/netip"
	"testing"
	"time"
)

// flanneldUDPValue is the value flanneld v0.28.10's udp backend writes for
// its lease (read back from etcd in e2e/flanneld_test.go): no BackendType.
const flanneldUDPValue = `{"PublicIP":"10.64.0.201","PublicIPv6":null}`

// TestUDPNetworkTypelessLease: in a udp network, flanneld's typeless udp
// lease reaches the dataplane as a udp lease, whether it was there at
// acquisition (list) or written later (watch), and its etcd value is left
// as it was; a lease of another backend keeps its type (the backend refuses
// it), and in a vxlan network a typeless lease stays typeless.
func TestUDPNetworkTypelessLease(t *testing.T) {
	_, cli, s, _ := newTestStore(t)
	log, _ := newLogger()
	listed := s.SubnetsPrefix() + "172.30.201.0-24"
	watched := s.SubnetsPrefix() + "172.30.202.0-24"
	other := s.SubnetsPrefix() + "172.30.203.0-24"
	put(t, cli, listed, flanneldUDPValue)
	put(t, cli, other, `{"PublicIP":"10.64.0.203","PublicIPv6":null,"BackendType":"host-gw"}`)

	udpNet := testNet()
	udpNet.BackendType = "udp"
	m := NewManager(ManagerConfig{Store: s, Network: udpNet, PublicIP: hostIP(1), BackendType: "udp", Logger: log})
	runManager(t, m)
	put(t, cli, watched, `{"PublicIP":"10.64.0.202","PublicIPv6":null}`)
	snap := waitSnap(t, m, 5*time.Second, "3 peers", func(s Snapshot) bool { return len(s.Peers) == 3 })
	want := map[string]string{"172.30.201.0/24": "udp", "172.30.202.0/24": "udp", "172.30.203.0/24": "host-gw"}
	for _, p := range snap.Peers {
		if got := p.Attrs.BackendType; got != want[p.Subnet.String()] {
			t.Errorf("peer %s: BackendType %q, want %q", p.Subnet, got, want[p.Subnet.String()])
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, listed)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("get %s: %v (%d keys)", listed, err, len(resp.Kvs))
	}
	if kv := resp.Kvs[0]; string(kv.Value) != flanneldUDPValue || kv.Version != 1 {
		t.Errorf("flanneld's lease was rewritten: version %d, value %s", kv.Version, kv.Value)
	}

	// The same typeless lease in a vxlan network is not a vxlan host's.
	vs := NewStore(cli, testPrefix, log)
	vm := newTestManager(vs, testNet(), hostIP(2), log)
	runManager(t, vm)
	vsnap := waitSnap(t, vm, 5*time.Second, "4 peers", func(s Snapshot) bool { return len(s.Peers) == 4 })
	for _, p := range vsnap.Peers {
		if p.Subnet == netip.MustParsePrefix("172.30.201.0/24") && p.Attrs.BackendType != "" {
			t.Errorf("vxlan network: typeless lease %s handed on as %q", p.Subnet, p.Attrs.BackendType)
		}
	}
}
