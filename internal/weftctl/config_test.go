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

// A Network that would swallow the address space, or overlap loopback,
// link-local or multicast, is refused by validate and by set (even with
// -force), and a stored one written behind weftctl's back fails validate.
func TestConfigRefusesUnsafeNetworks(t *testing.T) {
	s := etcdtest.New(t)
	cli := etcdtest.NewClient(t, s)
	ep := "-etcd-endpoints=" + s.Endpoint
	prefix := "-etcd-prefix=/kube-centos/network"
	for _, c := range []struct{ data, want string }{
		{`{"Network":"0.0.0.0/0"}`, "Network 0.0.0.0/0: too wide: the prefix must be at least /8"},
		{`{"Network":"127.0.0.0/16"}`, "Network 127.0.0.0/16: overlaps loopback 127.0.0.0/8"},
		{`{"Network":"224.0.0.0/16"}`, "Network 224.0.0.0/16: overlaps multicast 224.0.0.0/4"},
		{`{"Network":"169.254.0.0/16"}`, "Network 169.254.0.0/16: overlaps link-local 169.254.0.0/16"},
		{`{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"::/0"}`, "IPv6Network ::/0: too wide"},
		{`{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"::1/128"}`, "IPv6Network ::1/128: overlaps ::/8"},
		{`{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"ff00::/8"}`, "IPv6Network ff00::/8: overlaps multicast ff00::/8"},
		{`{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fe80::/10"}`, "IPv6Network fe80::/10: overlaps link-local fe80::/10"},
	} {
		code, _, stderr := cfgRun(t, nil, c.data, "config", "validate", ep, prefix, "-")
		if code != 1 || !strings.Contains(stderr, c.want) {
			t.Errorf("validate %s: code %d, stderr %q; want 1 and %q", c.data, code, stderr, c.want)
		}
		code, _, stderr = cfgRun(t, nil, c.data, "config", "set", ep, prefix, "-force", "-")
		if code != 1 || !strings.Contains(stderr, c.want) || !strings.Contains(stderr, "nothing written") {
			t.Errorf("set -force %s: code %d, stderr %q; want 1, %q and nothing written", c.data, code, stderr, c.want)
		}
	}
	resp, err := cli.Get(context.Background(), "/kube-centos/network/config")
	if err != nil || len(resp.Kvs) != 0 {
		t.Fatalf("a refused set wrote %v (err %v)", resp.Kvs, err)
	}
	if _, err := cli.Put(context.Background(), "/kube-centos/network/config", `{"Network":"0.0.0.0/0"}`); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := cfgRun(t, nil, "", "config", "validate", ep, prefix)
	if code != 1 || !strings.Contains(stderr, "Network 0.0.0.0/0: too wide") {
		t.Errorf("validate of a stored 0.0.0.0/0: code %d, stderr %q", code, stderr)
	}
}

// weftctl takes the etcd password from a file too (the same -etcd-* flags
// as weftd), from the flag or FLANNELD_ETCD_PASSWORD_FILE, and refuses a
// file others can read.
func TestConfigEtcdPasswordFile(t *testing.T) {
	s := etcdtest.New(t)
	etcdtest.EnableAuth(t, etcdtest.NewClient(t, s), "weft", "s3cret", "/coreos.com/network/")
	ep := "-etcd-endpoints=" + s.Endpoint
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	if err := os.WriteFile(pw, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := cfgRun(t, nil, seedConfig, "config", "set", ep, "-etcd-username=weft", "-etcd-password-file="+pw, "-"); code != 0 {
		t.Fatalf("set with -etcd-password-file: code %d, stderr %q", code, stderr)
	}
	vars := map[string]string{"FLANNELD_ETCD_USERNAME": "weft", "FLANNELD_ETCD_PASSWORD_FILE": pw}
	if code, stdout, stderr := cfgRun(t, vars, "", "config", "get", ep); code != 0 || stdout != seedConfig+"\n" {
		t.Fatalf("get with FLANNELD_ETCD_PASSWORD_FILE: code %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	os.Chmod(pw, 0o644)
	code, _, stderr := cfgRun(t, vars, "", "config", "get", ep)
	if code == 0 || !strings.Contains(stderr, "mode 0644 lets group or others access the password") {
		t.Errorf("get with a world-readable password file: code %d, stderr %q", code, stderr)
	}
}
