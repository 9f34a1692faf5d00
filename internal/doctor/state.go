package doctor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netconf"
	"github.com/weft-net/weft/internal/rtnl"
	"github.com/weft-net/weft/internal/subnetenv"
)

// State is everything the checks look at. Each part carries its own read
// error, so that one unreadable source fails its checks and not the others.
type State struct {
	Now time.Time

	SubnetFile string
	Env        subnetenv.Env
	EnvErr     error // subnet.env missing or malformed

	Etcd   EtcdState
	Kernel KernelState
	// WireGuard is the wireguard backend's devices as their UAPI sockets
	// show them (wireguard.go); nil for other backends.
	WireGuard []WireGuardState
}

// EtcdState is what etcd holds under the prefix.
type EtcdState struct {
	Endpoints string
	Prefix    string
	Err       error // unreachable: nothing below is known
	Config    netconf.Config
	ConfigErr error // missing or invalid network config
	Leases    []lease.Lease
	Expiries  lease.Expiries // when the Leases' etcd leases run out
	LeasesErr error          // listing or expiry lookup failed
}

// KernelState is the part of the host's network the overlay depends on, all
// IPv4, read from one network namespace.
type KernelState struct {
	Err    error // a dump failed: the kernel checks cannot judge
	Links  []Link
	Routes []Route // main table
	// Nexthops are the namespace's nexthop objects, every owner's:
	// weftd's vxlan peer routes go through one each (nhid) on kernels
	// that make them.
	Nexthops  []rtnl.Nexthop
	Device    string  // overlay device name looked at, e.g. flannel.1
	Neighs    []Neigh // permanent neighbours on Device
	FDB       []FDB   // permanent FDB entries on Device
	IPForward string  // content of net.ipv4.ip_forward, "" when unreadable
	SysctlErr error
}

// Link is one network interface.
type Link struct {
	Name    string
	Index   int
	Type    string // netlink type: vxlan, bridge, veth, device, …
	MTU     int
	Up      bool
	Addrs   []netip.Prefix // IPv4 addresses with their prefix length
	VtepDev int            // vxlan: index of the underlay interface; 0 otherwise
}

// Route is one IPv4 main-table route. A route through a nexthop object
// has its NhID, and its Gw, Link and OnLink are that nexthop's (read from
// the object, so nexthop_compat_mode=0 makes no difference); they are
// empty when no such nexthop was found.
type Route struct {
	Dst      netip.Prefix // 0.0.0.0/0 for the default route
	Gw       netip.Addr
	Link     int
	Protocol int
	OnLink   bool
	Type     int // RTN_*; unicast when 0
	NhID     uint32
}

// String describes r in ip-route terms, for verdicts.
func (r Route) String() string {
	s := r.Dst.String()
	if r.NhID != 0 {
		s += fmt.Sprintf(" nhid %d", r.NhID)
	}
	if r.Gw.IsValid() {
		s += " via " + r.Gw.String()
	}
	return s
}

// Neigh is a permanent neighbour entry.
type Neigh struct {
	IP  netip.Addr
	MAC string
}

// FDB is a permanent forwarding-database entry of the vxlan device.
type FDB struct {
	MAC string
	Dst netip.Addr
}

// LinkByName returns the link of that name.
func (k KernelState) LinkByName(name string) (Link, bool) {
	for _, l := range k.Links {
		if l.Name == name {
			return l, true
		}
	}
	return Link{}, false
}

// LinkByIndex returns the link with that index.
func (k KernelState) LinkByIndex(i int) (Link, bool) {
	for _, l := range k.Links {
		if l.Index == i {
			return l, true
		}
	}
	return Link{}, false
}

// ReadEnv reads subnet.env into s.
func (s *State) ReadEnv(path string) {
	s.SubnetFile = path
	s.Env, s.EnvErr = subnetenv.Read(path)
}

// etcdTimeout bounds each etcd call of the doctor: an unreachable etcd is a
// verdict, not a hang.
const etcdTimeout = 5 * time.Second

// ObserveEtcd reads the config and every lease (with its expiry) under
// prefix. An unreachable etcd is recorded in Err, not returned: it is one of
// the things the doctor reports.
func ObserveEtcd(ctx context.Context, cli *clientv3.Client, prefix string) EtcdState {
	e := EtcdState{Endpoints: strings.Join(cli.Endpoints(), ","), Prefix: prefix}
	// Read <prefix>/config, not "/": a weft user may be allowed its prefix only.
	pctx, cancel := context.WithTimeout(ctx, etcdTimeout)
	_, err := cli.Get(pctx, lease.ConfigKey(prefix), clientv3.WithCountOnly())
	cancel()
	if err != nil {
		e.Err = fmt.Errorf("etcd %s: %w", e.Endpoints, err)
		return e
	}
	st := lease.NewStore(cli, prefix, nil)
	data, _, err := st.GetConfig(ctx)
	if err == nil {
		var perr error
		e.Config, _, perr = netconf.Parse(data)
		if perr != nil {
			err = fmt.Errorf("%s: %w", st.ConfigKey(), perr)
		}
	}
	e.ConfigErr = err
	e.Leases, _, e.LeasesErr = st.List(ctx)
	if e.LeasesErr == nil {
		ectx, cancel := context.WithTimeout(ctx, etcdTimeout)
		e.Expiries, e.LeasesErr = st.Expirations(ectx, e.Leases)
		cancel()
	}
	return e
}

// DeviceName is the overlay device a config implies: flannel.<VNI> for vxlan,
// "" for backends without one.
func DeviceName(c netconf.Config) string {
	if c.BackendType != netconf.BackendVXLAN {
		return ""
	}
	vni := 1
	if o, err := c.VXLAN(); err == nil && o.VNI != 0 {
		vni = o.VNI
	}
	return fmt.Sprintf("flannel.%d", vni)
}

// SysctlReader reads a sysctl by its dotted name (net.ipv4.ip_forward).
type SysctlReader func(name string) (string, error)

// ProcSysctl reads /proc/sys of the calling thread's network namespace.
func ProcSysctl(name string) (string, error) {
	p := "/proc/sys/" + strings.ReplaceAll(name, ".", "/")
	b, err := os.ReadFile(p)
	if err != nil {
		return "", fmt.Errorf("read sysctl %s: %w", name, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// ObserveKernel reads links, addresses, main-table routes, nexthop objects
// and, when device exists, its permanent neighbours and FDB entries through
// h and a socket in ns (both the namespace to look at; ns nil: the current
// one), and ip_forward through sysctl.
func ObserveKernel(h *netlink.Handle, ns *netns.NsHandle, device string, sysctl SysctlReader) KernelState {
	k := KernelState{Device: device}
	var errs []error
	links, err := rtnl.RetryDump(func() ([]netlink.Link, error) { return h.LinkList() })
	if err != nil {
		errs = append(errs, fmt.Errorf("list links: %w", err))
	}
	addrs, err := rtnl.RetryDump(func() ([]netlink.Addr, error) { return h.AddrList(nil, netlink.FAMILY_V4) })
	if err != nil {
		errs = append(errs, fmt.Errorf("list IPv4 addresses: %w", err))
	}
	byLink := map[int][]netip.Prefix{}
	for _, a := range addrs {
		if p, ok := prefixOf(a.IPNet); ok {
			byLink[a.LinkIndex] = append(byLink[a.LinkIndex], p)
		}
	}
	devIndex := 0
	for _, l := range links {
		at := l.Attrs()
		kl := Link{Name: at.Name, Index: at.Index, Type: l.Type(), MTU: at.MTU,
			Up: at.Flags&net.FlagUp != 0, Addrs: byLink[at.Index]}
		if v, ok := l.(*netlink.Vxlan); ok {
			kl.VtepDev = v.VtepDevIndex
		}
		if at.Name == device {
			devIndex = at.Index
		}
		k.Links = append(k.Links, kl)
	}
	// Routes and nexthops through weft's own socket: netlink.Handle reads
	// neither nexthop objects nor a route's nexthop id.
	routes, nexthops, err := readRoutes(ns)
	if err != nil {
		errs = append(errs, err)
	}
	k.Routes, k.Nexthops = routes, nexthops
	if devIndex != 0 {
		ns, err := rtnl.RetryDump(func() ([]netlink.Neigh, error) { return h.NeighList(devIndex, netlink.FAMILY_V4) })
		if err != nil {
			errs = append(errs, fmt.Errorf("list neighbours of %s: %w", device, err))
		}
		for _, n := range ns {
			if n.State&netlink.NUD_PERMANENT == 0 {
				continue
			}
			a, _ := netip.AddrFromSlice(n.IP)
			k.Neighs = append(k.Neighs, Neigh{IP: a.Unmap(), MAC: n.HardwareAddr.String()})
		}
		fdb, err := rtnl.RetryDump(func() ([]netlink.Neigh, error) { return h.NeighList(devIndex, unix.AF_BRIDGE) })
		if err != nil {
			errs = append(errs, fmt.Errorf("list FDB of %s: %w", device, err))
		}
		for _, n := range fdb {
			// Learned entries belong to the kernel; weft's are permanent.
			if n.State&netlink.NUD_PERMANENT == 0 || len(n.HardwareAddr) != 6 {
				continue
			}
			a, _ := netip.AddrFromSlice(n.IP)
			k.FDB = append(k.FDB, FDB{MAC: n.HardwareAddr.String(), Dst: a.Unmap()})
		}
	}
	k.Err = errors.Join(errs...)
	if sysctl != nil {
		k.IPForward, k.SysctlErr = sysctl("net.ipv4.ip_forward")
	}
	return k
}

// readRoutes dumps the IPv4 main table and the nexthop objects of ns; each
// route through a nexthop gets that nexthop's gateway, device and onlink
// flag.
func readRoutes(ns *netns.NsHandle) ([]Route, []rtnl.Nexthop, error) {
	c, err := rtnl.Open(ns)
	if err != nil {
		return nil, nil, err
	}
	defer c.Close()
	var nhs []rtnl.Nexthop
	if _, err := rtnl.RetryDump(func() (struct{}, error) {
		nhs = nhs[:0]
		return struct{}{}, c.DumpNexthops(func(n rtnl.Nexthop) { nhs = append(nhs, n) })
	}); err != nil && !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EINVAL) {
		// A kernel without nexthop objects (< 5.3) has none to show.
		return nil, nil, fmt.Errorf("list nexthop objects: %w", err)
	}
	byID := make(map[uint32]rtnl.Nexthop, len(nhs))
	for _, n := range nhs {
		byID[n.ID] = n
	}
	var routes []Route
	if _, err := rtnl.RetryDump(func() (struct{}, error) {
		routes = routes[:0]
		return struct{}{}, c.DumpRoutes(unix.AF_INET, func(r rtnl.Route) {
			kr := Route{Dst: r.Dst, Gw: r.Gw, Link: r.Link, Protocol: int(r.Protocol),
				OnLink: r.Flags&unix.RTNH_F_ONLINK != 0, Type: int(r.Type), NhID: r.NhID}
			if r.NhID != 0 {
				// The object is the truth; what a compat-mode dump adds
				// beside the id is a copy, absent with compat mode 0.
				n, ok := byID[r.NhID]
				if !ok || n.Other {
					n = rtnl.Nexthop{} // gone meanwhile, or a group or blackhole: no one gateway
				}
				kr.Gw, kr.Link, kr.OnLink = n.Gw, n.Link, n.OnLink
			}
			routes = append(routes, kr)
		})
	}); err != nil {
		return nil, nil, fmt.Errorf("list IPv4 main-table routes: %w", err)
	}
	return routes, nhs, nil
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	a = a.Unmap()
	return netip.PrefixFrom(a, ones), true
}

// rtProtWeft is the route protocol weft marks its routes with.
const rtProtWeft = int(rtnl.ProtWeft)

// Inputs are the sources Observe reads.
type Inputs struct {
	Etcd       *clientv3.Client
	Prefix     string
	SubnetFile string
	// Handle is bound to the namespace to check (netlink.NewHandle() for the
	// current one).
	Handle *netlink.Handle
	// NS is that same namespace for what Handle cannot read (nexthop
	// objects, a route's nexthop id); nil: the current one.
	NS *netns.NsHandle
	// Sysctl reads sysctls of that same namespace (ProcSysctl for the current one).
	Sysctl SysctlReader
	Now    time.Time
	// WireGuardSocketDir is where the wireguard backend's UAPI sockets are
	// ("" = $WEFT_WIREGUARD_SOCKET_DIR, else /var/run/wireguard).
	WireGuardSocketDir string
}

// Observe reads everything the checks need.
func Observe(ctx context.Context, in Inputs) State {
	s := State{Now: in.Now}
	if s.Now.IsZero() {
		s.Now = time.Now()
	}
	s.ReadEnv(in.SubnetFile)
	s.Etcd = ObserveEtcd(ctx, in.Etcd, in.Prefix)
	dev := ""
	if s.Etcd.Err == nil && s.Etcd.ConfigErr == nil {
		dev = DeviceName(s.Etcd.Config)
	}
	s.Kernel = ObserveKernel(in.Handle, in.NS, dev, in.Sysctl)
	if s.Etcd.Err == nil && s.Etcd.ConfigErr == nil && s.Etcd.Config.BackendType == netconf.BackendWireGuard {
		s.WireGuard = ObserveWireGuard(s.Etcd.Config, in.WireGuardSocketDir)
	}
	return s
}
