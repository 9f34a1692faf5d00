package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime/debug"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/extiface"
	"github.com/weft-net/weft/internal/latest"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netconf"
	"github.com/weft-net/weft/internal/rules"
	"github.com/weft-net/weft/internal/subnetenv"
)

// engine is what weftd runs once it holds a lease: the network config and
// underlay interface in force, the dataplane built from them, the lease
// manager and the rules. Only run's relay goroutine calls its methods, so
// a config change and an underlay change never rebuild the dataplane at the
// same time and nothing here needs a lock.
type engine struct {
	o   *Options
	log *slog.Logger
	h   *health
	nl  *netlink.Handle

	cfg     netconf.Config    // the config in force (changes applied live)
	ext     extiface.ExtIface // the underlay interface in force
	extOpts extiface.Options
	pub6    netip.Addr // PublicIPv6 given to the backend and the lease
	mgr     *lease.Manager
	rm      *rules.Manager
	env     subnetenv.Env
	own     lease.Lease // as of the last relayed snapshot

	// The dataplane: the backend in force, its loop and the loop's
	// goroutine. backend is nil while a rebuild failed (retried by the
	// underlay check).
	backend  dataplane.Backend
	loop     *dataplane.Loop
	stopLoop context.CancelFunc
	loopDone chan struct{}
	toLoop   chan lease.Snapshot
	last     lease.Snapshot // the newest snapshot, handed to a rebuilt loop
	errc     chan<- error
	// decap carries the udp backend's in-kernel path state changed after
	// start (dataplane.UDPHooks.KernelDecap, newest wins) to the main loop,
	// which writes it into the lease.
	decap       chan bool
	kernelDecap bool // the udp backend's in-kernel path attached at its Init

	// Underlay and config state for log-once and /readyz.
	ifaceErr string // the last reason the interface could not be used
	overlap  string // the last overlap warning
	cfgRaw   string // the last config value judged
}

// hostFor is the backend's view of the underlay interface ext. A rebuilt
// backend (the NIC was recreated, deleting flannel.<VNI> with it) recreates
// its device with the VtepMAC the lease already publishes, so peers' FDB
// entries stay right while the lease is rewritten.
func (n *engine) hostFor(ext extiface.ExtIface) dataplane.Host {
	h := dataplane.Host{
		IfaceName: ext.Name, IfaceIndex: ext.Index, IfaceMTU: ext.MTU,
		IfaceAddr: ext.IfaceAddr, PublicIP: ext.PublicIP,
		IfaceAddr6: ext.IfaceAddr6, PublicIP6: n.pub6,
		BlackholeRoute: n.o.IPBlackholeRoute,
	}
	if mac, ok, err := lease.VtepMAC(n.last.Own.Attrs.BackendData); ok && err == nil {
		h.VtepMAC = mac
	}
	if mac, ok, err := lease.VtepMAC(n.last.Own.Attrs.BackendV6Data); ok && err == nil {
		h.VtepMAC6 = mac
	}
	return h
}

// buildBackend creates and initialises the backend of cfg on ext; the
// caller makes it n.backend. A backend whose Init failed is closed.
func (n *engine) buildBackend(ctx context.Context, cfg netconf.Config, ext extiface.ExtIface) (dataplane.Backend, dataplane.Published, int, error) {
	b, err := dataplane.NewBackend(cfg, n.hostFor(ext), n.nl, n.log)
	if err != nil {
		return nil, dataplane.Published{}, 0, fmt.Errorf("set up backend %q: %w", cfg.BackendType, err)
	}
	dataplane.SetUDPHooks(b, dataplane.UDPHooks{Dropped: n.h.metrics.OnUDPDrop, // before Init: the engine starts there
		KernelDecap: func(on bool) { latest.Send(n.decap, on) }})
	pub, mtu, err := b.Init(ctx)
	if err != nil {
		b.Close()
		return nil, dataplane.Published{}, 0, fmt.Errorf("initialise backend %q on %s: %w", cfg.BackendType, ext.Name, err)
	}
	// Read before the loop starts (and, at start, before the lease is
	// written): the lease says the kernel decapsulates only once it does.
	n.kernelDecap = dataplane.UDPKernelDecap(b)
	n.h.setUDPKernel(dataplane.UDPKernelStats(b))
	return b, pub, mtu, nil
}

// startLoop runs a reconcile loop over n.backend until stopDataplane, and
// hands it the newest snapshot (a rebuilt backend starts with no state).
func (n *engine) startLoop(ctx context.Context) {
	loop := dataplane.NewLoop(n.backend, 0, n.log)
	loop.OnApply(releaseAfterFirstApply(n.h.metrics.OnApply, releaseDelay, debug.FreeOSMemory))
	loop.OnSkipped(n.h.metrics.OnPeersSkipped)
	// The guard's peer sets follow each applied snapshot, in the rules
	// goroutine (OfferPeers never blocks): after the dataplane, not with it.
	rm := n.rm
	loop.AfterApply(func(s lease.Snapshot) { rm.OfferPeers(s.Peers) })
	n.h.attach(n.mgr, loop)
	lctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	n.loop, n.stopLoop, n.loopDone = loop, cancel, done
	go func() {
		defer close(done)
		if err := loop.Run(lctx, n.toLoop); err != nil && lctx.Err() == nil {
			n.errc <- err
		}
	}()
	if n.last.Own.Subnet.IsValid() {
		latest.Send(n.toLoop, n.last)
	}
}

// stopDataplane stops the loop (bounded: a stuck apply must not stall a
// stop) and closes the backend, leaving the kernel state in place.
func (n *engine) stopDataplane() {
	if n.stopLoop != nil {
		n.stopLoop()
		select {
		case <-n.loopDone:
		case <-time.After(500 * time.Millisecond):
			n.log.Warn("stopping the dataplane: the reconcile loop did not return within 500ms")
		}
		n.stopLoop = nil
	}
	if n.backend != nil {
		n.backend.Close()
		n.backend = nil
	}
}

// rebuild replaces the dataplane with one for cfg on ext and publishes what
// changed in the lease (a new PublicIP, a new VtepMAC). On failure no
// dataplane runs; the caller reports it and retries.
func (n *engine) rebuild(ctx context.Context, cfg netconf.Config, ext extiface.ExtIface) (mtu int, err error) {
	n.stopDataplane()
	b, pub, mtu, err := n.buildBackend(ctx, cfg, ext)
	if err != nil {
		return 0, err
	}
	n.backend = b
	n.startLoop(ctx)
	select { // a change of the backend just stopped: the new one's state wins
	case <-n.decap:
	default:
	}
	decap := n.kernelDecap
	upd := lease.Update{PublicIP: ext.PublicIP, BackendData: pub.BackendData, BackendV6Data: pub.BackendV6Data, UDPKernelDecap: &decap}
	if err := n.mgr.Update(ctx, upd); err != nil {
		return mtu, fmt.Errorf("publish the rebuilt dataplane's values in the lease: %w", err)
	}
	return mtu, nil
}

// setKernelDecap writes the udp backend's in-kernel path state, changed
// after start, into the lease's WeftUDPKernelDecap: peers serve this host
// in the kernel only while it decapsulates there.
func (n *engine) setKernelDecap(ctx context.Context, on bool) {
	n.kernelDecap = on
	if n.mgr == nil {
		return
	}
	if err := n.mgr.Update(ctx, lease.Update{UDPKernelDecap: &on}); err != nil {
		n.log.Error("write the udp in-kernel path state into the lease", "WeftUDPKernelDecap", on, "err", err)
	}
}

// desiredRules are the traffic rules for the config in force and own.
func (n *engine) desiredRules(own lease.Lease) (rules.Desired, error) {
	ports, err := rules.EncapPorts(n.cfg)
	if err != nil {
		return rules.Desired{}, fmt.Errorf("underlay guard of backend %q: %w", n.cfg.BackendType, err)
	}
	d := rules.Desired{
		Network: n.cfg.Network, Subnet: own.Subnet,
		IPMasq: n.o.IPMasq, RandomFully: !n.o.IPMasqFullyRandomDisable,
		ForwardRules: n.o.IPTablesForwardRules, NFTables: n.cfg.EnableNFTables,
		EncapPorts: ports,
	}
	if n.cfg.EnableIPv6 {
		d.IPv6Network, d.IPv6Subnet = n.cfg.IPv6Network, own.IPv6Subnet
	}
	return d, nil
}

func (n *engine) setRules(own lease.Lease) {
	d, err := n.desiredRules(own)
	if err == nil {
		err = n.rm.Set(d)
	}
	if err != nil {
		// The periodic check retries; traffic within the overlay does not
		// depend on these rules, so keep going.
		n.log.Error("install traffic rules", "err", err)
	}
}

// writeEnv rewrites subnet.env after the Network, the MTU or the subnet
// changed, as flanneld would write it at its next start.
func (n *engine) writeEnv(why string) {
	if err := subnetenv.Write(n.o.SubnetFile, n.env); err != nil {
		n.log.Error("rewrite subnet file", "file", n.o.SubnetFile, "why", why, "err", err)
		return
	}
	n.log.Info("subnet file rewritten", "file", n.o.SubnetFile, "why", why, "network", n.env.Network, "mtu", n.env.MTU)
}

// relay passes a snapshot on to the loop; when our own subnet changed (the
// lease was deleted and another subnet had to be taken) the subnet file and
// the rules follow before the dataplane does.
func (n *engine) relay(snap lease.Snapshot) {
	if snap.Own.Subnet.IsValid() && (snap.Own.Subnet != n.own.Subnet || snap.Own.IPv6Subnet != n.own.IPv6Subnet) {
		n.log.Warn("own subnet changed", "from", n.own.Subnet, "to", snap.Own.Subnet, "from6", n.own.IPv6Subnet, "to6", snap.Own.IPv6Subnet)
		n.env.Subnet = subnetenv.HostSubnet(snap.Own.Subnet)
		if n.cfg.EnableIPv6 {
			n.env.IPv6Subnet = subnetenv.HostSubnet(snap.Own.IPv6Subnet)
		}
		n.writeEnv("own subnet changed")
		n.setRules(snap.Own)
	}
	if snap.Own.Subnet.IsValid() {
		n.own = snap.Own
	}
	n.last = snap
	latest.Send(n.toLoop, snap)
}
