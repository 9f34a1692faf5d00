package dockeropts

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/testutil/netnstest"
)

// The guard against routes in a namespace: each case adds routes, runs
// docker-opts for the seed's 172.30.72.1/24 and expects a refusal naming the
// route (output untouched) or success.
func TestRouteConflictGuard(t *testing.T) {
	cases := []struct {
		name   string
		setup  []string
		refuse string // substring of the error; "" = accepted
	}{
		{name: "no route at all"},
		{name: "docker0 already has the subnet", setup: []string{
			"ip link add docker0 type bridge", "ip addr add 172.30.72.1/24 dev docker0", "ip link set docker0 up"}},
		{name: "less specific routes do not conflict", setup: []string{
			"ip addr add 172.30.0.0/16 dev eth0", "ip route add default via 172.30.0.1 dev eth0"}},
		{name: "weftd's own blackhole route", setup: []string{
			"ip route add blackhole 172.30.72.0/24 metric 65536 proto 87"}},
		{name: "stale overlay route of another host's lease", setup: []string{
			"ip route add 172.30.72.0/24 via 172.30.72.0 dev eth0 onlink proto 87"},
			refuse: `"172.30.72.0/24 via 172.30.72.0 dev eth0 proto 87"`},
		{name: "more specific route into the subnet", setup: []string{
			"ip addr add 10.9.0.1/24 dev eth0", "ip route add 172.30.72.128/25 via 10.9.0.2"},
			refuse: `"172.30.72.128/25 via 10.9.0.2 dev eth0 proto boot"`},
		{name: "a foreign blackhole", setup: []string{"ip route add blackhole 172.30.72.0/24"},
			refuse: `"blackhole 172.30.72.0/24 proto boot"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ns := netnstest.New(t, "dgd")
			ns.MustRun(t, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
			ns.MustRun(t, "ip", "link", "set", "eth0", "up")
			for _, s := range c.setup {
				ns.MustRun(t, strings.Fields(s)...)
			}
			dir := t.TempDir()
			in := filepath.Join(dir, "subnet.env")
			out := filepath.Join(dir, "docker")
			os.WriteFile(in, []byte(seedEnv), 0o644)
			o, err := ParseArgs([]string{"-f", in, "-d", out, "-k", "DOCKER_NETWORK_OPTIONS"})
			if err != nil {
				t.Fatal(err)
			}
			o.Routes = ns.Handle
			err = Run(o, noEnv)
			if c.refuse == "" {
				if err != nil {
					t.Fatalf("want accepted, got %v", err)
				}
				return
			}
			if !errors.Is(err, ErrRouteConflict) || !strings.Contains(err.Error(), c.refuse) {
				t.Fatalf("want refusal naming %s, got %v", c.refuse, err)
			}
			if _, serr := os.Stat(out); !os.IsNotExist(serr) {
				t.Fatalf("output written despite the refusal (stat: %v)", serr)
			}
			t.Log(err)
		})
	}
}
