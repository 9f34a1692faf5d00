package rtnl

// Raw rtnetlink dumps and batched writes on weft's own rtnetlink socket.
//
// A full apply dumps every route, neighbour and FDB entry weft could own each
// resync period. vishvananda's list functions allocate a 64 KiB receive
// buffer per recv and a net.IP, net.IPNet, HardwareAddr … per entry, and the
// garbage collections that this triggers were most of weftd's idle CPU (see
// BenchmarkVXLANApplyNoop in internal/dataplane and BENCHMARKS.md). Here a
// dump is read into one reused buffer and each message is looked at in place;
// the callers compare it with their desired maps without building anything
// per entry. The kernel is also asked to filter (NETLINK_GET_STRICT_CHK: only
// the main table, only the one device) so that it neither formats nor sends
// other entries.
//
// Writes (adds, replaces, stale deletes) go out in batches (batch.go).
//
// Everything goes through one NETLINK_ROUTE socket that a backend opens once,
// in the namespace its netlink handle works in, and closes with the backend:
// one socket per backend, whatever the number of entries. It is weft's own
// rather than the handle's, which vishvananda does not export.

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

const (
	// recvBufSize holds the largest dump chunk the kernel sends (32 KiB).
	recvBufSize = 64 << 10
	// ioTimeout bounds a wait for the kernel's answer.
	ioTimeout = 10 * time.Second
)

// recvBufs are the receive buffers of dumps and batches, reused so that a
// resync allocates none.
var recvBufs = sync.Pool{New: func() any { b := make([]byte, recvBufSize); return &b }}

// Conn is weft's NETLINK_ROUTE socket. mu serialises request/answer
// exchanges: answers are matched by sequence number, and a reader must not
// take another exchange's datagrams.
type Conn struct {
	mu   sync.Mutex
	sock *nl.NetlinkSocket // nil once closed
	seq  uint32
	// kernel is the destination of every send (c.mu held): Sendto writes
	// the raw form into the sockaddr it is given, so one shared by every
	// socket was a data race between backends sending at the same time.
	kernel unix.SockaddrNetlink
}

var (
	// ErrNoSocket is the error of an exchange on a nil *Conn.
	ErrNoSocket = errors.New("no rtnetlink socket")
	// ErrClosed is the error of an exchange on a closed Conn.
	ErrClosed = errors.New("rtnetlink socket is closed")
)

// Open opens a NETLINK_ROUTE socket in ns (nil: the current namespace);
// the calling thread is back in its own namespace when it returns.
func Open(ns *netns.NsHandle) (*Conn, error) {
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
	return &Conn{sock: s, kernel: unix.SockaddrNetlink{Family: unix.AF_NETLINK}}, nil
}

// Close closes the socket; it is idempotent, so that the halves of a
// dual-stack backend, which share one socket, may both close it.
func (c *Conn) Close() {
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
func (c *Conn) lock() error {
	if c == nil {
		return ErrNoSocket
	}
	c.mu.Lock()
	if c.sock == nil {
		c.mu.Unlock()
		return ErrClosed
	}
	return nil
}

func (c *Conn) fd() int { return c.sock.GetFd() }

// nextSeq reserves n sequence numbers and returns the first (c.mu held).
func (c *Conn) nextSeq(n int) uint32 {
	c.seq += uint32(n)
	return c.seq - uint32(n) + 1
}

func (c *Conn) send(b []byte) error {
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
func (c *Conn) recv(buf []byte) (int, error) {
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

func (c *Conn) wait(ev int16) error {
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

// strictDump turns on NETLINK_GET_STRICT_CHK for the requests sent until the
// returned restore runs, so that the kernel applies the filters in a dump
// request. Without it (kernels before 4.20) the dump is unfiltered and the
// callers' own checks still hold.
func (c *Conn) strictDump() (restore func()) {
	prev, err := unix.GetsockoptInt(c.fd(), unix.SOL_NETLINK, unix.NETLINK_GET_STRICT_CHK)
	if err != nil || prev != 0 {
		return func() {}
	}
	if unix.SetsockoptInt(c.fd(), unix.SOL_NETLINK, unix.NETLINK_GET_STRICT_CHK, 1) != nil {
		return func() {}
	}
	return func() { _ = unix.SetsockoptInt(c.fd(), unix.SOL_NETLINK, unix.NETLINK_GET_STRICT_CHK, 0) }
}

// RetryDump retries a netlink dump the kernel interrupted (the table changed
// while it was being read), like CNI's netlinksafe: a partial dump would make
// a sync delete or re-add entries that are fine. f is a whole dump: a raw one
// of this package, or one of vishvananda's list functions, which report an
// interrupted dump the same way.
func RetryDump[T any](f func() (T, error)) (T, error) {
	var (
		v   T
		err error
	)
	for range 5 {
		v, err = f()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return v, err
}

// dump sends one dump request (typ, with payload req) and calls f with each
// answer of type want; f must not keep the slice. An interrupted dump (the
// table changed while it was read) is read to its end and reported as
// netlink.ErrDumpInterrupted, as vishvananda does, for RetryDump to retry.
func (c *Conn) dump(typ uint16, req []byte, want uint16, f func(msg []byte)) error {
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

// DumpRoutes dumps the main table of family (AF_INET or AF_INET6) — the
// kernel filters it: on a host with a large local table, e.g. kube-proxy's
// IPVS addresses, none of that is sent — and calls f with each route of
// family in it (cached exceptions left out; a kernel without strict
// checking sends every table, and the others are dropped here). One dump;
// wrap it in RetryDump.
func (c *Conn) DumpRoutes(family uint8, f func(r Route)) error {
	var rb [unix.SizeofRtMsg]byte
	req := appendRtmsg(rb[:0], family, 0, 0, unix.RT_TABLE_MAIN, 0, 0, 0, 0)
	return c.dump(unix.RTM_GETROUTE, req, unix.RTM_NEWROUTE, func(p []byte) {
		if r, ok := parseRoute(p, family); ok && r.Table == unix.RT_TABLE_MAIN {
			f(r)
		}
	})
}

// DumpNeighs dumps the neighbours of family (AF_INET or AF_INET6) on the
// device link and calls f with each. One dump; wrap it in RetryDump.
func (c *Conn) DumpNeighs(family uint8, link int, f func(n Neigh)) error {
	// The device goes in NDA_IFINDEX (not the header), which the kernel
	// filters on with or without strict checking.
	var rb [unix.SizeofNdMsg + 8]byte
	req := appendAttrU32(appendNdmsg(rb[:0], family, 0, 0, 0, 0), unix.NDA_IFINDEX, uint32(link))
	return c.dump(unix.RTM_GETNEIGH, req, unix.RTM_NEWNEIGH, func(p []byte) {
		if n, ok := parseNeigh(p); ok && n.Family == family && n.Link == link {
			f(n)
		}
	})
}

// DumpFDB dumps the forwarding entries (AF_BRIDGE) of the device link and
// calls f with each. One dump; wrap it in RetryDump.
func (c *Conn) DumpFDB(link int, f func(n Neigh)) error {
	// With strict checking the kernel reads the device from the header and
	// dumps that device's FDB only (otherwise every device's).
	var rb [unix.SizeofNdMsg]byte
	req := appendNdmsg(rb[:0], unix.AF_BRIDGE, link, 0, 0, 0)
	return c.dump(unix.RTM_GETNEIGH, req, unix.RTM_NEWNEIGH, func(p []byte) {
		if n, ok := parseNeigh(p); ok && n.Family == unix.AF_BRIDGE && n.Link == link {
			f(n)
		}
	})
}

// DumpNexthops dumps the namespace's nexthop objects and calls f with each
// (every owner's: the kernel filters a nexthop dump by device or group, not
// by protocol, so the callers pick weft's by Protocol). One dump; wrap it
// in RetryDump.
func (c *Conn) DumpNexthops(f func(n Nexthop)) error {
	var rb [unix.SizeofNhmsg]byte
	req := appendNhmsg(rb[:0], unix.AF_UNSPEC, 0, 0)
	return c.dump(unix.RTM_GETNEXTHOP, req, unix.RTM_NEWNEXTHOP, func(p []byte) {
		if n, ok := parseNexthop(p); ok {
			f(n)
		}
	})
}

// probeNexthopID is the id of the nexthop ProbeNexthops creates and removes:
// 255.255.255.255 as a number, which weft's id scheme (a peer subnet's
// address) never yields.
const probeNexthopID = 0xffffffff

// ProbeNexthops reports whether the kernel makes nexthop objects (Linux
// 5.3 and later): it creates a blackhole nexthop of weft's protocol and
// removes it. err is nil when the answer is a plain no (EOPNOTSUPP, EINVAL:
// the kernel does not know the request or the attribute); otherwise it says
// why the probe itself failed.
func (c *Conn) ProbeNexthops() (ok bool, err error) {
	var addErr error
	b := NewBatch(c, func(_ int, e error) bool { addErr = e; return true })
	b.begin()
	b.buf = appendNhmsg(b.buf, unix.AF_INET, uint8(ProtWeft), 0)
	b.buf = appendAttrU32(b.buf, unix.NHA_ID, probeNexthopID)
	b.buf = appendAttr(b.buf, unix.NHA_BLACKHOLE, nil)
	b.end(0, unix.RTM_NEWNEXTHOP, unix.NLM_F_CREATE|unix.NLM_F_EXCL)
	b.Flush()
	switch {
	case addErr == nil:
	case errors.Is(addErr, unix.EEXIST):
		return true, nil // somebody's probe left it: the kernel has them
	case errors.Is(addErr, unix.EOPNOTSUPP), errors.Is(addErr, unix.EINVAL), errors.Is(addErr, unix.EAFNOSUPPORT):
		return false, nil
	default:
		return false, fmt.Errorf("create probe nexthop id %d: %w", uint32(probeNexthopID), addErr)
	}
	var delErr error
	d := NewBatch(c, func(_ int, e error) bool { delErr = e; return true })
	d.DeleteNexthop(0, probeNexthopID)
	d.Flush()
	if delErr != nil && !errors.Is(delErr, unix.ENOENT) {
		return true, fmt.Errorf("remove probe nexthop id %d: %w", uint32(probeNexthopID), delErr)
	}
	return true, nil
}

// NexthopUpdate is a nexthop notification: one created or replaced, or,
// with Deleted, one removed (which removed the routes through it too,
// without a route notification for them).
type NexthopUpdate struct {
	Nexthop
	Deleted bool
}

// SubscribeNexthops sends the nexthop notifications of ns (nil: the current
// namespace) to ch until done is closed or the socket fails, then closes
// ch. rcvBuf sizes the socket's receive buffer (0: the default).
func SubscribeNexthops(ns *netns.NsHandle, ch chan<- NexthopUpdate, done <-chan struct{}, rcvBuf int) error {
	at := netns.None()
	if ns != nil && ns.IsOpen() {
		at = *ns
	}
	s, err := nl.SubscribeAt(at, netns.None(), unix.NETLINK_ROUTE, unix.RTNLGRP_NEXTHOP)
	if err != nil {
		return fmt.Errorf("subscribe to nexthop notifications: %w", err)
	}
	if rcvBuf > 0 {
		_ = s.SetReceiveBufferSize(rcvBuf, true)
	}
	go func() {
		<-done
		s.Close()
	}()
	go func() {
		defer close(ch)
		for {
			msgs, _, err := s.Receive()
			if err != nil {
				return
			}
			for _, m := range msgs {
				if m.Header.Type != unix.RTM_NEWNEXTHOP && m.Header.Type != unix.RTM_DELNEXTHOP {
					continue
				}
				if n, ok := parseNexthop(m.Data); ok {
					select {
					case ch <- NexthopUpdate{Nexthop: n, Deleted: m.Header.Type == unix.RTM_DELNEXTHOP}:
					case <-done:
						return
					}
				}
			}
		}
	}()
	return nil
}
