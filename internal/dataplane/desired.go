package dataplane

// The desired state: what the kernel should hold for one lease snapshot, per
// address family, computed by a pure function of (host, snapshot, config,
// and the few facts read from the kernel that decide it: the device's index,
// the underlay's connected subnets, other owners' routes). The backends, the
// driver that writes it (driver.go), `weftctl doctor` and the tests all use
// this one renderer (Render), so there is one definition of "what weft
// programs for these leases".

import (
	"fmt"
	"net"
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netconf"
	"github.com/weft-net/weft/internal/rtnl"
)

// Route is one route weft wants in the main table (carrying rtnl.ProtWeft).
type Route = routeWant

// Desired is the kernel state one snapshot asks of one family of a backend:
// the device's address, and the routes, neighbours and FDB entries of the
// peers. The kernel watcher's filters read it from another goroutine: once
// published by the driver it is changed only under the driver's wantMu.
type Desired struct {
	Family uint8
	Device string       // the backend's device ("" for host-gw: routes only)
	Own    netip.Prefix // this host's subnet of the family, masked
	Dev    int          // the device index the routes point at (0: none)
	Addr   netip.Prefix // the device address (zero: none)
	// The routes, neighbours and FDB entries (entries.go), read through
	// Route, Routes, Neigh, Neighs, FDBDst and FDB (all nil: not yet
	// rendered), tmpls the kinds of route in them, gws the gateways that
	// are not their route's destination's address.
	routes map[pfx16]uint8
	gws    map[pfx16][16]byte
	neighs map[[16]byte]MAC
	fdb    map[MAC][16]byte
	tmpls  []routeTmpl
	// The routes through kernel nexthop objects (nexthops.go), each of
	// whose id is its destination's address: how many, and how many at
	// each prefix length (nhBits, nhLens a bit per length with any), which
	// is what finding a nexthop's route by its id needs.
	nhCount int
	nhLens  uint64
	nhBits  [33]int32
	// Nexthops are the kernel nexthop objects the routes go through, by
	// id (nexthops.go): IPv4 vxlan peers' on a kernel that makes them.
	// Only Render fills it, for its callers: the driver's states keep the
	// nexthops implicit in the routes, since a route through one carries
	// all the object holds.
	Nexthops map[uint32]rtnl.Nexthop
	// Skipped are the peers of the snapshot that asked for nothing this
	// backend can program, and why, in snapshot order.
	Skipped []skippedPeer
}

func newDesired(family uint8, device string, own netip.Prefix, dev, n int) *Desired {
	d := &Desired{Family: family, Device: device, Own: own, Dev: dev}
	d.resetEntries(n)
	return d
}

// MAC is a neighbour's link-layer address, kept in place: a map of
// net.HardwareAddr held a slice header and a separate array for each
// peer's (issue 12).
type MAC [6]byte

func (m MAC) String() string { return net.HardwareAddr(m[:]).String() }

// nexthopOf is the nexthop object the route w goes through.
func nexthopOf(w Route) rtnl.Nexthop {
	return rtnl.Nexthop{ID: w.NhID, Gw: w.Gw, Link: w.Link, OnLink: w.OnLink, Protocol: uint8(rtnl.ProtWeft)}
}

// PeerEntries is what one valid peer asks of the kernel: a route and, when
// the route goes through a neighbour only the overlay knows (vxlan without
// DirectRouting), that neighbour and the FDB entry it relies on.
type PeerEntries struct {
	Route Route
	MAC   net.HardwareAddr // the peer's VTEP MAC; nil for a route-only backend
	Dst   netip.Addr       // the peer's underlay address, where its FDB entry sends
	// Direct: the route goes straight to the peer (DirectRouting), so no
	// neighbour or FDB entry is needed, though the MAC still may not clash.
	Direct bool
	// Unreachable: the peer cannot be routed to from this host (host-gw:
	// not on the underlay's L2 segment); why says so.
	Unreachable bool
}

func (e PeerEntries) usesNeigh() bool { return e.MAC != nil && !e.Direct }

func (d *Desired) add(e PeerEntries) {
	d.setRoute(e.Route)
	if e.usesNeigh() {
		d.setNeigh(e.Route.Gw, MAC(e.MAC), e.Dst)
	}
}

func (d *Desired) remove(e PeerEntries) {
	d.deleteRoute(e.Route.Dst)
	if e.usesNeigh() {
		d.deleteNeigh(e.Route.Gw, MAC(e.MAC))
	}
}

// Facts are what the desired state depends on besides the leases, read
// from the kernel by the driver's full pass (or by the doctor).
type Facts struct {
	Dev       int            // index of the backend's device of the family (0: none)
	Connected []netip.Prefix // subnets connected to the underlay interface
	// Foreign are other owners' routes to destinations of the overlay's
	// subnet length (see owner.go).
	Foreign foreignRoutes
	// Nexthops: the kernel makes nexthop objects (probed once at Init),
	// so the peer routes of a spec that can go through them do;
	// ForeignNH are the ids other owners' nexthops hold, which weft
	// leaves alone (the routes of those peers stay plain `via` routes).
	Nexthops  bool
	ForeignNH map[uint32]struct{}
}

// spec is a backend's desired state for one address family, as a pure
// function: nothing in it reads or writes the kernel. A backend is one or
// two specs (IPv4, IPv6), a device, and at most an engine (udp).
type spec struct {
	family uint8
	label  string // names the family's applies in messages: "vxlan", "host-gw IPv6", …
	device string // the device's name ("" when routes go out of the underlay)
	// own is this host's subnet of the family in snap.
	own func(snap lease.Snapshot) netip.Prefix
	// addr: the device holds own's first address as a host route.
	addr bool
	// peer says what one peer asks for: skip when it has nothing of this
	// family (said nothing about), why when it cannot be programmed.
	peer func(p *lease.Lease, own netip.Prefix, f Facts) (e PeerEntries, skip bool, why string)
	// static are the routes that do not depend on peers (udp: the Network
	// through the device); nil for none.
	static func(own netip.Prefix, f Facts) []Route
	// blackhole: the own subnet's blackhole route (-ip-blackhole-route).
	blackhole bool
	// macWhat names the peers' MAC in messages ("VtepMAC"); a MAC two
	// peers publish is programmed for the first only.
	macWhat string
	// orderDependent: which peers are programmed depends on their order or
	// on the connected subnets beyond what one peer's entries say
	// (DirectRouting), so a delta must recompute the whole state.
	orderDependent bool
	// usesConnected: the state depends on Facts.Connected, so a change of
	// the underlay's connected routes must wake the loop.
	usesConnected bool
}

// render computes what snap asks for. With reuse (the state a full pass
// replaces whole) its maps are emptied and refilled in place: with
// thousands of peers, building a second set of maps beside the first was
// the largest transient of a full pass. The caller holds whatever lock
// guards reuse.
func (s *spec) render(snap lease.Snapshot, f Facts, reuse *Desired) *Desired {
	own := s.own(snap)
	var d *Desired
	if reuse.rendered() {
		d = reuse
		d.resetEntries(0)
		d.Own, d.Dev, d.Addr, d.Skipped = own, f.Dev, netip.Prefix{}, d.Skipped[:0]
	} else {
		d = newDesired(s.family, s.device, own, f.Dev, len(snap.Peers))
	}
	if s.addr && own.IsValid() {
		d.Addr = netip.PrefixFrom(own.Addr(), own.Addr().BitLen())
	}
	if s.static != nil {
		for _, r := range s.static(own, f) {
			d.setRoute(r)
		}
	}
	for _, p := range snap.Peers {
		e, skip, why := s.peer(p, own, f)
		if skip {
			continue
		}
		reason := SkipInvalid
		if e.Unreachable {
			reason = SkipUnreachable
		}
		if why == "" {
			if why = f.Foreign.conflict(e.Route, f.Dev); why != "" {
				reason = SkipForeignRoute
			}
		}
		if why == "" && e.MAC != nil {
			if other, dup := d.FDBDst(MAC(e.MAC)); dup {
				why = fmt.Sprintf("%s %s is also published by the peer at %s", s.macWhat, e.MAC, other)
			}
		}
		if why != "" {
			key := p.Subnet.Masked()
			if s.family == unix.AF_INET6 {
				key = p.IPv6Subnet.Masked()
			}
			d.Skipped = append(d.Skipped, skippedPeer{peer: key, reason: reason, msg: why})
			continue
		}
		d.add(e)
	}
	if s.blackhole && own.IsValid() {
		w := Route{Dst: own, Blackhole: true, Metric: blackholeMetric}
		if why := f.Foreign.conflict(w, f.Dev); why != "" {
			d.Skipped = append(d.Skipped, skippedPeer{peer: own, reason: SkipForeignRoute, msg: "own subnet's blackhole route: " + why})
		} else {
			d.setRoute(w)
		}
	}
	return d
}

// Render returns what the kernel of host should hold for snap under the
// network config cfg, one Desired per address family (IPv4 first), given
// the facts of each family read from that kernel (facts may be nil: no
// device, no connected subnets, no foreign routes). It is the one
// definition of weft's kernel state, used by the backends and by
// `weftctl doctor`. host must be resolved (interface index and addresses
// known); nothing here touches the kernel.
func Render(cfg netconf.Config, host Host, snap lease.Snapshot, facts func(family uint8) Facts) ([]*Desired, error) {
	specs, err := specsFor(cfg, host)
	if err != nil {
		return nil, err
	}
	out := make([]*Desired, 0, len(specs))
	for i := range specs {
		var f Facts
		if facts != nil {
			f = facts(specs[i].family)
		}
		d := specs[i].render(snap, f, nil)
		d.Nexthops = d.nexthopObjects()
		out = append(out, d)
	}
	return out, nil
}

// NewFacts builds the facts of one family from what a reader of the kernel
// found: the device index, the underlay's connected subnets, and the main
// table's routes of other owners to destinations of the overlay's subnet
// length.
func NewFacts(dev int, connected []netip.Prefix, foreign []rtnl.Route) Facts {
	return Facts{Dev: dev, Connected: connected, Foreign: newForeignRoutes(foreign)}
}
