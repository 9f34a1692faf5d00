package rtnl

// Building and parsing rtnetlink messages in place: no per-entry allocation
// (see conn.go for why).

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const (
	nlmsgHdrLen = unix.SizeofNlMsghdr // 16
	rtattrHdr   = unix.SizeofRtAttr   // 4
)

var native = binary.NativeEndian

// rtaNHID is RTA_NH_ID (a route through a nexthop object), which x/sys/unix
// does not name.
const rtaNHID = 30

// ProtWeft is the route protocol number on every route weft installs
// (`ip route show proto 87`). It is how weft recognises its own routes after a
// restart, to remove leftovers of leases that no longer exist, without ever
// touching routes somebody else made. 87 is 0x57, ASCII 'W'; it is not in
// iproute2's rt_protos (0-4 kernel, 8-18 routing daemons, 42 babel, 99 openr,
// 186-192 bgp/isis/ospf/rip/eigrp) nor used by felix (80) or bird (12).
const ProtWeft netlink.RouteProtocol = 87

// putHdr writes a netlink header at b[0:16].
func putHdr(b []byte, length uint32, typ, flags uint16, seq uint32) {
	native.PutUint32(b[0:], length)
	native.PutUint16(b[4:], typ)
	native.PutUint16(b[6:], flags)
	native.PutUint32(b[8:], seq)
	native.PutUint32(b[12:], 0)
}

func align4(n int) int { return (n + 3) &^ 3 }

// appendAttr appends one rtattr with value v.
func appendAttr(b []byte, typ uint16, v []byte) []byte {
	l := rtattrHdr + len(v)
	b = native.AppendUint16(b, uint16(l))
	b = native.AppendUint16(b, typ)
	b = append(b, v...)
	for range align4(l) - l {
		b = append(b, 0)
	}
	return b
}

func appendAttrU32(b []byte, typ uint16, v uint32) []byte {
	b = native.AppendUint16(b, rtattrHdr+4)
	b = native.AppendUint16(b, typ)
	return native.AppendUint32(b, v)
}

func appendAttrAddr(b []byte, typ uint16, a netip.Addr) []byte {
	if a.Is4() {
		v := a.As4()
		return appendAttr(b, typ, v[:])
	}
	v := a.As16()
	return appendAttr(b, typ, v[:])
}

// Attrs walks the attributes of a netlink message payload in place: Next
// moves to the next one, whose type (nesting and byte-order flags cleared)
// and value are then in Type and Value. The layout is the same in every
// netlink family, so rules reads nf_tables answers with it too.
type Attrs struct {
	b     []byte
	Type  uint16
	Value []byte
}

// WalkAttrs returns a walker over the attributes in b.
func WalkAttrs(b []byte) Attrs { return Attrs{b: b} }

// Next moves to the next attribute; false at the end or at a malformed one.
func (a *Attrs) Next() bool {
	if len(a.b) < rtattrHdr {
		return false
	}
	l := int(native.Uint16(a.b))
	if l < rtattrHdr || l > len(a.b) {
		return false
	}
	a.Type = native.Uint16(a.b[2:]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
	a.Value = a.b[rtattrHdr:l]
	a.b = a.b[min(align4(l), len(a.b)):]
	return true
}

// AppendAttrString appends an attribute holding s NUL-terminated.
func AppendAttrString(b []byte, typ uint16, s string) []byte {
	l := rtattrHdr + len(s) + 1
	b = native.AppendUint16(b, uint16(l))
	b = native.AppendUint16(b, typ)
	b = append(b, s...)
	b = append(b, 0)
	for range align4(l) - l {
		b = append(b, 0)
	}
	return b
}

// nlError turns a negative errno of an NLMSG_ERROR or NLMSG_DONE payload into
// an error, with the kernel's extended-ack message when it sent one.
func nlError(flags uint16, payload []byte) error {
	if len(payload) < 4 {
		return fmt.Errorf("netlink: truncated error message")
	}
	errno := -int32(native.Uint32(payload))
	if errno == 0 {
		return nil
	}
	err := error(unix.Errno(errno))
	if flags&unix.NLM_F_ACK_TLVS == 0 || len(payload) < 4+nlmsgHdrLen {
		return err
	}
	rest := payload[4:]
	if flags&unix.NLM_F_CAPPED != 0 {
		rest = rest[nlmsgHdrLen:]
	} else {
		l := align4(int(native.Uint32(rest)))
		if l > len(rest) {
			return err
		}
		rest = rest[l:]
	}
	a := Attrs{b: rest}
	for a.Next() {
		if a.Type == unix.NLMSGERR_ATTR_MSG {
			msg := a.Value
			for len(msg) > 0 && msg[len(msg)-1] == 0 {
				msg = msg[:len(msg)-1]
			}
			return fmt.Errorf("%w: %s", err, msg)
		}
	}
	return err
}

// Message builders. Each appends a payload (after the netlink header).

// appendNdmsg appends struct ndmsg.
func appendNdmsg(b []byte, family uint8, ifindex int, state uint16, flags, typ uint8) []byte {
	b = append(b, family, 0, 0, 0)
	b = native.AppendUint32(b, uint32(int32(ifindex)))
	b = native.AppendUint16(b, state)
	return append(b, flags, typ)
}

// appendRtmsg appends struct rtmsg of the given family (AF_INET or AF_INET6).
func appendRtmsg(b []byte, family, dstLen, tos, table, proto, scope, typ uint8, flags uint32) []byte {
	b = append(b, family, dstLen, 0, tos, table, proto, scope, typ)
	return native.AppendUint32(b, flags)
}

// RouteSpec is a route weft wants in the main table, with weft's protocol.
type RouteSpec struct {
	Dst       netip.Prefix
	Gw        netip.Addr // zero for a blackhole route
	Link      int        // 0 for a blackhole route
	OnLink    bool
	Blackhole bool
	Metric    int
	// NhID, when not 0, sends the route through the kernel nexthop object
	// of that id (RTA_NH_ID) instead of Gw, Link and OnLink, which then
	// only describe that nexthop: it must exist before the route.
	NhID uint32
}

// appendRouteSpec appends the RTM_NEWROUTE payload of w, a route of family,
// as netlink.RouteReplace would send it.
func appendRouteSpec(b []byte, family uint8, w RouteSpec) []byte {
	typ := uint8(unix.RTN_UNICAST)
	if w.Blackhole {
		typ = unix.RTN_BLACKHOLE
	}
	var flags uint32
	if w.OnLink && w.NhID == 0 {
		flags = unix.RTNH_F_ONLINK
	}
	b = appendRtmsg(b, family, uint8(w.Dst.Bits()), 0, unix.RT_TABLE_MAIN, uint8(ProtWeft), unix.RT_SCOPE_UNIVERSE, typ, flags)
	b = appendAttrAddr(b, unix.RTA_DST, w.Dst.Addr())
	if w.NhID != 0 && !w.Blackhole {
		// The kernel refuses a gateway or device beside a nexthop id.
		b = appendAttrU32(b, rtaNHID, w.NhID)
		if w.Metric > 0 {
			b = appendAttrU32(b, unix.RTA_PRIORITY, uint32(w.Metric))
		}
		return b
	}
	if w.Gw.IsValid() {
		b = appendAttrAddr(b, unix.RTA_GATEWAY, w.Gw)
	}
	if w.Metric > 0 {
		b = appendAttrU32(b, unix.RTA_PRIORITY, uint32(w.Metric))
	}
	if w.Link > 0 {
		b = appendAttrU32(b, unix.RTA_OIF, uint32(w.Link))
	}
	return b
}

// Route is one main-table route (IPv4 or IPv6) as a dump reports it, with
// what a comparison or a delete needs.
type Route struct {
	Dst      netip.Prefix
	Gw       netip.Addr
	Link     int
	Priority int
	Flags    uint32
	Table    uint32
	Tos      uint8
	Protocol uint8
	Scope    uint8
	Type     uint8
	// NhID is the nexthop object the route goes through (0: none). With
	// nexthop_compat_mode=1, the default, the dump also carries that
	// nexthop's gateway, device and flags.
	NhID uint32
	// Other: a next hop weft never sets (multipath, RTA_VIA, an encap).
	Other bool
}

// String describes a dumped route in ip-route terms, for messages.
func (r Route) String() string {
	var s string
	switch r.Type {
	case 0, unix.RTN_UNICAST:
		s = r.Dst.String()
		if r.NhID != 0 {
			s += fmt.Sprintf(" nhid %d", r.NhID)
		}
		if r.Gw.IsValid() {
			s += " via " + r.Gw.String()
		}
		if r.Link != 0 {
			s += fmt.Sprintf(" dev #%d", r.Link)
		}
	case unix.RTN_BLACKHOLE:
		s = "blackhole " + r.Dst.String()
	case unix.RTN_UNREACHABLE:
		s = "unreachable " + r.Dst.String()
	case unix.RTN_PROHIBIT:
		s = "prohibit " + r.Dst.String()
	default:
		s = fmt.Sprintf("type %d %s", r.Type, r.Dst)
	}
	return s + fmt.Sprintf(" proto %d metric %d", r.Protocol, r.Priority)
}

// parseRoute reads an RTM_NEWROUTE payload. ok is false for anything that is
// not a route of family (AF_INET or AF_INET6).
func parseRoute(p []byte, family uint8) (r Route, ok bool) {
	if len(p) < unix.SizeofRtMsg || p[0] != family {
		return r, false
	}
	// The default route carries no RTA_DST.
	dst, alen := netip.IPv4Unspecified(), 4
	switch family {
	case unix.AF_INET:
	case unix.AF_INET6:
		dst, alen = netip.IPv6Unspecified(), 16
	default:
		return r, false
	}
	dstLen := int(p[1])
	r.Tos, r.Table, r.Protocol, r.Scope, r.Type = p[3], uint32(p[4]), p[5], p[6], p[7]
	r.Flags = native.Uint32(p[8:])
	if r.Flags&unix.RTM_F_CLONED != 0 {
		return r, false // a cached exception (PMTU), not a FIB entry
	}
	a := Attrs{b: p[unix.SizeofRtMsg:]}
	for a.Next() {
		switch a.Type {
		case unix.RTA_DST:
			if len(a.Value) == alen {
				dst, _ = netip.AddrFromSlice(a.Value)
			}
		case unix.RTA_GATEWAY:
			if len(a.Value) == alen {
				r.Gw, _ = netip.AddrFromSlice(a.Value)
			}
		case unix.RTA_OIF:
			if len(a.Value) == 4 {
				r.Link = int(native.Uint32(a.Value))
			}
		case unix.RTA_PRIORITY:
			if len(a.Value) == 4 {
				r.Priority = int(native.Uint32(a.Value))
			}
		case unix.RTA_TABLE:
			if len(a.Value) == 4 {
				r.Table = native.Uint32(a.Value)
			}
		case rtaNHID:
			if len(a.Value) == 4 {
				r.NhID = native.Uint32(a.Value)
			}
		case unix.RTA_MULTIPATH, unix.RTA_VIA, unix.RTA_ENCAP:
			r.Other = true
		}
	}
	if dstLen > dst.BitLen() {
		return r, false
	}
	r.Dst = netip.PrefixFrom(dst, dstLen)
	return r, true
}

// appendRouteDel appends the RTM_DELROUTE payload that removes r, a route of
// family (as netlink.RouteDel of the dumped route would).
func appendRouteDel(b []byte, family uint8, r Route) []byte {
	table := uint8(r.Table)
	if r.Table >= 256 {
		table = unix.RT_TABLE_UNSPEC
	}
	b = appendRtmsg(b, family, uint8(r.Dst.Bits()), r.Tos, table, r.Protocol, r.Scope, r.Type, r.Flags)
	b = appendAttrAddr(b, unix.RTA_DST, r.Dst.Addr())
	if r.Table >= 256 {
		b = appendAttrU32(b, unix.RTA_TABLE, r.Table)
	}
	if r.NhID != 0 {
		// A route through a nexthop object matches a delete by its id
		// only: naming the gateway or device the dump reports makes the
		// kernel find no such route.
		b = appendAttrU32(b, rtaNHID, r.NhID)
		if r.Priority > 0 {
			b = appendAttrU32(b, unix.RTA_PRIORITY, uint32(r.Priority))
		}
		return b
	}
	if r.Gw.IsValid() {
		b = appendAttrAddr(b, unix.RTA_GATEWAY, r.Gw)
	}
	if r.Priority > 0 {
		b = appendAttrU32(b, unix.RTA_PRIORITY, uint32(r.Priority))
	}
	if r.Link > 0 {
		b = appendAttrU32(b, unix.RTA_OIF, uint32(r.Link))
	}
	return b
}

// Neigh is one neighbour or FDB entry as a dump reports it.
type Neigh struct {
	Family  uint8
	Link    int
	State   uint16
	Flags   uint8
	Type    uint8
	IP      netip.Addr
	MAC     [6]byte
	MACLen  int // 6 for an Ethernet address; other lengths are never weft's
	Vlan    uint16
	HasVlan bool
	VNI     uint32
	HasVNI  bool
	Port    uint16 // network order as sent
	HasPort bool
	NHIf    uint32 // NDA_IFINDEX (vxlan remote's outgoing interface)
	HasNHIf bool
}

func parseNeigh(p []byte) (n Neigh, ok bool) {
	if len(p) < unix.SizeofNdMsg {
		return n, false
	}
	n.Family = p[0]
	n.Link = int(int32(native.Uint32(p[4:])))
	n.State = native.Uint16(p[8:])
	n.Flags, n.Type = p[10], p[11]
	a := Attrs{b: p[unix.SizeofNdMsg:]}
	for a.Next() {
		switch a.Type {
		case unix.NDA_DST:
			n.IP, _ = netip.AddrFromSlice(a.Value)
			n.IP = n.IP.Unmap()
		case unix.NDA_LLADDR:
			n.MACLen = len(a.Value)
			if len(a.Value) == 6 {
				n.MAC = [6]byte(a.Value)
			}
		case unix.NDA_VLAN:
			if len(a.Value) == 2 {
				n.Vlan, n.HasVlan = native.Uint16(a.Value), true
			}
		case unix.NDA_VNI:
			if len(a.Value) == 4 {
				n.VNI, n.HasVNI = native.Uint32(a.Value), true
			}
		case unix.NDA_PORT:
			if len(a.Value) == 2 {
				n.Port, n.HasPort = native.Uint16(a.Value), true
			}
		case unix.NDA_IFINDEX:
			if len(a.Value) == 4 {
				n.NHIf, n.HasNHIf = native.Uint32(a.Value), true
			}
		}
	}
	return n, true
}

// appendNeighDel appends the RTM_DELNEIGH payload that removes n: for an FDB
// entry every attribute that selects one remote of the MAC is sent back, so
// that exactly the dumped remote goes.
func appendNeighDel(b []byte, n Neigh) []byte {
	flags := n.Flags
	if n.Family == unix.AF_BRIDGE {
		flags |= netlink.NTF_SELF
	}
	b = appendNdmsg(b, n.Family, n.Link, n.State, flags, n.Type)
	if n.IP.IsValid() {
		b = appendAttrAddr(b, unix.NDA_DST, n.IP)
	}
	if n.MACLen == 6 {
		b = appendAttr(b, unix.NDA_LLADDR, n.MAC[:])
	}
	if n.Family == unix.AF_BRIDGE {
		if n.HasVlan {
			b = appendAttr(b, unix.NDA_VLAN, native.AppendUint16(nil, n.Vlan))
		}
		if n.HasVNI {
			b = appendAttrU32(b, unix.NDA_VNI, n.VNI)
		}
		if n.HasPort {
			b = appendAttr(b, unix.NDA_PORT, native.AppendUint16(nil, n.Port))
		}
		if n.HasNHIf {
			b = appendAttrU32(b, unix.NDA_IFINDEX, n.NHIf)
		}
	}
	return b
}

// appendNeighSet appends the RTM_NEWNEIGH payload of a permanent entry: an
// IPv4 neighbour (ip → mac) or, for AF_BRIDGE, an FDB entry (mac → dst ip).
func appendNeighSet(b []byte, family uint8, link int, ip netip.Addr, mac []byte) []byte {
	var flags, typ uint8
	if family == unix.AF_BRIDGE {
		flags = netlink.NTF_SELF
	} else {
		typ = unix.RTN_UNICAST
	}
	b = appendNdmsg(b, family, link, netlink.NUD_PERMANENT, flags, typ)
	b = appendAttrAddr(b, unix.NDA_DST, ip)
	return appendAttr(b, unix.NDA_LLADDR, mac)
}

// Nexthop is a kernel nexthop object (ip nexthop): weft's are single
// gateways on a device, proto ProtWeft, and its routes refer to them by
// id (RouteSpec.NhID). With one fib_info per distinct route, a kernel
// whose fib_info hash leaves out the gateway walks every other peer route
// on each insert; routes through nexthop objects share no such bucket.
type Nexthop struct {
	ID       uint32
	Family   uint8 // of the gateway: AF_INET or AF_INET6
	Gw       netip.Addr
	Link     int
	OnLink   bool
	Protocol uint8 // ProtWeft on weft's
	// Other: a nexthop weft never makes (a group, a blackhole, an encap,
	// an FDB nexthop, or one without a gateway).
	Other bool
}

// String describes a nexthop in ip-nexthop terms, for messages.
func (n Nexthop) String() string {
	s := fmt.Sprintf("id %d", n.ID)
	if n.Gw.IsValid() {
		s += " via " + n.Gw.String()
	}
	if n.Link != 0 {
		s += fmt.Sprintf(" dev #%d", n.Link)
	}
	if n.OnLink {
		s += " onlink"
	}
	return s + fmt.Sprintf(" proto %d", n.Protocol)
}

// appendNhmsg appends struct nhmsg.
func appendNhmsg(b []byte, family, proto uint8, flags uint32) []byte {
	b = append(b, family, 0, proto, 0)
	return native.AppendUint32(b, flags)
}

// appendNexthop appends the RTM_NEWNEXTHOP payload of n with weft's
// protocol, as `ip nexthop replace id ID via GW dev LINK [onlink] proto 87`
// sends it.
func appendNexthop(b []byte, n Nexthop) []byte {
	var flags uint32
	if n.OnLink {
		flags = unix.RTNH_F_ONLINK
	}
	family := n.Family
	if family == 0 {
		family = unix.AF_INET
		if n.Gw.Is6() {
			family = unix.AF_INET6
		}
	}
	b = appendNhmsg(b, family, uint8(ProtWeft), flags)
	b = appendAttrU32(b, unix.NHA_ID, n.ID)
	b = appendAttrU32(b, unix.NHA_OIF, uint32(n.Link))
	return appendAttrAddr(b, unix.NHA_GATEWAY, n.Gw)
}

// appendNexthopDel appends the RTM_DELNEXTHOP payload removing nexthop id.
func appendNexthopDel(b []byte, id uint32) []byte {
	b = appendNhmsg(b, unix.AF_UNSPEC, 0, 0)
	return appendAttrU32(b, unix.NHA_ID, id)
}

// parseNexthop reads an RTM_NEWNEXTHOP or RTM_DELNEXTHOP payload.
func parseNexthop(p []byte) (n Nexthop, ok bool) {
	if len(p) < unix.SizeofNhmsg {
		return n, false
	}
	n.Family, n.Protocol = p[0], p[2]
	n.OnLink = native.Uint32(p[4:])&unix.RTNH_F_ONLINK != 0
	a := Attrs{b: p[unix.SizeofNhmsg:]}
	for a.Next() {
		switch a.Type {
		case unix.NHA_ID:
			if len(a.Value) == 4 {
				n.ID = native.Uint32(a.Value)
			}
		case unix.NHA_OIF:
			if len(a.Value) == 4 {
				n.Link = int(native.Uint32(a.Value))
			}
		case unix.NHA_GATEWAY:
			n.Gw, _ = netip.AddrFromSlice(a.Value)
		case unix.NHA_GROUP, unix.NHA_BLACKHOLE, unix.NHA_ENCAP, nhaFDB:
			n.Other = true
		}
	}
	if !n.Gw.IsValid() {
		n.Other = true
	}
	return n, n.ID != 0
}

// nhaFDB is NHA_FDB (a nexthop for vxlan FDB entries), which x/sys/unix
// does not name.
const nhaFDB = 11
