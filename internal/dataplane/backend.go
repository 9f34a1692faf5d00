package dataplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netconf"
	"github.com/weft-net/weft/internal/rtnl"
)

// Published is what a backend asks to be written into this host's lease.
type Published struct {
	BackendType string
	BackendData json.RawMessage // nil when the backend publishes nothing (host-gw, udp, alloc)
	// BackendV6Data is the lease's BackendV6Data: what the IPv6 side of a
	// dual-stack backend publishes ({"VNI":1,"VtepMAC":…} of flannel-v6.<VNI>
	// for vxlan); nil when the network is IPv4 only or the backend publishes
	// nothing.
	BackendV6Data json.RawMessage
}

// Backend programs one kind of data path.
type Backend interface {
	// Init prepares the host before the lease is acquired (for vxlan: the
	// device, whose MAC goes into the lease) and returns what to publish and
	// the MTU containers must use.
	Init(ctx context.Context) (Published, int, error)
	// Apply makes the kernel match the desired state for snap: adds what is
	// missing, replaces what differs, removes what is stale among the objects
	// the backend owns. It is called only from the reconcile loop.
	Apply(ctx context.Context, snap lease.Snapshot) error
	// Events signals kernel changes that may need a reconcile (a deleted
	// device, a route removed by hand). It may return nil.
	Events() <-chan struct{}
	// Close releases sockets and goroutines. It leaves the kernel state in
	// place so that a restart does not interrupt traffic.
	Close() error
}

// NewBackend builds the backend named by cfg.BackendType. Backends are wired
// here explicitly rather than registered from init() by blank imports, so the
// set of data paths a binary carries is visible in one place.
//
// The backend programs the kernel through h and through one rtnetlink socket
// of its own (dumps and batched writes), opened here in host.NetNS, which
// must be the namespace h works in. Close closes that socket; h stays the
// caller's (Close does not close it).
func NewBackend(cfg netconf.Config, host Host, h *netlink.Handle, log *slog.Logger) (Backend, error) {
	if h == nil {
		return nil, fmt.Errorf("dataplane: new %q backend: nil netlink handle", cfg.BackendType)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg.BackendType = strings.ToLower(cfg.BackendType) // as netconf.Parse leaves it
	if cfg.BackendType == "" {
		cfg.BackendType = netconf.BackendVXLAN
	}
	if cfg.EnableIPv6 && !cfg.EnableIPv4 {
		return nil, fmt.Errorf("dataplane: IPv6-only networks (EnableIPv4 false) are not supported; enable IPv4 for a dual-stack network")
	}
	k, ok := kinds[cfg.BackendType]
	if !ok {
		if cfg.BackendType == netconf.BackendIPIP {
			return nil, fmt.Errorf("dataplane: backend type %q is flannel's but not implemented by weft (supported: %s)", cfg.BackendType, supported())
		}
		return nil, fmt.Errorf("dataplane: unknown backend type %q (supported: %s)", cfg.BackendType, supported())
	}
	if cfg.EnableIPv6 && !k.dual {
		return nil, fmt.Errorf("dataplane: backend type %q has no IPv6 data path (EnableIPv6 is supported with %s)", cfg.BackendType, supported(func(k kind) bool { return k.dual }))
	}
	// The specs are pure: building them once here checks the backend's
	// options before anything is opened.
	if _, err := k.specs(cfg, host); err != nil {
		return nil, err
	}
	b := &backend{cfg: cfg, kind: k, host: host, h: h, log: log.With("backend", cfg.BackendType)}
	if k.setup != nil { // alloc programs nothing: no socket
		rt, err := rtnl.Open(host.NetNS)
		if err != nil {
			return nil, fmt.Errorf("dataplane: new %q backend: %w", cfg.BackendType, err)
		}
		b.rt = rt
	}
	return b, nil
}

// kind is one backend type: its desired state per address family (a pure
// function of the config and the host) and its setup (the devices, the
// lease data, the MTU).
type kind struct {
	// specs is the backend's desired state per family, IPv4 first.
	specs func(cfg netconf.Config, host Host) ([]spec, error)
	// setup makes the backend's devices on the resolved host, adds one
	// driver per spec (backend.add) and says what to publish and the MTU
	// containers must use; nil for a backend that programs nothing.
	setup func(b *backend, specs []spec) (Published, int, error)
	dual  bool // it has an IPv6 data path (EnableIPv6)
}

// kinds are the backends weft carries, wired here explicitly rather than
// registered from init() by blank imports, so the set of data paths a
// binary carries is visible in one place: adding a backend is one line.
var kinds = map[string]kind{
	netconf.BackendVXLAN:     {specs: vxlanSpecs, setup: setupVXLAN, dual: true},
	netconf.BackendHostGW:    {specs: hostGWSpecs, setup: setupHostGW, dual: true},
	netconf.BackendUDP:       {specs: udpSpecs, setup: setupUDP},
	netconf.BackendWireGuard: {specs: wireguardSpecs, setup: setupWireGuard, dual: true},
	netconf.BackendAlloc:     {specs: func(netconf.Config, Host) ([]spec, error) { return nil, nil }},
}

// supported lists the backend types of kinds (those of which every only
// says yes to), for messages.
func supported(only ...func(kind) bool) string {
	names := make([]string, 0, len(kinds))
	for n, k := range kinds {
		if !slices.ContainsFunc(only, func(ok func(kind) bool) bool { return !ok(k) }) {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

// specsFor is cfg's backend's desired state per family on host.
func specsFor(cfg netconf.Config, host Host) ([]spec, error) {
	k, ok := kinds[strings.ToLower(cfg.BackendType)]
	if !ok {
		return nil, fmt.Errorf("dataplane: unknown backend type %q (supported: %s)", cfg.BackendType, supported())
	}
	return k.specs(cfg, host)
}

// families are the address families of cfg's network, IPv4 first.
func families(cfg netconf.Config) []uint8 {
	if cfg.EnableIPv6 {
		return []uint8{unix.AF_INET, unix.AF_INET6}
	}
	return []uint8{unix.AF_INET}
}

// backend is every backend: a setup (what differs per type: resolving the
// host, making the devices, choosing the specs), then one driver per
// address family, applied one after the other by the loop, and one watcher
// for all of them.
type backend struct {
	cfg  netconf.Config
	kind kind
	host Host
	h    *netlink.Handle
	rt   *rtnl.Conn // dumps and batched writes of every driver; closed by Close
	log  *slog.Logger

	drivers []*driver
	w       *watcher
	udpDev  *udpDev // the udp backend's device and engine (SetUDPHooks reaches it before Init)
	// noNexthops makes setup act as on a kernel without nexthop objects
	// (a test's knob: this machine's kernel has them).
	noNexthops bool
}

// Init resolves the underlay interface (and its IPv6 address in a
// dual-stack network), runs the type's setup and starts the kernel watch.
// It does not touch routes or neighbours: that waits for the first
// snapshot, so a restart leaves the data path running meanwhile.
func (b *backend) Init(ctx context.Context) (Published, int, error) {
	host, _, err := resolveHost(b.h, b.host)
	if err != nil {
		return Published{}, 0, err
	}
	if b.cfg.EnableIPv6 {
		if host, err = resolveHost6(b.h, host); err != nil {
			return Published{}, 0, fmt.Errorf("%w (IPv6 side of the dual-stack backend)", err)
		}
	}
	b.host = host
	if b.kind.setup == nil {
		return Published{BackendType: b.cfg.BackendType}, host.IfaceMTU, nil
	}
	specs, err := b.kind.specs(b.cfg, host)
	if err != nil {
		return Published{}, 0, err
	}
	pub, mtu, err := b.kind.setup(b, specs)
	if err != nil {
		return Published{}, 0, err
	}
	if len(b.drivers) > 0 {
		b.w = newWatcher(host.NetNS, b.log)
		b.w.start(b.watchFilter())
	}
	return pub, mtu, nil
}

// add adds the driver of spec s over device dev (nil: none).
func (b *backend) add(s spec, dev device, log *slog.Logger) *driver {
	d := newDriver(s, dev, b.host, b.h, b.rt, log)
	b.drivers = append(b.drivers, d)
	return d
}

// watchFilter wakes the loop when any driver's filter says so.
func (b *backend) watchFilter() watchFilter {
	fs := make([]watchFilter, len(b.drivers))
	for i, d := range b.drivers {
		fs[i] = d.watchFilter()
	}
	w := watchFilter{
		link:  func(u netlink.LinkUpdate) bool { return anyOf(fs, func(f watchFilter) bool { return f.link(u) }) },
		route: func(u netlink.RouteUpdate) bool { return anyOf(fs, func(f watchFilter) bool { return f.route(u) }) },
		neigh: func(u netlink.NeighUpdate) bool { return anyOf(fs, func(f watchFilter) bool { return f.neigh(u) }) },
		addr:  func(u netlink.AddrUpdate) bool { return anyOf(fs, func(f watchFilter) bool { return f.addr(u) }) },
	}
	for _, f := range fs {
		if f.nexthop != nil {
			w.nexthop = func(u rtnl.NexthopUpdate) bool {
				return anyOf(fs, func(f watchFilter) bool { return f.nexthop != nil && f.nexthop(u) })
			}
			break
		}
	}
	return w
}

func anyOf(fs []watchFilter, ok func(watchFilter) bool) bool {
	for _, f := range fs {
		if ok(f) {
			return true
		}
	}
	return false
}

func (b *backend) Events() <-chan struct{} {
	if b.w == nil {
		return nil
	}
	return b.w.ch
}

// Apply applies every family fully; one failing does not stop the other.
func (b *backend) Apply(ctx context.Context, snap lease.Snapshot) error {
	return b.apply(ctx, snap, true)
}

// ApplyDelta programs only the difference between snap and the snapshot of
// the last successful apply, without reading the kernel; a family with no
// such apply (or whose device was recreated or own subnet changed) gets a
// full pass.
func (b *backend) ApplyDelta(ctx context.Context, snap lease.Snapshot) error {
	return b.apply(ctx, snap, false)
}

func (b *backend) apply(ctx context.Context, snap lease.Snapshot, full bool) error {
	if len(b.drivers) == 1 {
		return b.drivers[0].apply(ctx, snap, full)
	}
	var errs []error
	for _, d := range b.drivers {
		errs = append(errs, d.apply(ctx, snap, full))
	}
	return errors.Join(errs...)
}

// skipped lists the peers the last apply left out, IPv4 first.
func (b *backend) skipped() []skippedPeer {
	var out []skippedPeer
	for _, d := range b.drivers {
		out = append(out, d.notes.skipped()...)
	}
	return out
}

// Close stops the watcher, closes the socket and stops a userspace engine.
func (b *backend) Close() error {
	if b.w != nil {
		b.w.close()
	}
	if b.rt != nil {
		b.rt.Close()
	}
	var errs []error
	for _, d := range b.drivers {
		if c, ok := d.dev.(io.Closer); ok {
			errs = append(errs, c.Close())
		}
	}
	return errors.Join(errs...)
}

// Overhead is what the backend of cfg adds to every packet on the underlay,
// so the largest MTU a container may use is the underlay's minus it (0 for
// the backends that do not encapsulate). A dual-stack vxlan network counts
// the IPv6 device's larger outer header: a container has one MTU for both.
func Overhead(cfg netconf.Config) int {
	switch strings.ToLower(cfg.BackendType) {
	case netconf.BackendVXLAN, "":
		if cfg.EnableIPv6 {
			return vxlan6Overhead
		}
		return vxlanOverhead
	case netconf.BackendUDP:
		return udpOverhead
	case netconf.BackendWireGuard:
		return wgOverhead
	}
	return 0
}
