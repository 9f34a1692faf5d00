package flannelcni_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/weft-net/weft/internal/flannelcni"
	"github.com/weft-net/weft/internal/rtnl"
	"github.com/weft-net/weft/internal/testutil/netnstest"
)

// pluginDir holds the flannel plugin built from this tree for the tests.
var pluginDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "weft-flannelcni-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	cmd := exec.Command("go", "build", "-o", dir+"/", "./cmd/flannel")
	cmd.Dir = "../.."
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build ./cmd/flannel: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	pluginDir = dir
	// cnitool keeps ADD's results in libcni's default cache (it cannot be
	// moved); the directories it creates go when empty again.
	var made []string
	for _, d := range []string{"/var/lib/cni", "/var/lib/cni/results"} {
		if _, err := os.Stat(d); err != nil {
			made = append(made, d)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	for _, d := range slices.Backward(made) {
		os.Remove(d) // only if empty: files of any other runtime stay
	}
	os.Exit(code)
}

// delegates skips the test when the reference plugins are missing, and
// when they do not speak the CNI version the test needs.
func delegates(t testing.TB, cniVersion string) string {
	t.Helper()
	dir, err := flannelcni.DelegateDir()
	if err != nil {
		t.Skipf("skipped: %v", err)
	}
	if cniVersion != "" {
		out, _ := exec.Command(filepath.Join(dir, "bridge")).CombinedOutput()
		if !strings.Contains(string(out), cniVersion) {
			t.Skipf("skipped: the bridge plugin in %s does not speak CNI %s (%s); scripts/install-deps.sh builds plugins %s that do",
				dir, cniVersion, strings.TrimSpace(string(out)), flannelcni.PluginsVersion)
		}
	}
	return dir
}

// cnitool is the CNI spec's own command-line runtime, built by
// scripts/install-deps.sh.
func cnitool(t testing.TB) string {
	t.Helper()
	cands := []string{os.Getenv("WEFT_CNITOOL")}
	cache := os.Getenv("WEFT_CACHE")
	if cache == "" {
		cache = "/var/cache/weft"
	}
	cands = append(cands, filepath.Join(cache, "cnitool-v1.3.0", "cnitool"))
	if p, err := exec.LookPath("cnitool"); err == nil {
		cands = append(cands, p)
	}
	for _, c := range cands {
		if st, err := os.Stat(c); c != "" && err == nil && st.Mode()&0o111 != 0 {
			return c
		}
	}
	t.Skipf("skipped: cnitool not found (looked at $WEFT_CNITOOL, %s, $PATH); scripts/install-deps.sh installs it", cands[1])
	return ""
}

// rig is one simulated host (a namespace where cni0 goes) with its
// subnet.env, and the flannel network config that points at it.
type rig struct {
	t        testing.TB
	host     *netnstest.NS
	dir      string // subnet.env, net.d, dataDirs
	subnet   netip.Prefix
	subnet6  netip.Prefix
	netName  string
	cniPath  string
	confFile string
}

const (
	network  = "172.30.0.0/16"
	network6 = "fd30::/48"
)

func newRig(t testing.TB, cniVersion string, dual bool) *rig {
	t.Helper()
	netnstest.RequireRoot(t)
	r := &rig{
		t:       t,
		host:    netnstest.New(t, "fch"),
		dir:     t.TempDir(),
		subnet:  netip.MustParsePrefix("172.30.19.0/24"),
		netName: rtnl.UniqueName("fcni"),
		cniPath: pluginDir + ":" + delegates(t, cniVersion),
	}
	env := "FLANNEL_NETWORK=" + network + "\nFLANNEL_SUBNET=172.30.19.1/24\n"
	if dual {
		r.subnet6 = netip.MustParsePrefix("fd30:0:0:13::/64")
		env += "FLANNEL_IPV6_NETWORK=" + network6 + "\nFLANNEL_IPV6_SUBNET=fd30:0:0:13::1/64\n"
		enableIPv6(t, r.host)
	}
	env += "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
	r.writeEnv(env)
	conf := fmt.Sprintf(`{"cniVersion":%q,"name":%q,"type":"flannel","subnetFile":%q,"dataDir":%q,
		"delegate":{"hairpinMode":true,"isDefaultGateway":true},"ipam":{"dataDir":%q}}`,
		cniVersion, r.netName, r.subnetFile(), r.dataDir(), filepath.Join(r.dir, "host-local"))
	if err := os.MkdirAll(filepath.Join(r.dir, "net.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	r.confFile = filepath.Join(r.dir, "net.d", "10-flannel.conf")
	if err := os.WriteFile(r.confFile, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	return r
}

func enableIPv6(t testing.TB, ns *netnstest.NS) {
	t.Helper()
	if err := ns.Do(func() error {
		for _, f := range []string{"all/disable_ipv6", "default/disable_ipv6", "all/accept_dad", "default/accept_dad"} {
			if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+f, []byte("0\n"), 0o644); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func (r *rig) subnetFile() string { return filepath.Join(r.dir, "subnet.env") }
func (r *rig) dataDir() string    { return filepath.Join(r.dir, "flannel") }

func (r *rig) writeEnv(s string) {
	r.t.Helper()
	if err := os.WriteFile(r.subnetFile(), []byte(s), 0o644); err != nil {
		r.t.Fatal(err)
	}
}

// cnitool runs the spec's cnitool in the host namespace (where the bridge
// goes) on the container namespace.
func (r *rig) cnitool(verb string, c *netnstest.NS) (string, error) {
	r.t.Helper()
	var out, errb bytes.Buffer
	err := r.host.Do(func() error {
		cmd := exec.Command(cnitool(r.t), verb, r.netName, c.Path)
		cmd.Env = append(os.Environ(), "CNI_PATH="+r.cniPath, "NETCONFPATH="+filepath.Dir(r.confFile))
		cmd.Stdout, cmd.Stderr = &out, &errb
		return cmd.Run()
	})
	if err != nil {
		return out.String(), fmt.Errorf("cnitool %s: %v: %s%s", verb, err, out.String(), errb.String())
	}
	return out.String(), nil
}

// cnitoolCacheFile is where cnitool's libcni keeps the result of ADD
// (its cache dir cannot be chosen); DEL removes it, a failed test too.
func (r *rig) removeCacheOnCleanup() {
	r.t.Cleanup(func() {
		m, _ := filepath.Glob("/var/lib/cni/results/" + r.netName + "-*")
		for _, f := range m {
			os.Remove(f)
		}
	})
}

// TestCNIToolVersions runs ADD, CHECK, DEL, DEL through cnitool, the real
// plugin binary and the real bridge and host-local, for each CNI version:
// the result is in the version asked for (0.3.x/0.4.0 IPs carry "version",
// 1.x do not), the container has the address from the lease with a route to
// the overlay via the bridge, the bridge has the gateway and FLANNEL_MTU;
// DEL works after subnet.env is gone and a second DEL succeeds; nothing of
// the container is left (veth, host-local address, saved config).
func TestCNIToolVersions(t *testing.T) {
	for _, tc := range []struct {
		version string
		dual    bool
	}{{"0.3.1", false}, {"0.4.0", false}, {"1.0.0", false}, {"1.0.0", true}, {"1.1.0", true}} {
		name := tc.version
		if tc.dual {
			name += "-dualstack"
		}
		t.Run(name, func(t *testing.T) {
			r := newRig(t, tc.version, tc.dual)
			r.removeCacheOnCleanup()
			c := netnstest.New(t, "fcc")
			if tc.dual {
				enableIPv6(t, c)
			}
			out, err := r.cnitool("add", c)
			if err != nil {
				t.Fatal(err)
			}
			checkResult(t, tc.version, out, r, c)

			// The container's side, as the kernel has it.
			addrs := c.MustRun(t, "ip", "-o", "addr", "show", "dev", "eth0")
			if !strings.Contains(addrs, " 172.30.19.2/24 ") {
				t.Errorf("container eth0 lacks 172.30.19.2/24:\n%s", addrs)
			}
			routes := c.MustRun(t, "ip", "route")
			if !strings.Contains(routes, network+" via 172.30.19.1 dev eth0") || !strings.Contains(routes, "default via 172.30.19.1") {
				t.Errorf("container routes lack %s and default via 172.30.19.1:\n%s", network, routes)
			}
			link := r.host.MustRun(t, "ip", "-o", "addr", "show", "dev", "cni0") + r.host.MustRun(t, "ip", "-o", "link", "show", "dev", "cni0")
			if !strings.Contains(link, "172.30.19.1/24") || !strings.Contains(link, "mtu 1450") {
				t.Errorf("cni0 lacks 172.30.19.1/24 or mtu 1450:\n%s", link)
			}
			if tc.dual {
				if !strings.Contains(addrs, "fd30:0:0:13::2/64") {
					t.Errorf("container eth0 lacks fd30:0:0:13::2/64:\n%s", addrs)
				}
				r6 := c.MustRun(t, "ip", "-6", "route")
				if !strings.Contains(r6, network6+" via fd30:0:0:13::1 dev eth0") {
					t.Errorf("container IPv6 routes lack %s via fd30:0:0:13::1:\n%s", network6, r6)
				}
				if _, err := c.Run("ping", "-6", "-c1", "-W1", "fd30:0:0:13::1"); err != nil {
					t.Errorf("container to bridge over IPv6: %v", err)
				}
			}
			if _, err := c.Run("ping", "-c1", "-W1", "172.30.19.1"); err != nil {
				t.Errorf("container to bridge: %v", err)
			}
			saved, _ := os.ReadDir(r.dataDir())
			if len(saved) != 1 {
				t.Fatalf("dataDir %s has %d entries after ADD, want 1 (the delegate config)", r.dataDir(), len(saved))
			}

			if tc.version != "0.3.1" { // CHECK came with 0.4.0
				if _, err := r.cnitool("check", c); err != nil {
					if strings.Contains(err.Error(), "not found in routing table") && !strings.Contains(r.cniPath, "cni-plugins-"+flannelcni.PluginsVersion) {
						// Debian's bridge 1.1.1 compares the routes it
						// installed via the gateway with the gw-less
						// routes of its config; later releases do not.
						t.Logf("CHECK not judged: the bridge plugin in %s fails it on gw-less ipam routes (a bug of old releases; install-deps builds %s): %v", r.cniPath, flannelcni.PluginsVersion, err)
					} else {
						t.Errorf("CHECK after ADD: %v", err)
					}
				}
			}
			// DEL uses the saved config: subnet.env may be gone by then.
			if err := os.Remove(r.subnetFile()); err != nil {
				t.Fatal(err)
			}
			for i := 1; i <= 2; i++ {
				if _, err := r.cnitool("del", c); err != nil {
					t.Fatalf("DEL #%d: %v", i, err)
				}
			}
			if saved, _ := os.ReadDir(r.dataDir()); len(saved) != 0 {
				t.Errorf("dataDir %s keeps %d entries after DEL", r.dataDir(), len(saved))
			}
			if links := r.host.MustRun(t, "ip", "-o", "link", "show", "type", "veth"); strings.TrimSpace(links) != "" {
				t.Errorf("veths left in the host after DEL:\n%s", links)
			}
			ips, _ := filepath.Glob(filepath.Join(r.dir, "host-local", r.netName, "172.30.*"))
			if len(ips) != 0 {
				t.Errorf("host-local still holds %v after DEL", ips)
			}
		})
	}
}

// checkResult checks ADD's output against the spec's result format of
// version v.
func checkResult(t *testing.T, v, out string, r *rig, c *netnstest.NS) {
	t.Helper()
	var res struct {
		CNIVersion string `json:"cniVersion"`
		Interfaces []struct {
			Name, Sandbox string
		} `json:"interfaces"`
		IPs    []map[string]any `json:"ips"`
		Routes []struct {
			Dst string `json:"dst"`
		} `json:"routes"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("ADD result is not JSON: %v\n%s", err, out)
	}
	if res.CNIVersion != v {
		t.Errorf("result cniVersion %q, want %q", res.CNIVersion, v)
	}
	var names []string
	sandbox := false
	for _, i := range res.Interfaces {
		names = append(names, i.Name)
		if i.Name == "eth0" && i.Sandbox == c.Path {
			sandbox = true
		}
	}
	if !slices.Contains(names, "cni0") || !sandbox {
		t.Errorf("result interfaces %v: want cni0 and eth0 in sandbox %s\n%s", names, c.Path, out)
	}
	want := map[string]string{"172.30.19.2/24": "172.30.19.1"}
	if r.subnet6.IsValid() {
		want["fd30:0:0:13::2/64"] = "fd30:0:0:13::1"
	}
	if len(res.IPs) != len(want) {
		t.Errorf("result has %d IPs, want %d\n%s", len(res.IPs), len(want), out)
	}
	for _, ip := range res.IPs {
		addr, _ := ip["address"].(string)
		if gw, ok := want[addr]; !ok || ip["gateway"] != gw {
			t.Errorf("result IP %v: want one of %v (address: gateway)", ip, want)
		}
		_, hasVersion := ip["version"]
		if old := v < "1.0.0"; hasVersion != old {
			t.Errorf("result IP %v at CNI %s: \"version\" present %t, want %t", ip, v, hasVersion, old)
		}
	}
	var dsts []string
	for _, rt := range res.Routes {
		dsts = append(dsts, rt.Dst)
	}
	if !slices.Contains(dsts, network) || r.subnet6.IsValid() && !slices.Contains(dsts, network6) {
		t.Errorf("result routes %v: want the overlay's %s (and %s when dual-stack)", dsts, network, network6)
	}
}

// plugin runs the plugin binary as a runtime would, without cnitool, and
// returns its stdout and exit error: the raw protocol, to read error codes.
func plugin(t *testing.T, verb, containerID, conf string) (string, error) {
	t.Helper()
	cmd := exec.Command(filepath.Join(pluginDir, "flannel"))
	cmd.Env = append(os.Environ(), "CNI_COMMAND="+verb, "CNI_CONTAINERID="+containerID,
		"CNI_NETNS=/run/netns/weft-test-none", "CNI_IFNAME=eth0", "CNI_PATH="+pluginDir)
	cmd.Stdin = strings.NewReader(conf)
	var out bytes.Buffer
	cmd.Stdout = &out
	err := cmd.Run()
	return out.String(), err
}

// TestErrorCodes: bad input gets the spec's error codes with a message
// naming the file, key or field, and DEL without ADD succeeds.
func TestErrorCodes(t *testing.T) {
	dir := t.TempDir()
	envFile := filepath.Join(dir, "subnet.env")
	conf := func(version, extra string) string {
		return fmt.Sprintf(`{"cniVersion":%q,"name":"fl","type":"flannel","subnetFile":%q,"dataDir":%q%s}`,
			version, envFile, filepath.Join(dir, "data"), extra)
	}
	full := "FLANNEL_NETWORK=172.30.0.0/16\nFLANNEL_SUBNET=172.30.19.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
	for _, tc := range []struct {
		name, verb, conf string
		env              *string // nil: no subnet.env
		code             uint
		want             []string
	}{
		{"missing subnet.env", "ADD", conf("1.0.0", ""), nil, types.ErrTryAgainLater, []string{envFile, "does not exist"}},
		{"half-written subnet.env", "ADD", conf("1.0.0", ""), ptr("FLANNEL_NETWORK=172.30.0.0/16\nFLANNEL_SUBNET=172.30.19.1/24\n"), types.ErrTryAgainLater, []string{envFile, "FLANNEL_MTU", "FLANNEL_IPMASQ"}},
		{"subnet without network", "ADD", conf("1.0.0", ""), ptr("FLANNEL_SUBNET=172.30.19.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"), types.ErrTryAgainLater, []string{envFile, "missing FLANNEL_NETWORK"}},
		{"bad subnet value", "ADD", conf("1.0.0", ""), ptr(strings.Replace(full, "172.30.19.1/24", "172.30.19.1", 1)), types.ErrDecodingFailure, []string{envFile, "FLANNEL_SUBNET", `"172.30.19.1"`}},
		{"subnet outside network", "ADD", conf("1.0.0", ""), ptr(strings.Replace(full, "172.30.19.1/24", "10.9.0.1/24", 1)), types.ErrDecodingFailure, []string{"FLANNEL_SUBNET 10.9.0.1/24: must be inside FLANNEL_NETWORK 172.30.0.0/16"}},
		{"MTU too small", "ADD", conf("1.0.0", ""), ptr(strings.Replace(full, "1450", "20", 1)), types.ErrDecodingFailure, []string{"FLANNEL_MTU 20: must be at least 68"}},
		{"config not JSON", "ADD", `{"cniVersion":"1.0.0",`, ptr(full), types.ErrDecodingFailure, nil},
		{"delegate with name", "ADD", conf("1.0.0", `,"delegate":{"name":"x"}`), ptr(full), types.ErrInvalidNetworkConfig, []string{`delegate must not have field "name"`}},
		{"delegate with ipam", "ADD", conf("1.0.0", `,"delegate":{"ipam":{}}`), ptr(full), types.ErrInvalidNetworkConfig, []string{`"ipam"`}},
		{"delegate type not a string", "ADD", conf("1.0.0", `,"delegate":{"type":7}`), ptr(full), types.ErrInvalidNetworkConfig, []string{"delegate type 7"}},
		{"relative dataDir", "ADD", strings.Replace(conf("1.0.0", ""), filepath.Join(dir, "data"), "data", 1), ptr(full), types.ErrInvalidNetworkConfig, []string{`dataDir "data": must be an absolute path`}},
		{"bad ipam routes", "ADD", conf("1.0.0", `,"ipam":{"routes":[{"dst":"nope"}]}`), ptr(full), types.ErrInvalidNetworkConfig, []string{"ipam routes"}},
		{"unknown version", "ADD", conf("9.9.9", ""), ptr(full), types.ErrIncompatibleCNIVersion, nil},
		{"CHECK of a container never added", "CHECK", conf("1.0.0", ""), ptr(full), types.ErrUnknownContainer, []string{"was not added"}},
		{"STATUS without subnet.env", "STATUS", conf("1.1.0", ""), nil, flannelcni.ErrPluginNotAvailable, []string{envFile}},
		{"STATUS with half a subnet.env", "STATUS", conf("1.1.0", ""), ptr("FLANNEL_MTU=1450\n"), flannelcni.ErrPluginNotAvailable, []string{"FLANNEL_SUBNET"}},
		{"DEL without ADD", "DEL", conf("1.0.0", ""), nil, 0, nil},
		{"DEL again", "DEL", conf("1.0.0", ""), nil, 0, nil},
		{"VERSION", "VERSION", conf("1.1.0", ""), nil, 0, []string{`"supportedVersions":["0.1.0","0.2.0","0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			os.Remove(envFile)
			if tc.env != nil {
				if err := os.WriteFile(envFile, []byte(*tc.env), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			out, err := plugin(t, tc.verb, "c1", tc.conf)
			text := out
			if tc.code == 0 {
				if err != nil {
					t.Fatalf("%s: %v\n%s", tc.verb, err, out)
				}
			} else {
				var e types.Error
				if err == nil || json.Unmarshal([]byte(out), &e) != nil {
					t.Fatalf("%s: want a CNI error with code %d, got exit %v and stdout %q", tc.verb, tc.code, err, out)
				}
				if e.Code != tc.code {
					t.Errorf("code %d, want %d: %s", e.Code, tc.code, out)
				}
				text = e.Msg
			}
			for _, w := range tc.want {
				if !strings.Contains(text, w) {
					t.Errorf("output lacks %q: %s", w, out)
				}
			}
		})
	}
}

func ptr(s string) *string { return &s }

// TestStatusAndGC drives the plugin with libcni at CNI 1.1.0: STATUS
// succeeds with a complete subnet.env; after two ADDs, GC with only the
// first attachment valid releases the second's address and saved config
// and keeps the first's.
func TestStatusAndGC(t *testing.T) {
	r := newRig(t, "1.1.0", false)
	cache := t.TempDir()
	cni := libcni.NewCNIConfigWithCacheDir(filepath.SplitList(r.cniPath), cache, nil)
	b, err := os.ReadFile(r.confFile)
	if err != nil {
		t.Fatal(err)
	}
	list, err := libcni.ConfListFromConf(mustConf(t, b))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var rts []*libcni.RuntimeConf
	err = r.host.Do(func() error {
		if err := cni.GetStatusNetworkList(ctx, list); err != nil {
			return fmt.Errorf("STATUS: %w", err)
		}
		for i := range 2 {
			c := netnstest.New(t, "fcg")
			rt := &libcni.RuntimeConf{ContainerID: fmt.Sprintf("gc-%d", i), NetNS: c.Path, IfName: "eth0"}
			if _, err := cni.AddNetworkList(ctx, list, rt); err != nil {
				return fmt.Errorf("ADD %s: %w", rt.ContainerID, err)
			}
			rts = append(rts, rt)
		}
		return cni.GCNetworkList(ctx, list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: "gc-0", IfName: "eth0"}}})
	})
	t.Cleanup(func() {
		r.host.Do(func() error {
			for _, rt := range rts {
				cni.DelNetworkList(ctx, list, rt)
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct {
		path string
		want bool
	}{
		{filepath.Join(r.dataDir(), "gc-0"), true},
		{filepath.Join(r.dataDir(), "gc-1"), false},
		{filepath.Join(r.dir, "host-local", r.netName, "172.30.19.2"), true},
		{filepath.Join(r.dir, "host-local", r.netName, "172.30.19.3"), false},
	} {
		if _, err := os.Stat(f.path); (err == nil) != f.want {
			t.Errorf("%s present %t after GC, want %t", f.path, err == nil, f.want)
		}
	}
}

// BenchmarkAddDel measures ADD and DEL of one container through libcni,
// the plugin binary and the reference bridge and host-local (CNI 1.0.0),
// reporting the medians: go test -run '^$' -bench AddDel -benchtime 20x.
func BenchmarkAddDel(b *testing.B) {
	r := newRig(b, "1.0.0", false)
	cni := libcni.NewCNIConfigWithCacheDir(filepath.SplitList(r.cniPath), b.TempDir(), nil)
	conf, err := os.ReadFile(r.confFile)
	if err != nil {
		b.Fatal(err)
	}
	nc := mustConf(b, conf)
	c := netnstest.New(b, "fcb")
	ctx := context.Background()
	var adds, dels []time.Duration
	b.ResetTimer()
	for i := range b.N {
		rt := &libcni.RuntimeConf{ContainerID: fmt.Sprintf("bench-%d", i), NetNS: c.Path, IfName: "eth0"}
		err := r.host.Do(func() error {
			start := time.Now()
			if _, err := cni.AddNetwork(ctx, nc, rt); err != nil {
				return fmt.Errorf("ADD: %w", err)
			}
			mid := time.Now()
			if err := cni.DelNetwork(ctx, nc, rt); err != nil {
				return fmt.Errorf("DEL: %w", err)
			}
			adds, dels = append(adds, mid.Sub(start)), append(dels, time.Since(mid))
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	median := func(ds []time.Duration) float64 {
		slices.Sort(ds)
		return float64(ds[len(ds)/2].Microseconds()) / 1000
	}
	b.ReportMetric(median(adds), "add-median-ms")
	b.ReportMetric(median(dels), "del-median-ms")
}

func mustConf(t testing.TB, b []byte) *libcni.PluginConfig {
	t.Helper()
	c, err := libcni.ConfFromBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
