package weftctl

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/testutil/etcdv2test"
)

// TestMigrateV2Command runs `weftctl migrate-v2` as an operator would, with
// the ops note's /etc/sysconfig/flanneld in the environment, against etcd
// 3.4 whose v2 store was written with `ETCDCTL_API=2 etcdctl mk`: the dry
// run shows each key with its TTL and writes nothing (even with
// FLANNELD_APPLY set), --apply writes, a second --apply says there is
// nothing to write, and `leases list` then shows the migrated leases.
// Text from etcd is printed escaped.
func TestMigrateV2Command(t *testing.T) {
	srv := etcdv2test.Start(t)
	const p = "/kube-centos/network"
	srv.MkV2(t, p+"/config", `{ "Network": "172.30.0.0/16", "SubnetLen": 24, "Backend": { "Type": "vxlan" } }`, 0)
	srv.MkV2(t, p+"/subnets/172.30.19.0-24", `{"PublicIP":"10.64.3.7","BackendType":"vxlan","BackendData":{"VtepMAC":"d6:51:2e:80:5c:69"}}`, 86400)
	srv.MkV2(t, p+"/subnets/172.30.83.0-24", `{"PublicIP":"10.64.3.8","BackendType":"vxlan","BackendData":{"VtepMAC":"d6:51:2e:80:5c:6a"}}`, 0)
	// Valid JSON may carry C1 controls raw (U+009B is a terminal's CSI).
	srv.MkV2(t, p+"/subnets/172.30.60.0-24", "{\"PublicIP\":\"10.64.3.9\",\"BackendType\":\"vxlan\",\"BackendData\":{\"VtepMAC\":\"d6:51:2e:80:5c:6b\",\"x\":\"\u009b2J\"}}", 600)
	cli := srv.Client(t)

	env := map[string]string{"FLANNELD_ETCD_ENDPOINTS": srv.Endpoint, "FLANNELD_ETCD_PREFIX": p, "FLANNELD_APPLY": "true"}
	run := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := Run(context.Background(), args, &Env{Stdout: &out, Stderr: &errb, LookupEnv: func(k string) (string, bool) {
			v, ok := env[k]
			return v, ok
		}})
		return code, out.String(), errb.String()
	}
	v3Keys := func() int64 {
		resp, err := cli.Get(context.Background(), p+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		return resp.Count
	}

	code, out, errOut := run("migrate-v2")
	if code != 0 {
		t.Fatalf("dry run: exit %d\n%s%s", code, out, errOut)
	}
	for _, re := range []string{
		`(?m)^would write  /kube-centos/network/config  \(config, no lease\)  \{ "Network": "172.30.0.0/16"`,
		`(?m)^would write  /kube-centos/network/subnets/172.30.19.0-24  \(lease, TTL 86(39\d|400)s\)  \{"PublicIP":"10.64.3.7"`,
		`(?m)^would write  /kube-centos/network/subnets/172.30.83.0-24  \(reservation, no lease\)`,
		`(?m)^would write  /kube-centos/network/subnets/172.30.60.0-24  \(lease, TTL (59\d|600)s\) .*\\u009b2J`,
		`(?m)^dry run: 4 keys to write; nothing written \(run with --apply to write\)$`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("dry run output does not match %s:\n%s", re, out)
		}
	}
	if strings.Contains(out, "\u009b") {
		t.Errorf("dry run printed a raw C1 control from etcd:\n%q", out)
	}
	if n := v3Keys(); n != 0 {
		t.Fatalf("dry run wrote %d keys to v3", n)
	}

	if code, out, errOut = run("migrate-v2", "--apply"); code != 0 || !strings.Contains(out, "wrote 4 keys to v3\n") ||
		!strings.Contains(out, "wrote        /kube-centos/network/subnets/172.30.19.0-24  (lease, TTL ") {
		t.Fatalf("apply: exit %d\n%s%s", code, out, errOut)
	}
	if n := v3Keys(); n != 4 {
		t.Fatalf("apply wrote %d keys to v3, want 4", n)
	}
	code, out, errOut = run("migrate-v2", "--apply")
	if code != 0 || !strings.HasSuffix(out, "nothing to write: v3 already has everything that can be migrated; 4 already in v3\n") ||
		strings.Contains(out, "wrote") {
		t.Fatalf("second apply: exit %d\n%s%s", code, out, errOut)
	}

	// weft's own view of the result.
	code, out, _ = run("leases", "list")
	for _, re := range []string{`(?m)^172\.30\.19\.0/24\s+10\.64\.3\.7\s+vxlan\s+d6:51:2e:80:5c:69\s+23h5\dm$`,
		`(?m)^172\.30\.83\.0/24\s+10\.64\.3\.8\s+vxlan\s+d6:51:2e:80:5c:6a\s+reserved$`} {
		if code != 0 || !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("leases list after the migration (exit %d) does not match %s:\n%s", code, re, out)
		}
	}
}

// TestMigrateV2Problems: a conflict and a malformed key make exit status 1,
// each named with its rule and escaped; the rest is migrated. A prefix with
// nothing in v2 is an error that says so.
func TestMigrateV2Problems(t *testing.T) {
	srv := etcdv2test.Start(t)
	const p = "/other/network"
	srv.MkV2(t, p+"/config", `{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}`, 0)
	srv.MkV2(t, p+"/subnets/10.5.1.0-24", `{"PublicIP":"192.168.7.1","BackendType":"host-gw"}`, 3600)
	srv.MkV2(t, p+"/subnets/10.5.2.0-24", `{"PublicIP":"192.168.7.2","BackendType":"host-gw"}`, 3600)
	srv.MkV2(t, p+"/subnets/10.5.3.0-24\x1b[2J", `{"PublicIP":"192.168.7.3","BackendType":"host-gw"}`, 3600)
	cli := srv.Client(t)
	if _, err := cli.Put(context.Background(), p+"/subnets/10.5.2.0-24", `{"PublicIP":"192.168.7.22","BackendType":"host-gw"}`); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	env := &Env{Stdout: &out, Stderr: &errb, LookupEnv: func(string) (string, bool) { return "", false }}
	code := Run(context.Background(), []string{"migrate-v2", "--etcd-endpoints", srv.Endpoint, "--etcd-prefix", p, "--apply"}, env)
	if code != 1 {
		t.Fatalf("exit %d, want 1\n%s%s", code, out.String(), errb.String())
	}
	for _, re := range []string{
		`(?m)^wrote        /other/network/subnets/10\.5\.1\.0-24  \(lease, TTL 3(59\d|600)s\)`,
		`(?m)^conflict     /other/network/subnets/10\.5\.2\.0-24  \(lease\): v3 holds another value: \{"PublicIP":"192\.168\.7\.22"`,
		`(?m)^invalid      /other/network/subnets/10\.5\.3\.0-24\\x1b\[2J: lease key "10\.5\.3\.0-24\\x1b\[2J": .*: not migrated$`,
		`(?m)^wrote 2 keys to v3; 1 in conflict \(not overwritten\), 1 invalid \(not migrated\)$`,
	} {
		if !regexp.MustCompile(re).MatchString(out.String()) {
			t.Errorf("output does not match %s:\n%s", re, out.String())
		}
	}
	if strings.Contains(out.String(), "\x1b") {
		t.Errorf("printed a raw ESC from etcd:\n%q", out.String())
	}

	out.Reset()
	errb.Reset()
	code = Run(context.Background(), []string{"migrate-v2", "--etcd-endpoints", srv.Endpoint, "--etcd-prefix", "/not/there"}, env)
	if code != 1 || !strings.Contains(errb.String(), "nothing to migrate: /not/there at "+srv.Endpoint+": no key under the prefix in etcd's v2 store") {
		t.Errorf("empty prefix: exit %d, stderr %q", code, errb.String())
	}
}
