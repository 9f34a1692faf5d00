package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/internal/lab"
)

// The ops note's network config, byte for byte (its etcdctl get output).
const opsNoteConfig = `{ "Network": "172.30.0.0/16", "SubnetLen": 24, "Backend": { "Type": "vxlan" } }`

const opsNotePrefix = "/kube-centos/network"

// opsNote is the state the scenario carries from one section to the next.
type opsNote struct {
	t       *testing.T
	root    string            // DESTDIR of `make install`: the hosts' installed system
	unitEnv map[string]string // weftd.service's environment, as systemd builds it
	weftd   []string          // ExecStart, expanded
	post    []string          // ExecStartPost, expanded
	l       *lab.Lab
	socks   []*notifySocket
	hostDir []string // per host: the directory bind-mounted on its /run/flannel
	pid     []int    // per host: weftd's PID, whose mount and network namespace are "the host"
}

// TestOpsNoteScenario follows the ops note (shared/seed) top to bottom on
// three lab hosts, with the files `make install` puts on a host: the
// sysconfig sample edited as the note says, weftd started with the command
// line the installed unit expands to, its ExecStartPost, the Docker drop-in,
// weftctl doctor, and etcdctl against the hosts' etcd endpoint.
//
// Each host is a lab network namespace plus a mount namespace of its own
// (made by the weftd wrapper below) with a private /run and the host's lab
// directory bound on /run/flannel, so the unit's absolute paths
// (/run/flannel/subnet.env, /run/flannel/docker) are used unchanged. Commands
// "on the host" run in weftd's namespaces via nsenter. The only paths
// rewritten are the binaries': /usr/bin/weftd is run as DESTDIR/usr/bin/weftd.
func TestOpsNoteScenario(t *testing.T) {
	n := &opsNote{t: t}
	n.install()
	n.sysconfig()           // §1 配置flanneld的配置文件
	n.restartService()      // §2 重启服务
	n.flannelAndDocker0()   // §3 flannel和docker0 IP的关系
	n.docker0FirstPitfall() // §4 docker0先于flanneld首次启动
	n.etcdConfig()          // §5 查看Pod网段详情
	n.etcdSubnets()         // §6 查看已分配的Pod网段
	n.etcdLeaseValue()      // §7 查看某一网段的具体配置
	n.deleteLease()         // §8 删除已分配的Pod网段
}

func (n *opsNote) install() {
	t := n.t
	n.root = t.TempDir()
	start := time.Now()
	cmd := exec.Command("make", "-s", "-C", "..", "install", "DESTDIR="+n.root, "PREFIX=/usr", "BIN="+filepath.Join(t.TempDir(), "bin"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make install DESTDIR=%s PREFIX=/usr: %v\n%s", n.root, err, out)
	}
	t.Logf("MEASURED make install (build included): %s", time.Since(start).Round(time.Millisecond))
}

func (n *opsNote) unit() unitFile {
	u, err := parseUnit(n.root + "/usr/lib/systemd/system/weftd.service")
	if err != nil {
		n.t.Fatal(err)
	}
	return u
}

// §1: /etc/sysconfig/flanneld from the installed sample, with the note's
// three variables (the endpoint is the lab's: every host reaches etcd at its
// own 127.0.0.1:2379).
func (n *opsNote) sysconfig() {
	t := n.t
	path := n.root + "/etc/sysconfig/flanneld"
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("installed sample: %v", err)
	}
	set := []struct{ k, v string }{
		{"FLANNEL_ETCD_ENDPOINTS", "http://127.0.0.1:2379"},
		{"FLANNEL_ETCD_PREFIX", opsNotePrefix},
		{"FLANNEL_OPTIONS", "-iface=eth0"},
	}
	lines := strings.Split(string(b), "\n")
	for _, s := range set {
		// The operator edits the sample's line (uncommenting it if needed).
		re := regexp.MustCompile(`^#?\s*` + s.k + `=`)
		i := slices.IndexFunc(lines, re.MatchString)
		if i < 0 {
			t.Errorf("the installed sample %s has no %s line to edit", path, s.k)
			lines = append(lines, "")
			i = len(lines) - 1
		}
		lines[i] = fmt.Sprintf("%s=%q", s.k, s.v)
	}
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	// The note's `cat /etc/sysconfig/flanneld|grep -v '^#'` shows exactly
	// the three variables.
	var shown []string
	for _, l := range lines {
		if l != "" && !strings.HasPrefix(l, "#") {
			shown = append(shown, l)
		}
	}
	want := []string{`FLANNEL_ETCD_ENDPOINTS="http://127.0.0.1:2379"`, `FLANNEL_ETCD_PREFIX="/kube-centos/network"`, `FLANNEL_OPTIONS="-iface=eth0"`}
	if !slices.Equal(shown, want) {
		t.Errorf("grep -v '^#' /etc/sysconfig/flanneld:\n%s\nwant:\n%s", strings.Join(shown, "\n"), strings.Join(want, "\n"))
	}

	u := n.unit()
	if typ, err := u.one("Service", "Type"); err != nil || typ != "notify" {
		t.Errorf("weftd.service Type=%q (%v), want notify", typ, err)
	}
	if n.unitEnv, err = serviceEnv(u, n.root); err != nil {
		t.Fatal(err)
	}
	for _, s := range set {
		if n.unitEnv[s.k] != s.v {
			t.Errorf("weftd.service environment %s=%q, want %q from /etc/sysconfig/flanneld", s.k, n.unitEnv[s.k], s.v)
		}
	}
	es, err := u.one("Service", "ExecStart")
	if err != nil {
		t.Fatal(err)
	}
	if n.weftd, err = expandExec(es, n.unitEnv); err != nil {
		t.Fatal(err)
	}
	// The note's `ps -e -o args|grep flann`, plus its FLANNEL_OPTIONS.
	wantArgv := []string{"/usr/bin/weftd", "-etcd-endpoints=http://127.0.0.1:2379", "-etcd-prefix=/kube-centos/network", "-iface=eth0"}
	if !slices.Equal(n.weftd, wantArgv) {
		t.Fatalf("ExecStart=%s expands to %q, want %q", es, n.weftd, wantArgv)
	}
	esp, err := u.one("Service", "ExecStartPost")
	if err != nil {
		t.Fatal(err)
	}
	if n.post, err = expandExec(strings.TrimPrefix(esp, "-"), n.unitEnv); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(n.post, " "), "-d /run/flannel/docker") {
		t.Errorf("ExecStartPost=%s does not write /run/flannel/docker", esp)
	}
	t.Logf("weftd.service: ExecStart → %q; ExecStartPost → %q", n.weftd, n.post)
}

// installed maps an absolute path of the unit to the file under DESTDIR.
func (n *opsNote) installed(argv []string) []string {
	return append([]string{n.root + argv[0]}, argv[1:]...)
}

// onHost runs argv on lab host i (weftd's network and mount namespaces)
// with the unit's clean environment plus extra.
func (n *opsNote) onHost(i int, extra []string, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	args := []string{"-t", strconv.Itoa(n.pid[i]), "-m", "-n", "--", "env", "-i"}
	args = append(args, envList(n.unitEnv, extra...)...)
	out, err := exec.CommandContext(ctx, "nsenter", append(args, argv...)...).CombinedOutput()
	return string(out), err
}

func (n *opsNote) mustOnHost(i int, argv ...string) string {
	n.t.Helper()
	out, err := n.onHost(i, nil, argv...)
	if err != nil {
		n.t.Fatalf("%s: %s: %v\n%s", n.l.Hosts[i].Name, strings.Join(argv, " "), err, out)
	}
	return out
}

// weftdWrapper writes the program the lab starts as "weftd" on each host:
// systemd's part. The lab runs it in the host's network namespace with its
// own weftd flags, which are ignored but for -subnet-file, whose directory
// becomes the host's /run/flannel. It then execs, keeping its PID (the lab's
// stop and our nsenter use it), the unit's ExecStart with the unit's clean
// environment and a NOTIFY_SOCKET the test reads as systemd would.
func (n *opsNote) weftdWrapper(notifyDir string) string {
	var env []string
	for _, kv := range envList(n.unitEnv) {
		env = append(env, shQuote(kv))
	}
	var argv []string
	for _, a := range n.installed(n.weftd) {
		argv = append(argv, shQuote(a))
	}
	script := fmt.Sprintf(`#!/bin/sh
# weftd.service on a lab host (generated by TestOpsNoteScenario).
set -eu
dir=
for a do case $a in -subnet-file=*) dir=${a#-subnet-file=}; dir=${dir%%/*} ;; esac; done
if [ -z "$dir" ]; then echo "opsnote wrapper: no -subnet-file in $*" >&2; exit 1; fi
echo "opsnote wrapper: lab flags ignored: $*" >&2
exec unshare --mount --propagation private -- /bin/sh -c '
	mount -t tmpfs -o mode=0755 opsnote-run /run &&
	mkdir /run/flannel &&
	mount --bind "$1" /run/flannel &&
	shift && exec "$@"' opsnote-mnt "$dir" \
	env -i %s NOTIFY_SOCKET=%s/"${dir##*/}".sock \
	%s
`, strings.Join(env, " "), shQuote(notifyDir), strings.Join(argv, " "))
	path := filepath.Join(n.t.TempDir(), "weftd.service.sh")
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		n.t.Fatal(err)
	}
	return path
}

// §2 重启服务: weftd on every host as systemd starts it; flannel.1 and
// subnet.env as the note shows them (with the /32, not the pre-0.7.0 /16).
func (n *opsNote) restartService() {
	t := n.t
	const hosts = 3
	name := uniqueName()
	stateDir := filepath.Join(t.TempDir(), "lab")
	notifyDir := t.TempDir()
	for i := range hosts {
		hn := fmt.Sprintf("%s-h%d", name, i+1)
		n.hostDir = append(n.hostDir, filepath.Join(stateDir, hn))
		s, err := listenNotify(filepath.Join(notifyDir, hn+".sock"), filepath.Join(stateDir, hn, "subnet.env"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Close)
		n.socks = append(n.socks, s)
	}
	wrapper := n.weftdWrapper(notifyDir)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	l, err := lab.Up(ctx, lab.Config{
		Name: name, Hosts: hosts, Backend: "vxlan", NetworkConfig: opsNoteConfig, Prefix: opsNotePrefix,
		WeftdPath: wrapper, StateDir: stateDir,
		Log: slog.New(slog.NewTextHandler(testWriter{t}, nil)),
	})
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	n.l = l
	t.Cleanup(func() {
		if t.Failed() {
			for _, h := range l.Hosts {
				if b, err := os.ReadFile(h.LogFile); err == nil {
					t.Logf("%s weftd log:\n%s", h.Name, b)
				}
			}
		}
		if err := l.Close(); err != nil {
			t.Errorf("lab close: %v", err)
		}
	})
	for i, h := range l.Hosts {
		n.pid = append(n.pid, l.WeftdPID(i))
		if h.SubnetFile != filepath.Join(n.hostDir[i], "subnet.env") {
			t.Fatalf("%s: the lab's subnet file is %s, not under the directory bound on /run/flannel (%s)", h.Name, h.SubnetFile, n.hostDir[i])
		}
		m, err := n.socks[i].readyAfter(start, 30*time.Second)
		if err != nil {
			t.Fatalf("%s: Type=notify: %v", h.Name, err)
		}
		t.Logf("MEASURED %s: lab up → READY=1: %s", h.Name, m.At.Sub(start).Round(time.Millisecond))
		n.checkReady(i, m)
	}

	// `systemctl restart flanneld` on the first host: stop (SIGTERM, exit
	// 0), start again; the same subnet, the same VTEP MAC.
	mac0 := n.vtepMAC(0)
	if err := l.StopWeftd(0); err != nil {
		t.Errorf("stop weftd on %s: %v", l.Hosts[0].Name, err)
	}
	restart := time.Now()
	if err := l.StartWeftd(0); err != nil {
		t.Fatal(err)
	}
	n.pid[0] = l.WeftdPID(0)
	m, err := n.socks[0].readyAfter(restart, 30*time.Second)
	if err != nil {
		t.Fatalf("%s after restart: %v", l.Hosts[0].Name, err)
	}
	t.Logf("MEASURED %s: restart → READY=1: %s", l.Hosts[0].Name, m.At.Sub(restart).Round(time.Millisecond))
	n.checkReady(0, m)
	if got := n.vtepMAC(0); got != mac0 {
		t.Errorf("%s: flannel.1 MAC %s after restart, was %s (peers' FDB entries would go stale)", l.Hosts[0].Name, got, mac0)
	}

	for i, h := range l.Hosts {
		n.checkCmdline(i)
		// ip a|grep -w inet
		var inet []string
		for _, line := range strings.Split(n.mustOnHost(i, "ip", "a"), "\n") {
			if f := strings.Fields(line); len(f) > 1 && f[0] == "inet" {
				inet = append(inet, strings.TrimSpace(line))
			}
		}
		t.Logf("%s: ip a|grep -w inet:\n  %s", h.Name, strings.Join(inet, "\n  "))
		var dev []string
		for _, line := range inet {
			if strings.HasSuffix(line, " flannel.1") {
				dev = append(dev, strings.Fields(line)[1])
			}
		}
		if want := netip.PrefixFrom(h.Subnet.Addr(), 32).String(); len(dev) != 1 || dev[0] != want {
			t.Errorf("%s: flannel.1 inet %q, want only %s (the lease's network address /32, not the pre-0.7.0 /16)", h.Name, dev, want)
		}
		if !slices.ContainsFunc(inet, func(s string) bool {
			return strings.HasPrefix(s, "inet "+h.Eth0IP.String()+"/") && strings.HasSuffix(s, " eth0")
		}) {
			t.Errorf("%s: eth0 %s not in ip a", h.Name, h.Eth0IP)
		}

		// ip -d link show flannel.1: vxlan, tied to -iface (eth0).
		link := n.mustOnHost(i, "ip", "-d", "link", "show", "flannel.1")
		vx := regexp.MustCompile(`vxlan id 1 local ` + regexp.QuoteMeta(h.Eth0IP.String()) + ` dev eth0 srcport \d+ \d+ dstport 8472 nolearning `)
		if !vx.MatchString(link) || !strings.Contains(link, " mtu 1450 ") || !strings.Contains(link, "UP") {
			t.Errorf("%s: ip -d link show flannel.1:\n%s\nwant mtu 1450, UP and %q", h.Name, link, vx)
		}

		// /run/flannel/subnet.env (note item 5).
		want := fmt.Sprintf("FLANNEL_NETWORK=172.30.0.0/16\nFLANNEL_SUBNET=%s/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n", h.Subnet.Addr().Next())
		if got := n.mustOnHost(i, "cat", "/run/flannel/subnet.env"); got != want {
			t.Errorf("%s: /run/flannel/subnet.env:\n%s\nwant:\n%s", h.Name, got, want)
		}
	}
	t.Logf("%s: ip -d link show flannel.1:\n%s", l.Hosts[0].Name, n.mustOnHost(0, "ip", "-d", "link", "show", "flannel.1"))
}

// checkReady: READY=1 came from weftd itself (NotifyAccess=main) and only
// once subnet.env was written (the unit's ExecStartPost reads it).
func (n *opsNote) checkReady(i int, m notifyMsg) {
	t := n.t
	h := n.l.Hosts[i]
	if m.PID != n.pid[i] {
		t.Errorf("%s: READY=1 sent by pid %d, weftd is pid %d: systemd (NotifyAccess=main) would ignore it", h.Name, m.PID, n.pid[i])
	}
	env, err := lab.ReadSubnetEnv(h.SubnetFile)
	if err != nil {
		t.Fatalf("%s: %v", h.Name, err)
	}
	if m.SubnetEnv == "" {
		t.Errorf("%s: READY=1 before /run/flannel/subnet.env was written: ExecStartPost and Docker would read no or a stale file", h.Name)
	} else if got, err := os.ReadFile(h.SubnetFile); err == nil && string(got) != m.SubnetEnv {
		t.Errorf("%s: subnet.env at READY=1:\n%s\nnow:\n%s", h.Name, m.SubnetEnv, got)
	}
	if env.Subnet.Masked() != h.Subnet {
		t.Errorf("%s: subnet.env has %s, the host came up with %s", h.Name, env.Subnet, h.Subnet)
	}
}

// checkCmdline: the running weftd's argv is the unit's ExecStart (ps -o args).
func (n *opsNote) checkCmdline(i int) {
	got, err := procCmdline(n.pid[i])
	if err != nil {
		n.t.Fatalf("%s: weftd pid %d: %v", n.l.Hosts[i].Name, n.pid[i], err)
	}
	if want := n.installed(n.weftd); !slices.Equal(got, want) {
		n.t.Errorf("%s: weftd runs as %q, want the unit's %q", n.l.Hosts[i].Name, got, want)
	}
}

func (n *opsNote) vtepMAC(i int) string {
	link, err := n.l.Hosts[i].NS.Handle.LinkByName("flannel.1")
	if err != nil {
		n.t.Fatalf("%s: flannel.1: %v", n.l.Hosts[i].Name, err)
	}
	return link.Attrs().HardwareAddr.String()
}

// dockerOptsFile is the note's /run/flannel/docker for a host.
func dockerOptsFile(subnet netip.Prefix, mtu int) string {
	bip := fmt.Sprintf("%s/%d", subnet.Addr().Next(), subnet.Bits())
	return fmt.Sprintf("DOCKER_OPT_BIP=\"--bip=%s\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=true\"\nDOCKER_OPT_MTU=\"--mtu=%d\"\nDOCKER_NETWORK_OPTIONS=\" --bip=%s --ip-masq=true --mtu=%d \"\n", bip, mtu, bip, mtu)
}

// §3 flannel和docker0 IP的关系: ExecStartPost writes /run/flannel/docker in
// the note's four lines; docker0 carries its --bip and --mtu; the own /24
// goes to docker0 and the other hosts' /24s via flannel.1.
func (n *opsNote) flannelAndDocker0() {
	t := n.t
	for i, h := range n.l.Hosts {
		// The lab wrote this file itself when it built docker0; remove it
		// so that what is read below is ExecStartPost's.
		if err := os.Remove(filepath.Join(n.hostDir[i], "docker")); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		if out, err := n.onHost(i, nil, n.installed(n.post)...); err != nil {
			t.Fatalf("%s: ExecStartPost %q: %v\n%s", h.Name, n.post, err, out)
		}
		got := n.mustOnHost(i, "cat", "/run/flannel/docker")
		want := dockerOptsFile(h.Subnet, 1450)
		if got != want {
			t.Errorf("%s: /run/flannel/docker:\n%s\nwant:\n%s", h.Name, got, want)
		}
		if i == 0 {
			t.Logf("%s: cat /run/flannel/docker:\n%s", h.Name, got)
		}
		env, err := parseEnvFile([]byte(got))
		if err != nil {
			t.Fatalf("%s: /run/flannel/docker: %v", h.Name, err)
		}
		bip, mtu := dockerdFlags(t, strings.Fields(env["DOCKER_NETWORK_OPTIONS"]))
		n.checkDocker0(i, bip, mtu)

		routes := n.mustOnHost(i, "ip", "route", "show")
		var wantRoutes []*regexp.Regexp
		wantRoutes = append(wantRoutes, regexp.MustCompile(`(?m)^`+regexp.QuoteMeta(h.Subnet.String())+` dev docker0 proto kernel scope link src `+regexp.QuoteMeta(bip.Addr().String())+`\b`))
		// The meaning (dst, gateway, device, onlink), whether the route
		// names its gateway itself or through a nexthop object (nhid).
		for j, p := range n.l.Hosts {
			if j != i {
				wantRoutes = append(wantRoutes, regexp.MustCompile(`(?m)^`+regexp.QuoteMeta(p.Subnet.String())+` (nhid \d+ )?via `+regexp.QuoteMeta(p.Subnet.Addr().String())+` dev flannel\.1 (proto \S+ )?onlink\b`))
			}
		}
		for _, re := range wantRoutes {
			if !re.MatchString(routes) {
				t.Errorf("%s: ip route show lacks %q:\n%s", h.Name, re, routes)
			}
		}
		if regexp.MustCompile(`(?m)^172\.30\.0\.0/16 dev flannel\.1`).MatchString(routes) {
			t.Errorf("%s: ip route show has the pre-0.7.0 connected 172.30.0.0/16 on flannel.1:\n%s", h.Name, routes)
		}
		if i == 0 {
			t.Logf("%s: ip route show:\n%s", h.Name, routes)
		}
	}
	// The host as the note leaves it is healthy.
	for i := range n.l.Hosts {
		out, code := n.doctor(i)
		if code != 0 {
			t.Errorf("%s: weftctl doctor on a healthy host: exit %d\n%s", n.l.Hosts[i].Name, code, out)
		} else if i == 0 {
			t.Logf("%s: weftctl doctor:\n%s", n.l.Hosts[i].Name, out)
		}
	}
}

// dockerdFlags is what dockerd takes from its command line: --bip, --mtu.
func dockerdFlags(t *testing.T, argv []string) (netip.Prefix, int) {
	t.Helper()
	var bip netip.Prefix
	mtu := 0
	for _, a := range argv {
		k, v, _ := strings.Cut(a, "=")
		var err error
		switch k {
		case "--bip":
			bip, err = netip.ParsePrefix(v)
		case "--mtu":
			mtu, err = strconv.Atoi(v)
		}
		if err != nil {
			t.Fatalf("dockerd flag %q: %v", a, err)
		}
	}
	if !bip.IsValid() || mtu == 0 {
		t.Fatalf("dockerd command line %q has no --bip and --mtu", argv)
	}
	return bip, mtu
}

// checkDocker0: docker0 has exactly bip and the MTU.
func (n *opsNote) checkDocker0(i int, bip netip.Prefix, mtu int) {
	h := n.l.Hosts[i]
	link, err := h.NS.Handle.LinkByName("docker0")
	if err != nil {
		n.t.Fatalf("%s: docker0: %v", h.Name, err)
	}
	addrs, err := h.NS.Handle.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		n.t.Fatal(err)
	}
	var got []string
	for _, a := range addrs {
		got = append(got, a.IPNet.String())
	}
	if len(got) != 1 || got[0] != bip.String() || link.Attrs().MTU != mtu {
		n.t.Errorf("%s: docker0 %v mtu %d, want %s mtu %d (dockerd --bip --mtu)", h.Name, got, link.Attrs().MTU, bip, mtu)
	}
}

// doctor runs the installed weftctl doctor on host i with the unit's etcd
// flags; it returns the output and exit status.
func (n *opsNote) doctor(i int) (string, int) {
	argv := n.installed([]string{"/usr/bin/weftctl", "doctor",
		"-etcd-endpoints=" + n.unitEnv["FLANNEL_ETCD_ENDPOINTS"], "-etcd-prefix=" + n.unitEnv["FLANNEL_ETCD_PREFIX"]})
	out, err := n.onHost(i, nil, argv...)
	code := exitCode(err)
	if code < 0 {
		n.t.Fatalf("%s: weftctl doctor: %v\n%s", n.l.Hosts[i].Name, err, out)
	}
	return out, code
}

// §4 docker0先于flanneld首次启动: Docker started first left docker0 on
// 192.168.0.1/20; doctor fails naming it and the fix; dockerd started with
// the installed drop-in gets --bip from $DOCKER_NETWORK_OPTIONS, which wins.
func (n *opsNote) docker0FirstPitfall() {
	t := n.t
	const i = 0
	h := n.l.Hosts[i]
	nl := h.NS.Handle
	// What Docker does when it starts before weftd: its own bridge.
	old, err := nl.LinkByName("docker0")
	if err != nil {
		t.Fatal(err)
	}
	if err := nl.LinkDel(old); err != nil {
		t.Fatalf("%s: delete docker0: %v", h.Name, err)
	}
	la := netlink.NewLinkAttrs()
	la.Name = "docker0"
	if err := nl.LinkAdd(&netlink.Bridge{LinkAttrs: la}); err != nil {
		t.Fatalf("%s: add docker0: %v", h.Name, err)
	}
	br, err := nl.LinkByName("docker0")
	if err != nil {
		t.Fatal(err)
	}
	stale := netip.MustParsePrefix("192.168.0.1/20")
	if err := nl.AddrAdd(br, &netlink.Addr{IPNet: ipNetOf(stale)}); err != nil {
		t.Fatal(err)
	}
	veth, err := nl.LinkByName("vethc1")
	if err != nil {
		t.Fatal(err)
	}
	for _, err := range []error{nl.LinkSetMasterByIndex(veth, br.Attrs().Index), nl.LinkSetUp(br)} {
		if err != nil {
			t.Fatalf("%s: docker0: %v", h.Name, err)
		}
	}

	out, code := n.doctor(i)
	t.Logf("%s: weftctl doctor with docker0 on %s: exit %d\n%s", h.Name, stale, code, out)
	if code != 1 {
		t.Errorf("%s: weftctl doctor exit %d with docker0 on %s, want 1", h.Name, code, stale)
	}
	var fails []string
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "FAIL") {
			fails = append(fails, line)
		}
	}
	if len(fails) != 1 || !strings.Contains(fails[0], "docker0") || !strings.Contains(fails[0], stale.String()) ||
		!strings.Contains(fails[0], "$DOCKER_NETWORK_OPTIONS") {
		t.Errorf("%s: doctor FAIL lines %q: want one, naming docker0, %s and the fix ($DOCKER_NETWORK_OPTIONS)", h.Name, fails, stale)
	}

	// The fix: dockerd as the installed drop-in starts it.
	dropin := n.root + "/usr/lib/systemd/system/docker.service.d/flannel.conf"
	u, err := parseUnit(dropin)
	if err != nil {
		t.Fatal(err)
	}
	ef, err := u.one("Service", "EnvironmentFile")
	if err != nil || strings.TrimPrefix(ef, "-") != "/run/flannel/docker" {
		t.Fatalf("%s: EnvironmentFile=%q (%v), want /run/flannel/docker", dropin, ef, err)
	}
	es, err := u.one("Service", "ExecStart") // after the drop-in's reset
	if err != nil {
		t.Fatalf("%s: %v", dropin, err)
	}
	if !slices.Contains(strings.Fields(es), "$DOCKER_NETWORK_OPTIONS") {
		t.Fatalf("%s: ExecStart=%s does not pass $DOCKER_NETWORK_OPTIONS: --bip never reaches dockerd", dropin, es)
	}
	denv, err := parseEnvFile([]byte(n.mustOnHost(i, "cat", strings.TrimPrefix(ef, "-"))))
	if err != nil {
		t.Fatal(err)
	}
	argv, err := expandExec(es, denv)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: dockerd as the drop-in starts it: %q", h.Name, argv)
	bip, mtu := dockerdFlags(t, argv)
	if bip.Masked() != h.Subnet {
		t.Errorf("%s: dockerd --bip=%s, outside the lease %s", h.Name, bip, h.Subnet)
	}
	// dockerd with --bip: the bridge takes that address, the old one goes.
	addrs, err := nl.AddrList(br, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if err := nl.AddrDel(br, &a); err != nil {
			t.Fatal(err)
		}
	}
	if err := nl.AddrAdd(br, &netlink.Addr{IPNet: ipNetOf(bip)}); err != nil {
		t.Fatal(err)
	}
	if err := nl.LinkSetMTU(br, mtu); err != nil {
		t.Fatal(err)
	}
	n.checkDocker0(i, bip, mtu)
	out, code = n.doctor(i)
	if code != 0 || !strings.Contains(out, "PASS bridge-docker0") {
		t.Errorf("%s: weftctl doctor after dockerd --bip: exit %d\n%s", h.Name, code, out)
	}
	if err := pings(n.l, pairsWith(n.l, i), lab.PingOptions{Timeout: time.Second}); err != nil {
		t.Errorf("%s: containers after the docker0 fix: %v", h.Name, err)
	}
}

func ipNetOf(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// etcdctl runs the installed etcdctl (v3 API) on host i against the host's
// etcd endpoint, as the note does.
func (n *opsNote) etcdctl(i int, args ...string) string {
	n.t.Helper()
	argv := append([]string{"etcdctl", "--endpoints", "127.0.0.1:2379"}, args...)
	out, err := n.onHost(i, []string{"ETCDCTL_API=3"}, argv...)
	if err != nil {
		n.t.Fatalf("%s: %s: %v\n%s", n.l.Hosts[i].Name, strings.Join(argv, " "), err, out)
	}
	n.t.Logf("%s: $ %s\n%s", n.l.Hosts[i].Name, strings.Join(argv, " "), out)
	return out
}

// §5 查看Pod网段详情.
func (n *opsNote) etcdConfig() {
	out := n.etcdctl(1, "get", opsNotePrefix+"/config")
	if want := opsNotePrefix + "/config\n" + opsNoteConfig + "\n"; out != want {
		n.t.Errorf("etcdctl get config:\n%s\nwant:\n%s", out, want)
	}
}

// §6 查看已分配的Pod网段: one key per host (v3: get --prefix --keys-only).
func (n *opsNote) etcdSubnets() {
	out := n.etcdctl(1, "get", "--prefix", "--keys-only", opsNotePrefix+"/subnets/")
	var got, want []string
	for _, l := range strings.Split(out, "\n") {
		if l != "" {
			got = append(got, l)
		}
	}
	for _, h := range n.l.Hosts {
		want = append(want, lab.LeaseKey(opsNotePrefix, h.Subnet))
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		n.t.Errorf("lease keys %q, want one per host %q", got, want)
	}
}

// §7 查看某一网段的具体配置: the note's value shape, with eth0's address.
func (n *opsNote) etcdLeaseValue() {
	t := n.t
	const i = 0
	h := n.l.Hosts[i]
	raw := strings.TrimSuffix(n.etcdctl(1, "get", "--print-value-only", lab.LeaseKey(opsNotePrefix, h.Subnet)), "\n")
	var v map[string]json.RawMessage
	if err := json.Unmarshal([]byte(raw), &v); err != nil {
		t.Fatalf("lease value %q: %v", raw, err)
	}
	var pub, typ string
	var data map[string]json.RawMessage
	for _, f := range []struct {
		key string
		dst any
	}{{"PublicIP", &pub}, {"BackendType", &typ}, {"BackendData", &data}} {
		if err := json.Unmarshal(v[f.key], f.dst); err != nil {
			t.Errorf("lease value %s: field %q: %v", raw, f.key, err)
		}
	}
	var mac string
	if err := json.Unmarshal(data["VtepMAC"], &mac); err != nil {
		t.Errorf("lease value %s: BackendData.VtepMAC: %v", raw, err)
	}
	if pub != h.Eth0IP.String() || typ != "vxlan" || mac != n.vtepMAC(i) {
		t.Errorf("lease value %s: want PublicIP %s (eth0), BackendType vxlan, VtepMAC %s (flannel.1)", raw, h.Eth0IP, n.vtepMAC(i))
	}
	// Beyond the note's keys only COMPAT.md's: PublicIPv6, BackendData.VNI,
	// and weft's identity (WeftNodeName, which flanneld ignores).
	for k := range v {
		if !slices.Contains([]string{"PublicIP", "PublicIPv6", "BackendType", "BackendData", "WeftNodeName"}, k) {
			t.Errorf("lease value %s: unexpected key %q", raw, k)
		}
	}
	for k := range data {
		if !slices.Contains([]string{"VtepMAC", "VNI"}, k) {
			t.Errorf("lease value %s: unexpected BackendData key %q", raw, k)
		}
	}
}

// §8 删除已分配的Pod网段: `etcdctl rmdir` is `etcdctl del` on v3. weftd
// takes the same subnet back at once, keeps running, and the overlay works.
func (n *opsNote) deleteLease() {
	t := n.t
	const i = 0
	h := n.l.Hosts[i]
	key := lab.LeaseKey(opsNotePrefix, h.Subnet)
	envBefore, _ := os.ReadFile(h.SubnetFile)
	start := time.Now()
	if out := n.etcdctl(1, "del", key); out != "1\n" {
		t.Fatalf("etcdctl del %s: %q, want 1", key, out)
	}
	waitFor(t, "lease deleted with etcdctl → same subnet re-acquired", start, time.Second, 10*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		resp, err := n.l.Etcd.Get(ctx, key)
		if err != nil {
			return err
		}
		if len(resp.Kvs) == 0 {
			return fmt.Errorf("%s absent", key)
		}
		var v leaseValue
		if err := json.Unmarshal(resp.Kvs[0].Value, &v); err != nil {
			return err
		}
		if v.PublicIP != h.Eth0IP.String() {
			return fmt.Errorf("%s held by %s", key, v.PublicIP)
		}
		if resp.Kvs[0].Lease == 0 {
			return fmt.Errorf("%s re-created without an etcd lease (a reservation, never expiring)", key)
		}
		return nil
	})
	waitFor(t, "lease deleted with etcdctl → containers ping across every pair", start, time.Second, 10*time.Second, func() error {
		var all []pair
		for a := range n.l.Hosts {
			for b := range n.l.Hosts {
				if a != b {
					all = append(all, pair{a, b})
				}
			}
		}
		return pings(n.l, all, lab.PingOptions{})
	})
	if pid := n.l.WeftdPID(i); pid != n.pid[i] {
		ok, err := n.l.WeftdRunning(i)
		t.Errorf("%s: weftd pid %d → %d (running %v, %v): it must re-acquire, not exit", h.Name, n.pid[i], pid, ok, err)
	}
	if after, _ := os.ReadFile(h.SubnetFile); string(after) != string(envBefore) {
		t.Errorf("%s: subnet.env changed across the lease deletion:\n%s\nwas:\n%s", h.Name, after, envBefore)
	}
	if err := lab.MatrixErr(n.l.PingMatrix(context.Background(), lab.PingOptions{Count: 3, Interval: 200 * time.Millisecond})); err != nil {
		t.Errorf("after the lease deletion: %v", err)
	}
	if err := allVXLANPeersProgrammed(t, n.l); err != nil {
		t.Error(err)
	}
}
