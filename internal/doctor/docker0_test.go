package doctor

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/subnetenv"
)

// docker0 on Docker's own 172.17.0.1/16: the verdict names the address, the
// lease and the cause, and the fix names the exact steps with this host's
// options file and the --bip the lease gives.
func TestDocker0FixNamesTheSteps(t *testing.T) {
	pfx := netip.MustParsePrefix
	for _, tc := range []struct {
		subnetFile, opts string
	}{
		{"/run/flannel/subnet.env", "/run/flannel/docker"},
		{"/run/weft-lab/x/x-h1/subnet.env", "/run/weft-lab/x/x-h1/docker"},
		{"", "/run/flannel/docker"},
	} {
		s := State{
			SubnetFile: tc.subnetFile,
			Env:        subnetenv.Env{Network: pfx("172.30.0.0/16"), Subnet: pfx("172.30.72.1/24"), MTU: 1450},
			Kernel: KernelState{Links: []Link{
				{Name: "docker0", Index: 5, Type: "bridge", MTU: 1500, Up: true, Addrs: []netip.Prefix{pfx("172.17.0.1/16")}},
			}},
		}
		vs := checkBridges(s)
		if len(vs) != 1 || vs[0].Status != Fail || vs[0].Check != "bridge-docker0" {
			t.Fatalf("subnet file %q: verdicts %v, want one FAIL bridge-docker0", tc.subnetFile, vs)
		}
		v := vs[0]
		for _, want := range []string{"docker0 has 172.17.0.1/16, outside the lease 172.30.72.0/24", "dockerd got no --bip"} {
			if !strings.Contains(v.What, want) {
				t.Errorf("what %q lacks %q", v.What, want)
			}
		}
		steps := []string{"systemctl stop docker.socket docker", "ip link del docker0",
			tc.opts + " holds --bip=172.30.72.1/24", "weftctl docker-opts -k DOCKER_NETWORK_OPTIONS -d " + tc.opts,
			"$DOCKER_NETWORK_OPTIONS", "EnvironmentFile=-" + tc.opts, "systemctl start docker: docker0 gets 172.30.72.1/24"}
		last := -1
		for _, step := range steps {
			i := strings.Index(v.Fix, step)
			if i < 0 {
				t.Errorf("fix %q lacks %q", v.Fix, step)
				continue
			}
			if i < last {
				t.Errorf("fix %q: %q out of order", v.Fix, step)
			}
			last = i
		}
	}
}
