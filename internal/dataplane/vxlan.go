package dataplane

// The vxlan backend, as flannel defines it (COMPAT.md "VXLAN data path"):
// one kernel vxlan device flannel.<VNI> with learning off, and for each peer
// three static entries that together replace what learning would have done:
//
//	route  <peer subnet> via <peer subnet address> dev flannel.N onlink
//	neigh  <peer subnet address> lladdr <peer VtepMAC> dev flannel.N permanent
//	fdb    <peer VtepMAC> dst <peer PublicIP> dev flannel.N self permanent
//
// The route sends a peer subnet's traffic to a "gateway" address that only
// exists as a neighbour entry; that entry gives the inner Ethernet header the
// peer's VTEP MAC; the FDB entry maps that MAC to the peer's underlay address
// for the outer UDP header. No ARP or flooding ever crosses the underlay.
//
// The device's MAC is published in the lease, so it must survive restarts: an
// existing compatible device is reused as is, and a device that must be
// recreated (incompatible, or deleted by someone) gets its previous MAC back.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/lease"
)

// vxlanOverhead is what VXLAN over IPv4 adds to every frame: outer IPv4 (20)
// + UDP (8) + VXLAN (8) + inner Ethernet (14).
const vxlanOverhead = 50

const defaultVXLANPort = 8472 // the Linux kernel default, which flannel keeps

// VXLANLeaseData is the vxlan BackendData in a lease: {"VNI":1,"VtepMAC":"…"}.
type VXLANLeaseData struct {
	VNI     int
	VtepMAC string
}

type vxlanBackend struct {
	opts VXLANOptions
	host Host
	h    *netlink.Handle
	log  *slog.Logger
	name string // flannel.<VNI>

	w *watcher

	// Only the loop goroutine (and Init before it) touches these.
	mac      net.HardwareAddr // the VTEP MAC to keep across recreation
	link     *netlink.Vxlan
	devIndex atomic.Int32 // read by the watcher's filters
	notes    peerNotes
}

func newVXLAN(opts VXLANOptions, host Host, h *netlink.Handle, log *slog.Logger) *vxlanBackend {
	name := fmt.Sprintf("flannel.%d", opts.VNI)
	return &vxlanBackend{
		opts: opts, host: host, h: h, name: name,
		log: log.With("device", name),
		w:   newWatcher(host.NetNS, log),
	}
}

func (b *vxlanBackend) port() int {
	if b.opts.Port == 0 {
		return defaultVXLANPort
	}
	return b.opts.Port
}

func (b *vxlanBackend) mtu() int {
	if b.opts.MTU != 0 {
		return b.opts.MTU
	}
	return b.host.IfaceMTU - vxlanOverhead
}

// Init resolves the underlay interface, ensures the device and starts the
// kernel watch. It does not touch routes or neighbours: that waits for the
// first snapshot, so a restart leaves the data path running meanwhile.
func (b *vxlanBackend) Init(ctx context.Context) (Published, int, error) {
	host, _, err := resolveHost(b.h, b.host)
	if err != nil {
		return Published{}, 0, err
	}
	if !host.IfaceAddr.Is4() {
		return Published{}, 0, fmt.Errorf("dataplane: vxlan local address %s on %s: must be IPv4", host.IfaceAddr, host.IfaceName)
	}
	b.host = host
	if _, err := b.ensureDevice(); err != nil {
		return Published{}, 0, err
	}
	b.w.start(watchFilter{
		link: func(u netlink.LinkUpdate) bool {
			idx := int32(u.Attrs().Index)
			if u.Header.Type == unix.RTM_DELLINK {
				return idx == b.devIndex.Load() || int(idx) == b.host.IfaceIndex
			}
			// A device of our name that is not the one we know (recreated by
			// hand), or ours gone down.
			if u.Attrs().Name == b.name {
				return idx != b.devIndex.Load() || u.Attrs().Flags&net.FlagUp == 0
			}
			return false
		},
		route: func(u netlink.RouteUpdate) bool {
			return u.Type == unix.RTM_DELROUTE && u.Protocol == RTProtWeft
		},
		neigh: func(u netlink.NeighUpdate) bool {
			return u.Type == unix.RTM_DELNEIGH && int32(u.LinkIndex) == b.devIndex.Load()
		},
		addr: func(u netlink.AddrUpdate) bool {
			return !u.NewAddr && int32(u.LinkIndex) == b.devIndex.Load()
		},
	})
	data, err := json.Marshal(VXLANLeaseData{VNI: b.opts.VNI, VtepMAC: b.mac.String()})
	if err != nil {
		return Published{}, 0, fmt.Errorf("dataplane: encode vxlan lease data: %w", err)
	}
	return Published{BackendType: "vxlan", BackendData: data}, b.mtu(), nil
}

func (b *vxlanBackend) Events() <-chan struct{} { return b.w.ch }

func (b *vxlanBackend) Close() error {
	b.w.close()
	return nil
}

// wantDevice is the device weft would create.
func (b *vxlanBackend) wantDevice() *netlink.Vxlan {
	la := netlink.NewLinkAttrs()
	la.Name = b.name
	la.MTU = b.mtu()
	la.HardwareAddr = b.mac
	return &netlink.Vxlan{
		LinkAttrs:    la,
		VxlanId:      b.opts.VNI,
		VtepDevIndex: b.host.IfaceIndex,
		SrcAddr:      b.host.IfaceAddr.AsSlice(),
		Port:         b.port(),
		Learning:     b.opts.Learning,
		GBP:          b.opts.GBP,
	}
}

// incompatible lists why an existing link cannot serve as our device; empty
// means it can be reused (MTU and up/down are fixed in place).
func incompatible(have netlink.Link, want *netlink.Vxlan) []string {
	v, ok := have.(*netlink.Vxlan)
	if !ok {
		return []string{fmt.Sprintf("type %s, want vxlan", have.Type())}
	}
	var d []string
	if v.VxlanId != want.VxlanId {
		d = append(d, fmt.Sprintf("id %d, want %d", v.VxlanId, want.VxlanId))
	}
	if v.VtepDevIndex != want.VtepDevIndex {
		d = append(d, fmt.Sprintf("dev #%d, want #%d", v.VtepDevIndex, want.VtepDevIndex))
	}
	if !v.SrcAddr.Equal(want.SrcAddr) {
		d = append(d, fmt.Sprintf("local %v, want %v", v.SrcAddr, want.SrcAddr))
	}
	if v.Port != want.Port {
		d = append(d, fmt.Sprintf("dstport %d, want %d", v.Port, want.Port))
	}
	if v.Learning != want.Learning {
		d = append(d, fmt.Sprintf("learning %t, want %t", v.Learning, want.Learning))
	}
	if v.GBP != want.GBP {
		d = append(d, fmt.Sprintf("gbp %t, want %t", v.GBP, want.GBP))
	}
	if len(v.Group) > 0 && !v.Group.IsUnspecified() {
		d = append(d, fmt.Sprintf("group %v, want none", v.Group))
	}
	return d
}

// ensureDevice makes flannel.<VNI> exist, match, and be up, and records its
// index and MAC. It reports whether the device was (re)created, in which case
// the kernel dropped every route, neighbour and FDB entry on it.
func (b *vxlanBackend) ensureDevice() (created bool, err error) {
	want := b.wantDevice()
	have, err := b.h.LinkByName(b.name)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
		have = nil
		if b.link != nil {
			b.log.Warn("vxlan device disappeared; recreating it with the same MAC", "mac", b.mac.String())
		}
	case err != nil:
		return false, fmt.Errorf("dataplane: look up %s: %w", b.name, err)
	}
	if have != nil {
		if diff := incompatible(have, want); len(diff) > 0 {
			// Keep the MAC the lease already advertises.
			if b.mac == nil {
				b.mac = have.Attrs().HardwareAddr
				want.HardwareAddr = b.mac
			}
			b.log.Warn("existing vxlan device is incompatible; recreating it", "diff", strings.Join(diff, "; "))
			if err := b.h.LinkDel(have); err != nil && !isGone(err) {
				return false, fmt.Errorf("dataplane: delete incompatible %s: %w", b.name, err)
			}
			have = nil
		}
	}
	if have == nil {
		if err := b.h.LinkAdd(want); err != nil {
			return false, fmt.Errorf("dataplane: create vxlan device %s (id %d, local %s, dev %s, dstport %d): %w",
				b.name, want.VxlanId, b.host.IfaceAddr, b.host.IfaceName, want.Port, err)
		}
		created = true
		// Re-read: the kernel fills in the MAC and may have adjusted attributes.
		if have, err = b.h.LinkByName(b.name); err != nil {
			return true, fmt.Errorf("dataplane: re-read created %s: %w", b.name, err)
		}
		if diff := incompatible(have, want); len(diff) > 0 {
			return true, fmt.Errorf("dataplane: created %s does not match what was asked: %s", b.name, strings.Join(diff, "; "))
		}
	}
	attrs := have.Attrs()
	if attrs.MTU != want.MTU {
		if err := b.h.LinkSetMTU(have, want.MTU); err != nil {
			return created, fmt.Errorf("dataplane: set %s mtu %d: %w", b.name, want.MTU, err)
		}
	}
	if attrs.Flags&net.FlagUp == 0 {
		if err := b.h.LinkSetUp(have); err != nil {
			return created, fmt.Errorf("dataplane: set %s up: %w", b.name, err)
		}
	}
	b.link = have.(*netlink.Vxlan)
	b.mac = attrs.HardwareAddr
	b.devIndex.Store(int32(attrs.Index))
	if created {
		b.log.Info("vxlan device created", "index", attrs.Index, "mac", b.mac.String(), "mtu", want.MTU)
	}
	return created, nil
}

// Apply programs the device address and every peer; see the package notes.
func (b *vxlanBackend) Apply(ctx context.Context, snap lease.Snapshot) error {
	if _, err := b.ensureDevice(); err != nil {
		return err
	}
	dev := int(b.devIndex.Load())
	t := &tally{what: "vxlan apply"}

	own := snap.Own.Subnet.Masked()
	var addr netip.Prefix
	if own.IsValid() {
		addr = netip.PrefixFrom(own.Addr(), 32)
	}
	var errs []error
	// The address first: changing it can make the kernel drop routes, and
	// the route dump below must see the result.
	st, err := syncAddrs(b.h, b.link, addr, t)
	errs = append(errs, err)

	have, err := readMainRoutes(b.h, b.host.IfaceIndex)
	if err != nil {
		return fmt.Errorf("dataplane: %w", err)
	}
	connected := have.connected

	routes := make([]routeWant, 0, len(snap.Peers)+1)
	neighs := make(map[netip.Addr]net.HardwareAddr, len(snap.Peers))
	fdb := make(map[[6]byte]netip.Addr, len(snap.Peers))
	b.notes.begin()
	for _, p := range snap.Peers {
		sub := p.Subnet.Masked()
		if err := checkPeer(p, own, b.host); err != nil {
			b.notes.note(b.log, p.Subnet, err.Error())
			continue
		}
		if !strings.EqualFold(p.Attrs.BackendType, "vxlan") {
			b.notes.note(b.log, sub, fmt.Sprintf("backend type %q, want vxlan", p.Attrs.BackendType))
			continue
		}
		mac, err := decodeVtepMAC(p.Attrs.BackendData)
		if err != nil {
			b.notes.note(b.log, sub, err.Error())
			continue
		}
		if other, dup := fdb[[6]byte(mac)]; dup {
			b.notes.note(b.log, sub, fmt.Sprintf("VtepMAC %s is also published by the peer at %s", mac, other))
			continue
		}
		if b.opts.DirectRouting && coveredBy(connected, p.Attrs.PublicIP) {
			routes = append(routes, routeWant{Dst: sub, Gw: p.Attrs.PublicIP, Link: b.host.IfaceIndex})
			continue
		}
		gw := sub.Addr()
		routes = append(routes, routeWant{Dst: sub, Gw: gw, Link: dev, OnLink: true})
		neighs[gw] = mac
		fdb[[6]byte(mac)] = p.Attrs.PublicIP
	}
	b.notes.end()
	if b.host.BlackholeRoute && own.IsValid() {
		routes = append(routes, routeWant{Dst: own, Blackhole: true, Metric: blackholeMetric})
	}

	// Adds in dependency order (FDB, neighbour, then the route that uses
	// them: a route is usable the moment it appears), deletes in reverse,
	// so no packet is sent through a half-programmed peer.
	fs, fdel, err := syncFDB(ctx, b.h, dev, fdb, t)
	errs = append(errs, err)
	ns, ndel, err := syncNeighs(ctx, b.h, dev, neighs, t)
	errs = append(errs, err)
	rs, rdel, err := syncRoutes(ctx, b.h, have.weft, routes, t)
	errs = append(errs, err)
	for _, del := range []func() error{rdel, ndel, fdel} {
		if del != nil {
			errs = append(errs, del())
		}
	}
	st.plus(*fs)
	st.plus(*ns)
	st.plus(*rs)
	if st != (syncStats{}) {
		b.log.Debug("vxlan dataplane changed", "peers", len(snap.Peers), "added", st.Added, "replaced", st.Replaced, "deleted", st.Deleted)
	}
	errs = append(errs, t.err())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("dataplane: %w", err)
	}
	return nil
}

// checkPeer rejects leases that cannot be programmed whatever the backend.
func checkPeer(p lease.Lease, own netip.Prefix, host Host) error {
	switch {
	case !p.Subnet.IsValid() || !p.Subnet.Addr().Is4():
		return fmt.Errorf("subnet %s: not an IPv4 subnet", p.Subnet)
	case p.Subnet.Masked() == own:
		return fmt.Errorf("subnet %s: is this host's own subnet", p.Subnet)
	case !p.Attrs.PublicIP.Is4() || p.Attrs.PublicIP.IsUnspecified():
		return fmt.Errorf("PublicIP %s: not an IPv4 unicast address", p.Attrs.PublicIP)
	case p.Attrs.PublicIP == host.PublicIP || p.Attrs.PublicIP == host.IfaceAddr:
		return fmt.Errorf("PublicIP %s: is this host's own address", p.Attrs.PublicIP)
	}
	return nil
}

func decodeVtepMAC(raw json.RawMessage) (net.HardwareAddr, error) {
	var d VXLANLeaseData
	if err := json.Unmarshal(raw, &d); err != nil {
		return nil, fmt.Errorf("BackendData %s: not vxlan lease data: %w", raw, err)
	}
	mac, err := net.ParseMAC(d.VtepMAC)
	if err != nil || len(mac) != 6 {
		return nil, fmt.Errorf("VtepMAC %q: not a 6-byte MAC address", d.VtepMAC)
	}
	if mac[0]&1 != 0 || [6]byte(mac) == ([6]byte{}) {
		return nil, fmt.Errorf("VtepMAC %s: must be a non-zero unicast MAC", mac)
	}
	return mac, nil
}

// peerNotes logs a problem with a peer's lease once, not on every apply; a
// peer that is fixed or gone and breaks again is logged again.
type peerNotes struct {
	prev, cur map[netip.Prefix]string
}

func (n *peerNotes) begin() { n.cur = make(map[netip.Prefix]string) }

func (n *peerNotes) note(log *slog.Logger, subnet netip.Prefix, msg string) {
	n.cur[subnet] = msg
	if n.prev[subnet] != msg {
		log.Warn("skipping peer lease", "peer", subnet, "reason", msg)
	}
}

func (n *peerNotes) end() { n.prev, n.cur = n.cur, nil }
