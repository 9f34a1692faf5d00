package rtnl

import (
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// writeBatchMax bounds the requests in one sendmsg. A batch whose every
// request fails makes the kernel queue one error (with the request echoed,
// ~1 KiB of socket memory each) per request: 64 of them stay well inside the
// default 208 KiB receive buffer.
const writeBatchMax = 64

// setFlags are those of vishvananda's NeighSet and RouteReplace.
const setFlags = unix.NLM_F_CREATE | unix.NLM_F_REPLACE

// Batch sends write requests writeBatchMax at a time: many requests in one
// sendmsg, an ack asked only of the last one, so that the kernel answers only
// failures and the batch's end. That is two syscalls per batch instead of two
// per entry, and no per-entry request or 64 KiB reply buffer; it is why
// programming thousands of peers takes a fraction of what `ip -batch` takes
// (BenchmarkVXLANApply in internal/dataplane, BENCHMARKS.md).
//
// Each request carries a key; the key of each failed request is passed to
// fail with the kernel's error, and fail reports whether it is a failure
// (false: the error means success, e.g. ENOENT for a delete).
type Batch[K any] struct {
	c     *Conn
	buf   []byte
	start int
	keys  []K
	fail  func(key K, err error) bool
	sent  int // requests sent
	nfail int // of which failed
}

// NewBatch starts a batch of writes on c.
func NewBatch[K any](c *Conn, fail func(key K, err error) bool) *Batch[K] {
	return &Batch[K]{c: c, fail: fail}
}

// Pending is the number of requests queued and not yet sent.
func (b *Batch[K]) Pending() int { return len(b.keys) }

// ReplaceRoute queues the route r of family (created, or replacing the one
// with the same destination and metric), as netlink.RouteReplace would.
func (b *Batch[K]) ReplaceRoute(key K, family uint8, r RouteSpec) {
	b.begin()
	b.buf = appendRouteSpec(b.buf, family, r)
	b.end(key, unix.RTM_NEWROUTE, setFlags)
}

// AddRoute queues the route r of family, created only if no route to its
// destination and metric exists (EEXIST otherwise).
func (b *Batch[K]) AddRoute(key K, family uint8, r RouteSpec) {
	b.begin()
	b.buf = appendRouteSpec(b.buf, family, r)
	b.end(key, unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_EXCL)
}

// DeleteRoute queues the removal of r, a route of family as a dump reported
// it (or one naming its destination, table, protocol and metric).
func (b *Batch[K]) DeleteRoute(key K, family uint8, r Route) {
	b.begin()
	b.buf = appendRouteDel(b.buf, family, r)
	b.end(key, unix.RTM_DELROUTE, 0)
}

// SetNeigh queues a permanent entry on the device link: an IPv4 or IPv6
// neighbour (ip → mac) or, for AF_BRIDGE, an FDB entry (mac → dst ip).
func (b *Batch[K]) SetNeigh(key K, family uint8, link int, ip netip.Addr, mac []byte) {
	b.begin()
	b.buf = appendNeighSet(b.buf, family, link, ip, mac)
	b.end(key, unix.RTM_NEWNEIGH, setFlags)
}

// DeleteNeigh queues the removal of n, a neighbour or FDB entry as a dump
// reported it (or one naming family, device and address; an FDB entry also
// its MAC).
func (b *Batch[K]) DeleteNeigh(key K, n Neigh) {
	b.begin()
	b.buf = appendNeighDel(b.buf, n)
	b.end(key, unix.RTM_DELNEIGH, 0)
}

// ReplaceNexthop queues the nexthop object n with weft's protocol, created
// or replacing the one of the same id (routes through it follow).
func (b *Batch[K]) ReplaceNexthop(key K, n Nexthop) {
	b.begin()
	b.buf = appendNexthop(b.buf, n)
	b.end(key, unix.RTM_NEWNEXTHOP, setFlags)
}

// DeleteNexthop queues the removal of the nexthop object id; the kernel
// removes the routes through it with it.
func (b *Batch[K]) DeleteNexthop(key K, id uint32) {
	b.begin()
	b.buf = appendNexthopDel(b.buf, id)
	b.end(key, unix.RTM_DELNEXTHOP, 0)
}

// begin starts a request (its header is filled in by end).
func (b *Batch[K]) begin() { b.start = len(b.buf); b.buf = append(b.buf, make([]byte, nlmsgHdrLen)...) }

// end finishes the request begun last (type and flags; NLM_F_REQUEST is
// added) and sends the batch when it is full.
func (b *Batch[K]) end(key K, typ, flags uint16) {
	putHdr(b.buf[b.start:], uint32(len(b.buf)-b.start), typ, flags|unix.NLM_F_REQUEST, 0)
	b.keys = append(b.keys, key)
	if len(b.keys) >= writeBatchMax {
		b.Flush()
	}
}

// OK is the number of requests that succeeded so far.
func (b *Batch[K]) OK() int { return b.sent - b.nfail }

// Flush sends what is queued and waits for the kernel to have processed all
// of it (the ack of the last request).
func (b *Batch[K]) Flush() {
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
