package dataplane

// How a Desired keeps its entries (issue 12: at 20,000 vxlan peers the
// desired state was ~9.5 MB of weftd's ~20 MB live heap, 356 bytes a peer).
//
// Keys and values hold no pointers (netip.Addr and netip.Prefix each hold
// one, so maps of them were scanned by every collection): an address is
// its 16 bytes (IPv4 in its mapped form, the state's Family telling
// which). A route is its destination and the index of its template, the
// few kinds of route one family asks for (device, metric, onlink,
// blackhole, through the nexthop object of id nexthopID(Dst), gateway:
// none, Dst's address as vxlan's are, or another one, kept in gws). The
// accessors hand the entries out as Route, netip.Addr and MAC values.

import (
	"iter"
	"net/netip"

	"golang.org/x/sys/unix"
)

// pfx16 is a prefix: its address as kept and its length in its family.
type pfx16 struct {
	a    [16]byte
	bits uint8
}

// routeTmpl is what the routes of one kind have in common.
type routeTmpl struct {
	link, metric int
	// gw: the gateway is in Desired.gws; gwDst: it is Dst's address;
	// viaNH: NhID is nexthopID(Dst).
	gw, gwDst, onLink, blackhole, viaNH bool
}

// key is a as d keeps it; false when a is not of d's family (or d is
// nil). Zones are not kept: lease addresses have none (the lease codec
// refuses them), nor have prefixes.
func (d *Desired) key(a netip.Addr) (k [16]byte, ok bool) {
	if d == nil || !a.IsValid() || a.Is4() != (d.Family != unix.AF_INET6) {
		return k, false
	}
	return a.As16(), true
}

func (d *Desired) addr(k [16]byte) netip.Addr {
	if d.Family == unix.AF_INET6 {
		return netip.AddrFrom16(k)
	}
	return netip.AddrFrom16(k).Unmap()
}

func (d *Desired) pfxKey(p netip.Prefix) (pfx16, bool) {
	a, ok := d.key(p.Addr())
	return pfx16{a: a, bits: uint8(p.Bits())}, ok && p.IsValid()
}

func (d *Desired) prefix(k pfx16) netip.Prefix { return netip.PrefixFrom(d.addr(k.a), int(k.bits)) }

// tmplOf returns the index of w's template in d.tmpls, added if new.
func (d *Desired) tmplOf(w Route) uint8 {
	gwDst := w.Gw.IsValid() && w.Gw == w.Dst.Addr()
	t := routeTmpl{link: w.Link, metric: w.Metric, gw: w.Gw.IsValid() && !gwDst, gwDst: gwDst, onLink: w.OnLink, blackhole: w.Blackhole, viaNH: w.NhID != 0}
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

func (d *Desired) routeAt(k pfx16, i uint8) Route {
	t := d.tmpls[i]
	w := Route{Dst: d.prefix(k), Link: t.link, OnLink: t.onLink, Blackhole: t.blackhole, Metric: t.metric}
	if t.gw {
		w.Gw = d.addr(d.gws[k])
	} else if t.gwDst {
		w.Gw = w.Dst.Addr()
	}
	if t.viaNH {
		w.NhID = nexthopID(w.Dst)
	}
	return w
}

// setRoute makes w the route to w.Dst.
func (d *Desired) setRoute(w Route) {
	k, ok := d.pfxKey(w.Dst)
	i := d.tmplOf(w)
	gw, gok := d.key(w.Gw)
	if !ok || d.tmpls[i].gw && !gok {
		panic("dataplane: route " + w.String() + " of another family than its desired state's")
	}
	d.deleteRoute(w.Dst)
	d.routes[k] = i
	if d.tmpls[i].gw {
		d.gws[k] = gw
	}
	if d.tmpls[i].viaNH {
		d.nhCount++
		d.nhBits[k.bits]++
		d.nhLens |= 1 << k.bits
	}
}

// deleteRoute removes the route to dst, uncounting its nexthop if it has
// one.
func (d *Desired) deleteRoute(dst netip.Prefix) {
	k, ok := d.pfxKey(dst)
	if i, had := d.routes[k]; ok && had {
		if d.tmpls[i].viaNH {
			d.nhCount--
			if d.nhBits[k.bits]--; d.nhBits[k.bits] == 0 {
				d.nhLens &^= 1 << k.bits
			}
		}
		delete(d.routes, k)
		delete(d.gws, k)
	}
}

// setNeigh makes mac the neighbour ip's, and dst where the FDB entry of
// mac sends.
func (d *Desired) setNeigh(ip netip.Addr, mac MAC, dst netip.Addr) {
	k, ok := d.key(ip)
	kd, dok := d.key(dst)
	if !ok || !dok {
		panic("dataplane: neighbour " + ip.String() + " at " + mac.String() + " to " + dst.String() + " of another family than its desired state's")
	}
	d.neighs[k] = mac
	d.fdb[mac] = kd
}

// deleteNeigh removes the neighbour ip and the FDB entry of mac.
func (d *Desired) deleteNeigh(ip netip.Addr, mac MAC) {
	if k, ok := d.key(ip); ok {
		delete(d.neighs, k)
	}
	delete(d.fdb, mac)
}

// resetEntries empties d's entries, keeping their maps' memory, or makes
// the maps, sized for n peers, when d has none.
func (d *Desired) resetEntries(n int) {
	if d.rendered() {
		clear(d.routes)
		clear(d.neighs)
		clear(d.fdb)
		clear(d.gws)
		d.tmpls = d.tmpls[:0]
		d.nhCount, d.nhLens, d.nhBits = 0, 0, [33]int32{}
		return
	}
	d.routes = make(map[pfx16]uint8, n+1)
	d.neighs = make(map[[16]byte]MAC, n)
	d.fdb = make(map[MAC][16]byte, n)
	d.gws = make(map[pfx16][16]byte) // grown as needed: vxlan's routes need none
}

// rendered reports whether d holds a rendered state (not nil, nor only the
// device address the driver publishes before its first render).
func (d *Desired) rendered() bool { return d != nil && d.routes != nil }

// Route returns the route d asks for to dst.
func (d *Desired) Route(dst netip.Prefix) (Route, bool) {
	if k, ok := d.pfxKey(dst); ok {
		if i, ok := d.routes[k]; ok {
			return d.routeAt(k, i), true
		}
	}
	return Route{}, false
}

// Routes are the routes d asks for, in no particular order.
func (d *Desired) Routes() iter.Seq[Route] {
	return func(yield func(Route) bool) {
		for k, i := range d.entries().routes {
			if !yield(d.routeAt(k, i)) {
				return
			}
		}
	}
}

// noEntries stands for a nil state: it is never written.
var noEntries Desired

// entries is d, or an empty state for nil.
func (d *Desired) entries() *Desired {
	if d == nil {
		return &noEntries
	}
	return d
}

// NumRoutes is how many routes d asks for.
func (d *Desired) NumRoutes() int { return len(d.entries().routes) }

// NumNeighs is how many neighbours d asks for.
func (d *Desired) NumNeighs() int { return len(d.entries().neighs) }

// NumFDB is how many FDB entries d asks for.
func (d *Desired) NumFDB() int { return len(d.entries().fdb) }

// Neigh returns the MAC d asks the neighbour ip to have.
func (d *Desired) Neigh(ip netip.Addr) (MAC, bool) {
	k, ok := d.key(ip)
	if !ok {
		return MAC{}, false
	}
	m, ok := d.neighs[k]
	return m, ok
}

// Neighs are the neighbours d asks for (address → MAC), in no particular
// order.
func (d *Desired) Neighs() iter.Seq2[netip.Addr, MAC] {
	return func(yield func(netip.Addr, MAC) bool) {
		for k, m := range d.entries().neighs {
			if !yield(d.addr(k), m) {
				return
			}
		}
	}
}

// FDBDst returns the underlay address d's FDB entry for mac sends to.
func (d *Desired) FDBDst(mac MAC) (netip.Addr, bool) {
	if k, ok := d.entries().fdb[mac]; ok {
		return d.addr(k), true
	}
	return netip.Addr{}, false
}

// FDB are the FDB entries d asks for (MAC → underlay address), in no
// particular order.
func (d *Desired) FDB() iter.Seq2[MAC, netip.Addr] {
	return func(yield func(MAC, netip.Addr) bool) {
		for m, k := range d.entries().fdb {
			if !yield(m, d.addr(k)) {
				return
			}
		}
	}
}
