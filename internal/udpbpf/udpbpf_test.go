package udpbpf_test

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/weft-net/weft/internal/testutil/netnstest"
	"github.com/weft-net/weft/internal/udpbpf"
	"github.com/weft-net/weft/internal/udpfwd"
)

// host is one side of the test topology: an underlay veth eth0 with a
// public address, the first address of the host's subnet on lo (where
// docker0 would hold it; this kernel has no dummy links), flannel0 (a TUN with the engine's offloads,
// opened and never read: packets the programs leave to it are lost, so
// everything that arrives went through BPF) and the path attached.
type host struct {
	ns     *netnstest.NS
	public netip.Addr
	subnet netip.Prefix
	tun    tun.Device
	path   *udpbpf.Path
	tunIdx int
	ethIdx int
}

func (h *host) gw() netip.Addr { return h.subnet.Addr().Next() }

const port = 8285

var network = netip.MustParsePrefix("10.5.0.0/16")

func addr(t *testing.T, n *netnstest.NS, dev, a string) netlink.Link {
	t.Helper()
	l, err := n.Handle.LinkByName(dev)
	if err != nil {
		t.Fatal(err)
	}
	na, err := netlink.ParseAddr(a)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Handle.AddrAdd(l, na); err != nil {
		t.Fatalf("add %s to %s in %s: %v", a, dev, n.Name, err)
	}
	if err := n.Handle.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	return l
}

// pair builds two hosts on one underlay veth, each with the path attached
// and the other as its peer.
func pair(t *testing.T) (a, b *host) {
	netnstest.RequireRoot(t)
	hs := []*host{
		{public: netip.MustParseAddr("100.64.0.1"), subnet: netip.MustParsePrefix("10.5.1.0/24")},
		{public: netip.MustParseAddr("100.64.0.2"), subnet: netip.MustParsePrefix("10.5.2.0/24")},
	}
	for _, h := range hs {
		h.ns = netnstest.New(t, "ubpf")
	}
	if err := netnstest.VethPair(hs[0].ns, "eth0", hs[1].ns, "eth0"); err != nil {
		t.Fatal(err)
	}
	for _, h := range hs {
		h.ethIdx = addr(t, h.ns, "eth0", netip.PrefixFrom(h.public, 24).String()).Attrs().Index
		addr(t, h.ns, "lo", netip.PrefixFrom(h.gw(), 32).String())
		if err := h.ns.Do(func() (err error) {
			h.tun, err = tun.CreateTUN("flannel0", 1472)
			return err
		}); err != nil {
			t.Fatalf("create flannel0 in %s: %v", h.ns.Name, err)
		}
		t.Cleanup(func() { h.tun.Close() })
		fl := addr(t, h.ns, "flannel0", netip.PrefixFrom(h.subnet.Addr(), 32).String())
		h.tunIdx = fl.Attrs().Index
		dst, _ := netlink.ParseIPNet(network.String())
		if err := h.ns.Handle.RouteAdd(&netlink.Route{Dst: dst, LinkIndex: h.tunIdx}); err != nil {
			t.Fatal(err)
		}
		if err := h.ns.Do(func() (err error) {
			h.path, err = udpbpf.Attach(udpbpf.Config{TUNIndex: h.tunIdx, UnderlayIndex: h.ethIdx, Local: h.public, Port: port})
			return err
		}); err != nil {
			if errors.Is(err, udpbpf.ErrUnsupported) {
				t.Skipf("kernel refuses: %v", err)
			}
			t.Fatal(err)
		}
		t.Cleanup(func() { h.path.Close() })
	}
	for i, h := range hs {
		peer := hs[1-i]
		skipped, err := h.path.Set([]udpfwd.Peer{{Subnet: peer.subnet, Addr: netip.AddrPortFrom(peer.public, port)}}, h.subnet)
		if err != nil || len(skipped) != 0 {
			t.Fatalf("Set in %s: skipped %v, %v", h.ns.Name, skipped, err)
		}
	}
	return hs[0], hs[1]
}

func TestPingAndIperf(t *testing.T) {
	a, b := pair(t)
	if out, err := a.ns.Run("ping", "-c", "3", "-i", "0.2", "-W", "1", "-I", a.gw().String(), b.gw().String()); err != nil {
		for _, h := range []*host{a, b} {
			o, _ := h.ns.Run("ip", "-s", "link")
			t.Log(h.ns.Name, o)
		}
		t.Fatalf("ping through the in-kernel path: %v\n%s", err, out)
	}
	// Three echo requests out of a and in to b, three replies back: each
	// side counted at least those.
	for _, h := range []*host{a, b} {
		if st := h.path.Stats(); st.Encapsulated < 3 || st.Decapsulated < 3 {
			t.Errorf("%s: stats %+v after 3 pings each way, want at least 3 encapsulated and 3 decapsulated", h.ns.Name, st)
		}
	}
	if _, err := exec.LookPath("iperf3"); err != nil {
		t.Skip("no iperf3")
	}
	for _, args := range [][]string{{}, {"-u", "-l", "64", "-b", "0"}} {
		srv := exec.Command("ip", "netns", "exec", b.ns.Name, "iperf3", "-s", "-1", "-B", b.gw().String())
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			o, _ := b.ns.Run("ss", "-Hltn", "sport = :5201")
			if strings.TrimSpace(o) != "" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("iperf3 server not listening")
			}
		}
		tx0 := txStats(t, a)
		out, err := exec.Command("ip", append([]string{"netns", "exec", a.ns.Name, "iperf3", "-c", b.gw().String(), "-B", a.gw().String(), "-t", "2", "-J"}, args...)...).Output()
		srv.Process.Kill()
		srv.Wait()
		if err != nil {
			t.Fatalf("iperf3 %v: %v\n%s", args, err, out)
		}
		var r struct {
			End struct {
				SumReceived struct {
					BitsPerSecond float64 `json:"bits_per_second"`
				} `json:"sum_received"`
				Sum struct {
					BitsPerSecond float64 `json:"bits_per_second"`
					LostPercent   float64 `json:"lost_percent"`
				} `json:"sum"`
			} `json:"end"`
		}
		if err := json.Unmarshal(out, &r); err != nil {
			t.Fatal(err)
		}
		if len(args) == 0 {
			if r.End.SumReceived.BitsPerSecond < 1e8 {
				t.Errorf("TCP through the in-kernel path: %.3f Gbit/s", r.End.SumReceived.BitsPerSecond/1e9)
			}
			// TSO packets cross the underlay veth whole, as SKB_GSO_UDP_TUNNEL
			// (what vxlan does): frames on average far above the MTU.
			tx1 := txStats(t, a)
			avg := float64(tx1.TxBytes-tx0.TxBytes) / float64(tx1.TxPackets-tx0.TxPackets)
			if avg < 3000 {
				t.Errorf("TCP: average frame on the underlay %.0f bytes: TSO packets were not sent whole", avg)
			}
			t.Logf("TCP 1 stream: %.2f Gbit/s, average underlay frame %.0f bytes", r.End.SumReceived.BitsPerSecond/1e9, avg)
		} else {
			t.Logf("UDP 64 B: %.1f Mbit/s, loss %.1f %%", r.End.Sum.BitsPerSecond/1e6, r.End.Sum.LostPercent)
		}
	}
}

func txStats(t *testing.T, h *host) netlink.LinkStatistics {
	t.Helper()
	l, err := h.ns.Handle.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	return *l.Attrs().Statistics
}

// inner builds an IPv4/UDP packet from src to dst:9999 carrying payload
// (UDP checksum 0: none); totalDelta corrupts its length field.
func inner(src, dst netip.Addr, payload string, totalDelta int) []byte {
	p := make([]byte, 28+len(payload))
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)+totalDelta))
	p[8] = 64
	p[9] = 17
	s, d := src.As4(), dst.As4()
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(p[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(p[10:], ^uint16(sum))
	binary.BigEndian.PutUint16(p[20:], 4000)
	binary.BigEndian.PutUint16(p[22:], 9999)
	binary.BigEndian.PutUint16(p[24:], uint16(8+len(payload)))
	copy(p[28:], payload)
	return p
}

func listen(t *testing.T, n *netnstest.NS, at netip.AddrPort) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	if err := n.Do(func() (err error) {
		c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(at))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// recv returns the payloads c receives until quiet for 300 ms.
func recv(c *net.UDPConn) []string {
	var got []string
	buf := make([]byte, 2048)
	for {
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		n, err := c.Read(buf)
		if err != nil {
			return got
		}
		got = append(got, string(buf[:n]))
	}
}

// TestAdmission: only what the engine would admit is decapsulated; the rest
// reaches the stack (the engine's socket) untouched, as the engine's drop
// counting needs.
func TestAdmission(t *testing.T) {
	a, b := pair(t)
	engine := listen(t, b.ns, netip.AddrPortFrom(b.public, port))
	target := listen(t, b.ns, netip.AddrPortFrom(b.gw(), 9999))
	fromPeer := listen(t, a.ns, netip.AddrPortFrom(a.public, port))
	stranger := listen(t, a.ns, netip.AddrPortFrom(a.public, 9000))
	to := net.UDPAddrFromAddrPort(netip.AddrPortFrom(b.public, port))
	src := netip.MustParseAddr("10.5.1.7")
	cases := []struct {
		name    string
		from    *net.UDPConn
		pkt     []byte
		decaped bool
	}{
		{"peer", fromPeer, inner(src, b.gw(), "ok", 0), true},
		{"stranger", stranger, inner(src, b.gw(), "stranger", 0), false},
		{"forged inner source", fromPeer, inner(netip.MustParseAddr("10.5.3.7"), b.gw(), "forged", 0), false},
		{"wrong destination", fromPeer, inner(src, netip.MustParseAddr("10.5.3.1"), "wrongdst", 0), false},
		{"length mismatch", fromPeer, inner(src, b.gw(), "badlen", -1), false},
	}
	for _, c := range cases {
		if _, err := c.from.WriteToUDP(c.pkt, to); err != nil {
			t.Fatalf("%s: send: %v", c.name, err)
		}
	}
	decaped := strings.Join(recv(target), ",")
	var passed []string
	for _, p := range recv(engine) {
		passed = append(passed, p[28:])
	}
	if decaped != "ok" {
		t.Errorf("decapsulated: %q, want only the peer's (ok)", decaped)
	}
	if got, want := strings.Join(passed, ","), "stranger,forged,wrongdst,badlen"; got != want {
		t.Errorf("passed to the stack: %q, want %q", got, want)
	}
}

// TestCloseDetaches: after Close no program stays on either interface.
func TestCloseDetaches(t *testing.T) {
	a, _ := pair(t)
	count := func() (n int) {
		err := a.ns.Do(func() error {
			for _, q := range []struct {
				idx int
				at  ebpf.AttachType
			}{{a.ethIdx, ebpf.AttachTCXIngress}, {a.tunIdx, ebpf.AttachTCXEgress}} {
				r, err := link.QueryPrograms(link.QueryOptions{Target: q.idx, Attach: q.at})
				if err != nil {
					return err
				}
				n += len(r.Programs)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := count(); n != 2 {
		t.Fatalf("attached: %d programs, want 2", n)
	}
	if err := a.path.Close(); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 0 {
		t.Fatalf("after Close: %d programs still attached", n)
	}
}
