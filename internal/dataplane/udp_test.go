package dataplane

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/metrics"
	"github.com/weft-net/weft/internal/netconf"
	"github.com/weft-net/weft/internal/testutil/netnstest"
	"github.com/weft-net/weft/internal/udpfwd"
)

// udpNetwork holds every peerSubnet.
var udpNetwork = netip.MustParsePrefix("10.128.0.0/9")

func udpConfig(opts string) netconf.Config {
	return netconf.Config{BackendType: "udp", Backend: json.RawMessage(opts), Network: udpNetwork}
}

// udpHosts builds n overlay hosts whose eth0 sit on one bridge (the underlay
// switch) in its own namespace, returned too; host i's container gets MTU
// ctrMTU[i].
func udpHosts(t *testing.T, ctrMTU ...int) ([]*overlayHost, *netnstest.NS) {
	t.Helper()
	sw := netnstest.New(t, "us")
	la := netlink.NewLinkAttrs()
	la.Name = "br0"
	must(t, sw.Handle.LinkAdd(&netlink.Bridge{LinkAttrs: la}))
	br, err := sw.Handle.LinkByName("br0")
	must(t, err)
	must(t, sw.Handle.LinkSetUp(br))
	var hosts []*overlayHost
	for i, mtu := range ctrMTU {
		oh := newOverlayHost(t, i+1, mtu)
		port := fmt.Sprintf("p%d", i+1)
		must(t, netnstest.VethPair(oh.ns, "eth0", sw, port))
		p, err := sw.Handle.LinkByName(port)
		must(t, err)
		must(t, sw.Handle.LinkSetMaster(p, br))
		eth0, err := oh.ns.Handle.LinkByName("eth0")
		must(t, err)
		must(t, oh.ns.Handle.AddrAdd(eth0, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(oh.public, 24))}))
		hosts = append(hosts, oh)
	}
	return hosts, sw
}

// startUDP runs the udp backend of oh (with hooks, if given) through a Loop
// and returns the channel its snapshots go to.
func startUDP(t *testing.T, oh *overlayHost, hooks ...UDPHooks) chan<- lease.Snapshot {
	t.Helper()
	h, err := netlink.NewHandleAt(oh.ns.Fd())
	must(t, err)
	t.Cleanup(h.Close)
	fd := oh.ns.Fd()
	be, err := NewBackend(udpConfig(`{}`), Host{IfaceName: "eth0", NetNS: &fd}, h, testLog(t))
	must(t, err)
	for _, hk := range hooks {
		if !SetUDPHooks(be, hk) {
			t.Fatalf("SetUDPHooks: %T is not the udp backend", be)
		}
	}
	t.Cleanup(func() { be.Close() })
	pub, mtu, err := be.Init(context.Background())
	must(t, err)
	if pub.BackendType != "udp" || pub.BackendData != nil || mtu != 1472 {
		t.Fatalf("Init = %+v, MTU %d; want udp with no BackendData, MTU 1500 − 28", pub, mtu)
	}
	oh.b, oh.pub = be, pub
	ch, l := runLoop(t, be, time.Minute)
	oh.loop = l
	return ch
}

func udpSnap(own *overlayHost, peers ...*overlayHost) lease.Snapshot {
	s := lease.Snapshot{Own: own.lease()}
	for _, p := range peers {
		s.Peers = append(s.Peers, new(p.lease()))
	}
	return s
}

func pingOK(t *testing.T, from, to *overlayHost) {
	t.Helper()
	eventually(t, 10*time.Second, fmt.Sprintf("ping %s → %s", from.ctrIP(), to.ctrIP()), func() (bool, string) {
		out, err := from.ctr.Run("ping", "-c", "1", "-W", "1", to.ctrIP().String())
		return err == nil, out
	})
}

var ttlRe = regexp.MustCompile(`ttl=(\d+)`)

// TestUDPOverlay runs three hosts on the udp backend with hand-made
// snapshots: containers ping every pair, full-size DF packets pass, too-big
// ones get fragmentation needed (from the kernel at flannel0, and from the
// engine when flannel0's MTU is raised behind weft's back), an unknown subnet
// gets net unreachable, TTL is decremented by each engine like flannel's; a
// host joins and leaves; 1,000 peers load into the table; a restart keeps
// flannel0 and its route and traffic resumes.
func TestUDPOverlay(t *testing.T) {
	// Host 3's container ignores the overlay MTU, to provoke too-big packets.
	hosts, _ := udpHosts(t, 1472, 1472, 1500)
	a, b, c := hosts[0], hosts[1], hosts[2]
	snaps := make([]chan<- lease.Snapshot, 3)
	for i, oh := range hosts {
		snaps[i] = startUDP(t, oh)
	}
	// Hosts 1 and 2 first; 3 joins later.
	snaps[0] <- udpSnap(a, b)
	snaps[1] <- udpSnap(b, a)

	want := []string{"addr 10.128.1.0/32", "route 10.128.0.0/9 via <nil> dev flannel0"}
	eventually(t, 5*time.Second, "host 1 kernel state", func() (bool, string) {
		got := kernelState(t, a.ns.Handle, "flannel0")
		return cmp.Equal(got, want), cmp.Diff(want, got)
	})
	l, err := a.ns.Handle.LinkByName("flannel0")
	must(t, err)
	if l.Type() != "tuntap" || l.Attrs().MTU != 1472 {
		t.Errorf("flannel0: type %s mtu %d, want tuntap 1472", l.Type(), l.Attrs().MTU)
	}

	pingOK(t, a, b)
	pingOK(t, b, a)

	t.Run("ttl", func(t *testing.T) {
		// Reply: 64 from b's container, −1 host b forwarding, −1 engine b,
		// −1 engine a, −1 host a forwarding (vxlan would give 62).
		out := a.ctr.MustRun(t, "ping", "-c", "1", "-W", "1", b.ctrIP().String())
		if m := ttlRe.FindStringSubmatch(out); m == nil || m[1] != "60" {
			t.Errorf("reply TTL: want 60, got output %s", out)
		}
		// A packet whose TTL would reach 0 in the engine is dropped.
		if out, err := a.ctr.Run("ping", "-c", "1", "-W", "1", "-t", "2", b.ctrIP().String()); err == nil {
			t.Errorf("ping with TTL 2 crossed two routers and an engine: %s", out)
		}
	})

	t.Run("join", func(t *testing.T) {
		snaps[0] <- udpSnap(a, b, c)
		snaps[1] <- udpSnap(b, a, c)
		snaps[2] <- udpSnap(c, a, b)
		for _, p := range [][2]*overlayHost{{a, b}, {a, c}, {b, a}, {b, c}, {c, a}, {c, b}} {
			pingOK(t, p[0], p[1])
		}
	})

	t.Run("full-mtu-df", func(t *testing.T) {
		for _, p := range [][2]*overlayHost{{a, b}, {b, c}, {c, a}} {
			p[0].ctr.MustRun(t, "ping", "-c", "2", "-i", "0.2", "-W", "1", "-M", "do", "-s", "1444", p[1].ctrIP().String())
		}
	})

	t.Run("too-big", func(t *testing.T) {
		// From c's container (MTU 1500): the host kernel refuses 1500 bytes
		// into flannel0 (MTU 1472) with fragmentation needed.
		out, err := c.ctr.Run("ping", "-c", "1", "-W", "1", "-M", "do", "-s", "1472", a.ctrIP().String())
		if err == nil || !strings.Contains(out, "mtu = 1472") {
			t.Errorf("1500-byte DF ping through flannel0: want frag needed (mtu = 1472), got err %v: %s", err, out)
		}
		// flannel0's MTU raised by hand: the engine itself answers.
		l, err := c.ns.Handle.LinkByName("flannel0")
		must(t, err)
		must(t, c.ns.Handle.LinkSetMTU(l, 1600))
		out, err = c.ctr.Run("ping", "-c", "1", "-W", "1", "-M", "do", "-s", "1472", b.ctrIP().String())
		if err == nil || !strings.Contains(out, "From "+b.ctrIP().String()) || !strings.Contains(out, "mtu = 1472") {
			t.Errorf("1500-byte DF ping into the engine: want frag needed (mtu = 1472) from %s, got err %v: %s", b.ctrIP(), err, out)
		}
		must(t, c.ns.Handle.LinkSetMTU(l, 1472))
	})

	t.Run("net-unreachable", func(t *testing.T) {
		unknown := peerSubnet(50).Addr().Next().Next()
		out, err := a.ctr.Run("ping", "-c", "1", "-W", "1", unknown.String())
		if err == nil || !strings.Contains(out, "Destination Net Unreachable") {
			t.Errorf("ping %s (no lease): want Destination Net Unreachable, got err %v: %s", unknown, err, out)
		}
	})

	t.Run("leave", func(t *testing.T) {
		snaps[0] <- udpSnap(a, c)
		snaps[2] <- udpSnap(c, a)
		eventually(t, 5*time.Second, "b gone from a's table", func() (bool, string) {
			out, _ := a.ctr.Run("ping", "-c", "1", "-W", "1", b.ctrIP().String())
			return strings.Contains(out, "Destination Net Unreachable"), out
		})
		pingOK(t, a, c)
	})

	t.Run("1000-peers", func(t *testing.T) {
		s := udpSnap(a, c)
		for i := 100; i < 1100; i++ {
			s.Peers = append(s.Peers, &lease.Lease{Subnet: peerSubnet(i),
				Attrs: lease.Attrs{PublicIP: netip.AddrFrom4([4]byte{100, 65, byte(i >> 8), byte(i)}), BackendType: "udp"}})
		}
		snaps[0] <- s
		ub := udpOf(a.b)
		eventually(t, 5*time.Second, "1,001 peers in the table", func() (bool, string) {
			// The loop goroutine owns ub.eng; Peers() is an atomic load.
			n := ub.eng.Peers().Len()
			return n == 1001, fmt.Sprint(n)
		})
		p, ok := ub.eng.Peers().LookupAddr(peerSubnet(777).Addr().Next())
		if !ok || p.Addr.String() != "100.65.3.9:8285" {
			t.Errorf("lookup in peer 777's subnet = %v %v", p, ok)
		}
		pingOK(t, a, c)
		pingOK(t, c, a)
	})

	t.Run("restart", func(t *testing.T) {
		must(t, c.b.Close())
		// Closed: flannel0, its address and the route stay, traffic stops.
		want := []string{"addr 10.128.3.0/32", "route 10.128.0.0/9 via <nil> dev flannel0"}
		if got := kernelState(t, c.ns.Handle, "flannel0"); !cmp.Equal(got, want) {
			t.Errorf("after Close: %s", cmp.Diff(want, got))
		}
		if out, err := a.ctr.Run("ping", "-c", "1", "-W", "1", c.ctrIP().String()); err == nil {
			t.Errorf("ping through a stopped udp engine passed: %s", out)
		}
		ch := startUDP(t, c)
		ch <- udpSnap(c, a)
		pingOK(t, a, c)
		pingOK(t, c, a)
	})
}

// TestUDPReplacesIncompatibleDevice: a leftover flannel0 that weft cannot
// attach to as its TUN (here a persistent TAP device) is replaced, and a
// second backend attaches to the persistent TUN the first one left.
func TestUDPReplacesIncompatibleDevice(t *testing.T) {
	l := newLab(t, netip.MustParsePrefix("100.64.0.1/24"), netip.MustParsePrefix("100.64.0.254/24"))
	l.ns.MustRun(t, "ip", "tuntap", "add", "dev", "flannel0", "mode", "tap")
	old, err := l.ns.Handle.LinkByName("flannel0")
	must(t, err)
	tunOf := func() *netlink.Tuntap {
		t.Helper()
		link, err := l.ns.Handle.LinkByName("flannel0")
		must(t, err)
		tt, ok := link.(*netlink.Tuntap)
		if !ok {
			t.Fatalf("flannel0 is a %T", link)
		}
		return tt
	}
	h := l.handle(t)
	cfg := udpConfig(`{"Port":9285}`)
	var idx []int
	for i := range 2 {
		b, err := NewBackend(cfg, l.host, h, testLog(t))
		must(t, err)
		if _, _, err := b.Init(context.Background()); err != nil {
			t.Fatalf("Init %d: %v", i, err)
		}
		snap := lease.Snapshot{Own: lease.Lease{Subnet: peerSubnet(1)}, Peers: []*lease.Lease{
			{Subnet: peerSubnet(2), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("100.64.0.2"), BackendType: "udp"}}}}
		must(t, b.Apply(context.Background(), snap))
		tt := tunOf()
		if tt.Mode != netlink.TUNTAP_MODE_TUN || tt.Attrs().Index == old.Attrs().Index {
			t.Errorf("run %d: flannel0 mode %v index %d (TAP was %d), want a TUN in place of the TAP", i, tt.Mode, tt.Attrs().Index, old.Attrs().Index)
		}
		idx = append(idx, tt.Attrs().Index)
		want := []string{"addr 10.128.1.0/32", "route 10.128.0.0/9 via <nil> dev flannel0"}
		if got := kernelState(t, h, "flannel0"); !cmp.Equal(got, want) {
			t.Errorf("run %d: %s", i, cmp.Diff(want, got))
		}
		if st := udpOf(b).Stats(); st.SendErrors != 0 || st.TUNWriteErrors != 0 {
			t.Errorf("run %d: engine errors %+v", i, st)
		}
		must(t, b.Close())
	}
	// The second run attached to the TUN the first left behind.
	if idx[1] != idx[0] {
		t.Errorf("flannel0 index %d after restart, was %d: recreated instead of reused", idx[1], idx[0])
	}
}

// ipv4UDP is an IPv4/UDP packet from src to dst carrying payload: header
// checksum set, UDP checksum 0 (none, valid over IPv4).
func ipv4UDP(src, dst netip.AddrPort, payload []byte) []byte {
	p := make([]byte, 28+len(payload))
	p[0], p[8], p[9] = 0x45, 64, unix.IPPROTO_UDP
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	s, d := src.Addr().As4(), dst.Addr().As4()
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(p[i:]))
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(p[10:], ^uint16(sum))
	binary.BigEndian.PutUint16(p[20:], src.Port())
	binary.BigEndian.PutUint16(p[22:], dst.Port())
	binary.BigEndian.PutUint16(p[24:], uint16(8+len(payload)))
	copy(p[28:], payload)
	return p
}

// forge sends from ns, through a raw socket, one UDP datagram from src to
// dst carrying payload: what any machine on the underlay can put on the
// wire, its source address and port included.
func forge(t *testing.T, ns *netnstest.NS, src, dst netip.AddrPort, payload []byte) {
	t.Helper()
	var fd int
	must(t, ns.Do(func() (err error) {
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW) // IPPROTO_RAW: we write the IP header
		return err
	}))
	defer unix.Close(fd)
	must(t, unix.Sendto(fd, ipv4UDP(src, dst, payload), 0, &unix.SockaddrInet4{Addr: dst.Addr().As4()}))
}

// listenUDP receives datagrams on port in ns until the test ends.
func listenUDP(t *testing.T, ns *netnstest.NS, port int) <-chan string {
	t.Helper()
	var c net.PacketConn
	must(t, ns.Do(func() (err error) {
		c, err = net.ListenPacket("udp4", fmt.Sprintf(":%d", port))
		return err
	}))
	t.Cleanup(func() { c.Close() })
	got := make(chan string, 16)
	go func() {
		buf := make([]byte, 2048)
		for {
			n, _, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			select {
			case got <- string(buf[:n]):
			default:
			}
		}
	}()
	return got
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	must(t, c.Write(&m))
	return m.GetCounter().GetValue()
}

// TestUDPTrust is issue 11's finding 1, tried as an attacker would: host a's
// engine must write into flannel0 only what a current peer sends from its
// PublicIP:Port, from the peer's subnet to a's subnet. A namespace with no
// lease forging a datagram "from" b's container, b relaying to the world or
// forging a source outside its subnet: a's container (or the relay target)
// sees nothing and the drop is counted by reason; normal traffic flows; the
// socket listens on the underlay address only.
func TestUDPTrust(t *testing.T) {
	hosts, sw := udpHosts(t, 1472, 1472)
	a, b := hosts[0], hosts[1]
	// Strict reverse-path filtering did not stop the forgery: the inner
	// source routes back through flannel0, where it came from.
	a.ns.MustRun(t, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1")
	m := metrics.New(prometheus.NewRegistry())
	snapA := startUDP(t, a, UDPHooks{Dropped: m.OnUDPDrop})
	snapB := startUDP(t, b)
	snapA <- udpSnap(a, b)
	snapB <- udpSnap(b, a)
	pingOK(t, a, b) // (d) normal traffic still flows
	pingOK(t, b, a)

	// The attacker: on the underlay switch, no lease.
	att := netnstest.New(t, "ux")
	must(t, netnstest.VethPair(att, "eth0", sw, "px"))
	px, err := sw.Handle.LinkByName("px")
	must(t, err)
	br, err := sw.Handle.LinkByName("br0")
	must(t, err)
	must(t, sw.Handle.LinkSetMaster(px, br))
	attIP := netip.MustParseAddr("100.64.0.99")
	ae, err := att.Handle.LinkByName("eth0")
	must(t, err)
	must(t, att.Handle.AddrAdd(ae, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(attIP, 24))}))
	att.MustRun(t, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.eth0.rp_filter=0")

	aUDP, bUDP := netip.AddrPortFrom(a.public, 8285), netip.AddrPortFrom(b.public, 8285)
	aCtr, bCtr := netip.AddrPortFrom(a.ctrIP(), 9999), netip.AddrPortFrom(b.ctrIP(), 4242)
	ctrSink := listenUDP(t, a.ctr, 9999)
	relaySink := listenUDP(t, att, 7777)

	// The way in works: b's address and port, b's container to a's.
	forge(t, b.ns, bUDP, aUDP, ipv4UDP(bCtr, aCtr, []byte("from b")))
	select {
	case msg := <-ctrSink:
		if msg != "from b" {
			t.Fatalf("a's container got %q, want the datagram from b", msg)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a's container got nothing from b's container through the engine")
	}

	// dropped sends pkt from (ns, from) to a's engine and waits until a
	// counts it under reason; it fails if sink receives it instead.
	dropped := func(t *testing.T, ns *netnstest.NS, from netip.AddrPort, pkt []byte, reason string, sink <-chan string) {
		t.Helper()
		c := m.UDPDroppedPackets.WithLabelValues(reason)
		before := counterValue(t, c)
		forge(t, ns, from, aUDP, pkt)
		deadline := time.After(5 * time.Second)
		for counterValue(t, c) == before {
			select {
			case msg := <-sink:
				t.Fatalf("datagram from %s delivered (%q), want it dropped as %s", from, msg, reason)
			case <-deadline:
				t.Fatalf("datagram from %s: %s count still %v", from, reason, before)
			case <-time.After(10 * time.Millisecond):
			}
		}
		select {
		case msg := <-sink:
			t.Fatalf("datagram from %s counted as %s but delivered: %q", from, reason, msg)
		default:
		}
	}
	t.Run("stranger", func(t *testing.T) { // (a)
		dropped(t, att, netip.AddrPortFrom(attIP, 8285), ipv4UDP(bCtr, aCtr, []byte("forged by a stranger")), udpfwd.DropUnknownSender, ctrSink)
		// b's address from another port: not b's engine.
		dropped(t, att, netip.AddrPortFrom(b.public, 40000), ipv4UDP(bCtr, aCtr, []byte("forged port")), udpfwd.DropUnknownSender, ctrSink)
	})
	t.Run("open-relay", func(t *testing.T) { // (b)
		dropped(t, b.ns, bUDP, ipv4UDP(bCtr, netip.AddrPortFrom(attIP, 7777), []byte("relayed")), udpfwd.DropInnerDest, relaySink)
	})
	t.Run("inner-source", func(t *testing.T) { // (c)
		other := netip.AddrPortFrom(peerSubnet(3).Addr().Next().Next(), 4242)
		dropped(t, b.ns, bUDP, ipv4UDP(other, aCtr, []byte("forged source")), udpfwd.DropInnerSource, ctrSink)
	})
	t.Run("malformed", func(t *testing.T) {
		dropped(t, b.ns, bUDP, []byte("not an IPv4 packet"), udpfwd.DropMalformed, ctrSink)
	})
	t.Run("duplicate-subnet", func(t *testing.T) {
		// A second lease naming b's subnet (flannel's store allows it) used
		// to fail every Apply; now it is skipped, counted, and cannot send.
		dupIP := netip.MustParseAddr("100.64.0.77")
		s := udpSnap(a, b)
		s.Peers = append(s.Peers, &lease.Lease{Subnet: peerSubnet(b.idx), Attrs: lease.Attrs{PublicIP: dupIP, BackendType: "udp"}})
		snapA <- s
		eventually(t, 5*time.Second, "one skipped peer", func() (bool, string) {
			w := a.loop.Warnings()
			return len(w) == 1 && strings.Contains(w[0], peerSubnet(b.idx).String()), strings.Join(w, "; ")
		})
		pingOK(t, a, b)
		dropped(t, att, netip.AddrPortFrom(dupIP, 8285), ipv4UDP(bCtr, aCtr, []byte("from the duplicate")), udpfwd.DropUnknownSender, ctrSink)
	})
	t.Run("bound-to-underlay-address", func(t *testing.T) { // (e)
		// Only the underlay interface's address (no 0.0.0.0, no [::]): a
		// datagram to any other address of the host (another interface, a
		// container-facing bridge) finds no socket.
		out := a.ns.MustRun(t, "ss", "-Hnul", "sport = :8285")
		var local []string
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			if f := strings.Fields(l); len(f) >= 4 {
				local = append(local, f[3])
			}
		}
		if want := []string{aUDP.String()}; !cmp.Equal(local, want) {
			t.Errorf("udp sockets on port 8285: %v, want only %v", local, want)
		}
	})
	pingOK(t, a, b)
	pingOK(t, b, a)
}
