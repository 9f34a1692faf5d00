package dataplane

// How a Desired keeps its entries (issue 12: at 20,000 vxlan peers the
// desired state was ~9.5 MB of weftd's ~20 MB live heap, 356 bytes a peer).
//
// Keys and values hold no pointers (netip.Addr and netip.Prefix each hold
// one, so maps of them were scanned by every collection) and no field that
// is the same for most entries: a route keeps its destination as the key
// and only its gateway and the index of its template (device, metric,
// onlink, blackhole, through a nexthop object) as the value, the template
// list being the few distinct kinds of route one family asks for. A route's
// nexthop id is its destination's (nexthopID), so the nexthops are not a
// map of their own either. The accessors below hand the entries out as
// Route, netip.Addr and MAC values.

import (
	"iter"
	"math/bits"
	"net/netip"
)

// addrKey is a netip.Addr kept without its pointer: the 16 bytes and which
// kind of address they are. Zones are not kept: lease addresses have none
// (the lease codec refuses them), nor have prefixes.
type addrKey struct {
	a   [16]byte
	fam uint8 // 0: the zero Addr, 4: IPv4, 6: IPv6
}

func keyOf(a netip.Addr) addrKey {
	switch {
	case a.Is4():
		return addrKey{a: a.As16(), fam: 4}
	case a.Is6():
		return addrKey{a: a.As16(), fam: 6}
	}
	return addrKey{}
}

func (k addrKey) addr() netip.Addr {
	switch k.fam {
	case 4:
		return netip.AddrFrom4([4]byte(k.a[12:]))
	case 6:
		return netip.AddrFrom16(k.a)
	}
	return netip.Addr{}
}

// pfxKey is a netip.Prefix kept without its pointer.
type pfxKey struct {
	a    addrKey
	bits uint8
}

func pfxOf(p netip.Prefix) pfxKey {
	return pfxKey{a: keyOf(p.Addr()), bits: uint8(p.Bits())}
}

func (k pfxKey) prefix() netip.Prefix { return netip.PrefixFrom(k.a.addr(), int(k.bits)) }

// routeTmpl is what the routes of one kind have in common.
type routeTmpl struct {
	link, metric             int
	onLink, blackhole, viaNH bool // viaNH: NhID is nexthopID(Dst)
}

// routeVal is a route's entry: its gateway and its template's index in
// Desired.tmpls.
type routeVal struct {
	gw addrKey
	t  uint8
}

// tmplOf returns the index of w's template in d.tmpls, added if new.
func (d *Desired) tmplOf(w Route) uint8 {
	t := routeTmpl{link: w.Link, metric: w.Metric, onLink: w.OnLink, blackhole: w.Blackhole, viaNH: w.NhID != 0}
	if t.viaNH && w.NhID != nexthopID(w.Dst) {
		// Every NhID comes from viaNexthop: a route keeps only the flag.
		panic("dataplane: route " + w.String() + " through a nexthop that is not its destination's")
	}
	for i := range d.tmpls {
		if d.tmpls[i] == t {
			return uint8(i)
		}
	}
	if len(d.tmpls) > 255 {
		// The kinds come from a spec's few devices and metrics.
		panic("dataplane: more than 256 kinds of route in one desired state")
	}
	d.tmpls = append(d.tmpls, t)
	return uint8(len(d.tmpls) - 1)
}

// routeAt is the route of the entry k, v.
func (d *Desired) routeAt(k pfxKey, v routeVal) Route {
	t := d.tmpls[v.t]
	w := Route{Dst: k.prefix(), Gw: v.gw.addr(), Link: t.link, OnLink: t.onLink, Blackhole: t.blackhole, Metric: t.metric}
	if t.viaNH {
		w.NhID = nexthopID(w.Dst)
	}
	return w
}

// sameRoute reports whether a, an entry of d, and b, an entry of e, are
// the same route (their keys being equal).
func (d *Desired) sameRoute(a routeVal, e *Desired, b routeVal) bool {
	return a.gw == b.gw && d.tmpls[a.t] == e.tmpls[b.t]
}

// setRoute makes w the route to w.Dst.
func (d *Desired) setRoute(w Route) {
	k := pfxOf(w.Dst)
	d.unNH(k)
	v := routeVal{gw: keyOf(w.Gw), t: d.tmplOf(w)}
	d.routes[k] = v
	if d.tmpls[v.t].viaNH {
		d.nhCount++
		d.nhBits[k.bits]++
		d.nhLens |= 1 << k.bits
	}
}

// deleteRoute removes the route to dst.
func (d *Desired) deleteRoute(dst netip.Prefix) {
	k := pfxOf(dst)
	d.unNH(k)
	delete(d.routes, k)
}

// unNH uncounts the nexthop of the route at k, if it has one.
func (d *Desired) unNH(k pfxKey) {
	if v, ok := d.routes[k]; ok && d.tmpls[v.t].viaNH {
		d.nhCount--
		if d.nhBits[k.bits]--; d.nhBits[k.bits] == 0 {
			d.nhLens &^= 1 << k.bits
		}
	}
}

// clearEntries empties d's entries, keeping the maps' memory.
func (d *Desired) clearEntries() {
	clear(d.routes)
	clear(d.neighs)
	clear(d.fdb)
	d.tmpls = d.tmpls[:0]
	d.nhCount, d.nhLens, d.nhBits = 0, 0, [33]int32{}
}

// rendered reports whether d holds a rendered state (not nil, nor only the
// device address the driver publishes before its first render).
func (d *Desired) rendered() bool { return d != nil && d.routes != nil }

// Route returns the route d asks for to dst.
func (d *Desired) Route(dst netip.Prefix) (Route, bool) {
	if d == nil {
		return Route{}, false
	}
	k := pfxOf(dst)
	v, ok := d.routes[k]
	if !ok {
		return Route{}, false
	}
	return d.routeAt(k, v), true
}

// Routes are the routes d asks for, in no particular order.
func (d *Desired) Routes() iter.Seq[Route] {
	return func(yield func(Route) bool) {
		if d == nil {
			return
		}
		for k, v := range d.routes {
			if !yield(d.routeAt(k, v)) {
				return
			}
		}
	}
}

// NumRoutes is how many routes d asks for.
func (d *Desired) NumRoutes() int {
	if d == nil {
		return 0
	}
	return len(d.routes)
}

// Neigh returns the MAC d asks the neighbour ip to have.
func (d *Desired) Neigh(ip netip.Addr) (MAC, bool) {
	if d == nil {
		return MAC{}, false
	}
	m, ok := d.neighs[keyOf(ip)]
	return m, ok
}

// Neighs are the neighbours d asks for (address → MAC), in no particular
// order.
func (d *Desired) Neighs() iter.Seq2[netip.Addr, MAC] {
	return func(yield func(netip.Addr, MAC) bool) {
		if d == nil {
			return
		}
		for k, m := range d.neighs {
			if !yield(k.addr(), m) {
				return
			}
		}
	}
}

// NumNeighs is how many neighbours d asks for.
func (d *Desired) NumNeighs() int {
	if d == nil {
		return 0
	}
	return len(d.neighs)
}

// FDBDst returns the underlay address d's FDB entry for mac sends to.
func (d *Desired) FDBDst(mac MAC) (netip.Addr, bool) {
	if d == nil {
		return netip.Addr{}, false
	}
	k, ok := d.fdb[mac]
	return k.addr(), ok
}

// FDB are the FDB entries d asks for (MAC → underlay address), in no
// particular order.
func (d *Desired) FDB() iter.Seq2[MAC, netip.Addr] {
	return func(yield func(MAC, netip.Addr) bool) {
		if d == nil {
			return
		}
		for m, k := range d.fdb {
			if !yield(m, k.addr()) {
				return
			}
		}
	}
}

// NumFDB is how many FDB entries d asks for.
func (d *Desired) NumFDB() int {
	if d == nil {
		return 0
	}
	return len(d.fdb)
}

// nexthopRoute finds the route that goes through the nexthop id: the one
// to the id's address, at one of the prefix lengths of d's routes through
// nexthops (one in practice: the overlay's subnet length).
func (d *Desired) nexthopRoute(id uint32) (pfxKey, routeVal, bool) {
	if d == nil || d.nhCount == 0 || id == 0 {
		return pfxKey{}, routeVal{}, false
	}
	a := keyOf(netip.AddrFrom4([4]byte{byte(id >> 24), byte(id >> 16), byte(id >> 8), byte(id)}))
	for lens := d.nhLens; lens != 0; lens &= lens - 1 {
		k := pfxKey{a: a, bits: uint8(bits.TrailingZeros64(lens))}
		if v, ok := d.routes[k]; ok && d.tmpls[v.t].viaNH {
			return k, v, true
		}
	}
	return pfxKey{}, routeVal{}, false
}

// hasNexthop reports whether one of d's routes goes through the nexthop id.
func (d *Desired) hasNexthop(id uint32) bool {
	_, _, ok := d.nexthopRoute(id)
	return ok
}

// nexthopIDs are the ids of the nexthops d's routes go through.
func (d *Desired) nexthopIDs() iter.Seq[uint32] {
	return func(yield func(uint32) bool) {
		if d == nil || d.nhCount == 0 {
			return
		}
		for k, v := range d.routes {
			if d.tmpls[v.t].viaNH && !yield(nexthopID(k.prefix())) {
				return
			}
		}
	}
}
