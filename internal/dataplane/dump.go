package dataplane

// Raw rtnetlink dumps and batched writes on weft's own rtnetlink socket.
//
// A full apply at 1,000 peers dumps ~3,000 routes, neighbours and FDB
// entries every resync period. vishvananda's list functions allocate a 64 KiB
// receive buffer per recv and a net.IP, net.IPNet, HardwareAddr … per entry:
// ~4.6 MB and ~11,000 allocations per resync, and then the GC cycle that they
// trigger, which was most of weftd's idle CPU. Here a dump is read into one
// reused buffer and each message is looked at in place; the callers compare
// it with the desired maps without building anything per entry. The kernel
// is also asked to filter (NETLINK_GET_STRICT_CHK: only the main table, only
// the one device) so that it neither formats nor sends other entries.
//
// Writes (adds, replaces, stale deletes) go out in batches: many requests in
// one sendmsg, an ack asked only of the last one, so the kernel answers only
// failures and the batch's end. That is two syscalls per batch instead of two
// per entry, and no per-entry request or 64 KiB reply buffer.
//
// Everything goes through one NETLINK_ROUTE socket that the backend opens
// once (NewBackend), in the namespace its netlink handle works in (Host.NetNS),
// and closes with the backend: one socket per backend, whatever the number of
// entries. It is weft's own rather than the handle's, which vishvananda does
// not export.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

const (
	nlmsgHdrLen = unix.SizeofNlMsghdr // 16
	rtattrHdr   = unix.SizeofRtAttr   // 4
	// writeBatchMax bounds the requests in one sendmsg. A batch whose every
	// request fails makes the kernel queue one error (with the request
	// echoed, ~1 KiB of socket memory each) per request: 64 of them stay
	// well inside the default 208 KiB receive buffer.
	writeBatchMax = 64
	// recvBufSize holds the largest dump chunk the kernel sends (32 KiB).
	recvBufSize = 64 << 10
	// ioTimeout bounds a wait for the kernel's answer.
	ioTimeout = 10 * time.Second
)

var native = binary.NativeEndian

// rtaNHID is RTA_NH_ID (a route through a nexthop object), which x/sys/unix
// does not name.
const rtaNHID = 30

// recvBufs are the receive buffers of dumps and batches, reused so that a
// resync allocates none.
var recvBufs = sync.Pool{New: func() any { b := make([]byte, recvBufSize); return &b }}

// rtnl is weft's NETLINK_ROUTE socket. mu serialises request/answer
// exchanges: answers are matched by sequence number, and a reader must not
// take another exchange's datagrams.
type rtnl struct {
	mu   sync.Mutex
	sock *nl.NetlinkSocket // nil once closed
	seq  uint32
	// kernel is the destination of every send (c.mu held): Sendto writes
	// the raw form into the sockaddr it is given, so one shared by every
	// socket was a data race between backends sending at the same time.
	kernel unix.SockaddrNetlink
}

var (
	errNoRouteSocket = errors.New("no rtnetlink socket")
	errRouteClosed   = errors.New("rtnetlink socket is closed")
)

// openRTNL opens a NETLINK_ROUTE socket in ns (nil: the current namespace);
// the calling thread is back in its own namespace when it returns.
func openRTNL(ns *netns.NsHandle) (*rtnl, error) {
	at, where := netns.None(), "the current namespace"
	if ns != nil && ns.IsOpen() {
		at, where = *ns, fmt.Sprintf("namespace fd %d", int(*ns))
	}
	s, err := nl.GetNetlinkSocketAt(at, netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("open rtnetlink socket in %s: %w", where, err)
	}
	// The kernel's reason for a refused request ("Nexthop device is not
	// up"…) goes into the error; a kernel without extended acks (< 4.12)
	// just gives the errno.
	_ = s.SetExtAck(true)
	return &rtnl{sock: s, kernel: unix.SockaddrNetlink{Family: unix.AF_NETLINK}}, nil
}

// close closes the socket; it is idempotent, so that the halves of a
// dual-stack backend, which share one socket, may both close it.
func (c *rtnl) close() {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sock != nil {
		c.sock.Close()
		c.sock = nil
	}
}

// lock takes the socket for one exchange; the caller unlocks c.mu unless it
// gets an error.
func (c *rtnl) lock() error {
	if c == nil {
		return errNoRouteSocket
	}
	c.mu.Lock()
	if c.sock == nil {
		c.mu.Unlock()
		return errRouteClosed
	}
	return nil
}

func (c *rtnl) fd() int { return c.sock.GetFd() }

// nextSeq reserves n sequence numbers and returns the first (c.mu held).
func (c *rtnl) nextSeq(n int) uint32 {
	c.seq += uint32(n)
	return c.seq - uint32(n) + 1
}

func (c *rtnl) send(b []byte) error {
	for {
		err := unix.Sendto(c.fd(), b, 0, &c.kernel)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			if err := c.wait(unix.POLLOUT); err != nil {
				return err
			}
		default:
			return err
		}
	}
}

// recv reads one datagram into buf (the socket is non-blocking: vishvananda
// hands it to Go's poller; waiting here is a poll(2) on it).
func (c *rtnl) recv(buf []byte) (int, error) {
	for {
		n, err := unix.Read(c.fd(), buf)
		switch {
		case err == nil:
			if n < nlmsgHdrLen {
				return 0, fmt.Errorf("netlink: short read of %d bytes", n)
			}
			return n, nil
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			if err := c.wait(unix.POLLIN); err != nil {
				return 0, err
			}
		default:
			return 0, err
		}
	}
}

func (c *rtnl) wait(ev int16) error {
	to := ioTimeout
	fds := [1]unix.PollFd{{Fd: int32(c.fd()), Events: ev}}
	deadline := time.Now().Add(to)
	for {
		ms := int(time.Until(deadline).Milliseconds())
		if ms <= 0 {
			return fmt.Errorf("netlink: no answer from the kernel in %s: %w", to, unix.EAGAIN)
		}
		n, err := unix.Poll(fds[:], ms)
		if errors.Is(err, unix.EINTR) || (err == nil && n == 0) {
			continue
		}
		return err
	}
}

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

// attrs walks the rtattrs of a message payload in place.
type attrs struct {
	b   []byte
	typ uint16
	val []byte
}

func (a *attrs) next() bool {
	if len(a.b) < rtattrHdr {
		return false
	}
	l := int(native.Uint16(a.b))
	if l < rtattrHdr || l > len(a.b) {
		return false
	}
	a.typ = native.Uint16(a.b[2:]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
	a.val = a.b[rtattrHdr:l]
	a.b = a.b[min(align4(l), len(a.b)):]
	return true
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
	a := attrs{b: rest}
	for a.next() {
		if a.typ == unix.NLMSGERR_ATTR_MSG {
			msg := a.val
			for len(msg) > 0 && msg[len(msg)-1] == 0 {
				msg = msg[:len(msg)-1]
			}
			return fmt.Errorf("%w: %s", err, msg)
		}
	}
	return err
}

// strictDump turns on NETLINK_GET_STRICT_CHK for the requests sent until the
// returned restore runs, so that the kernel applies the filters in a dump
// request. Without it (kernels before 4.20) the dump is unfiltered and the
// callers' own checks still hold.
func (c *rtnl) strictDump() (restore func()) {
	prev, err := unix.GetsockoptInt(c.fd(), unix.SOL_NETLINK, unix.NETLINK_GET_STRICT_CHK)
	if err != nil || prev != 0 {
		return func() {}
	}
	if unix.SetsockoptInt(c.fd(), unix.SOL_NETLINK, unix.NETLINK_GET_STRICT_CHK, 1) != nil {
		return func() {}
	}
	return func() { _ = unix.SetsockoptInt(c.fd(), unix.SOL_NETLINK, unix.NETLINK_GET_STRICT_CHK, 0) }
}

// dumpRaw sends one dump request (typ, with payload req) and calls f with
// each answer of type want; f must not keep the slice. An interrupted dump
// (the table changed while it was read) is read to its end and reported as
// netlink.ErrDumpInterrupted, as vishvananda does, for dump() to retry.
func dumpRaw(c *rtnl, typ uint16, req []byte, want uint16, f func(msg []byte)) error {
	if err := c.lock(); err != nil {
		return fmt.Errorf("netlink: dump: %w", err)
	}
	defer c.mu.Unlock()
	bp := recvBufs.Get().(*[]byte)
	defer recvBufs.Put(bp)
	buf := *bp

	seq := c.nextSeq(1)
	var hdr [nlmsgHdrLen + 64]byte
	m := append(hdr[:nlmsgHdrLen], req...)
	putHdr(m, uint32(len(m)), typ, unix.NLM_F_REQUEST|unix.NLM_F_DUMP, seq)
	restore := c.strictDump()
	err := c.send(m)
	restore()
	if err != nil {
		return fmt.Errorf("netlink: send dump request: %w", err)
	}
	intr := false
	for {
		n, err := c.recv(buf)
		if err != nil {
			return fmt.Errorf("netlink: read dump: %w", err)
		}
		for b := buf[:n]; len(b) >= nlmsgHdrLen; {
			l := int(native.Uint32(b))
			if l < nlmsgHdrLen || l > len(b) {
				return fmt.Errorf("netlink: malformed message of length %d in a dump", l)
			}
			mtyp, flags, mseq := native.Uint16(b[4:]), native.Uint16(b[6:]), native.Uint32(b[8:])
			payload := b[nlmsgHdrLen:l]
			b = b[min(align4(l), len(b)):]
			if mseq != seq {
				continue // a late answer to an earlier request on this socket
			}
			intr = intr || flags&unix.NLM_F_DUMP_INTR != 0
			switch mtyp {
			case unix.NLMSG_DONE:
				if len(payload) >= 4 {
					if err := nlError(flags, payload); err != nil {
						return err
					}
				}
				if intr {
					return netlink.ErrDumpInterrupted
				}
				return nil
			case unix.NLMSG_ERROR:
				if err := nlError(flags, payload); err != nil {
					return err
				}
			case want:
				f(payload)
			}
		}
	}
}

// batch sends write requests writeBatchMax at a time. Build a request with
// begin, append the payload to b.buf, then end. The key of each failed
// request is passed to fail with the kernel's error; fail reports whether it
// is a failure (false: the error means success, e.g. ENOENT for a delete).
type batch[K any] struct {
	c     *rtnl
	buf   []byte
	start int
	keys  []K
	fail  func(key K, err error) bool
	sent  int // requests sent
	nfail int // of which failed
}

func newBatch[K any](c *rtnl, fail func(key K, err error) bool) *batch[K] {
	return &batch[K]{c: c, fail: fail}
}

// begin starts a request (its header is filled in by end).
func (b *batch[K]) begin() { b.start = len(b.buf); b.buf = append(b.buf, make([]byte, nlmsgHdrLen)...) }

// end finishes the request begun last (type and flags; NLM_F_REQUEST is
// added) and sends the batch when it is full.
func (b *batch[K]) end(key K, typ, flags uint16) {
	putHdr(b.buf[b.start:], uint32(len(b.buf)-b.start), typ, flags|unix.NLM_F_REQUEST, 0)
	b.keys = append(b.keys, key)
	if len(b.keys) >= writeBatchMax {
		b.flush()
	}
}

// ok is the number of requests that succeeded so far.
func (b *batch[K]) ok() int { return b.sent - b.nfail }

// flush sends what is queued and waits for the kernel to have processed all
// of it (the ack of the last request).
func (b *batch[K]) flush() {
	n := len(b.keys)
	if n == 0 {
		return
	}
	defer func() { b.buf, b.keys = b.buf[:0], b.keys[:0] }()
	b.sent += n
	failAll := func(err error) {
		for _, k := range b.keys {
			if b.fail(k, err) {
				b.nfail++
			}
		}
	}
	c := b.c
	if err := c.lock(); err != nil {
		failAll(fmt.Errorf("netlink: send %d requests: %w", n, err))
		return
	}
	defer c.mu.Unlock()
	seq0 := c.nextSeq(n)
	off := 0
	for i := range n {
		l := int(native.Uint32(b.buf[off:]))
		native.PutUint32(b.buf[off+8:], seq0+uint32(i))
		if i == n-1 {
			native.PutUint16(b.buf[off+6:], native.Uint16(b.buf[off+6:])|unix.NLM_F_ACK)
		}
		off += l
	}
	if err := c.send(b.buf); err != nil {
		failAll(fmt.Errorf("netlink: send %d requests: %w", n, err))
		return
	}
	bp := recvBufs.Get().(*[]byte)
	defer recvBufs.Put(bp)
	buf := *bp
	last := seq0 + uint32(n) - 1
	answered := 0
	for {
		got, err := c.recv(buf)
		if err != nil {
			// The kernel's answers for the rest are lost: count them as
			// failed so that the next pass retries them.
			err = fmt.Errorf("netlink: read answers: %w", err)
			for _, k := range b.keys[answered:] {
				if b.fail(k, err) {
					b.nfail++
				}
			}
			return
		}
		for m := buf[:got]; len(m) >= nlmsgHdrLen; {
			l := int(native.Uint32(m))
			if l < nlmsgHdrLen || l > len(m) {
				break
			}
			typ, flags, seq := native.Uint16(m[4:]), native.Uint16(m[6:]), native.Uint32(m[8:])
			payload := m[nlmsgHdrLen:l]
			m = m[min(align4(l), len(m)):]
			if typ != unix.NLMSG_ERROR || seq < seq0 || seq > last {
				continue
			}
			i := int(seq - seq0)
			answered = i + 1
			if err := nlError(flags, payload); err != nil && b.fail(b.keys[i], err) {
				b.nfail++
			}
			if seq == last {
				return
			}
		}
	}
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

// appendRouteWant appends the RTM_NEWROUTE payload of w, a route of family,
// as netlink.RouteReplace(w.route()) would send it.
func appendRouteWant(b []byte, family uint8, w routeWant) []byte {
	typ := uint8(unix.RTN_UNICAST)
	if w.Blackhole {
		typ = unix.RTN_BLACKHOLE
	}
	var flags uint32
	if w.OnLink {
		flags = unix.RTNH_F_ONLINK
	}
	b = appendRtmsg(b, family, uint8(w.Dst.Bits()), 0, unix.RT_TABLE_MAIN, uint8(RTProtWeft), unix.RT_SCOPE_UNIVERSE, typ, flags)
	b = appendAttrAddr(b, unix.RTA_DST, w.Dst.Addr())
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

// kRoute is one main-table route (IPv4 or IPv6) as a dump reports it, with
// what a comparison or a delete needs.
type kRoute struct {
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
	// Other: a next hop weft never sets (multipath, RTA_VIA, an encap).
	Other bool
}

// parseRoute reads an RTM_NEWROUTE payload. ok is false for anything that is
// not a route of family (AF_INET or AF_INET6).
func parseRoute(p []byte, family uint8) (r kRoute, ok bool) {
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
	a := attrs{b: p[unix.SizeofRtMsg:]}
	for a.next() {
		switch a.typ {
		case unix.RTA_DST:
			if len(a.val) == alen {
				dst, _ = netip.AddrFromSlice(a.val)
			}
		case unix.RTA_GATEWAY:
			if len(a.val) == alen {
				r.Gw, _ = netip.AddrFromSlice(a.val)
			}
		case unix.RTA_OIF:
			if len(a.val) == 4 {
				r.Link = int(native.Uint32(a.val))
			}
		case unix.RTA_PRIORITY:
			if len(a.val) == 4 {
				r.Priority = int(native.Uint32(a.val))
			}
		case unix.RTA_TABLE:
			if len(a.val) == 4 {
				r.Table = native.Uint32(a.val)
			}
		case unix.RTA_MULTIPATH, unix.RTA_VIA, unix.RTA_ENCAP, rtaNHID:
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
func appendRouteDel(b []byte, family uint8, r kRoute) []byte {
	table := uint8(r.Table)
	if r.Table >= 256 {
		table = unix.RT_TABLE_UNSPEC
	}
	b = appendRtmsg(b, family, uint8(r.Dst.Bits()), r.Tos, table, r.Protocol, r.Scope, r.Type, r.Flags)
	b = appendAttrAddr(b, unix.RTA_DST, r.Dst.Addr())
	if r.Table >= 256 {
		b = appendAttrU32(b, unix.RTA_TABLE, r.Table)
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

// kNeigh is one neighbour or FDB entry as a dump reports it.
type kNeigh struct {
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

func parseNeigh(p []byte) (n kNeigh, ok bool) {
	if len(p) < unix.SizeofNdMsg {
		return n, false
	}
	n.Family = p[0]
	n.Link = int(int32(native.Uint32(p[4:])))
	n.State = native.Uint16(p[8:])
	n.Flags, n.Type = p[10], p[11]
	a := attrs{b: p[unix.SizeofNdMsg:]}
	for a.next() {
		switch a.typ {
		case unix.NDA_DST:
			n.IP, _ = netip.AddrFromSlice(a.val)
			n.IP = n.IP.Unmap()
		case unix.NDA_LLADDR:
			n.MACLen = len(a.val)
			if len(a.val) == 6 {
				n.MAC = [6]byte(a.val)
			}
		case unix.NDA_VLAN:
			if len(a.val) == 2 {
				n.Vlan, n.HasVlan = native.Uint16(a.val), true
			}
		case unix.NDA_VNI:
			if len(a.val) == 4 {
				n.VNI, n.HasVNI = native.Uint32(a.val), true
			}
		case unix.NDA_PORT:
			if len(a.val) == 2 {
				n.Port, n.HasPort = native.Uint16(a.val), true
			}
		case unix.NDA_IFINDEX:
			if len(a.val) == 4 {
				n.NHIf, n.HasNHIf = native.Uint32(a.val), true
			}
		}
	}
	return n, true
}

// appendNeighDel appends the RTM_DELNEIGH payload that removes n: for an FDB
// entry every attribute that selects one remote of the MAC is sent back, so
// that exactly the dumped remote goes.
func appendNeighDel(b []byte, n kNeigh) []byte {
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

// setFlags are those of vishvananda's NeighSet and RouteReplace.
const setFlags = unix.NLM_F_CREATE | unix.NLM_F_REPLACE
