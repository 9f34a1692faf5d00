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

// config set says which changes the running weftds apply live and which need
// a restart, on how many of the hosts holding leases; a restart-needing change
// is refused without -force (nothing written), -dry-run shows the judgement
// and writes nothing, and without any lease there is nothing to restart.
func TestConfigSetRestartNeeded(t *testing.T) {
	s := etcdtest.New(t)
	cli := etcdtest.NewClient(t, s)
	ep := "-etcd-endpoints=" + s.Endpoint
	prefix := "-etcd-prefix=/kube-centos/network"
	stored := func() string {
		t.Helper()
		resp, err := cli.Get(context.Background(), "/kube-centos/network/config")
		if err != nil || len(resp.Kvs) == 0 {
			t.Fatalf("get config: %v", err)
		}
		return string(resp.Kvs[0].Value)
	}
	hostGW := `{"Network":"172.30.0.0/16","SubnetLen":24,"Backend":{"Type":"host-gw"}}`

	// No lease yet: a restart-needing change restarts nobody and is written.
	if code, _, stderr := cfgRun(t, nil, seedConfig, "config", "set", ep, prefix, "-"); code != 0 {
		t.Fatalf("first set: %d %s", code, stderr)
	}
	code, stdout, stderr := cfgRun(t, nil, hostGW, "config", "set", ep, prefix, "-")
	if code != 0 || !strings.Contains(stdout, "no host holds a lease under /kube-centos/network/subnets/") || stored() != hostGW {
		t.Fatalf("restart-needing set without leases: code %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if code, _, stderr := cfgRun(t, nil, seedConfig, "config", "set", ep, prefix, "-force", "-"); code != 0 {
		t.Fatalf("back to vxlan: %d %s", code, stderr)
	}
	for _, kv := range [][2]string{
		{"172.30.19.0-24", `{"PublicIP":"10.64.3.7","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"d6:51:2e:80:5c:69"}}`},
		{"172.30.20.0-24", `{"PublicIP":"10.64.3.8","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"d6:51:2e:80:5c:6a"}}`},
	} {
		if _, err := cli.Put(context.Background(), "/kube-centos/network/subnets/"+kv[0], kv[1]); err != nil {
			t.Fatal(err)
		}
	}

	// Live: written without asking, said to need no restart.
	port := `{"Network":"172.30.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","Port":8999}}`
	code, stdout, stderr = cfgRun(t, nil, port, "config", "set", ep, prefix, "-")
	if code != 0 || stored() != port ||
		!strings.Contains(stdout, `applied live by the running weftd of each of the 2 host(s) with a lease under /kube-centos/network/subnets/, no restart: Backend options {"Type":"vxlan"} -> {"Type":"vxlan","Port":8999}`) {
		t.Fatalf("live set: code %d, stdout %q, stderr %q", code, stdout, stderr)
	}

	// Restart needed: refused without -force, naming hosts and change.
	code, stdout, stderr = cfgRun(t, nil, hostGW, "config", "set", ep, prefix, "-")
	if code != 1 || stored() != port ||
		!strings.Contains(stdout, "needs a restart of weftd on 2 of the 2 host(s) with a lease under /kube-centos/network/subnets/: Backend.Type vxlan -> host-gw") ||
		!strings.Contains(stderr, "the change needs a restart of weftd on 2 host(s) (172.30.19.0/24 (10.64.3.7), 172.30.20.0/24 (10.64.3.8))") ||
		!strings.Contains(stderr, "nothing written to /kube-centos/network/config (add -force") {
		t.Fatalf("restart-needing set: code %d, stdout %q, stderr %q", code, stdout, stderr)
	}

	// A Network without one host's subnet: only that host needs a restart.
	narrow := `{"Network":"172.30.20.0/22","SubnetLen":24,"Backend":{"Type":"vxlan","Port":8999}}`
	code, stdout, _ = cfgRun(t, nil, narrow, "config", "set", ep, prefix, "-dry-run", "-")
	if code != 0 || stored() != port ||
		!strings.Contains(stdout, "needs a restart of weftd on 1 of the 2 host(s)") ||
		!strings.Contains(stdout, "applied live by the running weftd of 1 of the 2 host(s) with a lease under /kube-centos/network/subnets/ (the others need a restart): Network 172.30.0.0/16 -> 172.30.20.0/22") ||
		!strings.Contains(stdout, "Network 172.30.0.0/16 -> 172.30.20.0/22, which does not contain this host's subnet 172.30.19.0/24") {
		t.Fatalf("narrowing dry run: code %d, stdout %q", code, stdout)
	}

	// A change mixing both kinds: weftd applies none of it.
	mixed := `{"Network":"172.16.0.0/12","SubnetLen":24,"EnableNFTables":true,"Backend":{"Type":"vxlan","Port":8999}}`
	code, stdout, _ = cfgRun(t, nil, mixed, "config", "set", ep, prefix, "-dry-run", "-")
	if code != 0 || !strings.Contains(stdout, "not applied live either, since the change also needs a restart: Network 172.30.0.0/16 -> 172.16.0.0/12") ||
		!strings.Contains(stdout, "needs a restart of weftd on 2 of the 2 host(s) with a lease under /kube-centos/network/subnets/: EnableNFTables false -> true") {
		t.Fatalf("mixed dry run: code %d, stdout %q", code, stdout)
	}

	// -dry-run: the whole judgement, nothing written, exit 0.
	code, stdout, _ = cfgRun(t, nil, hostGW, "config", "set", ep, prefix, "-dry-run", "-")
	if code != 0 || stored() != port || !strings.Contains(stdout, `+    "Type": "host-gw"`) ||
		!strings.Contains(stdout, "dry run: nothing written to /kube-centos/network/config; the config would be refused without -force") {
		t.Fatalf("dry run: code %d, stdout %q", code, stdout)
	}
	code, stdout, _ = cfgRun(t, nil, port, "config", "set", ep, prefix, "-dry-run", "-")
	if code != 0 || !strings.Contains(stdout, "dry run: nothing written to /kube-centos/network/config; the config would be written") {
		t.Fatalf("dry run of the stored config: code %d, stdout %q", code, stdout)
	}

	// -force: the first step of a rolling restart.
	code, stdout, stderr = cfgRun(t, nil, hostGW, "config", "set", ep, prefix, "-force", "-")
	if code != 0 || stored() != hostGW || !strings.Contains(stderr, "writing because of -force") || !strings.HasSuffix(stdout, "wrote /kube-centos/network/config\n") {
		t.Fatalf("forced set: code %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}
