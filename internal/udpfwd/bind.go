package udpfwd

// The engine's UDP socket. wireguard-go's conn.StdNetBind listens on
// 0.0.0.0 and [::] with no way to name an address; the udp backend must
// listen only on the underlay interface's IPv4 address (issue 11, finding 1),
// as flanneld's udp backend does, so this is a conn.Bind of our own with the
// same batching: recvmmsg/sendmmsg (golang.org/x/net/ipv4), UDP GSO on send
// and GRO on receive, 7 MiB socket buffers.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
)

const (
	// socketBuffer is the size asked for both socket buffers: one burst of
	// super-packets from the TUN must not overflow them.
	socketBuffer = 7 << 20
	// gsoMaxSegments is the kernel's limit of datagrams per UDP_SEGMENT send
	// (UDP_MAX_SEGMENTS) and per UDP_GRO receive.
	gsoMaxSegments = 64
	// maxPayload is the largest UDP payload in one IPv4 datagram; a GSO
	// send's total payload is bounded by it too.
	maxPayload = 65535 - 20 - 8
	// gsoCmsgSpace holds one UDP_SEGMENT or UDP_GRO control message.
	gsoCmsgSpace = 24 // unix.CmsgSpace(2) on 64-bit; checked in init
)

func init() {
	if unix.CmsgSpace(2) > gsoCmsgSpace {
		panic("udpfwd: gsoCmsgSpace too small for this platform")
	}
}

// Bind is an IPv4-only conn.Bind listening on one address. Endpoints are
// *conn.StdNetEndpoint. A ReceiveFunc must not be called concurrently with
// itself, and the endpoints it returns are reused by its next call (the
// engine reads them before; wireguard-go's device would not).
type Bind struct {
	addr netip.Addr
	sock atomic.Pointer[udpSock]
	mu   sync.Mutex // serialises Open and Close
	send sync.Pool  // *sendState
}

type udpSock struct {
	conn *net.UDPConn
	pc   *ipv4.PacketConn
	// gso is true while UDP_SEGMENT sends work; cleared for good when the
	// kernel refuses one (EIO: no checksum offload on the route's device).
	gso atomic.Bool
	gro bool
}

var _ conn.Bind = (*Bind)(nil)

// NewBind returns a Bind that will listen on addr, which must be IPv4.
func NewBind(addr netip.Addr) (*Bind, error) {
	if !addr.Is4() {
		return nil, fmt.Errorf("udpfwd: bind to %s: must be an IPv4 address", addr)
	}
	return &Bind{addr: addr}, nil
}

// Open listens on the Bind's address and port (0 = any free port).
func (b *Bind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.sock.Load() != nil {
		return nil, 0, conn.ErrBindAlreadyOpen
	}
	s := &udpSock{}
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) {
			// Best effort, as in wireguard-go: the FORCE variants need
			// CAP_NET_ADMIN and lift the net.core.*mem_max cap; without
			// them the engine is slower on bursts, not broken.
			for _, opt := range []int{unix.SO_RCVBUF, unix.SO_SNDBUF, unix.SO_RCVBUFFORCE, unix.SO_SNDBUFFORCE} {
				_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt, socketBuffer)
			}
			_, err := unix.GetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT)
			s.gso.Store(err == nil)
			s.gro = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_GRO, 1) == nil
		})
	}}
	local := netip.AddrPortFrom(b.addr, port)
	pc, err := lc.ListenPacket(context.Background(), "udp4", local.String())
	if err != nil {
		return nil, 0, fmt.Errorf("udpfwd: listen on UDP %s: %w", local, err)
	}
	s.conn = pc.(*net.UDPConn)
	s.pc = ipv4.NewPacketConn(s.conn)
	b.sock.Store(s)
	return []conn.ReceiveFunc{b.receiver(s)}, uint16(s.conn.LocalAddr().(*net.UDPAddr).Port), nil
}

// LocalAddr is the address and port the Bind listens on (invalid when closed).
func (b *Bind) LocalAddr() netip.AddrPort {
	s := b.sock.Load()
	if s == nil {
		return netip.AddrPort{}
	}
	return s.conn.LocalAddr().(*net.UDPAddr).AddrPort()
}

// Close closes the socket; receives in progress return net.ErrClosed.
func (b *Bind) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.sock.Swap(nil)
	if s == nil {
		return nil
	}
	return s.conn.Close()
}

// SetMark sets SO_MARK on the socket.
func (b *Bind) SetMark(mark uint32) error {
	s := b.sock.Load()
	if s == nil {
		return nil
	}
	rc, err := s.conn.SyscallConn()
	if err != nil {
		return fmt.Errorf("udpfwd: set mark %d: %w", mark, err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark)) }); err != nil {
		return fmt.Errorf("udpfwd: set mark %d: %w", mark, err)
	}
	if serr != nil {
		return fmt.Errorf("udpfwd: set mark %d (SO_MARK): %w", mark, serr)
	}
	return nil
}

// ParseEndpoint parses "a.b.c.d:port".
func (b *Bind) ParseEndpoint(s string) (conn.Endpoint, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return nil, fmt.Errorf("udpfwd: parse endpoint %q: %w", s, err)
	}
	if !ap.Addr().Unmap().Is4() {
		return nil, fmt.Errorf("udpfwd: endpoint %s: must be IPv4", s)
	}
	return &conn.StdNetEndpoint{AddrPort: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())}, nil
}

// BatchSize is the number of datagrams per receive and the most per Send.
func (b *Bind) BatchSize() int { return conn.IdealBatchSize }

// rxMsg is one received message: n bytes in buf, datagrams of seg bytes
// each (the last may be shorter; seg = n for a single datagram), all from src
// (invalid when the kernel gave no IPv4 address: the engine drops them).
type rxMsg struct {
	buf    []byte
	n, seg int
	src    netip.AddrPort
}

// msgReader reads batches of messages (recvmmsg) from one socket; with UDP
// GRO each message carries up to 64 datagrams of one sender. Its state is
// allocated once: a read allocates only what x/net does (one address per
// message).
type msgReader struct {
	s    *udpSock
	msgs []ipv4.Message
}

func newMsgReader(s *udpSock, n int) *msgReader {
	r := &msgReader{s: s, msgs: make([]ipv4.Message, n)}
	oob := make([]byte, n*gsoCmsgSpace)
	for i := range r.msgs {
		r.msgs[i].Buffers = make([][]byte, 1)
		r.msgs[i].OOB = oob[i*gsoCmsgSpace : (i+1)*gsoCmsgSpace]
	}
	return r
}

// read receives up to len(bufs) messages, message i into bufs[i], and
// describes them in out.
func (r *msgReader) read(bufs [][]byte, out []rxMsg) (int, error) {
	ms := r.msgs[:min(len(bufs), len(r.msgs), len(out))]
	for i := range ms {
		ms[i].Buffers[0] = bufs[i]
		ms[i].OOB = ms[i].OOB[:gsoCmsgSpace]
	}
	got, err := r.s.pc.ReadBatch(ms, 0)
	if err != nil {
		return 0, err
	}
	for i := range got {
		m := &ms[i]
		var ap netip.AddrPort
		if ua, ok := m.Addr.(*net.UDPAddr); ok {
			ap = ua.AddrPort()
		}
		seg := m.N
		if g := groSize(m.OOB[:m.NN]); r.s.gro && g > 0 && g < m.N {
			seg = g
		}
		out[i] = rxMsg{buf: bufs[i][:m.N], n: m.N, seg: seg, src: ap}
	}
	return got, nil
}

// messages returns a reader of the open socket's messages, for the engine,
// which handles the datagrams of a message in place; nil when not open.
func (b *Bind) messages(n int) *msgReader {
	s := b.sock.Load()
	if s == nil {
		return nil
	}
	return newMsgReader(s, n)
}

// receiver returns the socket's ReceiveFunc, which splits every message into
// one buffer per datagram (what conn.Bind's users expect).
func (b *Bind) receiver(s *udpSock) conn.ReceiveFunc {
	n := b.BatchSize()
	r := newMsgReader(s, n)
	got := make([]rxMsg, n)
	eps := make([]conn.StdNetEndpoint, n)
	return func(bufs [][]byte, sizes []int, out []conn.Endpoint) (int, error) {
		if len(bufs) > n {
			bufs = bufs[:n]
		}
		// With GRO one message carries up to 64 datagrams: read that many
		// messages into the last buffers and split them forward into the
		// others (as wireguard-go does).
		at := 0
		if s.gro {
			at = len(bufs) - max(1, len(bufs)/gsoMaxSegments)
		}
		m, err := r.read(bufs[at:], got)
		if err != nil {
			return 0, err
		}
		k := 0 // datagrams so far, in bufs[:k]
		for i := range m {
			msg := &got[i]
			for off := 0; ; off += msg.seg {
				// The message's own buffer is the last one its datagrams
				// may go to: the next would overwrite an unsplit message.
				if k > at+i {
					return 0, fmt.Errorf("udpfwd: receive from %s: %d bytes in datagrams of %d overflow %d buffers", msg.src, msg.n, msg.seg, len(bufs))
				}
				end := min(off+msg.seg, msg.n)
				sizes[k] = copy(bufs[k], msg.buf[off:end])
				eps[k].AddrPort = msg.src
				out[k] = &eps[k]
				k++
				if end >= msg.n {
					break
				}
			}
		}
		return k, nil
	}
}

// groSize returns the segment size of a UDP_GRO control message, or 0.
func groSize(oob []byte) int {
	for len(oob) > unix.SizeofCmsghdr {
		h, data, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			return 0
		}
		if h.Level == unix.SOL_UDP && h.Type == unix.UDP_GRO && len(data) >= 4 {
			return int(binary.NativeEndian.Uint32(data)) // the kernel writes an int
		}
		oob = rest
	}
	return 0
}

// sendState is the scratch space of one Send.
type sendState struct {
	msgs  []ipv4.Message
	count []int // datagrams per message
	oob   []byte
	dgs   []dgram  // Send's buffers as datagrams
	parts [][]byte // the iovecs of all messages
	to    net.UDPAddr
	ip    [4]byte // to.IP's storage
}

// Send sends bufs to ep (an IPv4 *conn.StdNetEndpoint). Runs of datagrams of
// one size (a shorter last one allowed) go as one UDP_SEGMENT message whose
// iovecs are the bufs themselves, so nothing is copied (StdNetBind copies
// them into one buffer); the kernel splits them into datagrams.
func (b *Bind) Send(bufs [][]byte, ep conn.Endpoint) error {
	st := b.sendState(len(bufs))
	defer b.send.Put(st)
	st.dgs = st.dgs[:0]
	for _, buf := range bufs {
		st.dgs = append(st.dgs, dgram{head: buf})
	}
	return b.sendWith(st, st.dgs, ep)
}

// sendDgrams is Send for datagrams in two parts (the engine's segments).
func (b *Bind) sendDgrams(dgs []dgram, ep conn.Endpoint) error {
	st := b.sendState(len(dgs))
	defer b.send.Put(st)
	return b.sendWith(st, dgs, ep)
}

func (b *Bind) sendState(n int) *sendState {
	st, _ := b.send.Get().(*sendState)
	if st == nil || len(st.msgs) < n {
		st = newSendState(max(n, b.BatchSize()))
	}
	return st
}

func (b *Bind) sendWith(st *sendState, dgs []dgram, ep conn.Endpoint) error {
	s := b.sock.Load()
	if s == nil {
		return net.ErrClosed
	}
	se, ok := ep.(*conn.StdNetEndpoint)
	if !ok || !se.Addr().Is4() {
		return fmt.Errorf("udpfwd: send to %s: only IPv4 endpoints (%w)", ep.DstToString(), unix.EAFNOSUPPORT)
	}
	st.ip = se.Addr().As4()
	st.to.Port = int(se.Port())
	ms := st.pack(dgs, s.gso.Load())
	sent, err := writeAll(s.pc, ms)
	if err != nil && ms[sent].OOB != nil {
		// The kernel refuses a UDP_SEGMENT message with EIO when the
		// device cannot checksum (then never again on this socket), and
		// with EMSGSIZE (EINVAL on older kernels) when the segments are
		// bigger than the path MTU (packets without DF, which the kernel
		// must fragment): send the rest one datagram per message.
		switch errno(err) {
		case unix.EIO:
			s.gso.Store(false)
			fallthrough
		case unix.EMSGSIZE, unix.EINVAL:
			done := 0
			for _, k := range st.count[:sent] {
				done += k
			}
			_, err = writeAll(s.pc, st.pack(dgs[done:], false))
		}
	}
	if err != nil {
		return fmt.Errorf("udpfwd: send %d datagrams to %s: %w", len(dgs), se.AddrPort, err)
	}
	return nil
}

func newSendState(n int) *sendState {
	st := &sendState{msgs: make([]ipv4.Message, n), count: make([]int, n), oob: make([]byte, n*gsoCmsgSpace),
		dgs: make([]dgram, 0, n), parts: make([][]byte, 0, 2*n)}
	st.to.IP = st.ip[:]
	return st
}

// pack fills st.msgs for dgs and returns the messages to send: with gso,
// one message per run of up to 64 datagrams of one size (the last may be
// shorter); without, one per datagram. A message's iovecs are the
// datagrams' parts.
func (st *sendState) pack(dgs []dgram, gso bool) []ipv4.Message {
	n := 0
	st.parts = st.parts[:0]
	for i := 0; i < len(dgs); {
		seg, j, total := dgs[i].len(), i+1, dgs[i].len()
		for gso && j < len(dgs) && j-i < gsoMaxSegments && dgs[j].len() <= seg && total+dgs[j].len() <= maxPayload {
			total += dgs[j].len()
			j++
			if dgs[j-1].len() < seg {
				break
			}
		}
		from := len(st.parts)
		for _, d := range dgs[i:j] {
			st.parts = append(st.parts, d.head)
			if len(d.body) > 0 {
				st.parts = append(st.parts, d.body)
			}
		}
		m := &st.msgs[n]
		m.Buffers, m.Addr, m.OOB = st.parts[from:len(st.parts):len(st.parts)], &st.to, nil
		if j-i > 1 {
			m.OOB = putSegment(st.oob[n*gsoCmsgSpace:(n+1)*gsoCmsgSpace], seg)
		}
		st.count[n] = j - i
		n++
		i = j
	}
	return st.msgs[:n]
}

// putSegment writes a UDP_SEGMENT control message for segments of size into
// b and returns it.
func putSegment(b []byte, size int) []byte {
	b = b[:unix.CmsgSpace(2)]
	clear(b)
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level, h.Type = unix.SOL_UDP, unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	binary.NativeEndian.PutUint16(b[unix.CmsgLen(0):], uint16(size))
	return b
}

// writeAll sends every message (sendmmsg may stop early) and returns how
// many were sent before an error.
func writeAll(pc *ipv4.PacketConn, ms []ipv4.Message) (int, error) {
	sent := 0
	for sent < len(ms) {
		n, err := pc.WriteBatch(ms[sent:], 0)
		if err != nil {
			return sent, err
		}
		sent += n
	}
	return sent, nil
}

// errno returns the system error under err, or 0.
func errno(err error) unix.Errno {
	var se *os.SyscallError
	if errors.As(err, &se) {
		if e, ok := se.Err.(unix.Errno); ok {
			return e
		}
	}
	return 0
}
