package dataplane

// The udp backend, as flannel defines it (its backend/udp): a TUN device
// flannel0 carrying
//
//	address  <lease network address>/32          (e.g. 10.5.19.0/32)
//	route    <Network> dev flannel0               (e.g. 10.5.0.0/16)
//	mtu      underlay MTU − 28 (outer IPv4 + UDP)
//
// and a userspace engine (internal/udpfwd) that sends every packet the
// kernel routes into flannel0 to the owning peer's PublicIP:Port as the
// payload of one UDP datagram, and writes what arrives on the port back into
// flannel0. The lease carries no BackendData: peers' ports are the network's
// Port, so a weft host and a flanneld host with the udp backend interoperate.
//
// Trust. The engine accepts a datagram only from a peer's PublicIP:Port
// carrying a packet from that peer's subnet to this host's subnet (see
// internal/udpfwd), so a stranger on the underlay cannot inject traffic "from"
// a container of another host and no host is an open relay. The socket is
// bound to the underlay interface's IPv4 address (Host.IfaceAddr), as
// flanneld's udp backend binds extIface.IfaceAddr, not to 0.0.0.0 and [::]:
// a datagram to any other address of the host finds no socket, and what we
// send leaves from that address. So with -public-ip set to another address,
// that address must reach us by NAT (peers send to PublicIP, the NAT
// rewrites it to IfaceAddr and our replies back to PublicIP, which is the
// sender peers accept); a PublicIP that is merely another local address
// receives nothing, as with flanneld. A peer lease that cannot be trusted with a
// place in that table (a duplicate subnet or address, a subnet covering ours)
// is skipped with a log line and counted; the other peers are programmed.
//
// The /32 gives host-to-container traffic a source address inside the overlay
// without a connected route (flannel before 0.7.0 put the /16 there). The
// Network route is more general than every host's docker0 /24, so the own
// subnet stays local and everything else in the overlay goes to flannel0.
//
// Restarts. The engine lives in the daemon's process, so while weftd is
// stopped nothing forwards: overlay traffic stops for the restart window,
// unlike vxlan and host-gw whose data path is the kernel's. What weft does
// keep is the kernel state: flannel0 is made persistent (TUNSETPERSIST), so
// closing the engine leaves the device, its address and the Network route in
// place — packets are dropped at flannel0 instead of leaking out of the
// default route to the underlay — and the next weftd re-attaches to the same
// device and resumes forwarding as soon as its first Apply installs the peer
// table. TCP connections survive a restart of a few seconds (their
// retransmissions get through afterwards). flanneld deletes flannel0 on
// exit, taking the route with it.
//
// In-kernel path (internal/udpbpf). When the kernel allows it (tcx, ≥ 6.6,
// root) the engine starts with tc BPF programs beside it on flannel0 and the
// underlay that encapsulate and decapsulate in the kernel, as vxlan does, in
// the same wire format: packets to and from the peers it serves never reach
// the engine. It serves only peers whose lease says they decapsulate in the
// kernel too (WeftUDPKernelDecap; being weft is not enough: WEFT_UDP_BPF=off,
// an older weft or a kernel that refused the programs receive in user
// space): toward a user-space receiver a TSO packet or a partial inner
// checksum would cross a veth underlay unfinished and be dropped (see
// udpbpf's notes). This host's lease says it only while its own path is
// attached: the daemon reads UDPKernelDecap after Init, before the lease is
// written, and UDPHooks.KernelDecap reports a later change (flannel0
// recreated and the programs refused, or accepted after a refusal). Everything else, flanneld
// peers, unknown destinations (net unreachable), datagrams the programs do
// not admit (counted by the engine), stays with the engine.
// WEFT_UDP_BPF=off keeps the engine alone; a kernel that refuses is logged
// once and the engine runs alone.

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netconf"
	"github.com/weft-net/weft/internal/rtnl"
	"github.com/weft-net/weft/internal/udpbpf"
	"github.com/weft-net/weft/internal/udpfwd"
)

// UDPBPFEnv turns the udp backend's in-kernel path off when "off".
const UDPBPFEnv = "WEFT_UDP_BPF"

// UDPDeviceName is flannel's TUN device name for the udp backend.
const UDPDeviceName = "flannel0"

// udpOverhead is what the udp backend adds to every packet: outer IPv4 (20)
// + UDP (8).
const udpOverhead = 28

// udpSpec is the udp backend's kernel state: flannel0's address and the
// Network route through it. Peers are no kernel objects: they are the
// engine's table (udpDev.setPeers).
func udpSpec(network netip.Prefix, host Host) spec {
	return spec{
		family: unix.AF_INET, label: netconf.BackendUDP, device: UDPDeviceName, addr: true, blackhole: host.BlackholeRoute,
		own:    func(snap lease.Snapshot) netip.Prefix { return snap.Own.Subnet.Masked() },
		static: func(_ netip.Prefix, f Facts) []Route { return []Route{{Dst: network, Link: f.Dev}} },
		peer:   func(*lease.Lease, netip.Prefix, Facts) (PeerEntries, bool, string) { return PeerEntries{}, true, "" },
	}
}

// udpDev is flannel0 and the engine attached to it.
type udpDev struct {
	tunDev
	port int

	// Only the loop goroutine (and Init before it) touches these.
	eng   *udpfwd.Engine
	carry *udpfwd.Table // the peers of an engine stopped for a restart, for the next one
	hooks UDPHooks      // set before Init
	bpf   *udpbpf.Path  // the in-kernel path beside the engine; nil when off or refused
	// bpfPeers are the last peers and own subnet handed to bpf, for a path
	// attached anew (a recreated flannel0).
	bpfPeers  []udpfwd.Peer
	bpfOwn    netip.Prefix
	bpfLogged bool // the kernel's refusal is logged once
	// bpfSaid is what the last UDPKernelDecap or KernelDecap call reported
	// (the lease's WeftUDPKernelDecap); bpfInited is set after Init.
	bpfSaid, bpfInited bool
	// bpfMu guards bpf's changes and its use (Close may come from another
	// goroutine than the loop's) and bpfGone (the counts of paths detached
	// since Init): the metrics read both.
	bpfMu   sync.Mutex
	bpfGone udpbpf.Stats
}

// UDPKernelStats returns a function that reads the udp backend's in-kernel
// path counters since Init (monotonic across re-attaches; what a detached
// path counted is kept), safe to call from any goroutine, also after
// Close; nil when b is no udp backend.
func UDPKernelStats(b Backend) func() udpbpf.Stats {
	u := udpOf(b)
	if u == nil {
		return nil
	}
	return func() udpbpf.Stats {
		u.bpfMu.Lock()
		defer u.bpfMu.Unlock()
		st, cur := u.bpfGone, u.bpf.Stats()
		st.Encapsulated += cur.Encapsulated
		st.Decapsulated += cur.Decapsulated
		return st
	}
}

// UDPHooks are the udp backend's counters; internal/metrics implements them.
type UDPHooks struct {
	// Dropped is called by the engine's receive goroutines with a count of
	// datagrams dropped per reason (udpfwd.DropReasons) in one batch.
	// (Peers left out of the table are reported like every backend's, by
	// Loop.Warnings and weft_dataplane_peers_skipped.)
	Dropped func(reason string, n uint64)
	// KernelDecap is called from the reconcile loop when the in-kernel path
	// was attached or detached after Init, with whether it is attached now,
	// so that the lease's WeftUDPKernelDecap follows. It must not block.
	KernelDecap func(on bool)
}

// UDPKernelDecap reports whether b is a udp backend whose in-kernel path is
// attached (its ingress decapsulates in the kernel), for the lease's
// WeftUDPKernelDecap. Call it after Init and before the reconcile loop
// starts; later changes are reported by UDPHooks.KernelDecap.
func UDPKernelDecap(b Backend) bool {
	u := udpOf(b)
	if u == nil {
		return false
	}
	u.bpfSaid, u.bpfInited = u.bpf != nil, true
	return u.bpfSaid
}

// SetUDPHooks sets the hooks of b when it is a udp backend, and reports
// whether it is. Call it before Init: the engine starts there.
func SetUDPHooks(b Backend, h UDPHooks) bool {
	if u := udpOf(b); u != nil {
		u.hooks = h
		return true
	}
	return false
}

// udpOf is b's udp device and engine, nil when b is not a udp backend.
func udpOf(b Backend) *udpDev {
	bb, ok := b.(*backend)
	if !ok || bb.cfg.BackendType != netconf.BackendUDP {
		return nil
	}
	if bb.udpDev == nil { // hooks are set before Init makes the device
		bb.udpDev = &udpDev{}
	}
	return bb.udpDev
}

// udpSpecs checks the udp backend's options and returns its desired state.
func udpSpecs(cfg netconf.Config, host Host) ([]spec, error) {
	if _, err := udpPort(cfg); err != nil {
		return nil, err
	}
	if !cfg.Network.IsValid() || !cfg.Network.Addr().Is4() {
		return nil, fmt.Errorf("dataplane: udp backend: Network %s: must be an IPv4 prefix (the route through %s)", cfg.Network, UDPDeviceName)
	}
	return []spec{udpSpec(cfg.Network.Masked(), host)}, nil
}

// udpPort is the port of the udp backend's options (udpfwd.DefaultPort when unset).
func udpPort(cfg netconf.Config) (int, error) {
	o, err := cfg.UDP()
	if err != nil {
		return 0, fmt.Errorf("dataplane: udp backend options: %w", err)
	}
	if o.Port == 0 {
		o.Port = udpfwd.DefaultPort
	}
	if o.Port < 1 || o.Port > 65535 {
		return 0, fmt.Errorf("dataplane: udp Backend.Port %d: must be in 1..65535", o.Port)
	}
	return o.Port, nil
}

// setupUDP attaches to (or creates) flannel0 with an engine that has no
// peers yet; the driver hands the engine its peers before each route write.
func setupUDP(b *backend, specs []spec) (Published, int, error) {
	port, err := udpPort(b.cfg)
	if err != nil {
		return Published{}, 0, err
	}
	u := b.udpDev
	if u == nil {
		u = &udpDev{}
		b.udpDev = u
	}
	u.port = port
	u.tunDev = tunDev{name: UDPDeviceName, h: b.h, log: b.log.With("device", UDPDeviceName, "port", port),
		running: func() bool { return u.eng != nil }, start: u.startEngine}
	if err := u.init(b.host); err != nil {
		return Published{}, 0, err
	}
	d := b.add(specs[0], u, b.log)
	d.before = u.setPeers
	return Published{BackendType: netconf.BackendUDP}, u.mtu, nil
}

// init checks the resolved underlay and attaches to (or creates) flannel0
// with an engine that has no peers yet.
func (b *udpDev) init(host Host) error {
	if !host.IfaceAddr.Is4() {
		return fmt.Errorf("dataplane: udp local address %s on %s: must be IPv4", host.IfaceAddr, host.IfaceName)
	}
	b.host, b.mtu = host, host.IfaceMTU-udpOverhead
	if b.mtu < 576 {
		return fmt.Errorf("dataplane: udp backend: underlay %s MTU %d leaves %d for flannel0: must be at least 576", host.IfaceName, host.IfaceMTU, b.mtu)
	}
	_, err := b.ensure(host)
	return err
}

// Close stops the engine; flannel0, its address and routes stay (see the
// package notes on restarts).
func (b *udpDev) Close() error {
	b.closed.Store(true)
	b.closeBPF()
	if b.eng != nil {
		err := b.eng.Close()
		b.eng = nil
		if err != nil {
			return fmt.Errorf("dataplane: stop udp engine: %w", err)
		}
	}
	return nil
}

// setPeers swaps the engine's peer table for one built from snap, before
// the driver writes the route that sends the engine traffic. It returns the
// peers left out: a lease this backend cannot serve, or one that cannot be
// trusted with a place in the table (udpfwd.NewTable).
func (b *udpDev) setPeers(snap lease.Snapshot, d *Desired) []skippedPeer {
	var skipped []skippedPeer
	var kernel []udpfwd.Peer
	peers := make([]udpfwd.Peer, 0, len(snap.Peers))
	for _, p := range snap.Peers {
		sub := p.Subnet.Masked()
		if err := checkPeer(p, d.Own, b.host); err != nil {
			skipped = append(skipped, skippedPeer{peer: p.Subnet, reason: SkipInvalid, msg: err.Error()})
			continue
		}
		if !strings.EqualFold(p.Attrs.BackendType, netconf.BackendUDP) {
			skipped = append(skipped, skippedPeer{peer: sub, reason: SkipInvalid, msg: fmt.Sprintf("backend type %q, want udp", p.Attrs.BackendType)})
			continue
		}
		peers = append(peers, udpfwd.Peer{Subnet: sub, Addr: netip.AddrPortFrom(p.Attrs.PublicIP, uint16(b.port))})
		if p.Attrs.UDPKernelDecap { // it decapsulates in the kernel too
			kernel = append(kernel, peers[len(peers)-1])
		}
	}
	b.bpfPeers, b.bpfOwn = kernel, d.Own
	b.setBPFPeers()
	tbl, bad := udpfwd.NewTable(d.Own, peers)
	for _, sk := range bad {
		skipped = append(skipped, skippedPeer{peer: sk.Subnet, reason: SkipInvalid, msg: sk.Reason})
	}
	if b.eng != nil {
		b.eng.SetPeers(tbl)
	}
	return skipped
}

// inNS runs fn on a thread in the host's namespace: a TUN device and a socket
// belong to the namespace of the thread that creates them, and the netlink
// handle alone cannot choose it.
func inNS(ns *netns.NsHandle, fn func() error) error {
	if ns == nil {
		return fn()
	}
	return rtnl.Do(*ns, fn)
}

// Stats returns the engine's packet counters (zero when it is not running).
func (b *udpDev) Stats() udpfwd.Stats {
	if b.eng == nil {
		return udpfwd.Stats{}
	}
	return b.eng.Stats()
}

// startEngine stops the running engine, if any, keeping its peer table,
// and starts one on dev (flannel0, opened in the host's namespace, where
// this runs) listening on the port, with that table.
func (b *udpDev) startEngine(dev tun.Device) error {
	if b.eng != nil {
		b.carry = b.eng.Peers()
		b.eng.Close()
		b.eng = nil
	}
	bind, err := udpfwd.NewBind(b.host.IfaceAddr)
	if err != nil {
		dev.Close()
		return fmt.Errorf("dataplane: %w", err)
	}
	eng, err := udpfwd.New(udpfwd.Config{TUN: dev, Bind: bind, Port: uint16(b.port), MTU: b.mtu, Log: b.log,
		OnDrop: b.hooks.Dropped})
	if err != nil {
		dev.Close()
		return fmt.Errorf("dataplane: %w", err)
	}
	if err := eng.Start(); err != nil {
		dev.Close()
		return fmt.Errorf("dataplane: %w", err)
	}
	if b.carry != nil {
		eng.SetPeers(b.carry)
		b.carry = nil
	}
	b.eng = eng
	b.attachBPF(dev)
	b.sayBPF()
	return nil
}

// sayBPF reports a change of the in-kernel path's attachment after Init to
// the KernelDecap hook, for the lease.
func (b *udpDev) sayBPF() {
	b.bpfMu.Lock()
	on := b.bpf != nil
	b.bpfMu.Unlock()
	if b.bpfInited && on != b.bpfSaid {
		b.bpfSaid = on
		b.log.Warn("udp: in-kernel path changed after start; the lease follows", "attached", on)
		if b.hooks.KernelDecap != nil {
			b.hooks.KernelDecap(on)
		}
	}
}

// attachBPF puts the in-kernel path on dev (flannel0, just opened) and the
// underlay, replacing any earlier one, and hands it the last peers. It runs
// in the host's namespace (tcx resolves ifindexes there). Failure is not an
// error: the engine forwards everything, as without it.
func (b *udpDev) attachBPF(dev tun.Device) {
	b.closeBPF()
	if os.Getenv(UDPBPFEnv) == "off" {
		return
	}
	path, err := func() (*udpbpf.Path, error) {
		name, err := dev.Name()
		if err != nil {
			return nil, err
		}
		tunIf, err := net.InterfaceByName(name)
		if err != nil {
			return nil, err
		}
		under := b.host.IfaceIndex
		if under == 0 {
			ifc, err := net.InterfaceByName(b.host.IfaceName)
			if err != nil {
				return nil, err
			}
			under = ifc.Index
		}
		return udpbpf.Attach(udpbpf.Config{TUNIndex: tunIf.Index, UnderlayIndex: under, Local: b.host.IfaceAddr, Port: uint16(b.port)})
	}()
	if err != nil {
		if !b.bpfLogged {
			b.bpfLogged = true
			why := "error"
			if errors.Is(err, udpbpf.ErrUnsupported) {
				why = "kernel refuses"
			}
			b.log.Info("udp: in-kernel path not attached; the engine forwards everything", "why", why, "err", err)
		}
		return
	}
	b.bpfMu.Lock()
	b.bpf = path
	b.bpfMu.Unlock()
	b.log.Info("udp: in-kernel path attached (tc BPF on flannel0 and the underlay)", "underlay", b.host.IfaceName)
	b.setBPFPeers()
}

// setBPFPeers hands the in-kernel path the peers it serves.
func (b *udpDev) setBPFPeers() {
	// Under bpfMu: Close may come from another goroutine than the loop's
	// (a test closing a backend whose loop still runs).
	b.bpfMu.Lock()
	if b.bpf == nil || !b.bpfOwn.IsValid() {
		b.bpfMu.Unlock()
		return
	}
	_, err := b.bpf.Set(b.bpfPeers, b.bpfOwn)
	b.bpfMu.Unlock()
	if err != nil {
		// What is not in the maps goes through the engine.
		b.log.Warn("udp: in-kernel path: peers not all programmed; the engine forwards for the rest", "err", err)
	}
}

// closeBPF detaches the in-kernel path: the engine takes every packet.
func (b *udpDev) closeBPF() {
	b.bpfMu.Lock()
	defer b.bpfMu.Unlock()
	if b.bpf != nil {
		st := b.bpf.Stats()
		b.bpfGone.Encapsulated += st.Encapsulated
		b.bpfGone.Decapsulated += st.Decapsulated
		if err := b.bpf.Close(); err != nil {
			b.log.Warn("udp: detach the in-kernel path", "err", err)
		}
		b.bpf = nil
	}
}
