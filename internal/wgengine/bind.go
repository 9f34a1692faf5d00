package wgengine

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"

	"github.com/weft-net/weft/internal/rtnl"
	"github.com/weft-net/weft/internal/udpfwd"
)

// bind is the device's sockets on the underlay: udpfwd's Bind for IPv4
// endpoints (one IPv4 address, recvmmsg/sendmmsg, UDP GSO/GRO) and a
// socket6 for IPv6 endpoints, either or both, on one port, as a kernel
// WireGuard device listens on both families. It adapts them to
// wireguard-go's device, which differs from udpfwd's engine in two ways:
//
//   - The device keeps the endpoint of a received datagram (a peer's
//     roaming address) after the next receive, while udpfwd's receive
//     function reuses its endpoints. Each endpoint handed to the device is
//     therefore one that no later receive overwrites: one per source
//     address, kept in a bounded cache, so the common case allocates nothing.
//   - The device re-opens the sockets whenever the TUN goes down and up,
//     from its own goroutine, whose thread may be in any network namespace:
//     the sockets must be opened in the host's.
type bind struct {
	v4 *udpfwd.Bind // nil: no IPv4 endpoints
	v6 *socket6     // nil: no IPv6 endpoints
	ns *netns.NsHandle
}

var _ conn.Bind = (*bind)(nil)

// endpointCacheMax bounds the endpoints kept per receive function: peers
// are a few thousand at most; a flood of forged sources past that gets a
// fresh endpoint per datagram, never unbounded memory.
const endpointCacheMax = 8192

func newBind(addr4, addr6 netip.Addr, ns *netns.NsHandle) (*bind, error) {
	b := &bind{ns: ns}
	if addr4.IsValid() {
		v4, err := udpfwd.NewBind(addr4)
		if err != nil {
			return nil, err
		}
		b.v4 = v4
	}
	if addr6.IsValid() {
		if !addr6.Is6() || addr6.Is4In6() {
			return nil, fmt.Errorf("bind to %s: must be an IPv6 address", addr6)
		}
		b.v6 = &socket6{addr: addr6}
	}
	if b.v4 == nil && b.v6 == nil {
		return nil, errors.New("no address to listen on")
	}
	return b, nil
}

// serves reports whether the device has a socket of a's family.
func (b *bind) serves(a netip.Addr) bool {
	if a.Unmap().Is4() {
		return b.v4 != nil
	}
	return b.v6 != nil
}

func (b *bind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	var (
		fns    []conn.ReceiveFunc
		actual = port
	)
	open := func() error {
		if b.v4 != nil {
			f, p, err := b.v4.Open(actual)
			if err != nil {
				return err
			}
			fns, actual = append(fns, f...), p
		}
		if b.v6 != nil {
			f, p, err := b.v6.open(actual)
			if err != nil {
				if b.v4 != nil {
					b.v4.Close()
				}
				return fmt.Errorf("wgengine: %w", err)
			}
			fns, actual = append(fns, f), p
		}
		return nil
	}
	var err error
	if b.ns != nil {
		err = rtnl.Do(*b.ns, open)
	} else {
		err = open()
	}
	if err != nil {
		return nil, 0, err
	}
	for i, fn := range fns {
		fns[i] = stableEndpoints(fn)
	}
	return fns, actual, nil
}

// LocalAddr is one of the addresses and the port the device listens on.
func (b *bind) LocalAddr() netip.AddrPort {
	if b.v4 != nil {
		return b.v4.LocalAddr()
	}
	return b.v6.localAddr()
}

func (b *bind) Close() error {
	var errs []error
	if b.v4 != nil {
		errs = append(errs, b.v4.Close())
	}
	if b.v6 != nil {
		errs = append(errs, b.v6.close())
	}
	return errors.Join(errs...)
}

func (b *bind) SetMark(mark uint32) error {
	var errs []error
	if b.v4 != nil {
		errs = append(errs, b.v4.SetMark(mark))
	}
	if b.v6 != nil {
		errs = append(errs, b.v6.setMark(mark))
	}
	return errors.Join(errs...)
}

func (b *bind) ParseEndpoint(s string) (conn.Endpoint, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return nil, fmt.Errorf("wgengine: parse endpoint %q: %w", s, err)
	}
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	if !b.serves(ap.Addr()) {
		return nil, fmt.Errorf("wgengine: endpoint %s: the device has no socket of its address family", s)
	}
	return &conn.StdNetEndpoint{AddrPort: ap}, nil
}

func (b *bind) BatchSize() int { return conn.IdealBatchSize }

func (b *bind) Send(bufs [][]byte, ep conn.Endpoint) error {
	se, ok := ep.(*conn.StdNetEndpoint)
	if !ok {
		return fmt.Errorf("wgengine: send to %s: not an address endpoint (%w)", ep.DstToString(), unix.EAFNOSUPPORT)
	}
	switch a := se.Addr(); {
	case a.Is4() && b.v4 != nil:
		return b.v4.Send(bufs, ep)
	case a.Is6() && !a.Is4In6() && b.v6 != nil:
		if err := b.v6.send(bufs, se.AddrPort); err != nil {
			return fmt.Errorf("wgengine: %w", err)
		}
		return nil
	}
	return fmt.Errorf("wgengine: send to %s: the device has no socket of its address family (%w)", se.AddrPort, unix.EAFNOSUPPORT)
}

// stableEndpoints wraps a receive function so that the endpoints it
// returns are never reused. A receive function is called by one goroutine
// at a time, so its cache needs no lock.
func stableEndpoints(fn conn.ReceiveFunc) conn.ReceiveFunc {
	cache := make(map[netip.AddrPort]*conn.StdNetEndpoint)
	return func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		n, err := fn(bufs, sizes, eps)
		for i := range n {
			se, ok := eps[i].(*conn.StdNetEndpoint)
			if !ok {
				continue
			}
			ap := se.AddrPort
			ep, ok := cache[ap]
			if !ok {
				ep = &conn.StdNetEndpoint{AddrPort: ap}
				if len(cache) < endpointCacheMax {
					cache[ap] = ep
				}
			}
			eps[i] = ep
		}
		return n, err
	}
}
