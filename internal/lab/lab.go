// Package lab runs a whole multi-host weft overlay on one machine: the ops
// note's topology, with each host a network namespace.
//
// Design: an underlay namespace <name>-ul holds two bridges, br-int (the
// internal 10.64.3.0/24 network every host's eth0 is on) and br-pub (the
// public 120.92.8.0/24 network of every host's eth2, which carries the
// default route — the reason the ops note passes -iface=eth0). A real etcd
// runs embedded in the lab process on the root namespace's loopback; each
// host reaches it at its own 127.0.0.1:2379 through a TCP proxy whose
// listening socket is opened inside the host namespace, so weftd runs with
// exactly the flags of the ops note. With Config.EtcdMembers = 3 the etcd is
// a three-member cluster, member i reachable in each host at its own
// loopback port (2379, 22379, 32379), and weftd is given all three, so
// members can be stopped and restarted to test real etcd faults. When a host's weftd has written
// subnet.env, the lab builds what Docker would: a docker0 bridge with
// FLANNEL_SUBNET and FLANNEL_MTU, and one container namespace on it.
//
// Every name carries the lab name, so two labs never collide, and nothing —
// no link, address, route or rule — is ever added to the root namespace.
package lab

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netconf"
	"github.com/weft-net/weft/internal/rtnl"
)

// Defaults of Config.
const (
	DefaultName    = "weft"
	DefaultHosts   = 3
	DefaultBackend = netconf.BackendVXLAN
	DefaultPrefix  = "/kube-centos/network"
	// StateRoot holds one directory per running lab.
	StateRoot = "/run/weft-lab"
	// MaxHosts keeps host addresses (10.64.3.(10+i)) inside the /24.
	MaxHosts = 240
)

// The ops note's networks: eth0 internal, eth2 public with the default route.
var (
	internalGW = netip.MustParseAddr("10.64.3.1")
	publicGW   = netip.MustParseAddr("120.92.8.1")
)

const (
	containerVeth = "vethc1" // host side of the container's veth
	readyTimeout  = 30 * time.Second
	// convergeTimeout bounds Up's wait for every container pair to ping;
	// past it the lab is up anyway and the ping matrix shows what fails.
	convergeTimeout = 10 * time.Second
)

// The kinds of Config.Containers.
const (
	ContainersNetns  = "netns"
	ContainersDocker = "docker"
	ContainersCNI    = "cni"
)

var (
	containerKinds = []string{ContainersNetns, ContainersDocker, ContainersCNI}
	nameRE         = regexp.MustCompile(`^[a-z][a-z0-9-]{0,23}$`)
	backends       = []string{netconf.BackendVXLAN, netconf.BackendHostGW, netconf.BackendAlloc, netconf.BackendUDP, netconf.BackendWireGuard}
)

// Config describes a lab. Zero values take the defaults.
type Config struct {
	Name    string // prefix of every namespace; default "weft"
	Hosts   int    // number of hosts; default 3
	Backend string // vxlan (default), host-gw, alloc, udp or wireguard
	// NetworkConfig replaces the whole network config JSON when set (the
	// Backend field is then only informative).
	NetworkConfig string
	Prefix        string // etcd prefix; default /kube-centos/network
	// EtcdMembers is the size of the lab's etcd cluster: 1 (default) to
	// MaxEtcdMembers.
	EtcdMembers int
	// WeftdPath is the weftd binary (see FindWeftd).
	WeftdPath string
	// WeftdArgs are appended to every weftd command line (e.g. -ip-masq).
	WeftdArgs []string
	// WeftdEnv is added to weftd's environment (FLANNELD_* of the caller's
	// environment are never passed on, so a lab is reproducible).
	WeftdEnv []string
	// StateDir defaults to /run/weft-lab/<name>.
	StateDir string
	// IPv6 makes the overlay dual-stack: EnableIPv6 in the default network
	// config (IPv6Network fd30::/48), an IPv6 address on every host's eth0,
	// docker0 and container. vxlan and host-gw only.
	IPv6 bool
	// Containers is what gives each host its container: ContainersNetns
	// (default: a namespace on a docker0 the lab builds as dockerd would),
	// ContainersDocker (a real dockerd per host, configured from
	// /run/flannel/docker) or ContainersCNI (weft's flannel CNI plugin).
	Containers string
	// ReadyTimeout bounds the wait for each host's subnet.env; default 30s.
	ReadyTimeout time.Duration
	// BeforeWeftd, when set, is called with each host once its network is
	// built and before its weftd first starts (in Up: for every host before
	// any weftd starts; in AddHost: for the new host), so that a test can
	// take the host as it was before weft touched it.
	BeforeWeftd func(l *Lab, h *Host)
	Log         *slog.Logger
}

func (c *Config) setDefaults() error {
	if c.Name == "" {
		c.Name = DefaultName
	}
	if !nameRE.MatchString(c.Name) {
		return fmt.Errorf("lab name %q: must be 1-24 characters of a-z, 0-9 and '-', starting with a letter", c.Name)
	}
	if c.Hosts == 0 {
		c.Hosts = DefaultHosts
	}
	if c.Hosts < 1 || c.Hosts > MaxHosts {
		return fmt.Errorf("hosts %d: must be between 1 and %d", c.Hosts, MaxHosts)
	}
	if c.Backend == "" {
		c.Backend = DefaultBackend
	}
	c.Backend = strings.ToLower(c.Backend)
	if !contains(backends, c.Backend) {
		return fmt.Errorf("backend %q: must be one of %s", c.Backend, strings.Join(backends, ", "))
	}
	if c.IPv6 && c.Backend != netconf.BackendVXLAN && c.Backend != netconf.BackendHostGW && c.Backend != netconf.BackendWireGuard {
		return fmt.Errorf("backend %q: IPv6 (dual-stack) needs vxlan, host-gw or wireguard", c.Backend)
	}
	if c.Containers == "" {
		c.Containers = ContainersNetns
	}
	if !contains(containerKinds, c.Containers) {
		return fmt.Errorf("containers %q: must be one of %s", c.Containers, strings.Join(containerKinds, ", "))
	}
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if c.EtcdMembers == 0 {
		c.EtcdMembers = 1
	}
	if c.EtcdMembers < 1 || c.EtcdMembers > MaxEtcdMembers {
		return fmt.Errorf("etcd members %d: must be between 1 and %d", c.EtcdMembers, MaxEtcdMembers)
	}
	if c.StateDir == "" {
		c.StateDir = StateDirFor(c.Name)
	}
	if c.ReadyTimeout == 0 {
		c.ReadyTimeout = readyTimeout
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.WeftdPath == "" {
		return errors.New("no weftd binary given (Config.WeftdPath); build it: go build -o bin/ ./cmd/...")
	}
	return nil
}

// StateDirFor is where the lab called name keeps its state.
func StateDirFor(name string) string { return filepath.Join(StateRoot, name) }

// Lab is a running overlay. All methods are safe for one caller at a time;
// Close may be called from anywhere, any number of times.
type Lab struct {
	Name     string
	StateDir string
	// Etcd is a client of the lab's etcd (closed by Close).
	Etcd *clientv3.Client
	// EtcdEndpoint is the etcd URL on the root namespace's loopback
	// (member 0's when there are several).
	EtcdEndpoint string
	// EtcdEndpoints is every member's URL on the root namespace's loopback.
	EtcdEndpoints []string
	Underlay      *rtnl.NS
	Hosts         []*Host

	cfg       Config
	log       *slog.Logger
	members   []*etcdMember
	mu        sync.Mutex
	closeOnce sync.Once
	closed    bool
}

// Host is one simulated machine.
type Host struct {
	Index       int    // position in Lab.Hosts; the name carries Index+1
	Name        string // <lab>-h<Index+1>, also its namespace name
	NS          *rtnl.NS
	Eth0IP      netip.Addr // internal address, what weftd advertises (-iface=eth0)
	PublicIP    netip.Addr // eth2 address, holds the default route
	ContainerNS *rtnl.NS
	ContainerIP netip.Addr
	// Eth0IP6 and ContainerIP6 are the IPv6 addresses of a dual-stack lab
	// (zero otherwise); Subnet6 is the IPv6 lease.
	Eth0IP6      netip.Addr
	ContainerIP6 netip.Addr
	Subnet6      netip.Prefix
	// Subnet is the lease subnet read from subnet.env when the host came up.
	Subnet     netip.Prefix
	MTU        int
	SubnetFile string
	LogFile    string

	proxies []*Proxy // one per etcd member
	// cleanups undo what a container runtime started for this host
	// (dockerd, CNI attachments); Close runs them, last first, before the
	// host's namespace goes.
	cleanups []func() error
	proc     atomic.Pointer[weftdProc] // the current run; Close reads it from any goroutine
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

// CheckRoot returns a clear error when not running as root.
func CheckRoot() error {
	if os.Geteuid() != 0 {
		return errors.New("the lab creates network namespaces and must run as root (try: sudo weftctl lab up)")
	}
	return nil
}

// Up builds the lab and returns when every host's container is reachable
// in its own host (the overlay itself is judged with Ping / PingMatrix).
// On error everything created so far is removed.
func Up(ctx context.Context, cfg Config) (*Lab, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if err := CheckRoot(); err != nil {
		return nil, err
	}
	for _, tool := range []struct{ cmd, pkg string }{{"ip", "iproute2"}, {"ping", "iputils-ping"}, {"bridge", "iproute2"}} {
		if _, err := exec.LookPath(tool.cmd); err != nil {
			return nil, fmt.Errorf("the lab needs the %s command (apt-get install %s): %w", tool.cmd, tool.pkg, err)
		}
	}
	if err := checkFree(cfg.Name, cfg.StateDir); err != nil {
		return nil, err
	}
	l := &Lab{Name: cfg.Name, StateDir: cfg.StateDir, cfg: cfg, log: cfg.Log.With("lab", cfg.Name)}
	if err := l.up(ctx); err != nil {
		cerr := l.Close()
		if ctx.Err() != nil {
			// Ctrl-C while coming up: one line, not one per host.
			return nil, errors.Join(fmt.Errorf("lab %s: interrupted while coming up (%w); what it had created is removed", l.Name, context.Cause(ctx)), cerr)
		}
		return nil, errors.Join(err, cerr)
	}
	return l, nil
}

// checkFree refuses to build over a running lab or leftovers of one.
func checkFree(name, stateDir string) error {
	if st, err := ReadState(stateDir); err == nil {
		if processAlive(st.PID) {
			return fmt.Errorf("lab %q is already running (pid %d); stop it with: weftctl lab down --name %s", name, st.PID, name)
		}
		return fmt.Errorf("lab %q left state in %s (pid %d is gone); clean up with: weftctl lab down --name %s", name, stateDir, st.PID, name)
	}
	if left := leftoverNamespaces(name); len(left) > 0 {
		return fmt.Errorf("namespaces of a lab %q already exist (%s); clean up with: weftctl lab down --name %s", name, strings.Join(left, ", "), name)
	}
	return nil
}

func (l *Lab) up(ctx context.Context) error {
	start := time.Now()
	if err := os.MkdirAll(l.StateDir, 0o755); err != nil {
		return fmt.Errorf("create lab state dir: %w", err)
	}
	// The state file goes first, so that a crash at any later step leaves
	// enough for `lab down` to clean up.
	if err := l.saveState(); err != nil {
		return err
	}
	ms, err := startEtcdCluster(filepath.Join(l.StateDir, "etcd"), l.cfg.EtcdMembers)
	if err != nil {
		return fmt.Errorf("start the lab's etcd: %w", err)
	}
	l.mu.Lock()
	l.members = ms
	l.mu.Unlock()
	for _, m := range ms {
		l.EtcdEndpoints = append(l.EtcdEndpoints, m.endpoint)
	}
	l.EtcdEndpoint = l.EtcdEndpoints[0]
	if l.Etcd, err = clientv3.New(clientv3.Config{
		Endpoints: l.EtcdEndpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
	}); err != nil {
		return fmt.Errorf("etcd client for %s: %w", strings.Join(l.EtcdEndpoints, ","), err)
	}
	cfgJSON := l.cfg.NetworkConfig
	if cfgJSON == "" {
		cfgJSON = fmt.Sprintf(`{"Network":"172.30.0.0/16","SubnetLen":24,"Backend":{"Type":%q}}`, l.cfg.Backend)
		if l.cfg.IPv6 {
			cfgJSON = fmt.Sprintf(`{"Network":"172.30.0.0/16","SubnetLen":24,"EnableIPv6":true,"IPv6Network":"fd30::/48","IPv6SubnetLen":64,"Backend":{"Type":%q}}`, l.cfg.Backend)
		}
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	_, err = l.Etcd.Put(pctx, lease.ConfigKey(l.cfg.Prefix), cfgJSON)
	cancel()
	if err != nil {
		return fmt.Errorf("write network config at %s/config: %w", l.cfg.Prefix, err)
	}
	l.log.Info("etcd running", "endpoints", strings.Join(l.EtcdEndpoints, ","), "config", cfgJSON)

	ul, err := rtnl.CreateNS(l.Name + "-ul")
	if err != nil {
		return fmt.Errorf("create underlay namespace: %w", err)
	}
	l.Underlay = ul
	if err := l.saveState(); err != nil {
		return err
	}
	for _, br := range []struct {
		name string
		addr netip.Prefix
	}{{"br-int", netip.PrefixFrom(internalGW, 24)}, {"br-pub", netip.PrefixFrom(publicGW, 24)}} {
		if err := addBridge(ul.Handle, br.name, 0, br.addr); err != nil {
			return fmt.Errorf("underlay %s: %w", ul.Name, err)
		}
	}

	for i := 0; i < l.cfg.Hosts; i++ {
		if _, err := l.addHostNet(); err != nil {
			return err
		}
	}
	if err := l.saveState(); err != nil {
		return err
	}
	if l.cfg.BeforeWeftd != nil {
		for _, h := range l.Hosts {
			l.cfg.BeforeWeftd(l, h)
		}
	}
	for _, h := range l.Hosts {
		if err := l.startWeftd(h); err != nil {
			return err
		}
	}
	if err := l.saveState(); err != nil {
		return err
	}
	errs := make([]error, len(l.Hosts))
	var wg sync.WaitGroup
	for i, h := range l.Hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = l.finishHost(ctx, h, time.Time{})
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if l.cfg.Backend != netconf.BackendAlloc { // alloc has no data path: nothing to wait for
		l.waitConverged(ctx, convergeTimeout)
	}
	l.log.Info("lab up", "hosts", len(l.Hosts), "backend", l.cfg.Backend, "took", time.Since(start).Round(time.Millisecond))
	return l.saveState()
}

// waitConverged waits until every container pair pings: a host that was
// ready first learns of the last one a moment later, and the first ping
// matrix should show the overlay, not that moment.
func (l *Lab) waitConverged(ctx context.Context, d time.Duration) {
	start := time.Now()
	st := l.State()
	type pair struct {
		i, j int
		six  bool
	}
	var pending []pair
	for i := range st.Hosts {
		for j := range st.Hosts {
			if i != j {
				pending = append(pending, pair{i, j, false})
				if l.cfg.IPv6 {
					pending = append(pending, pair{i, j, true})
				}
			}
		}
	}
	for len(pending) > 0 && time.Since(start) < d && ctx.Err() == nil {
		ok := make([]bool, len(pending))
		var wg sync.WaitGroup
		for k, p := range pending {
			wg.Add(1)
			go func() {
				defer wg.Done()
				to := st.Hosts[p.j].ContainerIP
				if p.six {
					to = st.Hosts[p.j].ContainerIP6
				}
				r := pingIn(ctx, st.Hosts[p.i].ContainerNS, to, PingOptions{Timeout: 200 * time.Millisecond})
				ok[k] = r.Err == nil
			}()
		}
		wg.Wait()
		var still []pair
		for k, p := range pending {
			if !ok[k] {
				still = append(still, p)
			}
		}
		pending = still
	}
	if len(pending) == 0 {
		l.log.Info("overlay converged: every container pair pings", "after", time.Since(start).Round(time.Millisecond))
	} else {
		l.log.Warn("overlay not converged", "failing-pairs", len(pending), "waited", time.Since(start).Round(time.Millisecond))
	}
}

// addHostNet creates the next host's namespace, its two NICs, addresses,
// default route, forwarding and etcd proxy — everything but weftd.
func (l *Lab) addHostNet() (*Host, error) {
	n := len(l.Hosts) + 1
	if n > MaxHosts {
		return nil, fmt.Errorf("host %d: a lab has at most %d hosts", n, MaxHosts)
	}
	h := &Host{
		Index:    n - 1,
		Name:     fmt.Sprintf("%s-h%d", l.Name, n),
		Eth0IP:   netip.AddrFrom4([4]byte{10, 64, 3, byte(10 + n)}),
		PublicIP: netip.AddrFrom4([4]byte{120, 92, 8, byte(10 + n)}),
	}
	dir := filepath.Join(l.StateDir, h.Name)
	h.SubnetFile = filepath.Join(dir, "subnet.env")
	h.LogFile = filepath.Join(dir, "weftd.log")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create state dir of %s: %w", h.Name, err)
	}
	ns, err := rtnl.CreateNS(h.Name)
	if err != nil {
		return nil, fmt.Errorf("create host namespace: %w", err)
	}
	h.NS = ns
	l.mu.Lock()
	l.Hosts = append(l.Hosts, h)
	l.mu.Unlock()
	if l.cfg.IPv6 {
		h.Eth0IP6 = netip.MustParseAddr(fmt.Sprintf("fd64:3::%x", 10+n))
		if err := enableIPv6(ns, true); err != nil {
			return nil, fmt.Errorf("host %s: %w", h.Name, err)
		}
	}

	for _, nic := range []struct {
		name, peer, bridge string
		addr               netip.Addr
	}{
		{"eth0", fmt.Sprintf("h%d-int", n), "br-int", h.Eth0IP},
		{"eth2", fmt.Sprintf("h%d-pub", n), "br-pub", h.PublicIP},
	} {
		if err := rtnl.VethPair(ns, nic.name, l.Underlay, nic.peer); err != nil {
			return nil, fmt.Errorf("host %s: %w", h.Name, err)
		}
		if err := setMaster(l.Underlay.Handle, nic.peer, nic.bridge); err != nil {
			return nil, fmt.Errorf("host %s: %w", h.Name, err)
		}
		if err := addAddr(ns.Handle, nic.name, netip.PrefixFrom(nic.addr, 24)); err != nil {
			return nil, fmt.Errorf("host %s: %w", h.Name, err)
		}
	}
	eth2, err := ns.Handle.LinkByName("eth2")
	if err != nil {
		return nil, fmt.Errorf("host %s: find eth2: %w", h.Name, err)
	}
	if err := ns.Handle.RouteAdd(&netlink.Route{LinkIndex: eth2.Attrs().Index, Gw: publicGW.AsSlice()}); err != nil {
		return nil, fmt.Errorf("host %s: default route via %s dev eth2: %w", h.Name, publicGW, err)
	}
	if err := ns.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644)
	}); err != nil {
		return nil, fmt.Errorf("host %s: enable ip_forward: %w", h.Name, err)
	}
	if l.cfg.IPv6 {
		if err := addAddr(ns.Handle, "eth0", netip.PrefixFrom(h.Eth0IP6, 64)); err != nil {
			return nil, fmt.Errorf("host %s: %w", h.Name, err)
		}
	}
	for i, ep := range l.EtcdEndpoints {
		p, err := StartProxy(ns, hostEtcdAddrs[i], ep, l.log.With("host", h.Name))
		if err != nil {
			return nil, fmt.Errorf("host %s: %w", h.Name, err)
		}
		h.proxies = append(h.proxies, p)
	}
	l.log.Debug("host created", "host", h.Name, "eth0", h.Eth0IP, "eth2", h.PublicIP)
	return h, nil
}

// finishHost waits for the host's subnet.env (written after `since`) and
// builds docker0 and the container from it.
func (l *Lab) finishHost(ctx context.Context, h *Host, since time.Time) error {
	env, err := l.waitSubnetFile(ctx, h, since)
	if err != nil {
		return err
	}
	h.Subnet = env.Subnet.Masked()
	h.MTU = env.MTU
	if l.cfg.IPv6 {
		if !env.IPv6Subnet.IsValid() {
			return fmt.Errorf("host %s: %s has no FLANNEL_IPV6_SUBNET in a dual-stack lab", h.Name, h.SubnetFile)
		}
		h.Subnet6 = env.IPv6Subnet.Masked()
	}
	d, err := writeDockerOpts(h.SubnetFile, filepath.Join(filepath.Dir(h.SubnetFile), "docker"))
	if err != nil {
		return fmt.Errorf("host %s: %w", h.Name, err)
	}
	switch l.cfg.Containers {
	case ContainersDocker:
		err = l.addDockerContainer(ctx, h)
	case ContainersCNI:
		err = l.addCNIContainer(ctx, h)
	default:
		err = l.addContainer(h, d)
	}
	if err != nil {
		return fmt.Errorf("host %s: %w", h.Name, err)
	}
	l.log.Info("host ready", "host", h.Name, "subnet", h.Subnet, "mtu", h.MTU, "container", h.ContainerIP)
	if h.ContainerIP6.IsValid() {
		l.log.Info("host ready for IPv6", "host", h.Name, "subnet6", h.Subnet6, "container6", h.ContainerIP6)
	}
	return nil
}

// addContainer builds docker0 (as `dockerd --bip --mtu` would) and one
// container namespace on it.
func (l *Lab) addContainer(h *Host, d dockerOpts) error {
	if err := addBridge(h.NS.Handle, "docker0", d.MTU, d.BIP); err != nil {
		return err
	}
	cns, err := h.newContainerNS()
	if err != nil {
		return err
	}
	if err := rtnl.VethPair(h.NS, containerVeth, cns, "eth0"); err != nil {
		return err
	}
	for _, x := range []struct {
		ns   *rtnl.NS
		name string
	}{{h.NS, containerVeth}, {cns, "eth0"}} {
		link, err := x.ns.Handle.LinkByName(x.name)
		if err != nil {
			return fmt.Errorf("find %s in %s: %w", x.name, x.ns.Name, err)
		}
		if err := x.ns.Handle.LinkSetMTU(link, d.MTU); err != nil {
			return fmt.Errorf("set MTU %d on %s in %s: %w", d.MTU, x.name, x.ns.Name, err)
		}
	}
	if err := setMaster(h.NS.Handle, containerVeth, "docker0"); err != nil {
		return err
	}
	gw := d.BIP.Addr()
	h.ContainerIP = gw.Next()
	if err := addAddr(cns.Handle, "eth0", netip.PrefixFrom(h.ContainerIP, d.BIP.Bits())); err != nil {
		return err
	}
	eth0, err := cns.Handle.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("find eth0 in %s: %w", cns.Name, err)
	}
	if err := cns.Handle.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: gw.AsSlice()}); err != nil {
		return fmt.Errorf("default route via %s in %s: %w", gw, cns.Name, err)
	}
	if !h.Subnet6.IsValid() {
		return nil
	}
	// What dockerd's --ipv6 --fixed-cidr-v6 would do with FLANNEL_IPV6_SUBNET.
	gw6 := h.Subnet6.Addr().Next()
	if err := addAddr(h.NS.Handle, "docker0", netip.PrefixFrom(gw6, h.Subnet6.Bits())); err != nil {
		return err
	}
	h.ContainerIP6 = gw6.Next()
	if err := addAddr(cns.Handle, "eth0", netip.PrefixFrom(h.ContainerIP6, h.Subnet6.Bits())); err != nil {
		return err
	}
	if err := cns.Handle.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: gw6.AsSlice()}); err != nil {
		return fmt.Errorf("default IPv6 route via %s in %s: %w", gw6, cns.Name, err)
	}
	return nil
}

// newContainerNS creates the namespace of h's container, <host>-c1 (with
// IPv6 on in a dual-stack lab), and makes it h.ContainerNS; what gives it
// its interface differs by Config.Containers.
func (h *Host) newContainerNS() (*rtnl.NS, error) {
	cns, err := rtnl.CreateNS(h.Name + "-c1")
	if err != nil {
		return nil, fmt.Errorf("create container namespace: %w", err)
	}
	h.ContainerNS = cns
	if h.Subnet6.IsValid() {
		if err := enableIPv6(cns, false); err != nil {
			return nil, err
		}
	}
	return cns, nil
}

// AddHost adds one more host (weftd, docker0, container) to a running lab
// and returns when its subnet.env is written and its container is set up.
func (l *Lab) AddHost(ctx context.Context) (*Host, error) {
	h, err := l.addHostNet()
	if err != nil {
		return nil, err
	}
	if l.cfg.BeforeWeftd != nil {
		l.cfg.BeforeWeftd(l, h)
	}
	if err := l.startWeftd(h); err != nil {
		return nil, err
	}
	if err := l.finishHost(ctx, h, time.Time{}); err != nil {
		return nil, err
	}
	return h, l.saveState()
}

// Close stops every weftd and removes every namespace, the etcd and the
// state directory. It is idempotent and safe to call concurrently.
func (l *Lab) Close() error {
	var errs []error
	l.closeOnce.Do(func() {
		l.mu.Lock()
		l.closed = true
		hosts := append([]*Host(nil), l.Hosts...)
		l.mu.Unlock()
		var wg sync.WaitGroup
		for _, h := range hosts {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if p := h.proc.Load(); p != nil && p.running() {
					p.stop(5 * time.Second)
				}
			}()
		}
		wg.Wait()
		for _, h := range hosts {
			for i := len(h.cleanups) - 1; i >= 0; i-- {
				if err := h.cleanups[i](); err != nil {
					errs = append(errs, fmt.Errorf("host %s: %w", h.Name, err))
				}
			}
			for _, p := range h.proxies {
				p.Close()
			}
			if h.ContainerNS != nil {
				h.ContainerNS.Close()
			}
			if h.NS != nil {
				h.NS.Close()
			}
		}
		if l.Underlay != nil {
			l.Underlay.Close()
		}
		if l.Etcd != nil {
			l.Etcd.Close()
		}
		for _, m := range l.members {
			m.stop()
		}
		if left := leftoverNamespaces(l.Name); len(left) > 0 {
			errs = append(errs, fmt.Errorf("namespaces still present after removal: %s", strings.Join(left, ", ")))
		}
		if err := os.RemoveAll(l.StateDir); err != nil {
			errs = append(errs, fmt.Errorf("remove lab state dir: %w", err))
		}
		l.log.Info("lab removed")
	})
	return errors.Join(errs...)
}

// Config returns the lab's configuration with defaults applied.
func (l *Lab) Config() Config { return l.cfg }

// leftoverNamespaces lists the namespaces named like this lab's.
func leftoverNamespaces(name string) []string {
	re := regexp.MustCompile(`^` + regexp.QuoteMeta(name) + `-(ul|h[0-9]+(-c1)?)$`)
	ents, err := os.ReadDir("/run/netns")
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		if re.MatchString(e.Name()) {
			out = append(out, e.Name())
		}
	}
	return out
}
