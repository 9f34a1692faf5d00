package doctor

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netconf"
	"github.com/weft-net/weft/internal/rtnl"
	"github.com/weft-net/weft/internal/subnetenv"
)

// Check names, as printed.
const (
	CheckEtcd       = "etcd"
	CheckConfig     = "config"
	CheckSubnetEnv  = "subnet-env"
	CheckLease      = "lease"
	CheckDevAddr    = "device-address"
	CheckDevMTU     = "device-mtu"
	CheckBridge     = "bridge"
	CheckIface      = "iface"
	CheckIPForward  = "ip-forward"
	CheckRoutes     = "routes"
	CheckNeighbours = "neighbours"
	CheckFDB        = "fdb"
)

// Bridges are the local bridges whose address must come from the lease:
// Docker's (--bip from /run/flannel/docker) and the CNI bridge plugin's.
var Bridges = []string{"docker0", "cni0"}

// Lease expiry thresholds. weftd renews -subnet-lease-renew-margin (default
// 60 min) before expiry, so a lease with less left than that was not renewed
// on time; with minutes left it is about to be lost.
const (
	leaseWarn = 60 * time.Minute
	leaseFail = 5 * time.Minute
)

// restartFix is the generic fix for kernel state weftd should have put in
// place: it reconciles everything at start and periodically, so a lasting
// difference means it is not running or cannot apply.
const restartFix = "run the doctor again (weftd may have been mid-update); if it persists: systemctl restart weftd and read journalctl -u weftd"

// Check runs every check on s, in a fixed order.
func Check(s State) Report {
	var vs []Verdict
	vs = append(vs, checkEtcd(s), checkConfig(s), checkSubnetEnv(s), checkLease(s),
		checkDevAddr(s), checkDevMTU(s))
	vs = append(vs, checkBridges(s)...)
	vs = append(vs, checkIface(s), checkIPForward(s))
	vs = append(vs, checkPeers(s)...)
	vs = append(vs, checkWireGuard(s)...)
	return NewReport(vs)
}

func pass(check, what string) Verdict { return Verdict{Check: check, Status: Pass, What: what} }
func warn(check, what, fix string) Verdict {
	return Verdict{Check: check, Status: Warn, What: what, Fix: fix}
}
func fail(check, what, fix string) Verdict {
	return Verdict{Check: check, Status: Fail, What: what, Fix: fix}
}

// etcdOK reports whether etcd's answers can be judged; configOK whether the
// network config is known too.
func (s State) etcdOK() bool   { return s.Etcd.Err == nil }
func (s State) configOK() bool { return s.etcdOK() && s.Etcd.ConfigErr == nil }

// own is this host's lease: the one subnet.env names, else the one whose
// PublicIP is an address of this host (how weftd itself finds it again).
func (s State) own() (lease.Lease, bool) {
	if s.EnvErr == nil && s.Env.Subnet.IsValid() {
		want := subnetenv.LeaseSubnet(s.Env)
		for _, l := range s.Etcd.Leases {
			if l.Subnet.Masked() == want {
				return l, true
			}
		}
	}
	for _, l := range s.Etcd.Leases {
		if s.localAddr(l.Attrs.PublicIP) {
			return l, true
		}
	}
	return lease.Lease{}, false
}

// ownSubnet is this host's lease subnet as best known: etcd's, else subnet.env's.
func (s State) ownSubnet() (netip.Prefix, bool) {
	if l, ok := s.own(); ok {
		return l.Subnet.Masked(), true
	}
	if s.EnvErr == nil && s.Env.Subnet.IsValid() {
		return subnetenv.LeaseSubnet(s.Env), true
	}
	return netip.Prefix{}, false
}

func (s State) localAddr(a netip.Addr) bool {
	if !a.IsValid() {
		return false
	}
	for _, l := range s.Kernel.Links {
		for _, p := range l.Addrs {
			if p.Addr() == a {
				return true
			}
		}
	}
	return false
}

func checkEtcd(s State) Verdict {
	if s.Etcd.Err != nil {
		return fail(CheckEtcd, fmt.Sprintf("unreachable: %v", s.Etcd.Err),
			"check FLANNEL_ETCD_ENDPOINTS in /etc/sysconfig/flanneld (or -etcd-endpoints), the etcd service, TLS flags and firewall")
	}
	return pass(CheckEtcd, fmt.Sprintf("etcd %s answers", s.Etcd.Endpoints))
}

func checkConfig(s State) Verdict {
	if !s.etcdOK() {
		return fail(CheckConfig, "not checked: etcd unreachable", "fix the etcd check first")
	}
	if s.Etcd.ConfigErr != nil {
		return fail(CheckConfig, s.Etcd.ConfigErr.Error(),
			fmt.Sprintf("write a valid config with: weftctl config set -etcd-prefix %s FILE", s.Etcd.Prefix))
	}
	c := s.Etcd.Config
	return pass(CheckConfig, fmt.Sprintf("Network %s, SubnetLen %d, backend %s, %d leases", c.Network, c.SubnetLen, c.BackendType, len(s.Etcd.Leases)))
}

// checkSubnetEnv: subnet.env exists and agrees with etcd (same Network, its
// subnet leased in etcd to this host).
func checkSubnetEnv(s State) Verdict {
	if s.EnvErr != nil {
		return fail(CheckSubnetEnv, s.EnvErr.Error(),
			"weftd writes it once it holds a lease: systemctl status weftd; check -subnet-file matches weftd's")
	}
	e := s.Env
	if !s.configOK() {
		return warn(CheckSubnetEnv, fmt.Sprintf("%s: FLANNEL_SUBNET=%s; not compared with etcd (unreachable or no config)", s.SubnetFile, e.Subnet),
			"fix the etcd and config checks first")
	}
	c := s.Etcd.Config
	sub := subnetenv.LeaseSubnet(e)
	refresh := "systemctl restart weftd (it rewrites subnet.env), then restart Docker so that --bip follows"
	if c.EnableIPv4 && e.Network != c.Network {
		return fail(CheckSubnetEnv, fmt.Sprintf("%s: FLANNEL_NETWORK=%s, but etcd's Network is %s", s.SubnetFile, e.Network, c.Network), refresh)
	}
	var l lease.Lease
	found := false
	for _, x := range s.Etcd.Leases {
		if x.Subnet.Masked() == sub {
			l, found = x, true
		}
	}
	if !found {
		return fail(CheckSubnetEnv, fmt.Sprintf("%s: FLANNEL_SUBNET=%s, but etcd has no lease %s (expired or deleted)", s.SubnetFile, e.Subnet, sub), refresh)
	}
	if !s.localAddr(l.Attrs.PublicIP) {
		return fail(CheckSubnetEnv, fmt.Sprintf("%s: FLANNEL_SUBNET=%s, but lease %s belongs to PublicIP %s, not an address of this host", s.SubnetFile, e.Subnet, sub, l.Attrs.PublicIP), refresh)
	}
	return pass(CheckSubnetEnv, fmt.Sprintf("%s: FLANNEL_SUBNET=%s matches this host's lease in etcd", s.SubnetFile, e.Subnet))
}

func checkLease(s State) Verdict {
	if !s.etcdOK() {
		return fail(CheckLease, "not checked: etcd unreachable", "fix the etcd check first")
	}
	if s.Etcd.LeasesErr != nil {
		return fail(CheckLease, fmt.Sprintf("list leases: %v", s.Etcd.LeasesErr), "fix the etcd check first")
	}
	l, ok := s.own()
	if !ok {
		return fail(CheckLease, "etcd holds no lease for this host (none named by subnet.env, none with a local PublicIP)",
			"systemctl restart weftd; check -iface / -public-ip")
	}
	if l.Reserved() {
		return pass(CheckLease, fmt.Sprintf("%s is a reservation for %s: never expires", l.Subnet, l.Attrs.PublicIP))
	}
	left := s.Etcd.Expiries.Of(l).Sub(s.Now).Round(time.Second)
	switch {
	case left <= leaseFail:
		return fail(CheckLease, fmt.Sprintf("%s expires in %s", l.Subnet, left),
			"weftd is not renewing it: systemctl restart weftd and read journalctl -u weftd")
	case left < leaseWarn:
		return warn(CheckLease, fmt.Sprintf("%s expires in %s: renewal overdue", l.Subnet, left),
			"check that weftd runs and reaches etcd (journalctl -u weftd)")
	}
	return pass(CheckLease, fmt.Sprintf("%s held by %s, expires in %s", l.Subnet, l.Attrs.PublicIP, left))
}

// device returns the overlay device, when the backend has one.
func (s State) device() (Link, bool) {
	if s.Kernel.Device == "" {
		return Link{}, false
	}
	return s.Kernel.LinkByName(s.Kernel.Device)
}

// checkDevAddr: the vxlan device has exactly <lease address>/32 — flannel
// before 0.7.0 put the lease address with the Network's /16 on it, and the
// connected /16 route that came with it broke traffic to other hosts.
func checkDevAddr(s State) Verdict {
	if v, done := s.deviceGate(CheckDevAddr); done {
		return v
	}
	dev, _ := s.device()
	sub, ok := s.ownSubnet()
	if !ok {
		return fail(CheckDevAddr, fmt.Sprintf("%s: lease unknown, address not checked", dev.Name), "fix the subnet-env and lease checks first")
	}
	want := netip.PrefixFrom(sub.Addr(), 32)
	var bad []string
	has := false
	for _, p := range dev.Addrs {
		if p == want {
			has = true
			continue
		}
		bad = append(bad, p.String())
	}
	if len(bad) > 0 {
		what := fmt.Sprintf("%s has %s; want only %s", dev.Name, strings.Join(bad, ", "), want)
		for _, p := range dev.Addrs {
			if p.Addr() == want.Addr() && p.Bits() != 32 {
				what += fmt.Sprintf(" (the pre-0.7.0 /%d bug: its connected route swallows other hosts' subnets)", p.Bits())
				break
			}
		}
		fix := fmt.Sprintf("ip addr del %s dev %s", bad[0], dev.Name)
		if !has {
			fix += fmt.Sprintf(" && ip addr add %s dev %s", want, dev.Name)
		}
		return fail(CheckDevAddr, what, fix+" (or systemctl restart weftd, which does the same)")
	}
	if !has {
		return fail(CheckDevAddr, fmt.Sprintf("%s has no address; want %s", dev.Name, want),
			fmt.Sprintf("ip addr add %s dev %s (or systemctl restart weftd)", want, dev.Name))
	}
	return pass(CheckDevAddr, fmt.Sprintf("%s has %s", dev.Name, want))
}

// deviceGate settles the device checks that cannot look at a device.
func (s State) deviceGate(check string) (Verdict, bool) {
	if s.Kernel.Err != nil {
		return fail(check, fmt.Sprintf("kernel state unreadable: %v", s.Kernel.Err), "run as root, in the host's network namespace"), true
	}
	if !s.configOK() {
		return warn(check, "not checked: backend unknown (etcd or config)", "fix the etcd and config checks first"), true
	}
	if s.Kernel.Device == "" {
		return pass(check, fmt.Sprintf("backend %s has no vxlan device", s.Etcd.Config.BackendType)), true
	}
	dev, ok := s.device()
	if !ok {
		return fail(check, fmt.Sprintf("device %s does not exist", s.Kernel.Device),
			"systemctl restart weftd (it creates the device); journalctl -u weftd says why it could not"), true
	}
	if dev.Type != "vxlan" {
		return fail(check, fmt.Sprintf("%s is a %s link, not vxlan", dev.Name, dev.Type),
			fmt.Sprintf("ip link del %s && systemctl restart weftd", dev.Name)), true
	}
	return Verdict{}, false
}

func checkDevMTU(s State) Verdict {
	if v, done := s.deviceGate(CheckDevMTU); done {
		return v
	}
	dev, _ := s.device()
	if s.EnvErr != nil {
		return warn(CheckDevMTU, fmt.Sprintf("%s mtu %d; FLANNEL_MTU unknown (no subnet.env)", dev.Name, dev.MTU), "fix the subnet-env check first")
	}
	if dev.MTU != s.Env.MTU {
		return fail(CheckDevMTU, fmt.Sprintf("%s mtu %d, but FLANNEL_MTU=%d", dev.Name, dev.MTU, s.Env.MTU),
			fmt.Sprintf("ip link set %s mtu %d, or systemctl restart weftd if the underlay MTU changed", dev.Name, s.Env.MTU))
	}
	if !dev.Up {
		return fail(CheckDevMTU, fmt.Sprintf("%s mtu %d but the device is down", dev.Name, dev.MTU), fmt.Sprintf("ip link set %s up", dev.Name))
	}
	return pass(CheckDevMTU, fmt.Sprintf("%s mtu %d = FLANNEL_MTU, up", dev.Name, dev.MTU))
}

// checkBridges: docker0 / cni0 take their address from the lease (Docker's
// --bip) and no larger MTU than the overlay carries. A docker0 on 192.168.x.x
// is the note's case of Docker started before flanneld.
func checkBridges(s State) []Verdict {
	if s.Kernel.Err != nil {
		return []Verdict{fail(CheckBridge, fmt.Sprintf("kernel state unreadable: %v", s.Kernel.Err), "run as root, in the host's network namespace")}
	}
	sub, subOK := s.ownSubnet()
	var vs []Verdict
	for _, name := range Bridges {
		l, ok := s.Kernel.LinkByName(name)
		if !ok {
			continue
		}
		check := CheckBridge + "-" + name
		restart := docker0Fix(s, sub)
		if name == "cni0" {
			restart = "ip link del cni0 and recreate the pods (the CNI plugin re-creates it from subnet.env)"
		}
		if !subOK {
			vs = append(vs, warn(check, fmt.Sprintf("%s: lease unknown, address not checked", name), "fix the subnet-env and lease checks first"))
			continue
		}
		var outside []string
		for _, p := range l.Addrs {
			if !sub.Contains(p.Addr()) || p.Bits() < sub.Bits() {
				outside = append(outside, p.String())
			}
		}
		switch {
		case len(outside) > 0:
			what := fmt.Sprintf("%s has %s, outside the lease %s", name, strings.Join(outside, ", "), sub)
			if name == "docker0" {
				what += docker0Cause()
			}
			vs = append(vs, fail(check, what, restart))
		case len(l.Addrs) == 0:
			vs = append(vs, warn(check, fmt.Sprintf("%s has no IPv4 address", name), restart))
		case s.EnvErr == nil && l.MTU > s.Env.MTU:
			vs = append(vs, fail(check, fmt.Sprintf("%s mtu %d > FLANNEL_MTU=%d: containers would send frames the overlay drops", name, l.MTU, s.Env.MTU), restart))
		default:
			vs = append(vs, pass(check, fmt.Sprintf("%s %s inside the lease %s, mtu %d", name, l.Addrs[0], sub, l.MTU)))
		}
	}
	if len(vs) == 0 {
		vs = append(vs, pass(CheckBridge, "no docker0 or cni0 bridge on this host"))
	}
	return vs
}

// isPrivate reports whether an address is one an IDC's internal network
// uses: RFC 1918, or shared (CGNAT) space.
func isPrivate(a netip.Addr) bool {
	return a.IsPrivate() || netip.MustParsePrefix("100.64.0.0/10").Contains(a)
}

func isPublic(a netip.Addr) bool {
	return a.Is4() && a.IsGlobalUnicast() && !isPrivate(a)
}

// checkIface: the note's -iface advice. With no -iface the daemon takes the
// default route's interface; on a machine whose default route is public
// (eth2) the overlay then runs over the public network although a private
// NIC (eth0) exists.
func checkIface(s State) Verdict {
	if s.Kernel.Err != nil {
		return fail(CheckIface, fmt.Sprintf("kernel state unreadable: %v", s.Kernel.Err), "run as root, in the host's network namespace")
	}
	var chosen Link
	var addr netip.Addr
	if dev, ok := s.device(); ok && dev.VtepDev != 0 {
		chosen, _ = s.Kernel.LinkByIndex(dev.VtepDev)
	}
	if l, ok := s.own(); ok {
		addr = l.Attrs.PublicIP
		if chosen.Index == 0 {
			for _, k := range s.Kernel.Links {
				if slices.ContainsFunc(k.Addrs, func(p netip.Prefix) bool { return p.Addr() == addr }) {
					chosen = k
				}
			}
		}
	}
	if chosen.Index == 0 {
		return warn(CheckIface, "the interface weftd uses is unknown (no device, no lease with a local PublicIP)", "fix the device and lease checks first")
	}
	if !addr.IsValid() && len(chosen.Addrs) > 0 {
		addr = chosen.Addrs[0].Addr()
	}
	if !isPublic(addr) {
		return pass(CheckIface, fmt.Sprintf("overlay traffic uses %s (%s, private)", chosen.Name, addr))
	}
	network := netip.Prefix{}
	if s.configOK() {
		network = s.Etcd.Config.Network
	}
	for _, l := range s.Kernel.Links {
		if l.Index == chosen.Index || !l.Up || l.Name == "lo" || l.Name == s.Kernel.Device ||
			l.Type == "vxlan" || l.Type == "bridge" || l.Type == "tun" || slices.Contains(Bridges, l.Name) {
			continue
		}
		for _, p := range l.Addrs {
			if isPrivate(p.Addr()) && !(network.IsValid() && network.Contains(p.Addr())) {
				return warn(CheckIface, fmt.Sprintf("overlay traffic uses %s (%s, public) although %s has private %s", chosen.Name, addr, l.Name, p.Addr()),
					fmt.Sprintf(`FLANNEL_OPTIONS="-iface=%s" in /etc/sysconfig/flanneld, then systemctl restart weftd`, l.Name))
			}
		}
	}
	return pass(CheckIface, fmt.Sprintf("overlay traffic uses %s (%s, public; no private interface found)", chosen.Name, addr))
}

func checkIPForward(s State) Verdict {
	switch {
	case s.Kernel.SysctlErr != nil:
		return fail(CheckIPForward, s.Kernel.SysctlErr.Error(), "run as root, in the host's network namespace")
	case s.Kernel.IPForward == "1":
		return pass(CheckIPForward, "net.ipv4.ip_forward = 1")
	}
	return fail(CheckIPForward, fmt.Sprintf("net.ipv4.ip_forward = %s: the host drops traffic between containers and the overlay", s.Kernel.IPForward),
		"sysctl -w net.ipv4.ip_forward=1, and persist it in /etc/sysctl.d/")
}

// peerWant is what one remote lease needs in the kernel.
type peerWant struct {
	subnet netip.Prefix
	gw     netip.Addr // route gateway
	link   int
	onlink bool
	mac    string // vxlan: neighbour gw → mac, FDB mac → dst; "" for none
	dst    netip.Addr
}

func (w peerWant) route() string {
	s := fmt.Sprintf("%s via %s", w.subnet, w.gw)
	if w.onlink {
		s += " onlink"
	}
	return s
}

// wants is what the leases in etcd call for in the kernel, rendered by the
// dataplane's own renderer (dataplane.Render: the same function weftd
// programs from), so the doctor and weftd cannot disagree on what a lease
// means; leases weftd would refuse are left out. dev is the overlay device
// (zero for host-gw), iface the underlay interface.
func (s State) wants(dev Link, iface int) ([]peerWant, map[uint32]rtnl.Nexthop) {
	own, _ := s.ownSubnet()
	host := dataplane.Host{IfaceIndex: iface}
	if l, ok := s.own(); ok {
		host.PublicIP = l.Attrs.PublicIP
	}
	var connected []netip.Prefix
	if l, ok := s.Kernel.LinkByIndex(iface); ok {
		host.IfaceName = l.Name
		for _, p := range l.Addrs {
			connected = append(connected, p.Masked())
			if !host.IfaceAddr.IsValid() && p.Addr().Is4() {
				host.IfaceAddr = p.Addr()
			}
		}
	}
	snap := lease.Snapshot{Own: lease.Lease{Subnet: own}}
	for i := range s.Etcd.Leases {
		if l := &s.Etcd.Leases[i]; l.Subnet.Masked() != own {
			snap.Peers = append(snap.Peers, l)
		}
	}
	slices.SortFunc(snap.Peers, lease.ComparePeers)
	cfg := s.Etcd.Config
	cfg.EnableIPv6 = false // the doctor checks the IPv4 overlay
	// Rendered as weftd renders on a kernel with nexthop objects, other
	// owners' ids left to them, for the set of nexthops weftd would keep;
	// a route is judged by its gateway and device, in either form.
	foreignNH := map[uint32]struct{}{}
	for _, n := range s.Kernel.Nexthops {
		if n.Protocol != uint8(rtnl.ProtWeft) {
			foreignNH[n.ID] = struct{}{}
		}
	}
	ds, err := dataplane.Render(cfg, host, snap, func(uint8) dataplane.Facts {
		f := dataplane.NewFacts(dev.Index, connected, nil)
		f.Nexthops, f.ForeignNH = true, foreignNH
		return f
	})
	if err != nil || len(ds) == 0 {
		return nil, nil
	}
	d := ds[0]
	var ws []peerWant
	for r := range d.Routes() {
		if r.Blackhole {
			continue
		}
		w := peerWant{subnet: r.Dst, gw: r.Gw, link: r.Link, onlink: r.OnLink}
		if mac, ok := d.Neigh(r.Gw); ok && r.OnLink {
			w.mac = mac.String()
			w.dst, _ = d.FDBDst(mac)
		}
		ws = append(ws, w)
	}
	slices.SortFunc(ws, func(a, b peerWant) int { return a.subnet.Addr().Compare(b.subnet.Addr()) })
	return ws, d.Nexthops
}

// onLink reports whether a is on a connected subnet of link.
func (s State) onLink(link int, a netip.Addr) bool {
	l, ok := s.Kernel.LinkByIndex(link)
	if !ok {
		return false
	}
	for _, p := range l.Addrs {
		if p.Masked().Contains(a) {
			return true
		}
	}
	return false
}

// checkPeers: every lease has its route (and, for vxlan, neighbour and FDB
// entry), and no entry is left for a lease that is gone.
func checkPeers(s State) []Verdict {
	names := []string{CheckRoutes, CheckNeighbours, CheckFDB}
	gate := func(st Status, what, fix string) []Verdict {
		var vs []Verdict
		for _, n := range names {
			vs = append(vs, Verdict{Check: n, Status: st, What: what, Fix: fix})
		}
		return vs
	}
	if s.Kernel.Err != nil {
		return gate(Fail, fmt.Sprintf("kernel state unreadable: %v", s.Kernel.Err), "run as root, in the host's network namespace")
	}
	if !s.configOK() || s.Etcd.LeasesErr != nil {
		return gate(Warn, "not checked: leases unknown (etcd or config)", "fix the etcd and config checks first")
	}
	bt := s.Etcd.Config.BackendType
	if bt != netconf.BackendVXLAN && bt != netconf.BackendHostGW {
		return gate(Pass, fmt.Sprintf("backend %s: not checked", bt), "")
	}
	var dev Link
	iface := 0
	if bt == netconf.BackendVXLAN {
		d, ok := s.device()
		if !ok {
			return gate(Fail, fmt.Sprintf("device %s does not exist", s.Kernel.Device), "systemctl restart weftd")
		}
		dev, iface = d, d.VtepDev
	} else if l, ok := s.own(); ok {
		for _, k := range s.Kernel.Links {
			if slices.ContainsFunc(k.Addrs, func(p netip.Prefix) bool { return p.Addr() == l.Attrs.PublicIP }) {
				iface = k.Index
			}
		}
	}
	ws, wantNH := s.wants(dev, iface)
	network := s.Etcd.Config.Network
	own, _ := s.ownSubnet()

	// Routes. A route counts as present when dst, gateway and device agree,
	// whoever installed it. Stale: weft's own (by protocol) or any route of
	// the overlay device or Network that no lease explains.
	var missing, stale []string
	wantDst := map[netip.Prefix]bool{}
	for _, w := range ws {
		wantDst[w.subnet] = true
		// Through a nexthop object, Gw and Link are the object's
		// (ObserveKernel), so both forms are judged alike.
		ok := slices.ContainsFunc(s.Kernel.Routes, func(r Route) bool {
			return r.Dst == w.subnet && r.Gw == w.gw && r.Link == w.link && (r.Type == 0 || r.Type == unix.RTN_UNICAST)
		})
		if !ok {
			missing = append(missing, w.route()+s.throughNexthop(w.subnet))
		}
	}
	for _, r := range s.Kernel.Routes {
		if wantDst[r.Dst] || r.Dst.Bits() == 0 || r.Protocol == unix.RTPROT_KERNEL {
			continue
		}
		if r.Dst == own && r.Type == unix.RTN_BLACKHOLE {
			continue // -ip-blackhole-route
		}
		ours := r.Protocol == rtProtWeft || (dev.Index != 0 && r.Link == dev.Index)
		inNet := network.IsValid() && network.Contains(r.Dst.Addr()) && r.Dst.Bits() >= network.Bits() && r.Dst != own
		if ours || inNet {
			stale = append(stale, r.String())
		}
	}
	vs := []Verdict{nexthopVerdict(peerVerdict(CheckRoutes, "routes", len(ws), missing, stale), s.staleNexthops(wantNH))}
	if bt != netconf.BackendVXLAN {
		vs = append(vs, pass(CheckNeighbours, "backend host-gw uses none"), pass(CheckFDB, "backend host-gw uses none"))
		return vs
	}

	// Neighbours: <peer subnet address> → VtepMAC.
	missing, stale = nil, nil
	n := 0
	wantN := map[netip.Addr]string{}
	wantF := map[string]netip.Addr{}
	for _, w := range ws {
		if w.mac != "" {
			n++
			wantN[w.gw] = w.mac
			wantF[w.mac] = w.dst
		}
	}
	for _, w := range ws {
		if w.mac != "" && !slices.Contains(s.Kernel.Neighs, Neigh{IP: w.gw, MAC: w.mac}) {
			missing = append(missing, fmt.Sprintf("%s lladdr %s", w.gw, w.mac))
		}
	}
	for _, nb := range s.Kernel.Neighs {
		if m, ok := wantN[nb.IP]; !ok || m != nb.MAC {
			stale = append(stale, fmt.Sprintf("%s lladdr %s", nb.IP, nb.MAC))
		}
	}
	vs = append(vs, peerVerdict(CheckNeighbours, "neighbours", n, missing, stale))

	// FDB: VtepMAC → dst PublicIP.
	missing, stale = nil, nil
	for _, w := range ws {
		if w.mac != "" && !slices.Contains(s.Kernel.FDB, FDB{MAC: w.mac, Dst: w.dst}) {
			missing = append(missing, fmt.Sprintf("%s dst %s", w.mac, w.dst))
		}
	}
	for _, f := range s.Kernel.FDB {
		if d, ok := wantF[f.MAC]; !ok || d != f.Dst {
			stale = append(stale, fmt.Sprintf("%s dst %s", f.MAC, f.Dst))
		}
	}
	vs = append(vs, peerVerdict(CheckFDB, "FDB entries", n, missing, stale))
	return vs
}

// throughNexthop says why a route to dst through a nexthop object is not
// the one wanted ("" when no such route): the nexthop is missing or goes
// elsewhere.
func (s State) throughNexthop(dst netip.Prefix) string {
	for _, r := range s.Kernel.Routes {
		if r.Dst != dst || r.NhID == 0 {
			continue
		}
		i := slices.IndexFunc(s.Kernel.Nexthops, func(n rtnl.Nexthop) bool { return n.ID == r.NhID })
		if i < 0 {
			return fmt.Sprintf(" (the route goes through nexthop id %d, which does not exist)", r.NhID)
		}
		return fmt.Sprintf(" (the route goes through nexthop %s)", s.nexthopString(s.Kernel.Nexthops[i]))
	}
	return ""
}

// staleNexthops are weft's nexthop objects (proto 87) weftd would not
// keep: no lease asks for their id, or they differ from what the lease
// asks for. A wanted one that no route uses is not stale: it is what a
// flanneld that took the route over left unused, and weftd reuses it.
func (s State) staleNexthops(want map[uint32]rtnl.Nexthop) []string {
	var stale []string
	for _, n := range s.Kernel.Nexthops {
		if n.Protocol != uint8(rtnl.ProtWeft) {
			continue
		}
		w, ok := want[n.ID]
		switch {
		case !ok:
			stale = append(stale, s.nexthopString(n)+" (no lease behind it)")
		case n.Other || n.Gw != w.Gw || n.Link != w.Link || n.OnLink != w.OnLink:
			w.Family = n.Family
			stale = append(stale, s.nexthopString(n)+", want "+s.nexthopString(w))
		}
	}
	return stale
}

// nexthopString is n in ip-nexthop terms with its device's name.
func (s State) nexthopString(n rtnl.Nexthop) string {
	str := fmt.Sprintf("id %d", n.ID)
	if n.Other {
		str += " (a group, blackhole or encap)"
	}
	if n.Gw.IsValid() {
		str += " via " + n.Gw.String()
	}
	if l, ok := s.Kernel.LinkByIndex(n.Link); ok {
		str += " dev " + l.Name
	} else if n.Link != 0 {
		str += fmt.Sprintf(" dev #%d", n.Link)
	}
	if n.OnLink {
		str += " onlink"
	}
	return str
}

// nexthopVerdict adds stale nexthop objects to the routes verdict v.
func nexthopVerdict(v Verdict, stale []string) Verdict {
	if len(stale) == 0 {
		return v
	}
	what := fmt.Sprintf("%d stale nexthop objects: %s", len(stale), list(stale))
	if v.Status == Pass {
		return fail(v.Check, v.What+"; "+what, restartFix)
	}
	v.What += "; " + what
	return v
}

func peerVerdict(check, what string, want int, missing, stale []string) Verdict {
	if len(missing) == 0 && len(stale) == 0 {
		return pass(check, fmt.Sprintf("%d %s, one per peer lease, none stale", want, what))
	}
	var parts []string
	if len(missing) > 0 {
		parts = append(parts, fmt.Sprintf("%d of %d %s missing: %s", len(missing), want, what, list(missing)))
	}
	if len(stale) > 0 {
		parts = append(parts, fmt.Sprintf("%d stale %s (no lease behind them): %s", len(stale), what, list(stale)))
	}
	return fail(check, strings.Join(parts, "; "), restartFix)
}

// list shortens a long list for a one-line verdict.
func list(xs []string) string {
	const show = 5
	if len(xs) <= show {
		return strings.Join(xs, ", ")
	}
	return strings.Join(xs[:show], ", ") + fmt.Sprintf(", … (%d more)", len(xs)-show)
}
