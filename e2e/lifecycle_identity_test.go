package e2e

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/lab"
)

// TestIdentitySamePublicIP: a third host comes up claiming host 1's
// PublicIP (-public-ip, as behind a NAT or on a cloned VM) with another
// node name. It exits 1 with an error naming both hosts and the fix; host
// 1's lease value is unchanged and hosts 1 and 2 keep pinging each other.
func TestIdentitySamePublicIP(t *testing.T) {
	l := newLab(t, "vxlan", 3)
	h1, h3 := l.Hosts[0], l.Hosts[2]
	before, ok := readLeaseKV(t, l, h1.Subnet)
	if !ok {
		t.Fatalf("host 1's lease %s missing", h1.Subnet)
	}
	if !strings.Contains(before.value, `"WeftNodeName":`) {
		t.Errorf("host 1's lease carries no identity: %s", before.value)
	}
	if err := l.StopWeftd(2); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", h3.NS.Name, filepath.Join(binDir, "weftd"),
		"-etcd-endpoints="+labHostEtcd, "-etcd-prefix="+l.Config().Prefix, "-iface=eth0",
		"-public-ip="+h1.Eth0IP.String(), "-node-name=clone-of-h1", "-subnet-file="+h3.SubnetFile+".clone")
	start := time.Now()
	out, err := cmd.CombinedOutput()
	code := exitCode(err)
	t.Logf("MEASURED clone refused after %s", time.Since(start).Round(time.Millisecond))
	if code != 1 {
		t.Fatalf("weftd with host 1's PublicIP and another node name: exit %d (%v), want 1\n%s", code, err, out)
	}
	for _, want := range []string{"names this host's PublicIP " + h1.Eth0IP.String(), `this host is node \"clone-of-h1\"`, h1.Subnet.String(), "-public-ip", "-node-name", "weftctl decommission"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("refusal lacks %q:\n%s", want, out)
		}
	}
	after, _ := readLeaseKV(t, l, h1.Subnet)
	if after.value != before.value || after.modRevision != before.modRevision {
		t.Errorf("host 1's lease changed: %+v, was %+v", after, before)
	}
	if err := pings(l, []pair{{0, 1}, {1, 0}}, lab.PingOptions{}); err != nil {
		t.Errorf("hosts 1 and 2 after the refused clone: %v", err)
	}
}
