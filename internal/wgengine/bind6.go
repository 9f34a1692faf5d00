package wgengine

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
)

// socket6 is an IPv6 UDP socket on one address (the underlay's), batched
// with recvmmsg/sendmmsg, for peers whose endpoints are IPv6
// (flannel-wg-v6, Mode auto and ipv6). udpfwd's socket, which has the
// GSO/GRO paths, is IPv4 only; conn.StdNetBind cannot be bound to one
// address and would take the port on 0.0.0.0 too, where our IPv4 socket
// already listens in Mode auto.
type socket6 struct {
	addr netip.Addr
	mu   sync.Mutex // serialises open and close
	conn atomic.Pointer[net.UDPConn]
}

// socketBuffer6 is asked for both socket buffers, as udpfwd asks for its
// own: a burst from the TUN must not overflow them.
const socketBuffer6 = 7 << 20

func (s *socket6) open(port uint16) (conn.ReceiveFunc, uint16, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn.Load() != nil {
		return nil, 0, conn.ErrBindAlreadyOpen
	}
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) {
			// Best effort: the FORCE variants need CAP_NET_ADMIN.
			for _, opt := range []int{unix.SO_RCVBUF, unix.SO_SNDBUF, unix.SO_RCVBUFFORCE, unix.SO_SNDBUFFORCE} {
				_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt, socketBuffer6)
			}
		})
	}}
	local := netip.AddrPortFrom(s.addr, port)
	pc, err := lc.ListenPacket(context.Background(), "udp6", local.String())
	if err != nil {
		return nil, 0, fmt.Errorf("listen on UDP %s: %w", local, err)
	}
	c := pc.(*net.UDPConn)
	s.conn.Store(c)
	return receiver6(ipv6.NewPacketConn(c)), uint16(c.LocalAddr().(*net.UDPAddr).Port), nil
}

// receiver6 reads up to len(bufs) datagrams per call. Its messages are
// allocated once; it is called by one goroutine at a time.
func receiver6(pc *ipv6.PacketConn) conn.ReceiveFunc {
	msgs := make([]ipv6.Message, conn.IdealBatchSize)
	for i := range msgs {
		msgs[i].Buffers = make([][]byte, 1)
	}
	return func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		n := min(len(bufs), len(msgs))
		for i := range n {
			msgs[i].Buffers[0] = bufs[i]
		}
		got, err := pc.ReadBatch(msgs[:n], 0)
		if err != nil {
			return 0, err
		}
		for i := range got {
			sizes[i] = msgs[i].N
			ua, _ := msgs[i].Addr.(*net.UDPAddr)
			if ua == nil {
				sizes[i] = 0 // the device drops an empty datagram
				eps[i] = &conn.StdNetEndpoint{}
				continue
			}
			ap := ua.AddrPort()
			eps[i] = &conn.StdNetEndpoint{AddrPort: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())}
		}
		return got, nil
	}
}

// send writes bufs to ep, as many per sendmmsg as the kernel takes.
func (s *socket6) send(bufs [][]byte, ep netip.AddrPort) error {
	c := s.conn.Load()
	if c == nil {
		return net.ErrClosed
	}
	to := net.UDPAddrFromAddrPort(ep)
	msgs := make([]ipv6.Message, len(bufs))
	for i, b := range bufs {
		msgs[i] = ipv6.Message{Buffers: [][]byte{b}, Addr: to}
	}
	pc := ipv6.NewPacketConn(c)
	for len(msgs) > 0 {
		n, err := pc.WriteBatch(msgs, 0)
		if err != nil {
			return fmt.Errorf("send %d datagrams to %s: %w", len(msgs), ep, err)
		}
		msgs = msgs[n:]
	}
	return nil
}

func (s *socket6) localAddr() netip.AddrPort {
	if c := s.conn.Load(); c != nil {
		return c.LocalAddr().(*net.UDPAddr).AddrPort()
	}
	return netip.AddrPort{}
}

func (s *socket6) setMark(mark uint32) error {
	c := s.conn.Load()
	if c == nil {
		return nil
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark)) }); err != nil {
		return err
	}
	return serr
}

func (s *socket6) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.conn.Swap(nil); c != nil {
		return c.Close()
	}
	return nil
}
