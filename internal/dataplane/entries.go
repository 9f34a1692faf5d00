package dataplane

// How a Desired keeps its entries (issue 12: at 20,000 vxlan peers the
// desired state was ~9.5 MB of weftd's ~20 MB live heap, 356 bytes a peer).
//
// Keys and values hold no pointers (netip.Addr and netip.Prefix each hold
// one, so maps of them were scanned by every collection), an address only
// its family's bytes (every address of one family's state is of that
// family: its routes, gateways, neighbours and the underlay addresses of
// its FDB entries), and no field that is the same for most entries: a route
// keeps its destination as the key and only its gateway and the index of
// its template (device, metric, onlink, blackhole, gateway or none, through
// a nexthop object) as the value, the template list being the few distinct
// kinds of route one family asks for. A route's nexthop id is its
// destination's (nexthopID), so the nexthops are not a map of their own
// either. The accessors below hand the entries out as Route, netip.Addr and
// MAC values.

import (
	"iter"
	"math/bits"
	"net/netip"

	"golang.org/x/sys/unix"
)

// ip is an address of one family kept as its bytes: ip4 or ip16. Zones are
// not kept: lease addresses have none (the lease codec refuses them), nor
// have prefixes.
type ip interface {
	comparable
	addr() netip.Addr
}

type (
	ip4  [4]byte
	ip16 [16]byte
)

func (a ip4) addr() netip.Addr  { return netip.AddrFrom4(a) }
func (a ip16) addr() netip.Addr { return netip.AddrFrom16(a) }

// ipOf is a as an A; false when a is not of A's family.
func ipOf[A ip](a netip.Addr) (A, bool) {
	var k A
	switch p := any(&k).(type) {
	case *ip4:
		if !a.Is4() {
			return k, false
		}
		*p = a.As4()
	case *ip16:
		if !a.Is6() {
			return k, false
		}
		*p = a.As16()
	}
	return k, true
}

// pfx is a prefix of A's family.
type pfx[A ip] struct {
	a    A
	bits uint8
}

func pfxOf[A ip](p netip.Prefix) (pfx[A], bool) {
	a, ok := ipOf[A](p.Addr())
	return pfx[A]{a: a, bits: uint8(p.Bits())}, ok && p.IsValid()
}

func (k pfx[A]) prefix() netip.Prefix { return netip.PrefixFrom(k.a.addr(), int(k.bits)) }

// routeVal is a route's entry: its gateway (when its template has one)
// and its template's index in Desired.tmpls.
type routeVal[A ip] struct {
	gw A
	t  uint8
}

// entries are the routes, neighbours and FDB entries of a state whose
// addresses are As.
type entries[A ip] struct {
	routes map[pfx[A]]routeVal[A]
	neighs map[A]MAC
	fdb    map[MAC]A
}

func newEntries[A ip](n int) *entries[A] {
	return &entries[A]{
		routes: make(map[pfx[A]]routeVal[A], n+1),
		neighs: make(map[A]MAC, n),
		fdb:    make(map[MAC]A, n),
	}
}

// routeTmpl is what the routes of one kind have in common.
type routeTmpl struct {
	link, metric                 int
	gw, onLink, blackhole, viaNH bool // viaNH: NhID is nexthopID(Dst)
}

// tmplOf returns the index of w's template in d.tmpls, added if new.
func (d *Desired) tmplOf(w Route) uint8 {
	t := routeTmpl{link: w.Link, metric: w.Metric, gw: w.Gw.IsValid(), onLink: w.OnLink, blackhole: w.Blackhole, viaNH: w.NhID != 0}
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

func routeAt[A ip](d *Desired, k pfx[A], v routeVal[A]) Route {
	t := d.tmpls[v.t]
	w := Route{Dst: k.prefix(), Link: t.link, OnLink: t.onLink, Blackhole: t.blackhole, Metric: t.metric}
	if t.gw {
		w.Gw = v.gw.addr()
	}
	if t.viaNH {
		w.NhID = nexthopID(w.Dst)
	}
	return w
}

func setRouteIn[A ip](d *Desired, e *entries[A], w Route) {
	k, ok := pfxOf[A](w.Dst)
	v := routeVal[A]{t: d.tmplOf(w)}
	if d.tmpls[v.t].gw {
		var gok bool
		v.gw, gok = ipOf[A](w.Gw)
		ok = ok && gok
	}
	if !ok {
		panic("dataplane: route " + w.String() + " of another family than its desired state's")
	}
	unNH(d, e, k)
	e.routes[k] = v
	if d.tmpls[v.t].viaNH {
		d.nhCount++
		d.nhBits[k.bits]++
		d.nhLens |= 1 << k.bits
	}
}

func deleteRouteIn[A ip](d *Desired, e *entries[A], dst netip.Prefix) {
	if k, ok := pfxOf[A](dst); ok {
		unNH(d, e, k)
		delete(e.routes, k)
	}
}

// unNH uncounts the nexthop of the route at k, if it has one.
func unNH[A ip](d *Desired, e *entries[A], k pfx[A]) {
	if v, ok := e.routes[k]; ok && d.tmpls[v.t].viaNH {
		d.nhCount--
		if d.nhBits[k.bits]--; d.nhBits[k.bits] == 0 {
			d.nhLens &^= 1 << k.bits
		}
	}
}

// setRoute makes w the route to w.Dst.
func (d *Desired) setRoute(w Route) {
	if d.e4 != nil {
		setRouteIn(d, d.e4, w)
	} else {
		setRouteIn(d, d.e6, w)
	}
}

// deleteRoute removes the route to dst.
func (d *Desired) deleteRoute(dst netip.Prefix) {
	if d.e4 != nil {
		deleteRouteIn(d, d.e4, dst)
	} else {
		deleteRouteIn(d, d.e6, dst)
	}
}

func setNeighIn[A ip](e *entries[A], ip netip.Addr, mac MAC) {
	k, ok := ipOf[A](ip)
	if !ok {
		panic("dataplane: neighbour " + ip.String() + " of another family than its desired state's")
	}
	e.neighs[k] = mac
}

func setFDBIn[A ip](e *entries[A], mac MAC, dst netip.Addr) {
	k, ok := ipOf[A](dst)
	if !ok {
		panic("dataplane: FDB entry " + mac.String() + " to " + dst.String() + " of another family than its desired state's")
	}
	e.fdb[mac] = k
}

func deleteNeighIn[A ip](e *entries[A], ip netip.Addr) {
	if k, ok := ipOf[A](ip); ok {
		delete(e.neighs, k)
	}
}

// setNeigh makes mac the neighbour ip's, and dst where the FDB entry of
// mac sends.
func (d *Desired) setNeigh(ip netip.Addr, mac MAC, dst netip.Addr) {
	if d.e4 != nil {
		setNeighIn(d.e4, ip, mac)
		setFDBIn(d.e4, mac, dst)
	} else {
		setNeighIn(d.e6, ip, mac)
		setFDBIn(d.e6, mac, dst)
	}
}

// deleteNeigh removes the neighbour ip and the FDB entry of mac.
func (d *Desired) deleteNeigh(ip netip.Addr, mac MAC) {
	if d.e4 != nil {
		deleteNeighIn(d.e4, ip)
		delete(d.e4.fdb, mac)
	} else {
		deleteNeighIn(d.e6, ip)
		delete(d.e6.fdb, mac)
	}
}

// clearEntries empties d's entries, keeping the maps' memory.
func (d *Desired) clearEntries() {
	if d.e4 != nil {
		clear(d.e4.routes)
		clear(d.e4.neighs)
		clear(d.e4.fdb)
	}
	if d.e6 != nil {
		clear(d.e6.routes)
		clear(d.e6.neighs)
		clear(d.e6.fdb)
	}
	d.tmpls = d.tmpls[:0]
	d.nhCount, d.nhLens, d.nhBits = 0, 0, [33]int32{}
}

// rendered reports whether d holds a rendered state (not nil, nor only the
// device address the driver publishes before its first render).
func (d *Desired) rendered() bool { return d != nil && (d.e4 != nil || d.e6 != nil) }

func routeIn[A ip](d *Desired, e *entries[A], dst netip.Prefix) (Route, bool) {
	k, ok := pfxOf[A](dst)
	if !ok {
		return Route{}, false
	}
	v, ok := e.routes[k]
	if !ok {
		return Route{}, false
	}
	return routeAt(d, k, v), true
}

// Route returns the route d asks for to dst.
func (d *Desired) Route(dst netip.Prefix) (Route, bool) {
	switch {
	case d == nil:
	case d.e4 != nil:
		return routeIn(d, d.e4, dst)
	case d.e6 != nil:
		return routeIn(d, d.e6, dst)
	}
	return Route{}, false
}

func routesIn[A ip](d *Desired, e *entries[A], yield func(Route) bool) {
	for k, v := range e.routes {
		if !yield(routeAt(d, k, v)) {
			return
		}
	}
}

// Routes are the routes d asks for, in no particular order.
func (d *Desired) Routes() iter.Seq[Route] {
	return func(yield func(Route) bool) {
		switch {
		case d == nil:
		case d.e4 != nil:
			routesIn(d, d.e4, yield)
		case d.e6 != nil:
			routesIn(d, d.e6, yield)
		}
	}
}

// NumRoutes is how many routes d asks for.
func (d *Desired) NumRoutes() int { r, _, _ := d.sizes(); return r }

// NumNeighs is how many neighbours d asks for.
func (d *Desired) NumNeighs() int { _, n, _ := d.sizes(); return n }

// NumFDB is how many FDB entries d asks for.
func (d *Desired) NumFDB() int { _, _, f := d.sizes(); return f }

func (d *Desired) sizes() (routes, neighs, fdb int) {
	switch {
	case d == nil:
	case d.e4 != nil:
		return len(d.e4.routes), len(d.e4.neighs), len(d.e4.fdb)
	case d.e6 != nil:
		return len(d.e6.routes), len(d.e6.neighs), len(d.e6.fdb)
	}
	return 0, 0, 0
}

func neighIn[A ip](e *entries[A], ip netip.Addr) (MAC, bool) {
	k, ok := ipOf[A](ip)
	if !ok {
		return MAC{}, false
	}
	m, ok := e.neighs[k]
	return m, ok
}

// Neigh returns the MAC d asks the neighbour ip to have.
func (d *Desired) Neigh(ip netip.Addr) (MAC, bool) {
	switch {
	case d == nil:
	case d.e4 != nil:
		return neighIn(d.e4, ip)
	case d.e6 != nil:
		return neighIn(d.e6, ip)
	}
	return MAC{}, false
}

func neighsIn[A ip](e *entries[A], yield func(netip.Addr, MAC) bool) {
	for k, m := range e.neighs {
		if !yield(k.addr(), m) {
			return
		}
	}
}

// Neighs are the neighbours d asks for (address → MAC), in no particular
// order.
func (d *Desired) Neighs() iter.Seq2[netip.Addr, MAC] {
	return func(yield func(netip.Addr, MAC) bool) {
		switch {
		case d == nil:
		case d.e4 != nil:
			neighsIn(d.e4, yield)
		case d.e6 != nil:
			neighsIn(d.e6, yield)
		}
	}
}

// FDBDst returns the underlay address d's FDB entry for mac sends to.
func (d *Desired) FDBDst(mac MAC) (netip.Addr, bool) {
	switch {
	case d == nil:
	case d.e4 != nil:
		k, ok := d.e4.fdb[mac]
		return k.addr(), ok
	case d.e6 != nil:
		k, ok := d.e6.fdb[mac]
		return k.addr(), ok
	}
	return netip.Addr{}, false
}

func fdbIn[A ip](e *entries[A], yield func(MAC, netip.Addr) bool) {
	for m, k := range e.fdb {
		if !yield(m, k.addr()) {
			return
		}
	}
}

// FDB are the FDB entries d asks for (MAC → underlay address), in no
// particular order.
func (d *Desired) FDB() iter.Seq2[MAC, netip.Addr] {
	return func(yield func(MAC, netip.Addr) bool) {
		switch {
		case d == nil:
		case d.e4 != nil:
			fdbIn(d.e4, yield)
		case d.e6 != nil:
			fdbIn(d.e6, yield)
		}
	}
}

// entryDiff is what differs between two states (see diffEntries).
type entryDiff struct {
	routeAdd, routeDel []netip.Prefix
	neighAdd, neighDel []netip.Addr
	fdbAdd, fdbDel     []MAC
}

// diffEntries lists, per kind of entry, the keys of d that old lacks or
// holds differently (to add or replace) and the keys of old that d lacks
// or holds differently (to delete, when the replace does not cover them).
func (d *Desired) diffEntries(old *Desired) entryDiff {
	switch {
	case d.e4 != nil:
		return diffIn(old, old.e4, d, d.e4)
	case d.e6 != nil:
		return diffIn(old, old.e6, d, d.e6)
	}
	return entryDiff{}
}

func diffIn[A ip](old *Desired, oe *entries[A], d *Desired, de *entries[A]) entryDiff {
	if oe == nil {
		oe = &entries[A]{}
	}
	var x entryDiff
	ra, rd := diffMaps(oe.routes, de.routes, func(a, b routeVal[A]) bool {
		ta, tb := old.tmpls[a.t], d.tmpls[b.t]
		return ta == tb && (!ta.gw || a.gw == b.gw)
	})
	x.routeAdd, x.routeDel = prefixesOf(ra), prefixesOf(rd)
	na, nd := diffMaps(oe.neighs, de.neighs, func(a, b MAC) bool { return a == b })
	x.neighAdd, x.neighDel = addrsOf(na), addrsOf(nd)
	x.fdbAdd, x.fdbDel = diffMaps(oe.fdb, de.fdb, func(a, b A) bool { return a == b })
	return x
}

func prefixesOf[A ip](ks []pfx[A]) []netip.Prefix {
	if len(ks) == 0 {
		return nil
	}
	ps := make([]netip.Prefix, len(ks))
	for i, k := range ks {
		ps[i] = k.prefix()
	}
	return ps
}

func addrsOf[A ip](ks []A) []netip.Addr {
	if len(ks) == 0 {
		return nil
	}
	as := make([]netip.Addr, len(ks))
	for i, k := range ks {
		as[i] = k.addr()
	}
	return as
}

// nexthopRoute finds the route that goes through the nexthop id: the one
// to the id's address, at one of the prefix lengths of d's routes through
// nexthops (one in practice: the overlay's subnet length). Only IPv4
// routes go through nexthops.
func (d *Desired) nexthopRoute(id uint32) (Route, bool) {
	if d == nil || d.e4 == nil || d.nhCount == 0 || id == 0 {
		return Route{}, false
	}
	a := ip4{byte(id >> 24), byte(id >> 16), byte(id >> 8), byte(id)}
	for lens := d.nhLens; lens != 0; lens &= lens - 1 {
		k := pfx[ip4]{a: a, bits: uint8(bits.TrailingZeros64(lens))}
		if v, ok := d.e4.routes[k]; ok && d.tmpls[v.t].viaNH {
			return routeAt(d, k, v), true
		}
	}
	return Route{}, false
}

// hasNexthop reports whether one of d's routes goes through the nexthop id.
func (d *Desired) hasNexthop(id uint32) bool {
	_, ok := d.nexthopRoute(id)
	return ok
}

// nexthopIDs are the ids of the nexthops d's routes go through.
func (d *Desired) nexthopIDs() iter.Seq[uint32] {
	return func(yield func(uint32) bool) {
		if d == nil || d.e4 == nil || d.nhCount == 0 {
			return
		}
		for k, v := range d.e4.routes {
			if d.tmpls[v.t].viaNH && !yield(nexthopID(k.prefix())) {
				return
			}
		}
	}
}

// newEntriesOf makes the entries of a state of family, sized for n peers.
func (d *Desired) newEntriesOf(family uint8, n int) {
	if family == unix.AF_INET6 {
		d.e6 = newEntries[ip16](n)
	} else {
		d.e4 = newEntries[ip4](n)
	}
}
