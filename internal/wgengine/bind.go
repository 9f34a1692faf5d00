package wgengine

import (
	"net/netip"

	"github.com/vishvananda/netns"
	"golang.zx2c4.com/wireguard/conn"

	"github.com/weft-net/weft/internal/rtnl"
	"github.com/weft-net/weft/internal/udpfwd"
)

// bind is udpfwd's Bind (one IPv4 address, recvmmsg/sendmmsg, UDP GSO/GRO)
// adapted to wireguard-go's device, which differs from udpfwd's engine in
// two ways:
//
//   - The device keeps the endpoint of a received datagram (a peer's
//     roaming address) after the next receive, while udpfwd's receive
//     function reuses its endpoints. Each endpoint handed to the device is
//     therefore one that no later receive overwrites: one per source
//     address, kept in a bounded cache, so the common case allocates nothing.
//   - The device re-opens the socket whenever the TUN goes down and up, from
//     its own goroutine, whose thread may be in any network namespace: the
//     socket must be opened in the host's.
type bind struct {
	*udpfwd.Bind
	ns *netns.NsHandle // nil: the current namespace
}

// endpointCacheMax bounds the endpoints kept per receive function: peers
// are a few thousand at most; a flood of forged sources past that gets a
// fresh endpoint per datagram, never unbounded memory.
const endpointCacheMax = 8192

func newBind(addr netip.Addr, ns *netns.NsHandle) (*bind, error) {
	b, err := udpfwd.NewBind(addr)
	if err != nil {
		return nil, err
	}
	return &bind{Bind: b, ns: ns}, nil
}

func (b *bind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	var (
		fns    []conn.ReceiveFunc
		actual uint16
	)
	open := func() error {
		var err error
		fns, actual, err = b.Bind.Open(port)
		return err
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

// stableEndpoints wraps a udpfwd receive function so that the endpoints it
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
