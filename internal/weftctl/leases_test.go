package weftctl

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/testutil/etcdtest"
)

type leasesFixture struct {
	t   *testing.T
	srv *etcdtest.Server
	cli *clientv3.Client
	env map[string]string
}

const leasesPrefix = "/kube-centos/network"

func (f *leasesFixture) run(args ...string) (code int, stdout, stderr string) {
	return f.runInput("", args...)
}

// runInput runs a command with input as what the operator types.
func (f *leasesFixture) runInput(input string, args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	env := &Env{Stdout: &out, Stderr: &errb, Stdin: strings.NewReader(input), LookupEnv: func(k string) (string, bool) {
		v, ok := f.env[k]
		return v, ok
	}}
	code = Run(context.Background(), append([]string{"leases"}, args...), env)
	return code, out.String(), errb.String()
}

func newLeasesFixture(t *testing.T) *leasesFixture {
	srv := etcdtest.New(t)
	cli := etcdtest.NewClient(t, srv)
	// The ops note's /etc/sysconfig/flanneld, through the environment.
	env := map[string]string{"FLANNELD_ETCD_ENDPOINTS": srv.Endpoint, "FLANNELD_ETCD_PREFIX": leasesPrefix}
	ctx := context.Background()
	g, err := cli.Grant(ctx, 24*3600)
	if err != nil {
		t.Fatal(err)
	}
	sp := leasesPrefix + "/subnets/"
	for k, v := range map[string]string{
		"172.30.19.0-24": `{"PublicIP":"10.64.3.7","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"d6:51:2e:80:5c:69"}}`,
		"172.30.83.0-24": `{"PublicIP":"10.64.3.8","BackendType":"host-gw"}`,
	} {
		if _, err := cli.Put(ctx, sp+k, v, clientv3.WithLease(g.ID)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cli.Put(ctx, sp+"172.30.60.0-24", `{"PublicIP":"10.64.3.9"}`); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, sp+"junk", `{`); err != nil {
		t.Fatal(err)
	}
	return &leasesFixture{t: t, srv: srv, cli: cli, env: env}
}

func TestLeasesList(t *testing.T) {
	f := newLeasesFixture(t)
	code, out, errOut := f.run("list")
	if code != 0 {
		t.Fatalf("list: exit %d, stderr %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 {
		t.Fatalf("list output:\n%s", out)
	}
	header := regexp.MustCompile(`^SUBNET\s+PUBLIC-IP\s+BACKEND\s+VTEP-MAC\s+EXPIRES$`)
	if !header.MatchString(lines[0]) {
		t.Errorf("header %q", lines[0])
	}
	for i, want := range []string{
		`^172\.30\.19\.0/24\s+10\.64\.3\.7\s+vxlan\s+d6:51:2e:80:5c:69\s+2[34]h\d+m$`,
		`^172\.30\.60\.0/24\s+10\.64\.3\.9\s+-\s+-\s+reserved$`,
		`^172\.30\.83\.0/24\s+10\.64\.3\.8\s+host-gw\s+-\s+2[34]h\d+m$`,
	} {
		if !regexp.MustCompile(want).MatchString(lines[i+1]) {
			t.Errorf("line %d = %q, want %s", i+1, lines[i+1], want)
		}
	}
	if !strings.Contains(errOut, "junk") {
		t.Errorf("malformed key not reported on stderr: %q", errOut)
	}

	code, out, errOut = f.run("list", "-o", "json", "--etcd-endpoints", f.srv.Endpoint)
	if code != 0 {
		t.Fatalf("list -o json: exit %d, %s", code, errOut)
	}
	var got []leaseJSON
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("json output %q: %v", out, err)
	}
	if len(got) != 3 || got[0].Subnet != "172.30.19.0/24" || got[0].VtepMAC != "d6:51:2e:80:5c:69" ||
		got[0].Expires == nil || time.Until(*got[0].Expires) < 23*time.Hour || !got[1].Reserved || got[1].Expires != nil {
		t.Errorf("json: %s", out)
	}

	// A prefix with no leases: empty table, and "[]" in JSON.
	code, out, _ = f.run("list", "-o", "json", "-etcd-prefix", "/other")
	if code != 0 || strings.TrimSpace(out) != "[]" {
		t.Errorf("empty json list: %d %q", code, out)
	}
}

func TestLeasesShowRmReserve(t *testing.T) {
	f := newLeasesFixture(t)
	code, out, errOut := f.run("show", "172.30.19.0-24")
	if code != 0 {
		t.Fatalf("show: %d %s", code, errOut)
	}
	for _, want := range []string{
		"key:     /kube-centos/network/subnets/172.30.19.0-24\n",
		`value:   {"PublicIP":"10.64.3.7","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"d6:51:2e:80:5c:69"}}` + "\n",
		"expires: 23h59m",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("show output lacks %q:\n%s", want, out)
		}
	}
	if code, out, _ := f.run("show", "172.30.60.0/24"); code != 0 || !strings.Contains(out, "expires: reserved") {
		t.Errorf("show reservation: %d %s", code, out)
	}
	if code, _, errOut := f.run("show", "172.30.1.0/24"); code != 1 || !strings.Contains(errOut, "not found") {
		t.Errorf("show missing: %d %s", code, errOut)
	}

	// rm: the seed's etcdctl rmdir, but it asks first and warns that a live
	// host holds the lease; no answer (a script without --yes) keeps it.
	code, out, errOut = f.run("rm", "172.30.83.0/24")
	if code != 1 || !strings.Contains(errOut, "held by a live host, 10.64.3.8") || !strings.Contains(errOut, "not deleted") {
		t.Fatalf("rm without an answer: %d %q %q", code, out, errOut)
	}
	if code, _, errOut := f.runInput("n\n", "rm", "172.30.83.0/24"); code != 1 || !strings.Contains(errOut, "[y/N]") {
		t.Fatalf("rm answered n: %d %q", code, errOut)
	}
	if resp, _ := f.cli.Get(context.Background(), leasesPrefix+"/subnets/172.30.83.0-24"); len(resp.Kvs) != 1 {
		t.Fatal("rm deleted the lease without a yes")
	}
	if code, out, errOut := f.runInput("y\n", "rm", "172.30.83.0/24"); code != 0 || !strings.Contains(out, "deleted") {
		t.Fatalf("rm answered y: %d %s %s", code, out, errOut)
	}
	if resp, _ := f.cli.Get(context.Background(), leasesPrefix+"/subnets/172.30.83.0-24"); len(resp.Kvs) != 0 {
		t.Error("rm left the key")
	}

	// reserve refuses a live lease of another host, then works on a free subnet.
	if code, _, errOut := f.run("reserve", "172.30.19.0/24", "--public-ip", "10.64.3.99"); code != 1 || !strings.Contains(errOut, "10.64.3.7") {
		t.Errorf("reserve over a live lease: %d %s", code, errOut)
	}
	f.env["FLANNELD_PUBLIC_IP"] = "10.0.0.1" // the local host's address must not leak in
	if code, _, errOut := f.run("reserve", "172.30.40.0-24"); code != 2 || !strings.Contains(errOut, "--public-ip") {
		t.Errorf("reserve without --public-ip: %d %s", code, errOut)
	}
	if code, out, errOut := f.run("reserve", "172.30.40.0-24", "--public-ip", "10.64.3.40"); code != 0 || !strings.Contains(out, "reserved 172.30.40.0/24 for 10.64.3.40") {
		t.Fatalf("reserve: %d %s %s", code, out, errOut)
	}
	resp, _ := f.cli.Get(context.Background(), leasesPrefix+"/subnets/172.30.40.0-24")
	if len(resp.Kvs) != 1 || resp.Kvs[0].Lease != 0 || string(resp.Kvs[0].Value) != `{"PublicIP":"10.64.3.40","PublicIPv6":null}` {
		t.Fatalf("reservation in etcd: %v", resp.Kvs)
	}
	// unreserve refuses a live lease, deletes a reservation.
	if code, _, errOut := f.run("unreserve", "172.30.19.0/24"); code != 1 || !strings.Contains(errOut, "live lease") {
		t.Errorf("unreserve live lease: %d %s", code, errOut)
	}
	if code, _, errOut := f.run("unreserve", "172.30.40.0/24"); code != 0 {
		t.Errorf("unreserve: %d %s", code, errOut)
	}
	st := lease.NewStore(f.cli, leasesPrefix, nil)
	if _, err := st.Get(context.Background(), netip.MustParsePrefix("172.30.40.0/24")); err == nil {
		t.Error("unreserve left the key")
	}
}

func TestLeasesUsageErrors(t *testing.T) {
	f := &leasesFixture{t: t, env: map[string]string{}}
	for _, args := range [][]string{
		{},
		{"frob"},
		{"show"},
		{"show", "172.30.19.1/24"},
		{"show", "banana"},
		{"rm", "172.30.19.0/24", "extra"},
		{"list", "-o", "yaml"},
		{"list", "--no-such-flag"},
		{"reserve", "172.30.19.0/24", "--public-ip", "fc00::1"},
	} {
		if code, _, errOut := f.run(args...); code != 2 || errOut == "" {
			t.Errorf("leases %q: exit %d, stderr %q; want 2 with a message", args, code, errOut)
		}
	}
	if _, _, errOut := f.run("show", "172.30.19.1/24"); !strings.Contains(errOut, "172.30.19.0/24") {
		t.Errorf("host-bits error does not name the subnet: %s", errOut)
	}
}

func TestExpiresIn(t *testing.T) {
	now := time.Now()
	for d, want := range map[time.Duration]string{
		24*time.Hour - 30*time.Second:  "23h59m",
		5*time.Minute + 10*time.Second: "5m",
		42 * time.Second:               "42s",
		-time.Second:                   "expired",
	} {
		if got := expiresIn(lease.Lease{EtcdLease: 1}, now.Add(d), now); got != want {
			t.Errorf("expiresIn(%v) = %q, want %q", d, got, want)
		}
	}
	if got := expiresIn(lease.Lease{}, time.Time{}, now); got != "reserved" {
		t.Errorf("reservation: %q", got)
	}
}

// A wrong password is one clear error within 5 s, naming the endpoint and
// the cause, and never the password.
func TestLeasesWrongPassword(t *testing.T) {
	f := newLeasesFixture(t)
	etcdtest.EnableAuth(t, f.cli, "weft", "s3cret", leasesPrefix)
	start := time.Now()
	code, _, errOut := f.run("list", "--etcd-username", "weft", "--etcd-password", "wrong-one")
	took := time.Since(start)
	if code != 1 || !strings.Contains(errOut, "authentication failed") || !strings.Contains(errOut, f.srv.Endpoint) {
		t.Fatalf("exit %d, stderr %q: want exit 1 naming %s and the authentication failure", code, errOut, f.srv.Endpoint)
	}
	if strings.Contains(errOut, "wrong-one") {
		t.Fatalf("the password appears in the error: %q", errOut)
	}
	if took > 5*time.Second {
		t.Fatalf("took %v, want the error within 5s", took)
	}
	t.Logf("wrong password reported in %v: %s", took.Round(time.Millisecond), strings.TrimSpace(errOut))
	if code, out, errOut := f.run("list", "--etcd-username", "weft", "--etcd-password", "s3cret"); code != 0 || !strings.Contains(out, "172.30.19.0/24") {
		t.Fatalf("right password: exit %d %q %q", code, out, errOut)
	}
}

// Issue 11 finding 10: text from etcd reaches the operator's terminal only
// escaped. A forged lease whose BackendType carries a screen-clearing CSI,
// a newline and a fake row, and whose VtepMAC carries an OSC title sequence,
// must neither emit a control character nor add a row to the table.
func TestLeasesListEscapesEtcdData(t *testing.T) {
	f := newLeasesFixture(t)
	forged := `{"PublicIP":"10.64.3.50","BackendType":"vxlan\u001b[2J\n172.30.99.0/24  10.66.66.66  vxlan  -  23h59m\u009b\u202e",` +
		`"BackendData":{"VNI":1,"VtepMAC":"\u001b]0;owned\u0007"}}`
	if _, err := f.cli.Put(context.Background(), leasesPrefix+"/subnets/172.30.50.0-24", forged); err != nil {
		t.Fatal(err)
	}
	noControl := func(what, out string) {
		t.Helper()
		for _, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
			for _, r := range line {
				if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == 0x202e {
					t.Errorf("%s: control character %U reached the terminal in %q", what, r, line)
				}
			}
		}
	}
	code, out, errOut := f.run("list")
	if code != 0 {
		t.Fatalf("list: exit %d, stderr %s", code, errOut)
	}
	noControl("list", out)
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 5 {
		t.Errorf("list has %d lines, want a header and 4 leases (no forged row):\n%s", len(lines), out)
	}
	if !strings.Contains(out, `vxlan\x1b[2J\n172.30.99.0/24`) || !strings.Contains(out, `\x1b]0;owned\a`) {
		t.Errorf("list does not show the forged fields escaped:\n%s", out)
	}
	code, out, errOut = f.run("show", "172.30.50.0/24")
	if code != 0 {
		t.Fatalf("show: exit %d, stderr %s", code, errOut)
	}
	noControl("show", out)
}
