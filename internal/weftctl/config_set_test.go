package weftctl

import (
	"context"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/testutil/etcdtest"
)

// config set shows the change and refuses a Network that would orphan the
// existing leases unless -force.
func TestConfigSetOrphansLeases(t *testing.T) {
	s := etcdtest.New(t)
	cli := etcdtest.NewClient(t, s)
	ep := "-etcd-endpoints=" + s.Endpoint
	prefix := "-etcd-prefix=/kube-centos/network"
	if code, _, stderr := cfgRun(t, nil, seedConfig, "config", "set", ep, prefix, "-"); code != 0 {
		t.Fatalf("first set: %d %s", code, stderr)
	}
	if _, err := cli.Put(context.Background(), "/kube-centos/network/subnets/172.30.19.0-24",
		`{"PublicIP":"10.64.3.7","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"d6:51:2e:80:5c:69"}}`); err != nil {
		t.Fatal(err)
	}
	moved := `{"Network":"10.5.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}`
	code, stdout, stderr := cfgRun(t, nil, moved, "config", "set", ep, prefix, "-")
	if code != 1 || !strings.Contains(stderr, "1 existing lease(s) fall outside the new config") ||
		!strings.Contains(stderr, "172.30.19.0/24 (10.64.3.7)") || !strings.Contains(stderr, "-force") {
		t.Fatalf("orphaning set: code %d, stderr %q", code, stderr)
	}
	if !strings.Contains(stdout, `-  "Network": "172.30.0.0/16",`) || !strings.Contains(stdout, `+  "Network": "10.5.0.0/16",`) {
		t.Fatalf("no diff shown:\n%s", stdout)
	}
	resp, _ := cli.Get(context.Background(), "/kube-centos/network/config")
	if string(resp.Kvs[0].Value) != seedConfig {
		t.Fatalf("refused set wrote %s", resp.Kvs[0].Value)
	}
	code, stdout, stderr = cfgRun(t, nil, moved, "config", "set", ep, prefix, "-force", "-")
	if code != 0 || !strings.Contains(stderr, "writing because of -force") || !strings.HasSuffix(stdout, "wrote /kube-centos/network/config\n") {
		t.Fatalf("forced set: code %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}
