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
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netconf"
	"github.com/weft-net/weft/internal/rtnl"
)

// vxlanOverhead is what VXLAN over IPv4 adds to every frame: outer IPv4 (20)
// + UDP (8) + VXLAN (8) + inner Ethernet (14).
const vxlanOverhead = 50

// VXLANLeaseData is the vxlan BackendData in a lease: {"VNI":1,"VtepMAC":"…"}.
type VXLANLeaseData struct {
	VNI     int
	VtepMAC string
}

// vxlanDevice is the kernel vxlan device of a vxlan backend, flannel.<VNI>
// over IPv4 or flannel-v6.<VNI> over IPv6, and what weft keeps about it:
// what it should look like, the MAC, link and index last found, and the
// desired state of the current and last applies. The MAC is published in
// the lease, so it is kept across restarts and recreation. Both backends
// embed it.
type vxlanDevice struct {
	opts     VXLANOptions
	family   uint8 // of the underlay, the neighbours and the routes
	h        *netlink.Handle
	rt       *rtnl.Conn // dumps and batched writes; closed by Close
	log      *slog.Logger
	name     string
	overhead int // what the encapsulation adds to a frame
	// label names the device's applies in messages ("vxlan", "vxlan IPv6");
	// the two messages are built once, not on every apply.
	applyWhat, changedMsg string

	// Only the loop goroutine (and Init before it) touches these.
	mac      net.HardwareAddr // the VTEP MAC to keep across recreation
	link     *netlink.Vxlan
	devIndex atomic.Int32 // read by the watcher's filters
	// applied is the desired state of the last successful apply (nil: none,
	// or the last apply failed), the baseline of a delta.
	applied *vxlanState
	// passes counts successful full and delta applies (and the deltas that
	// went peer by peer, IPv4 only), for tests.
	passes struct{ full, delta, incremental int }
	// connected is the underlay's connected subnets as the last full pass
	// read them; routeBuf holds the routes of a full pass, reused.
	connected []netip.Prefix
	routeBuf  []routeWant
	// foreign are other owners' routes the last full pass read; notes are
	// the peers an apply leaves out.
	foreign foreignRoutes
	notes   peerNotes
	// want is the desired state of the current or last apply, for the
	// watcher's filters: removing what is not wanted is weft's own doing.
	want   atomic.Pointer[vxlanState]
	wantMu sync.RWMutex // held by the loop while it changes want's maps in place
}

// vxlanPasses is what differs between the backends of the two families:
// the desired state of a full pass (given the device index and the
// underlay's connected subnets), and a delta from prev, the state of the
// last successful apply (write the difference, read nothing).
type vxlanPasses interface {
	desiredFull(snap lease.Snapshot, dev int, connected []netip.Prefix) *vxlanState
	applyDelta(ctx context.Context, snap lease.Snapshot, prev *vxlanState, dev int, t *tally) (*vxlanState, syncStats, error)
}

type vxlanBackend struct {
	vxlanDevice
	host Host
	w    *watcher

	// Only the loop goroutine (and Init before it) touches these.
	appliedPeers []*lease.Lease // the snapshot peers applied was computed for
	// filter is what the watcher runs (kept for tests).
	filter watchFilter
}

func newVXLAN(opts VXLANOptions, host Host, h *netlink.Handle, rt *rtnl.Conn, log *slog.Logger) *vxlanBackend {
	name := fmt.Sprintf("flannel.%d", opts.VNI)
	return &vxlanBackend{
		vxlanDevice: vxlanDevice{
			opts: opts, family: unix.AF_INET, h: h, rt: rt,
			log: log.With("device", name), name: name, overhead: vxlanOverhead,
			applyWhat: "vxlan apply", changedMsg: "vxlan dataplane changed",
		},
		host: host,
		w:    newWatcher(host.NetNS, log),
	}
}

func (v *vxlanDevice) port() int {
	if v.opts.Port == 0 {
		return netconf.DefaultVXLANPort
	}
	return v.opts.Port
}

// mtu is the device MTU over an underlay of MTU ifaceMTU.
func (v *vxlanDevice) mtu(ifaceMTU int) int {
	if v.opts.MTU != 0 {
		return v.opts.MTU
	}
	return ifaceMTU - v.overhead
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
	if _, err := b.ensureDevice(b.host, b.host.IfaceAddr); err != nil {
		return Published{}, 0, err
	}
	b.filter = b.watchFilter(b.host.IfaceIndex)
	b.w.start(b.filter)
	data, err := json.Marshal(VXLANLeaseData{VNI: b.opts.VNI, VtepMAC: b.mac.String()})
	if err != nil {
		return Published{}, 0, fmt.Errorf("dataplane: encode vxlan lease data: %w", err)
	}
	return Published{BackendType: netconf.BackendVXLAN, BackendData: data}, b.mtu(b.host.IfaceMTU), nil
}

func (b *vxlanBackend) Events() <-chan struct{} { return b.w.ch }

func (b *vxlanBackend) Close() error {
	b.w.close()
	b.rt.Close()
	return nil
}

// watchFilter is what the backend's watcher runs: changes to the device or
// the underlay interface (index iface), and removals of what the desired
// state in v.want asks for.
func (v *vxlanDevice) watchFilter(iface int) watchFilter {
	want, mu := &v.want, &v.wantMu
	return watchFilter{
		link: func(u netlink.LinkUpdate) bool {
			idx := int32(u.Attrs().Index)
			if u.Header.Type == unix.RTM_DELLINK {
				return idx == v.devIndex.Load() || int(idx) == iface
			}
			// A device of our name that is not the one we know (recreated by
			// hand), or ours gone down.
			if u.Attrs().Name == v.name {
				return idx != v.devIndex.Load() || u.Attrs().Flags&net.FlagUp == 0
			}
			return false
		},
		// Only removals of what weft wants are drift: the removals weft's
		// own applies make (peers that left, stale entries) are not, or a
		// leave would cost a second, full apply.
		route: func(u netlink.RouteUpdate) bool {
			mu.RLock()
			defer mu.RUnlock()
			var routes map[netip.Prefix]routeWant
			if d := want.Load(); d != nil {
				routes = d.routes
			}
			return routeDrift(routes, u)
		},
		neigh: func(u netlink.NeighUpdate) bool {
			if u.Type != unix.RTM_DELNEIGH || int32(u.LinkIndex) != v.devIndex.Load() {
				return false
			}
			mu.RLock()
			defer mu.RUnlock()
			d := want.Load()
			switch {
			case d == nil || d.routes == nil:
				return true
			case u.Family == unix.AF_BRIDGE:
				if len(u.HardwareAddr) != 6 {
					return false
				}
				dst, ok := d.fdb[[6]byte(u.HardwareAddr)]
				return ok && dst == addrOf(u.IP)
			default:
				_, ok := d.neighs[addrOf(u.IP)]
				return ok
			}
		},
		addr: func(u netlink.AddrUpdate) bool {
			if u.NewAddr || int32(u.LinkIndex) != v.devIndex.Load() {
				return false
			}
			// desired refills d.addr in place under wantMu.
			mu.RLock()
			defer mu.RUnlock()
			d := want.Load()
			return d == nil || prefixOf(&u.LinkAddress) == d.addr
		},
	}
}

// wantDevice is the device weft would create over the underlay interface of
// host, with local address local.
func (v *vxlanDevice) wantDevice(host Host, local netip.Addr) *netlink.Vxlan {
	la := netlink.NewLinkAttrs()
	la.Name = v.name
	la.MTU = v.mtu(host.IfaceMTU)
	la.HardwareAddr = v.mac
	return &netlink.Vxlan{
		LinkAttrs:    la,
		VxlanId:      v.opts.VNI,
		VtepDevIndex: host.IfaceIndex,
		SrcAddr:      local.AsSlice(),
		Port:         v.port(),
		Learning:     v.opts.Learning,
		GBP:          v.opts.GBP,
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

// ensureDevice makes the device exist, match wantDevice(host, local), and be
// up, and records its index and MAC. It reports whether the device was
// (re)created, in which case the kernel dropped every route, neighbour and
// FDB entry on it.
func (b *vxlanDevice) ensureDevice(host Host, local netip.Addr) (created bool, err error) {
	want := b.wantDevice(host, local)
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
				b.name, want.VxlanId, local, host.IfaceName, want.Port, err)
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

// vxlanState is the kernel state one snapshot asks for. The watcher's
// filters read it from another goroutine: once published in want, it is
// changed only under wantMu (see applyIncremental).
type vxlanState struct {
	own    netip.Prefix // this host's subnet, masked
	dev    int          // the device index the routes point at
	addr   netip.Prefix // the device address (zero: none)
	routes map[netip.Prefix]routeWant
	neighs map[netip.Addr]net.HardwareAddr
	fdb    map[[6]byte]netip.Addr
	// skipped counts the peers of the snapshot that asked for nothing
	// (invalid, or a VtepMAC already taken by an earlier peer).
	skipped int
}

func newVXLANState(own netip.Prefix, dev, n int) *vxlanState {
	return &vxlanState{
		own:    own,
		dev:    dev,
		routes: make(map[netip.Prefix]routeWant, n+1),
		neighs: make(map[netip.Addr]net.HardwareAddr, n),
		fdb:    make(map[[6]byte]netip.Addr, n),
	}
}

// peerEntries is what one valid peer asks of the kernel: a route and,
// unless the route goes straight to the peer (DirectRouting), the neighbour
// and FDB entry that route relies on.
type peerEntries struct {
	route  routeWant
	mac    net.HardwareAddr
	dst    netip.Addr // the peer's PublicIP, where its FDB entry sends
	direct bool
}

func (d *vxlanState) add(e peerEntries) {
	d.routes[e.route.Dst] = e.route
	if !e.direct {
		d.neighs[e.route.Gw] = e.mac
		d.fdb[[6]byte(e.mac)] = e.dst
	}
}

func (d *vxlanState) remove(e peerEntries) {
	delete(d.routes, e.route.Dst)
	if !e.direct {
		delete(d.neighs, e.route.Gw)
		delete(d.fdb, [6]byte(e.mac))
	}
}

// peerWant computes one peer's entries, or why it asks for none.
func (b *vxlanBackend) peerWant(p *lease.Lease, own netip.Prefix, dev int, connected []netip.Prefix) (peerEntries, string) {
	sub := p.Subnet.Masked()
	if err := checkPeer(p, own, b.host); err != nil {
		return peerEntries{}, err.Error()
	}
	if !strings.EqualFold(p.Attrs.BackendType, netconf.BackendVXLAN) {
		return peerEntries{}, fmt.Sprintf("backend type %q, want vxlan", p.Attrs.BackendType)
	}
	mac, err := decodeVtepMAC(p.Attrs.BackendData)
	if err != nil {
		return peerEntries{}, err.Error()
	}
	if b.opts.DirectRouting && coveredBy(connected, p.Attrs.PublicIP) {
		return peerEntries{route: routeWant{Dst: sub, Gw: p.Attrs.PublicIP, Link: b.host.IfaceIndex}, mac: mac, dst: p.Attrs.PublicIP, direct: true}, ""
	}
	return peerEntries{route: routeWant{Dst: sub, Gw: sub.Addr(), Link: dev, OnLink: true}, mac: mac, dst: p.Attrs.PublicIP}, ""
}

// desired computes what snap asks for; connected are the underlay's
// connected subnets (for DirectRouting). With reuse (the published state a
// full pass replaces whole), its maps are emptied and refilled in place
// under wantMu: with thousands of peers, building a second set of maps
// beside the first was the largest transient of a full pass.
func (b *vxlanBackend) desired(snap lease.Snapshot, dev int, connected []netip.Prefix, reuse *vxlanState) *vxlanState {
	own := snap.Own.Subnet.Masked()
	var d *vxlanState
	if reuse != nil && reuse.routes != nil {
		b.wantMu.Lock()
		defer b.wantMu.Unlock()
		d = reuse
		clear(d.routes)
		clear(d.neighs)
		clear(d.fdb)
		d.own, d.dev, d.addr, d.skipped = own, dev, netip.Prefix{}, 0
	} else {
		d = newVXLANState(own, dev, len(snap.Peers))
	}
	b.fillDesired(d, snap, b.host.BlackholeRoute, func(p *lease.Lease) (peerEntries, bool, string) {
		e, why := b.peerWant(p, own, dev, connected)
		return e, false, why
	})
	return d
}

// fillDesired completes d, whose maps are empty and whose own subnet is
// set: the device address, what every peer of snap asks for, in snapshot
// order (the order decides which of two peers publishing one VtepMAC is
// programmed), and the own subnet's blackhole route when asked. A peer
// with nothing in this family (skip) is passed over silently; a wrong one,
// or one whose subnet another owner's route holds (see owner.go), is
// counted in d.skipped and noted once (the apply ends the notes).
func (v *vxlanDevice) fillDesired(d *vxlanState, snap lease.Snapshot, blackhole bool,
	want func(p *lease.Lease) (e peerEntries, skip bool, why string)) {
	six := v.family == unix.AF_INET6
	macWhat, bits := "VtepMAC", 32
	if six {
		macWhat, bits = "IPv6 VtepMAC", 128
	}
	if d.own.IsValid() {
		d.addr = netip.PrefixFrom(d.own.Addr(), bits)
	}
	v.notes.begin()
	for _, p := range snap.Peers {
		e, skip, why := want(p)
		if skip {
			continue
		}
		reason := SkipInvalid
		if why == "" {
			if why = v.foreign.conflict(e.route, d.dev); why != "" {
				reason = SkipForeignRoute
			}
		}
		if why == "" {
			if other, dup := d.fdb[[6]byte(e.mac)]; dup {
				why = fmt.Sprintf("%s %s is also published by the peer at %s", macWhat, e.mac, other)
			}
		}
		if why != "" {
			key := p.Subnet.Masked()
			if six {
				key = p.IPv6Subnet.Masked()
			}
			v.notes.noteAs(v.log, key, reason, why)
			d.skipped++
			continue
		}
		d.add(e)
	}
	if blackhole && d.own.IsValid() {
		w := routeWant{Dst: d.own, Blackhole: true, Metric: blackholeMetric}
		if why := v.foreign.conflict(w, d.dev); why != "" {
			v.notes.noteAs(v.log, d.own, SkipForeignRoute, "own subnet's blackhole route: "+why)
		} else {
			d.routes[d.own] = w
		}
	}
}

// skipped lists the peers the last apply left out.
func (v *vxlanDevice) skipped() []skippedPeer { return v.notes.skipped() }

// maxIncremental bounds the peers a delta updates one by one; beyond it,
// rebuilding the desired state costs no more.
func maxIncremental(peers int) int { return 16 + peers/8 }

// applyIncremental turns prev — the state the kernel holds, for the peers
// prevPeers — into the state snap asks for by touching only the peers that
// changed, and returns the entries those peers had (old) and now want (cur)
// for applyDiff. It declines (ok false) whenever the result might differ
// from what desired would compute: skipped peers in either state, a VtepMAC
// that collides, DirectRouting (whose MAC rule depends on peer order), or
// too many changes.
func (b *vxlanBackend) applyIncremental(prev *vxlanState, prevPeers []*lease.Lease, snap lease.Snapshot) (old, cur *vxlanState, ok bool) {
	if prev.skipped > 0 || b.opts.DirectRouting {
		return nil, nil, false
	}
	limit := maxIncremental(len(snap.Peers))
	var gone, came []*lease.Lease
	i, j := 0, 0
	for i < len(prevPeers) || j < len(snap.Peers) {
		if i < len(prevPeers) && j < len(snap.Peers) && prevPeers[i] == snap.Peers[j] {
			i++ // the same lease: the manager shares unchanged ones
			j++
			continue
		}
		c := 0
		switch {
		case i == len(prevPeers):
			c = 1
		case j == len(snap.Peers):
			c = -1
		default:
			c = lease.ComparePeers(prevPeers[i], snap.Peers[j])
		}
		switch {
		case c < 0:
			gone = append(gone, prevPeers[i])
			i++
		case c > 0:
			came = append(came, snap.Peers[j])
			j++
		default:
			if !samePeer(prevPeers[i], snap.Peers[j]) {
				gone = append(gone, prevPeers[i])
				came = append(came, snap.Peers[j])
			}
			i++
			j++
		}
		if len(gone)+len(came) > limit {
			return nil, nil, false
		}
	}
	old = newVXLANState(prev.own, prev.dev, len(gone))
	cur = newVXLANState(prev.own, prev.dev, len(came))
	olds := make([]peerEntries, 0, len(gone))
	for _, p := range gone {
		e, why := b.peerWant(p, prev.own, prev.dev, b.connected)
		if why != "" {
			return nil, nil, false // prev had no skipped peer: cannot happen
		}
		old.add(e)
		olds = append(olds, e)
	}
	news := make([]peerEntries, 0, len(came))
	for _, p := range came {
		e, why := b.peerWant(p, prev.own, prev.dev, b.connected)
		if why != "" || b.foreign.conflict(e.route, prev.dev) != "" {
			return nil, nil, false // desired will note it
		}
		m := [6]byte(e.mac)
		if _, dup := cur.fdb[m]; dup {
			return nil, nil, false
		}
		if _, taken := prev.fdb[m]; taken {
			if _, leaving := old.fdb[m]; !leaving {
				return nil, nil, false
			}
		}
		cur.add(e)
		news = append(news, e)
	}
	// The watcher must see the new state before any write, so that the
	// deletions this apply causes are recognised as weft's own.
	b.wantMu.Lock()
	for _, e := range olds {
		prev.remove(e)
	}
	for _, e := range news {
		prev.add(e)
	}
	b.wantMu.Unlock()
	return old, cur, true
}

// samePeer reports whether two leases for one subnet ask for the same
// entries.
func samePeer(a, b *lease.Lease) bool {
	return a.Subnet == b.Subnet && a.ModRevision == b.ModRevision &&
		a.Attrs.PublicIP == b.Attrs.PublicIP && a.Attrs.BackendType == b.Attrs.BackendType &&
		bytes.Equal(a.Attrs.BackendData, b.Attrs.BackendData)
}

// Apply programs the device address and every peer, reading the kernel
// first (a full pass); see the package notes.
func (b *vxlanBackend) Apply(ctx context.Context, snap lease.Snapshot) error {
	return b.apply(ctx, snap, true)
}

// ApplyDelta programs only the difference between snap and the snapshot of
// the last successful apply, without reading the kernel. It does a full pass
// when there is no such apply, the device was recreated or the own subnet
// changed.
func (b *vxlanBackend) ApplyDelta(ctx context.Context, snap lease.Snapshot) error {
	return b.apply(ctx, snap, false)
}

func (b *vxlanBackend) apply(ctx context.Context, snap lease.Snapshot, full bool) error {
	if err := b.run(ctx, b, b.host, b.host.IfaceAddr, snap, snap.Own.Subnet.Masked(), full); err != nil {
		return err
	}
	b.appliedPeers = snap.Peers
	return nil
}

// run is one apply of the device, over the underlay of host with local
// address local, for snap whose own subnet of the device's family is own.
func (v *vxlanDevice) run(ctx context.Context, p vxlanPasses, host Host, local netip.Addr, snap lease.Snapshot, own netip.Prefix, full bool) error {
	// A delta trusts the device as the last apply left it: its removal,
	// recreation or going down is a link event, which makes the next apply
	// full, and until then writes to the old index fail, which does too.
	var created bool
	if full || v.applied == nil || v.link == nil {
		var err error
		if created, err = v.ensureDevice(host, local); err != nil {
			v.applied = nil
			return err
		}
	}
	dev := int(v.devIndex.Load())
	prev := v.applied
	// Until this apply succeeds nothing is known about the kernel.
	v.applied = nil
	if created || prev == nil || prev.dev != dev || prev.own != own {
		full = true
	}
	// A direct route (DirectRouting) the kernel refuses for want of a path
	// to the peer is that peer's problem, not the apply's (noted below).
	t := &tally{what: v.applyWhat, peerRoutes: true}
	defer v.notes.end()
	var (
		st     syncStats
		d      *vxlanState
		errBuf [8]error // a delta allocates no error slice
		errs   = errBuf[:0]
	)
	if full {
		var fe []error
		d, st, fe = v.applyFull(ctx, p, snap, host.IfaceIndex, own, dev, t)
		errs = append(errs, fe...)
	} else {
		var err error
		d, st, err = p.applyDelta(ctx, snap, prev, dev, t)
		errs = append(errs, err)
	}
	if st != (syncStats{}) {
		v.log.Debug(v.changedMsg, "full", full, "peers", len(snap.Peers), "added", st.Added, "replaced", st.Replaced, "deleted", st.Deleted)
	}
	errs = append(errs, t.err())
	for _, r := range t.unreachable {
		v.notes.noteAs(v.log, r.w.Dst, SkipUnreachable, fmt.Sprintf("direct route %s: %v", r.w, r.err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("dataplane: %w", err)
	}
	// After a refusal the kernel holds less than d: the next apply reads
	// it again rather than writing a delta from d.
	if len(t.unreachable) == 0 {
		v.applied = d
	}
	if full {
		v.passes.full++
	} else {
		v.passes.delta++
	}
	return nil
}

// applyDelta goes peer by peer when few peers changed (applyIncremental),
// else diffs a freshly computed desired state against prev.
func (b *vxlanBackend) applyDelta(ctx context.Context, snap lease.Snapshot, prev *vxlanState, dev int, t *tally) (*vxlanState, syncStats, error) {
	if old, cur, ok := b.applyIncremental(prev, b.appliedPeers, snap); ok {
		b.passes.incremental++
		st := applyVXLANDiff(ctx, b.rt, unix.AF_INET, old, cur, t)
		return prev, st, ctx.Err()
	}
	d := b.desired(snap, dev, b.connected, nil) // prev is the baseline of the diff
	// Published before any write, so that the watcher recognises the
	// deletions this apply causes as its own.
	b.want.Store(d)
	st := applyVXLANDiff(ctx, b.rt, unix.AF_INET, prev, d, t)
	return d, st, ctx.Err()
}

// applyFull reads addresses, routes, neighbours and FDB entries and makes
// them equal to what snap asks for (own: this host's subnet of the family;
// iface: the underlay interface's index). It returns the desired state (nil
// when it could not even be computed).
func (v *vxlanDevice) applyFull(ctx context.Context, p vxlanPasses, snap lease.Snapshot, iface int, own netip.Prefix, dev int, t *tally) (*vxlanState, syncStats, []error) {
	var addr netip.Prefix // the device's address: a host route of own's first address
	if own.IsValid() {
		bits := 32
		if v.family == unix.AF_INET6 {
			bits = 128
		}
		addr = netip.PrefixFrom(own.Addr(), bits)
	}
	var errs []error
	// The address first: changing it can make the kernel drop routes, and
	// the route dump below must see the result.
	publishAddr(&v.want, own, dev, addr)
	st, err := syncAddrs(v.h, v.family, v.link, addr, t)
	errs = append(errs, err)

	have, err := readMainRoutesFor(v.rt, v.family, iface, own.Bits())
	if err != nil {
		return nil, st, append(errs, err)
	}
	v.connected = have.connected
	v.foreign = newForeignRoutes(have.foreign)
	d := p.desiredFull(snap, dev, have.connected)
	v.want.Store(d)
	routes := v.routeBuf[:0]
	for _, r := range d.routes {
		routes = append(routes, r)
	}
	v.routeBuf = routes
	errs = append(errs, syncVXLAN(ctx, v.rt, v.family, d, v.foreign.adopted(have.weft, d.routes, dev), routes, &st, t)...)
	return d, st, errs
}

// desiredFull refills the published desired state in place (see desired).
func (b *vxlanBackend) desiredFull(snap lease.Snapshot, dev int, connected []netip.Prefix) *vxlanState {
	return b.desired(snap, dev, connected, b.want.Load())
}

// publishAddr makes the desired state in want ask for device address addr
// before a full pass changes it: the removals that change causes are
// echoes, not drift.
func publishAddr(want *atomic.Pointer[vxlanState], own netip.Prefix, dev int, addr netip.Prefix) {
	if cur := want.Load(); cur == nil {
		want.Store(&vxlanState{own: own, dev: dev, addr: addr})
	} else if cur.addr != addr {
		next := *cur
		next.addr = addr
		want.Store(&next)
	}
}

// syncVXLAN makes the FDB entries, neighbours (of family) and routes of the
// device d.dev equal to d, given weft's routes of family in the main table
// (have) and d's routes as a slice; it adds what it changed to st. Adds go
// in dependency order (FDB, neighbour, then the route that uses them: a
// route is usable the moment it appears), deletes in reverse, so no packet
// is sent through a half-programmed peer.
func syncVXLAN(ctx context.Context, rt *rtnl.Conn, family uint8, d *vxlanState, have []rtnl.Route, routes []routeWant, st *syncStats, t *tally) []error {
	var errs []error
	fs, fdel, err := syncFDB(ctx, rt, d.dev, d.fdb, t)
	errs = append(errs, err)
	ns, ndel, err := syncNeighs(ctx, rt, family, d.dev, d.neighs, t)
	errs = append(errs, err)
	rs, rdel, err := syncRoutes(ctx, rt, family, have, routes, t)
	errs = append(errs, err)
	for _, del := range []func() error{rdel, ndel, fdel} {
		if del != nil {
			errs = append(errs, del())
		}
	}
	st.plus(*fs)
	st.plus(*ns)
	st.plus(*rs)
	return errs
}

// applyVXLANDiff writes what differs between old (which the kernel holds, as
// far as weft knows) and d, the state of a vxlan device whose neighbours and
// routes are of family, in the same order as a full pass: adds FDB,
// neighbour, route; deletes route, neighbour, FDB. Each step goes to the
// kernel in batches on the backend's socket rt, so a bulk change (every peer
// leaving in one transaction) costs a few hundred sendmsg calls, not one
// round trip and one receive buffer per entry.
func applyVXLANDiff(ctx context.Context, rt *rtnl.Conn, family uint8, old, d *vxlanState, t *tally) syncStats {
	var st syncStats
	fdbAdd, fdbDel := diffMaps(old.fdb, d.fdb, func(a, b netip.Addr) bool { return a == b })
	neighAdd, neighDel := diffMaps(old.neighs, d.neighs, func(a, b net.HardwareAddr) bool { return slices.Equal(a, b) })
	routeAdd, routeDel := diffMaps(old.routes, d.routes, func(a, b routeWant) bool { return a == b })

	fb := rtnl.NewBatch(rt, func(mac [6]byte, err error) bool {
		t.add(fmt.Errorf("set FDB entry %s dst %s: %w", net.HardwareAddr(mac[:]), d.fdb[mac], err))
		return true
	})
	for _, mac := range fdbAdd {
		fb.SetNeigh(mac, unix.AF_BRIDGE, d.dev, d.fdb[mac], mac[:])
	}
	fb.Flush()
	st.Added += fb.OK()
	if ctx.Err() != nil {
		return st
	}
	nb := rtnl.NewBatch(rt, func(ip netip.Addr, err error) bool {
		t.add(fmt.Errorf("set neighbour %s lladdr %s: %w", ip, d.neighs[ip], err))
		return true
	})
	for _, ip := range neighAdd {
		nb.SetNeigh(ip, family, d.dev, ip, d.neighs[ip])
	}
	nb.Flush()
	st.Added += nb.OK()
	if ctx.Err() != nil {
		return st
	}
	rb := rtnl.NewBatch(rt, func(dst netip.Prefix, err error) bool {
		t.add(fmt.Errorf("write route %s: %w", d.routes[dst], err))
		return true
	})
	for _, dst := range routeAdd {
		// Only a route weft already holds is replaced. A new destination
		// is added exclusively: a route of another owner that appeared
		// since the last full pass makes it fail (EEXIST), and the full
		// pass that follows leaves that route alone.
		if _, ours := old.routes[dst]; ours {
			rb.ReplaceRoute(dst, family, rtnl.RouteSpec(d.routes[dst]))
		} else {
			rb.AddRoute(dst, family, rtnl.RouteSpec(d.routes[dst]))
		}
	}
	rb.Flush()
	st.Added += rb.OK()
	if ctx.Err() != nil {
		return st
	}

	gone := func(what string) func(k string, err error) bool {
		return func(k string, err error) bool {
			if isGone(err) {
				return false
			}
			t.add(fmt.Errorf("delete stale %s %s: %w", what, k, err))
			return true
		}
	}
	rd := rtnl.NewBatch(rt, gone("route"))
	for _, dst := range routeDel {
		// A replace keeps the key (dst, metric); one at another metric
		// would survive it.
		o := old.routes[dst]
		if w, ok := d.routes[dst]; ok && w.Metric == o.Metric {
			continue
		}
		// Whatever its gateway: the kernel matches on destination, table,
		// metric and protocol.
		rd.DeleteRoute(o.String(), family, rtnl.Route{Dst: o.Dst, Table: unix.RT_TABLE_MAIN, Protocol: uint8(rtnl.ProtWeft), Priority: o.Metric})
	}
	rd.Flush()
	st.Deleted += rd.OK()
	nd := rtnl.NewBatch(rt, gone("neighbour"))
	for _, ip := range neighDel {
		if _, ok := d.neighs[ip]; ok {
			continue // replaced above
		}
		nd.DeleteNeigh(ip.String(), rtnl.Neigh{Family: family, Link: old.dev, IP: ip})
	}
	nd.Flush()
	st.Deleted += nd.OK()
	fd := rtnl.NewBatch(rt, gone("FDB entry"))
	for _, mac := range fdbDel {
		// For a MAC that moved, the set above usually swapped the
		// destination in place and this finds nothing.
		dst := old.fdb[mac]
		fd.DeleteNeigh(net.HardwareAddr(mac[:]).String()+" dst "+dst.String(), rtnl.Neigh{Family: unix.AF_BRIDGE, Link: old.dev, IP: dst, MAC: mac, MACLen: 6})
	}
	fd.Flush()
	st.Deleted += fd.OK()
	return st
}

// checkPeer rejects leases that cannot be programmed whatever the backend.
func checkPeer(p *lease.Lease, own netip.Prefix, host Host) error {
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
	mac, present, err := lease.VtepMAC(raw)
	if err == nil && !present {
		err = fmt.Errorf("BackendData %.80s: no VtepMAC", raw)
	}
	return mac, err
}
