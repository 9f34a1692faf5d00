package weftctl

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/doctor"
	"github.com/weft-net/weft/internal/testutil/etcdtest"
	"github.com/weft-net/weft/internal/testutil/netnstest"
)

// TestDoctorCommand runs `weftctl doctor` as an operator would, on "the
// current namespace": a fresh one, with a host that has no vxlan device yet.
func TestDoctorCommand(t *testing.T) {
	if netnstest.InNewNetns(t) {
		return
	}
	srv := etcdtest.New(t)
	cli := etcdtest.NewClient(t, srv)
	const pfx = "/kube-centos/network"
	if _, err := cli.Put(context.Background(), pfx+"/config", `{"Network":"172.30.0.0/16","Backend":{"Type":"vxlan"}}`); err != nil {
		t.Fatal(err)
	}
	env := filepath.Join(t.TempDir(), "subnet.env")
	os.WriteFile(env, []byte("FLANNEL_NETWORK=172.30.0.0/16\nFLANNEL_SUBNET=172.30.19.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"), 0o644)
	if out, err := exec.Command("sysctl", "-qw", "net.ipv4.ip_forward=1").CombinedOutput(); err != nil {
		t.Fatalf("sysctl: %v: %s", err, out)
	}

	run := func(args ...string) (int, string, string) {
		var o, e bytes.Buffer
		// Endpoint and prefix through the environment, as from /etc/sysconfig/flanneld.
		lookup := func(k string) (string, bool) {
			switch k {
			case "FLANNELD_ETCD_ENDPOINTS":
				return srv.Endpoint, true
			case "FLANNELD_ETCD_PREFIX":
				return pfx, true
			}
			return "", false
		}
		code := Run(context.Background(), append([]string{"doctor", "-subnet-file", env}, args...), &Env{Stdout: &o, Stderr: &e, LookupEnv: lookup})
		return code, o.String(), e.String()
	}

	code, out, errOut := run()
	if code != 1 || !strings.Contains(out, "PASS etcd:") || !strings.Contains(out, "FAIL lease: etcd holds no lease") ||
		!strings.Contains(out, "FAIL device-address: device flannel.1 does not exist") || !strings.Contains(out, "PASS ip-forward") {
		t.Fatalf("exit %d, stdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if !strings.Contains(line, " — fix: ") {
			t.Errorf("line without a fix: %q", line)
		}
	}

	code, out, _ = run("-o", "json")
	var r doctor.Report
	if err := json.Unmarshal([]byte(out), &r); err != nil || code != 1 || r.Healthy {
		t.Fatalf("json: exit %d, err %v, report %+v\n%s", code, err, r, out)
	}

	if code, _, errOut = run("-o", "yaml"); code != 2 || !strings.Contains(errOut, `-o "yaml"`) {
		t.Fatalf("bad -o: exit %d, stderr %s", code, errOut)
	}
}
