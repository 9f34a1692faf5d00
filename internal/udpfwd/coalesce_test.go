package udpfwd

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/weft-net/weft/internal/testutil/netnstest"
)

// tcpSeg builds an IPv4 TCP segment of flow 172.30.2.2:40000 → 172.30.1.2:5201
// with valid checksums.
func tcpSeg(seq, ack uint32, flags byte, opts []byte, payload []byte) []byte {
	hl := 20 + len(opts)
	p := make([]byte, 20+hl+len(payload))
	p[0], p[8], p[9] = 0x45, 64, protoTCP
	binary.BigEndian.PutUint16(p[offTotalLen:], uint16(len(p)))
	binary.BigEndian.PutUint16(p[offFrag:], flagDF)
	copy(p[offSrc:], []byte{172, 30, 2, 2, 172, 30, 1, 2})
	binary.BigEndian.PutUint16(p[offChecksum:], checksum(p[:20]))
	t := p[20:]
	binary.BigEndian.PutUint16(t[0:], 40000)
	binary.BigEndian.PutUint16(t[2:], 5201)
	binary.BigEndian.PutUint32(t[4:], seq)
	binary.BigEndian.PutUint32(t[8:], ack)
	t[12], t[13] = byte(hl/4)<<4, flags
	binary.BigEndian.PutUint16(t[14:], 512)
	copy(t[20:], opts)
	copy(t[hl:], payload)
	binary.BigEndian.PutUint16(t[16:], transportSum(p, protoTCP))
	return p
}

// udpDgram builds an IPv4 UDP datagram 172.30.2.2:40000 → 172.30.1.2:5201.
func udpDgram(payload []byte) []byte {
	p := make([]byte, 28+len(payload))
	p[0], p[8], p[9] = 0x45, 64, protoUDP
	binary.BigEndian.PutUint16(p[offTotalLen:], uint16(len(p)))
	copy(p[offSrc:], []byte{172, 30, 2, 2, 172, 30, 1, 2})
	binary.BigEndian.PutUint16(p[offChecksum:], checksum(p[:20]))
	u := p[20:]
	binary.BigEndian.PutUint16(u[0:], 40000)
	binary.BigEndian.PutUint16(u[2:], 5201)
	binary.BigEndian.PutUint16(u[4:], uint16(len(u)))
	copy(u[8:], payload)
	binary.BigEndian.PutUint16(u[6:], transportSum(p, protoUDP))
	return p
}

// transportSum is the complete transport checksum of p (its field zero).
func transportSum(p []byte, proto byte) uint16 {
	seg := p[20:]
	pseudo := make([]byte, 12+len(seg))
	copy(pseudo, p[offSrc:20])
	pseudo[9] = proto
	binary.BigEndian.PutUint16(pseudo[10:], uint16(len(seg)))
	copy(pseudo[12:], seg)
	return checksum(pseudo)
}

// runOf feeds pkts to a run as the engine does and returns the runs it
// makes, each as its packets.
func runsOf(pkts [][]byte) [][][]byte {
	var r run
	var out [][][]byte
	for _, p := range pkts {
		if len(r.pkts) > 0 && r.add(p) {
			continue
		}
		if len(r.pkts) > 0 {
			out = append(out, append([][]byte(nil), r.pkts...))
		}
		r.start(p)
	}
	return append(out, r.pkts)
}

// TestRunBoundaries: segments of one flow that the kernel's GRO would merge
// form one run; anything the kernel would not merge, or could not cut back
// into the same segments, starts a new run.
func TestRunBoundaries(t *testing.T) {
	pay := func(n int) []byte { return bytes.Repeat([]byte{0xab}, n) }
	ts := []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2}
	ack := byte(tcpFlagACK)
	for _, tc := range []struct {
		name string
		pkts [][]byte
		want []int // packets per run
	}{
		{"tcp-in-order", [][]byte{tcpSeg(100, 7, ack, ts, pay(1000)), tcpSeg(1100, 7, ack, ts, pay(1000)), tcpSeg(2100, 7, ack|tcpFlagPSH, ts, pay(300))}, []int{3}},
		{"tcp-seq-gap", [][]byte{tcpSeg(100, 7, ack, nil, pay(1000)), tcpSeg(1200, 7, ack, nil, pay(1000))}, []int{1, 1}},
		{"tcp-ack-moves", [][]byte{tcpSeg(100, 7, ack, nil, pay(1000)), tcpSeg(1100, 8, ack, nil, pay(1000))}, []int{1, 1}},
		{"tcp-after-psh", [][]byte{tcpSeg(100, 7, ack|tcpFlagPSH, nil, pay(1000)), tcpSeg(1100, 7, ack, nil, pay(1000))}, []int{1, 1}},
		{"tcp-after-short", [][]byte{tcpSeg(100, 7, ack, nil, pay(1000)), tcpSeg(1100, 7, ack, nil, pay(500)), tcpSeg(1600, 7, ack, nil, pay(500))}, []int{2, 1}},
		{"tcp-longer-later", [][]byte{tcpSeg(100, 7, ack, nil, pay(500)), tcpSeg(600, 7, ack, nil, pay(1000))}, []int{1, 1}},
		{"tcp-options-differ", [][]byte{tcpSeg(100, 7, ack, ts, pay(1000)), tcpSeg(1100, 7, ack, append(ts[:8:8], 0, 0, 0, 9), pay(1000))}, []int{1, 1}},
		{"tcp-pure-acks", [][]byte{tcpSeg(100, 7, ack, nil, nil), tcpSeg(100, 8, ack, nil, nil)}, []int{1, 1}},
		{"tcp-syn-fin-rst", [][]byte{tcpSeg(100, 7, 0x02, nil, pay(10)), tcpSeg(110, 7, ack|0x01, nil, pay(10)), tcpSeg(120, 7, ack|0x04, nil, pay(10))}, []int{1, 1, 1}},
		{"udp-same-size", [][]byte{udpDgram(pay(36)), udpDgram(pay(36)), udpDgram(pay(36)), udpDgram(pay(20))}, []int{4}},
		{"udp-after-short", [][]byte{udpDgram(pay(36)), udpDgram(pay(20)), udpDgram(pay(20))}, []int{2, 1}},
		{"mixed-protocols", [][]byte{udpDgram(pay(36)), tcpSeg(100, 7, ack, nil, pay(36)), udpDgram(pay(36))}, []int{1, 1, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []int
			for _, r := range runsOf(tc.pkts) {
				got = append(got, len(r))
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("runs of %v packets, want %v", got, tc.want)
			}
		})
	}
	// Header differences the kernel's GRO refuses to merge.
	for name, change := range map[string]func(p []byte){
		"tos":        func(p []byte) { p[1] = 4 },
		"ttl":        func(p []byte) { p[offTTL]-- },
		"df":         func(p []byte) { p[offFrag] ^= 0x40 },
		"fragment":   func(p []byte) { p[offFrag] |= 0x20 },
		"dst":        func(p []byte) { p[offDst+3]++ },
		"port":       func(p []byte) { p[23]++ },
		"ip-options": nil,
	} {
		t.Run("udp-"+name, func(t *testing.T) {
			second := udpDgram(pay(36))
			if change != nil {
				change(second)
			} else {
				second = append(append([]byte{0x46}, second[1:20]...), append([]byte{1, 1, 1, 0}, second[20:]...)...)
				binary.BigEndian.PutUint16(second[offTotalLen:], uint16(len(second)))
			}
			if n := len(runsOf([][]byte{udpDgram(pay(36)), second})); n != 2 {
				t.Errorf("%d run(s), want 2", n)
			}
		})
	}
}

// TestRunFinish: the first packet of a run describes the whole run, with the
// pseudo-header sum where the kernel completes the checksum of every segment
// it cuts, and the virtio-net header says how; restore puts the packet back
// as it came (what the engine writes if the kernel refuses the run).
func TestRunFinish(t *testing.T) {
	ts := []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2}
	pkts := [][]byte{tcpSeg(100, 7, tcpFlagACK, ts, make([]byte, 1000)), tcpSeg(1100, 7, tcpFlagACK, ts, make([]byte, 1000)), tcpSeg(2100, 7, tcpFlagACK|tcpFlagPSH, ts, make([]byte, 10))}
	orig := append([]byte(nil), pkts[0]...)
	var r run
	r.start(pkts[0])
	for _, p := range pkts[1:] {
		if !r.add(p) {
			t.Fatal("segment not added")
		}
	}
	var hdr [vnetHdrLen]byte
	r.finish(&hdr)
	f := pkts[0]
	total := 20 + 32 + 2010
	if got := int(binary.BigEndian.Uint16(f[offTotalLen:])); got != total {
		t.Errorf("total length %d, want %d", got, total)
	}
	if checksum(f[:20]) != 0 {
		t.Error("IPv4 header checksum not valid after the length changed")
	}
	if f[33]&tcpFlagPSH == 0 {
		t.Error("PSH of the last segment not carried to the run")
	}
	if got, want := binary.BigEndian.Uint16(f[36:]), pseudoSum(f, protoTCP, total-20); got != want {
		t.Errorf("TCP checksum field %#04x, want the pseudo-header sum %#04x", got, want)
	}
	want := [vnetHdrLen]byte{vnetNeedsCsum, vnetGSOTCPv4, 52, 0, 0xe8, 0x03, 20, 0, 16, 0}
	if hdr != want {
		t.Errorf("virtio-net header % x, want % x", hdr, want)
	}
	r.restore()
	if !bytes.Equal(pkts[0], orig) {
		t.Error("restore did not give back the first packet as it came")
	}

	u := [][]byte{udpDgram(make([]byte, 36)), udpDgram(make([]byte, 36))}
	r.start(u[0])
	if !r.add(u[1]) {
		t.Fatal("datagram not added")
	}
	r.finish(&hdr)
	if got := binary.BigEndian.Uint16(u[0][24:]); got != 8+72 {
		t.Errorf("UDP length %d, want 80", got)
	}
	if want := [vnetHdrLen]byte{vnetNeedsCsum, vnetGSOUDPL4, 28, 0, 36, 0, 20, 0, 6, 0}; hdr != want {
		t.Errorf("virtio-net header % x, want % x", hdr, want)
	}
	r.start(u[1])
	r.finish(&hdr)
	if hdr != ([vnetHdrLen]byte{}) {
		t.Errorf("a run of one packet got virtio-net header % x, want none", hdr)
	}
}

// FuzzRun feeds arbitrary admitted packets, cut from one datagram stream as
// the engine cuts a received message, through the run builder: it must never
// panic, a run must only hold packets of one flow whose sizes the kernel can
// cut back (all the first's size, the last no bigger), finish must describe
// exactly the bytes written, and restore must give the first packet back.
func FuzzRun(f *testing.F) {
	f.Add(bytes.Join([][]byte{tcpSeg(1, 2, tcpFlagACK, nil, make([]byte, 40)), tcpSeg(41, 2, tcpFlagACK, nil, make([]byte, 40))}, nil), uint16(80))
	f.Add(bytes.Join([][]byte{udpDgram(make([]byte, 8)), udpDgram(make([]byte, 8)), udpDgram(make([]byte, 3))}, nil), uint16(36))
	f.Fuzz(func(t *testing.T, msg []byte, seg uint16) {
		if seg == 0 {
			return
		}
		var r run
		var hdr [vnetHdrLen]byte
		check := func() {
			if len(r.pkts) == 0 {
				return
			}
			first := append([]byte(nil), r.first...)
			written := len(r.first)
			for i, p := range r.pkts[1:] {
				if string(p[offSrc:20]) != string(r.first[offSrc:20]) || p[offProto] != r.first[offProto] {
					t.Fatalf("packet %d of a run is of another flow", i+1)
				}
				n := len(p) - 20 - r.hl
				if n > r.gso || (i+2 < len(r.pkts) && n != r.gso) {
					t.Fatalf("segment %d has %d payload bytes in a run of gso %d", i+1, n, r.gso)
				}
				written += n
			}
			r.finish(&hdr)
			if len(r.pkts) > 1 {
				if got := int(binary.BigEndian.Uint16(r.first[offTotalLen:])); got != written {
					t.Fatalf("run says %d bytes, writes %d", got, written)
				}
				if int(binary.LittleEndian.Uint16(hdr[2:])) != 20+r.hl || checksum(r.first[:20]) != 0 {
					t.Fatalf("bad run header: vnet % x", hdr)
				}
			}
			r.restore()
			if !bytes.Equal(r.first, first) {
				t.Fatal("restore changed the first packet")
			}
		}
		for off := 0; off < len(msg); off += int(seg) {
			pkt := msg[off:min(off+int(seg), len(msg))]
			if checkIPv4(pkt) == 0 {
				continue
			}
			if len(r.pkts) > 0 && r.add(pkt) {
				continue
			}
			check()
			r.start(pkt)
		}
		check()
	})
}

// TestEngineRunsThroughKernel: two engines over a veth underlay, each host's
// overlay address on its TUN. A TCP transfer arrives intact (the receiving
// engine wrote its segments as TSO runs, which the kernel cut and
// checksummed: far fewer TUN writes than packets), and so does a burst of
// 64-byte UDP datagrams (as USO runs).
func TestEngineRunsThroughKernel(t *testing.T) {
	t.Run("weft-to-weft", func(t *testing.T) { engineRuns(t, false) })
	// B's TUN without virtio-net headers, as flanneld opens flannel0: the
	// kernel checks every inner checksum of what B writes, packet by packet,
	// so the transfer completes only if A's segments (cut from TSO
	// super-packets in user space) carry complete, valid checksums.
	t.Run("to-tun-without-offloads", func(t *testing.T) { engineRuns(t, true) })
}

// plainTUN opens a TUN device without virtio-net headers (IFF_TUN|IFF_NO_PI
// only, as flanneld does) in the calling thread's namespace.
func plainTUN(name string, mtu int) (tun.Device, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return tun.CreateTUNFromFile(os.NewFile(uintptr(fd), "/dev/net/tun"), mtu)
}

func engineRuns(t *testing.T, plainB bool) {
	netnstest.RequireRoot(t)
	nsA, nsB := netnstest.New(t, "ura"), netnstest.New(t, "urb")
	if err := netnstest.VethPair(nsA, "u0", nsB, "u0"); err != nil {
		t.Fatal(err)
	}
	under := []netip.Addr{netip.MustParseAddr("10.202.0.1"), netip.MustParseAddr("10.202.0.2")}
	subnets := []netip.Prefix{netip.MustParsePrefix("172.30.1.0/24"), netip.MustParsePrefix("172.30.2.0/24")}
	overlay := []netip.Addr{netip.MustParseAddr("172.30.1.1"), netip.MustParseAddr("172.30.2.1")}
	engines := make([]*Engine, 2)
	for i, ns := range []*netnstest.NS{nsA, nsB} {
		l, err := ns.Handle.LinkByName("u0")
		if err != nil {
			t.Fatal(err)
		}
		if err := ns.Handle.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: under[i].AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
			t.Fatal(err)
		}
		var dev tun.Device
		if err := ns.Do(func() (err error) {
			if plainB && i == 1 {
				dev, err = plainTUN("ut0", 1472)
			} else {
				dev, err = tun.CreateTUN("ut0", 1472)
			}
			return err
		}); err != nil {
			t.Fatalf("create TUN: %v", err)
		}
		ns.MustRun(t, "ip", "addr", "add", overlay[i].String()+"/32", "dev", "ut0")
		ns.MustRun(t, "ip", "link", "set", "ut0", "up")
		ns.MustRun(t, "ip", "route", "add", "172.30.0.0/16", "dev", "ut0")
		bind, err := NewBind(under[i])
		if err != nil {
			t.Fatal(err)
		}
		e, err := New(Config{TUN: dev, Bind: bind, Port: DefaultPort, MTU: 1472})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.Close() })
		if err := ns.Do(e.Start); err != nil {
			t.Fatalf("start engine: %v", err)
		}
		peer := 1 - i
		tbl, _ := NewTable(subnets[i], []Peer{{Subnet: subnets[peer], Addr: netip.AddrPortFrom(under[peer], DefaultPort)}})
		e.SetPeers(tbl)
		engines[i] = e
	}

	// TCP: 32 MiB of random bytes from A to B, compared by hash.
	var ln net.Listener
	if err := nsB.Do(func() (err error) {
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(overlay[1], 5201).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan [32]byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- [32]byte{}
			return
		}
		defer c.Close()
		h := sha256.New()
		io.Copy(h, c)
		got <- [32]byte(h.Sum(nil))
	}()
	data := make([]byte, 32<<20)
	rng := rand.NewChaCha8([32]byte{13})
	rng.Read(data)
	var c net.Conn
	if err := nsA.Do(func() (err error) {
		c, err = net.DialTimeout("tcp4", netip.AddrPortFrom(overlay[1], 5201).String(), 5*time.Second)
		return err
	}); err != nil {
		t.Fatalf("dial across the overlay: %v", err)
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(data); err != nil {
		t.Fatalf("send: %v", err)
	}
	c.Close()
	select {
	case h := <-got:
		if h != sha256.Sum256(data) {
			t.Fatal("the bytes B received differ from those A sent")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("transfer did not finish in 30 s")
	}
	st := engines[1].Stats()
	t.Logf("B: %d packets received, %d TUN writes", st.RxPackets, st.RxWrites)
	if plainB {
		if st.RxWrites != 0 {
			t.Errorf("B wrote %d runs to a TUN without offloads", st.RxWrites)
		}
	} else if st.RxWrites == 0 || st.RxWrites*4 > st.RxPackets {
		t.Errorf("B wrote %d times for %d packets: TCP segments were not written as runs", st.RxWrites, st.RxPackets)
	}

	// UDP: 64-byte datagrams with a sequence number each, sent in bursts.
	var rc *net.UDPConn
	if err := nsB.Do(func() (err error) {
		rc, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(overlay[1], 5202)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	rc.SetReadBuffer(4 << 20)
	var sc *net.UDPConn
	if err := nsA.Do(func() (err error) {
		sc, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(overlay[1], 5202)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	const n = 4000
	before := engines[1].Stats()
	payload := make([]byte, 64)
	for i := range n {
		binary.BigEndian.PutUint32(payload, uint32(i))
		for j := 4; j < len(payload); j++ {
			payload[j] = byte(i + j)
		}
		if _, err := sc.Write(payload); err != nil {
			t.Fatal(err)
		}
	}
	seen := make([]bool, n)
	recv, buf := 0, make([]byte, 128)
	for recv < n {
		rc.SetReadDeadline(time.Now().Add(2 * time.Second))
		m, err := rc.Read(buf)
		if err != nil {
			break
		}
		i := int(binary.BigEndian.Uint32(buf))
		if m != 64 || i >= n {
			t.Fatalf("datagram of %d bytes, number %d", m, i)
		}
		for j := 4; j < 64; j++ {
			if buf[j] != byte(i+j) {
				t.Fatalf("datagram %d corrupted at byte %d", i, j)
			}
		}
		if !seen[i] {
			seen[i] = true
			recv++
		}
	}
	after := engines[1].Stats()
	t.Logf("UDP: %d of %d datagrams arrived; B: %d packets, %d TUN writes", recv, n, after.RxPackets-before.RxPackets, after.RxWrites-before.RxWrites)
	if recv < n*9/10 {
		t.Errorf("only %d of %d datagrams arrived intact", recv, n)
	}
}
