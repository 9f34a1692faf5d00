package udpfwd

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/conn"

	"github.com/weft-net/weft/internal/testutil/netnstest"
)

// openBind opens a Bind on addr:0 inside ns (a socket belongs to the
// namespace of the thread that creates it) and closes it when the test ends.
func openBind(t *testing.T, ns *netnstest.NS, addr netip.Addr) (*Bind, conn.ReceiveFunc) {
	t.Helper()
	b, err := NewBind(addr)
	if err != nil {
		t.Fatal(err)
	}
	var fns []conn.ReceiveFunc
	if err := ns.Do(func() (err error) { fns, _, err = b.Open(0); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	if len(fns) != 1 {
		t.Fatalf("Open returned %d receive functions, want 1 (IPv4 only)", len(fns))
	}
	return b, fns[0]
}

// datagrams returns n payloads of the given sizes (cycled), each filled with
// its index so that order and boundaries are checked.
func datagrams(n int, sizes ...int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = bytes.Repeat([]byte{byte(i)}, sizes[i%len(sizes)])
	}
	return out
}

// receiveAll receives until want datagrams arrived (or 5 s passed) and
// checks each against want, in order, and its sender. It returns the number
// of receive calls it took.
func receiveAll(t *testing.T, recv conn.ReceiveFunc, want [][]byte, from netip.AddrPort) int {
	t.Helper()
	bufs := makeBufs(conn.IdealBatchSize, 65535)
	sizes := make([]int, len(bufs))
	eps := make([]conn.Endpoint, len(bufs))
	got, calls := 0, 0
	timer := time.AfterFunc(5*time.Second, func() { t.Errorf("timed out after %d of %d datagrams", got, len(want)) })
	defer timer.Stop()
	for got < len(want) {
		n, err := recv(bufs, sizes, eps)
		if err != nil {
			t.Fatalf("receive after %d of %d datagrams: %v", got, len(want), err)
		}
		calls++
		for i := range n {
			if got >= len(want) {
				t.Fatalf("more than the %d datagrams sent", len(want))
			}
			if !bytes.Equal(bufs[i][:sizes[i]], want[got]) {
				t.Fatalf("datagram %d: %d bytes starting %x, want %d bytes of %x", got, sizes[i], bufs[i][:min(4, sizes[i])], len(want[got]), want[got][:1])
			}
			if ep := eps[i].(*conn.StdNetEndpoint).AddrPort; ep != from {
				t.Fatalf("datagram %d from %s, want %s", got, ep, from)
			}
			got++
		}
	}
	return calls
}

// TestBindLoopback: the socket listens on the address it was given, and
// batches go through whole and in order — one datagram, mixed sizes (no
// coalescing), and a GSO-sized batch (128 equal datagrams and a short tail:
// two UDP_SEGMENT messages out, GRO-coalesced messages split on the way in).
func TestBindLoopback(t *testing.T) {
	ns := netnstest.New(t, "ubl")
	lo := netip.MustParseAddr("127.0.0.1")
	a, _ := openBind(t, ns, lo)
	b, recvB := openBind(t, ns, lo)
	if got := b.LocalAddr(); got.Addr() != lo || got.Port() == 0 {
		t.Fatalf("LocalAddr %s, want %s and a port", got, lo)
	}
	if !a.sock.Load().gso.Load() || !a.sock.Load().gro {
		t.Fatalf("UDP GSO %v, GRO %v on loopback: want both on this kernel", a.sock.Load().gso.Load(), a.sock.Load().gro)
	}
	to, err := a.ParseEndpoint(b.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		dgs  [][]byte
	}{
		{"one", datagrams(1, 100)},
		{"mixed-sizes", datagrams(50, 60, 1400, 1, 900)},
		{"gso-batch", append(datagrams(127, 1400), make([]byte, 77))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := a.Send(tc.dgs, to); err != nil {
				t.Fatal(err)
			}
			calls := receiveAll(t, recvB, tc.dgs, a.LocalAddr())
			// A receive reads at most two messages when GRO is on: more
			// datagrams per call were split from coalesced ones.
			if tc.name == "gso-batch" && calls > 4 {
				t.Errorf("%d receive calls for %d datagrams sent with GSO: GRO did not coalesce", calls, len(tc.dgs))
			}
		})
	}
}

// TestBindTooBigForGSO: datagrams bigger than the path MTU (an inner packet
// without DF, which the kernel must fragment) cannot go as UDP_SEGMENT — the
// kernel answers EINVAL — so they are sent one per message and arrive whole.
func TestBindTooBigForGSO(t *testing.T) {
	n1, n2 := netnstest.New(t, "ubm"), netnstest.New(t, "ubm")
	if err := netnstest.VethPair(n1, "v1", n2, "v2"); err != nil {
		t.Fatal(err)
	}
	a1, a2 := netip.MustParseAddr("10.201.0.1"), netip.MustParseAddr("10.201.0.2")
	for _, x := range []struct {
		ns   *netnstest.NS
		link string
		addr netip.Addr
	}{{n1, "v1", a1}, {n2, "v2", a2}} {
		l, err := x.ns.Handle.LinkByName(x.link)
		if err != nil {
			t.Fatal(err)
		}
		if err := x.ns.Handle.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: x.addr.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
			t.Fatal(err)
		}
	}
	a, _ := openBind(t, n1, a1)
	b, recvB := openBind(t, n2, a2)
	to := &conn.StdNetEndpoint{AddrPort: b.LocalAddr()}
	dgs := append(datagrams(3, 2000), datagrams(40, 1400)...) // veth MTU 1500
	if err := a.Send(dgs, to); err != nil {
		t.Fatal(err)
	}
	receiveAll(t, recvB, dgs, a.LocalAddr())
	if !a.sock.Load().gso.Load() {
		t.Error("GSO switched off after EMSGSIZE: only EIO (no checksum offload) should do that")
	}
}

// TestBindRefuses: IPv6 has no place in this Bind, and a closed Bind says so.
func TestBindRefuses(t *testing.T) {
	if _, err := NewBind(netip.MustParseAddr("::1")); err == nil {
		t.Error("NewBind(::1) accepted an IPv6 address")
	}
	ns := netnstest.New(t, "ubr")
	b, recv := openBind(t, ns, netip.MustParseAddr("127.0.0.1"))
	if _, _, err := b.Open(0); !errors.Is(err, conn.ErrBindAlreadyOpen) {
		t.Errorf("second Open: %v, want %v", err, conn.ErrBindAlreadyOpen)
	}
	if _, err := b.ParseEndpoint("[::1]:8285"); err == nil {
		t.Error("ParseEndpoint accepted an IPv6 endpoint")
	}
	if err := b.Send(datagrams(1, 10), &conn.StdNetEndpoint{AddrPort: netip.MustParseAddrPort("[::1]:8285")}); err == nil {
		t.Error("Send to an IPv6 endpoint succeeded")
	}
	done := make(chan error, 1)
	go func() {
		bufs := makeBufs(conn.IdealBatchSize, 2048)
		_, err := recv(bufs, make([]int, len(bufs)), make([]conn.Endpoint, len(bufs)))
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("receive after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("receive still blocked 5 s after Close")
	}
	if err := b.Send(datagrams(1, 10), &conn.StdNetEndpoint{AddrPort: netip.MustParseAddrPort("127.0.0.1:8285")}); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Send after Close: %v, want net.ErrClosed", err)
	}
}

// BenchmarkBind sends a batch of 128 datagrams of 1400 bytes (one TCP
// super-packet's worth) over loopback and receives it, through this Bind and
// through wireguard-go's StdNetBind, which it replaced.
func BenchmarkBind(b *testing.B) {
	ns := netnstest.New(b, "ubb")
	lo := netip.MustParseAddr("127.0.0.1")
	for _, bc := range []struct {
		name string
		bind func() conn.Bind
	}{
		{"weft", func() conn.Bind { bd, _ := NewBind(lo); return bd }},
		{"std", conn.NewStdNetBind},
	} {
		b.Run(bc.name, func(b *testing.B) {
			tx, rx := bc.bind(), bc.bind()
			var fns []conn.ReceiveFunc
			var port uint16
			if err := ns.Do(func() (err error) {
				if _, _, err = tx.Open(0); err != nil {
					return err
				}
				fns, port, err = rx.Open(0)
				return err
			}); err != nil {
				b.Fatal(err)
			}
			defer tx.Close()
			defer rx.Close()
			to := &conn.StdNetEndpoint{AddrPort: netip.AddrPortFrom(lo, port)}
			// As in the engine, each datagram is at the start of a 64 KiB
			// buffer: StdNetBind coalesces for GSO by appending to the first.
			out := makeBufs(conn.IdealBatchSize, 65535)
			for i := range out {
				out[i] = out[i][:1400]
			}
			bufs := makeBufs(conn.IdealBatchSize, 65535)
			sizes := make([]int, len(bufs))
			eps := make([]conn.Endpoint, len(bufs))
			b.SetBytes(int64(len(out) * 1400))
			b.ReportAllocs()
			for b.Loop() {
				if err := tx.Send(out, to); err != nil {
					b.Fatal(err)
				}
				for got := 0; got < len(out); {
					n, err := fns[0](bufs, sizes, eps)
					if err != nil {
						b.Fatal(err)
					}
					got += n
				}
			}
		})
	}
}
