package weftctl

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/testutil/etcdtest"
)

// cfgRun runs one weftctl command line in-process against the given
// environment variables and stdin.
func cfgRun(t *testing.T, vars map[string]string, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	env := &Env{
		Stdout: &out, Stderr: &errb, Stdin: strings.NewReader(stdin),
		LookupEnv: func(k string) (string, bool) { v, ok := vars[k]; return v, ok },
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code = Run(ctx, args, env)
	return code, out.String(), errb.String()
}

const seedConfig = `{ "Network": "172.30.0.0/16", "SubnetLen": 24, "Backend": { "Type": "vxlan" } }`

func TestConfigSetGetValidate(t *testing.T) {
	s := etcdtest.New(t)
	cli := etcdtest.NewClient(t, s)
	ep := "-etcd-endpoints=" + s.Endpoint
	prefix := "-etcd-prefix=/kube-centos/network"

	// get before anything is written names the key.
	code, _, stderr := cfgRun(t, nil, "", "config", "get", ep, prefix)
	if code != 1 || !strings.Contains(stderr, "key /kube-centos/network/config does not exist") {
		t.Fatalf("get of a missing config: code %d, stderr %q", code, stderr)
	}

	// set from stdin, then get it back unchanged.
	code, stdout, stderr := cfgRun(t, nil, seedConfig, "config", "set", ep, prefix, "-")
	if code != 0 {
		t.Fatalf("set: code %d, stderr %q", code, stderr)
	}
	if stdout != "wrote /kube-centos/network/config\n" {
		t.Errorf("set stdout %q", stdout)
	}
	code, stdout, stderr = cfgRun(t, nil, "", "config", "get", ep, prefix)
	if code != 0 || stdout != seedConfig+"\n" {
		t.Fatalf("get: code %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	resp, err := cli.Get(context.Background(), "/kube-centos/network/config")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != seedConfig {
		t.Fatalf("etcd holds %v (err %v), want the config as given", resp.Kvs, err)
	}

	// validate without FILE checks the stored config.
	code, stdout, stderr = cfgRun(t, nil, "", "config", "validate", ep, prefix)
	if code != 0 {
		t.Fatalf("validate stored: code %d, stderr %q", code, stderr)
	}
	want := "/kube-centos/network/config: valid\n" +
		"  Network 172.30.0.0/16, SubnetLen 24: 255 subnets 172.30.1.0/24 … 172.30.255.0/24\n" +
		"  Backend vxlan: VNI 1, port 8472 (kernel default), device flannel.1\n"
	if stdout != want {
		t.Errorf("validate stdout\n got %q\nwant %q", stdout, want)
	}

	// An invalid config is refused by set: nothing written.
	bad := filepath.Join(t.TempDir(), "bad.json")
	if err := os.WriteFile(bad, []byte(`{"Network":"172.30.0.0/16","SubnetLen":33}`), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, stderr = cfgRun(t, nil, "", "config", "set", ep, prefix, bad)
	if code != 1 || !strings.Contains(stderr, "invalid network config "+bad+": SubnetLen 33: must be at most 30; nothing written to /kube-centos/network/config") {
		t.Errorf("set of an invalid config: code %d, stderr %q", code, stderr)
	}
	resp, err = cli.Get(context.Background(), "/kube-centos/network/config")
	if err != nil || string(resp.Kvs[0].Value) != seedConfig || resp.Kvs[0].Version != 1 {
		t.Errorf("a refused set changed etcd: %v (err %v)", resp.Kvs, err)
	}

	// The etcd flags come from FLANNELD_* like weftd's.
	vars := map[string]string{"FLANNELD_ETCD_ENDPOINTS": s.Endpoint, "FLANNELD_ETCD_PREFIX": "/kube-centos/network"}
	code, stdout, stderr = cfgRun(t, vars, "", "config", "get")
	if code != 0 || stdout != seedConfig+"\n" {
		t.Errorf("get with FLANNELD_* env: code %d, stdout %q, stderr %q", code, stdout, stderr)
	}

	// A different prefix is a different network.
	code, _, stderr = cfgRun(t, nil, "", "config", "get", ep)
	if code != 1 || !strings.Contains(stderr, "/coreos.com/network/config") {
		t.Errorf("get under the default prefix: code %d, stderr %q", code, stderr)
	}
}

func TestConfigValidateFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name, data     string
		code           int
		stdout, stderr string
	}{
		{"ok.json", `{"Network":"10.10.0.0/16","SubnetMin":"10.10.1.0","SubnetMax":"10.10.254.0","Backend":{"Type":"udp"}}`, 0,
			"valid\n  Network 10.10.0.0/16, SubnetLen 24: 254 subnets 10.10.1.0/24 … 10.10.254.0/24\n  Backend udp: port 8285\n", ""},
		{"warn.json", `{"Network":"10.10.0.0/16","Netwrok":"x"}`, 0, "valid\n", "warning: WARN: Netwrok: unknown key, ignored\n"},
		{"bad-net.json", `{"Network":"10.0.0.300/16"}`, 1, "", `invalid network config BAD: Network "10.0.0.300/16": not an IPv4 CIDR`},
		{"bad-min.json", `{"Network":"172.30.0.0/16","SubnetMin":"10.1.0.0"}`, 1, "", `SubnetMin 10.1.0.0: outside Network 172.30.0.0/16`},
		{"bad-backend.json", `{"Network":"172.30.0.0/16","Backend":{"Type":"foo"}}`, 1, "",
			`Backend.Type "foo": unknown backend (known: vxlan, host-gw, udp, alloc, ipip, wireguard)`},
		{"bad-json.json", `{"Network":`, 1, "", `malformed JSON at byte offset 11`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := write(tt.name, tt.data)
			// No etcd is needed to validate a file: point at a closed port.
			code, stdout, stderr := cfgRun(t, nil, "", "config", "validate", "-etcd-endpoints=http://127.0.0.1:1", p)
			if code != tt.code {
				t.Errorf("code %d, want %d (stderr %q)", code, tt.code, stderr)
			}
			if tt.stdout != "" && !strings.Contains(stdout, tt.stdout) {
				t.Errorf("stdout %q, want it to contain %q", stdout, tt.stdout)
			}
			wantErr := strings.NewReplacer("WARN", p, "BAD", p).Replace(tt.stderr)
			if !strings.Contains(stderr, wantErr) {
				t.Errorf("stderr %q, want it to contain %q", stderr, wantErr)
			}
		})
	}
}

func TestConfigUsage(t *testing.T) {
	for _, args := range [][]string{
		{"config"}, {"config", "frob"}, {"config", "get", "-no-such-flag"}, {"config", "set"}, {"config", "get", "extra"},
	} {
		code, _, stderr := cfgRun(t, nil, "", args...)
		if code != 2 {
			t.Errorf("%q: code %d, want 2 (stderr %q)", args, code, stderr)
		}
		if !strings.Contains(stderr, "usage") && !strings.Contains(stderr, "weftctl config:") {
			t.Errorf("%q: stderr %q says nothing useful", args, stderr)
		}
	}
	if code, _, _ := cfgRun(t, nil, "", "config", "-h"); code != 0 {
		t.Errorf("config -h: code %d", code)
	}
	// A bad FLANNELD_* value is a usage error naming the variable.
	code, _, stderr := cfgRun(t, map[string]string{"FLANNELD_ETCD_PREFIX": "relative"}, "", "config", "get")
	if code != 1 || !strings.Contains(stderr, "-etcd-prefix \"relative\": must start with /") {
		t.Errorf("relative prefix: code %d, stderr %q", code, stderr)
	}
}
