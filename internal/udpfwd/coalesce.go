package udpfwd

// The receive path's TUN writer. A received message (recvmmsg with UDP GRO)
// holds up to 64 datagrams from one sender, and a TCP or UDP flow's datagrams
// arrive as consecutive segments of it. wireguard-go's tun.Device.Write would
// need each datagram copied into a buffer of its own, then validate every
// segment's checksum and copy the payloads together again (its GRO). Here a
// run of segments of one flow goes to the TUN in place, as ONE writev: a
// virtio-net header asking the kernel to segment (TSO/USO) and checksum
// (NEEDS_CSUM), the first segment with its headers rewritten for the whole
// run, then the other segments' payloads. The bytes are copied once, by the
// kernel, and no checksum is computed in user space: the outer UDP checksum,
// which the kernel verified on receipt, already covers them, and the kernel
// fills in the inner checksums it sends on. Each datagram still passes the
// admission check and the TTL decrement before it may join a run.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"
)

const (
	protoTCP = 6
	protoUDP = 17

	tcpFlagACK = 0x10
	tcpFlagPSH = 0x08

	// virtio-net header (include/uapi/linux/virtio_net.h): flags, gso_type,
	// hdr_len, gso_size, csum_start, csum_offset; little-endian on x86 and
	// arm64 (the kernel's native order for a TUN without TUNSETVNETBE).
	vnetHdrLen      = 10
	vnetNeedsCsum   = 1
	vnetGSOTCPv4    = 1
	vnetGSOUDPL4    = 5
	tcpCsumOffset   = 16
	udpCsumOffset   = 6
	udpHeaderLen    = 8
	tcpMinHeaderLen = 20
)

// run is a sequence of datagrams of one flow that one TUN write can carry.
type run struct {
	proto   byte // protoTCP, protoUDP, or 0: not coalescible (written alone)
	first   []byte
	hl      int // transport header length (TCP with options, UDP 8)
	gso     int // payload size of the first segment: every one but the last has it
	payload int // payload bytes so far
	last    int // payload size of the last segment
	nextSeq uint32
	psh     bool // the last segment has PSH: nothing may follow it
	noUDP   bool // the device cannot segment UDP (no USO): UDP goes packet by packet
	pkts    [][]byte
	// saved is the first packet's headers as they came, which finish
	// rewrites: restore puts them back when the kernel refuses the run.
	saved [ipv4MinHeader + 60]byte
}

// coalescible returns the transport protocol and header length of pkt (a
// packet admitted by checkIPv4) when it may start or join a run, or 0: IPv4
// without options or fragmentation, TCP with only ACK (and PSH) set and a
// payload, or UDP whose length field matches.
func coalescible(pkt []byte) (proto byte, hl int) {
	if pkt[0] != 0x45 || binary.BigEndian.Uint16(pkt[offFrag:])&0x3fff != 0 {
		return 0, 0
	}
	seg := pkt[ipv4MinHeader:]
	switch pkt[offProto] {
	case protoTCP:
		if len(seg) < tcpMinHeaderLen {
			return 0, 0
		}
		hl = int(seg[12]>>4) * 4
		if hl < tcpMinHeaderLen || hl >= len(seg) || seg[12]&0x0f != 0 {
			return 0, 0
		}
		if f := seg[13]; f != tcpFlagACK && f != tcpFlagACK|tcpFlagPSH {
			return 0, 0
		}
		return protoTCP, hl
	case protoUDP:
		if len(seg) <= udpHeaderLen || int(binary.BigEndian.Uint16(seg[4:])) != len(seg) {
			return 0, 0
		}
		return protoUDP, udpHeaderLen
	}
	return 0, 0
}

// start begins a run with pkt.
func (r *run) start(pkt []byte) {
	r.proto, r.hl = coalescible(pkt)
	r.psh, r.nextSeq = false, 0
	r.first = pkt
	r.pkts = append(r.pkts[:0], pkt)
	if r.proto == protoUDP && r.noUDP {
		r.proto = 0
	}
	if r.proto == 0 {
		return
	}
	r.gso = len(pkt) - ipv4MinHeader - r.hl
	r.payload, r.last = r.gso, r.gso
	if r.proto == protoTCP {
		seg := pkt[ipv4MinHeader:]
		r.nextSeq = binary.BigEndian.Uint32(seg[4:]) + uint32(r.gso)
		r.psh = seg[13]&tcpFlagPSH != 0
	}
}

// add appends pkt to the run if it continues it, and reports whether it did.
func (r *run) add(pkt []byte) bool {
	if r.proto == 0 || r.psh || r.last != r.gso || len(r.pkts) >= gsoMaxSegments {
		return false
	}
	proto, hl := coalescible(pkt)
	f := r.first
	// Same addresses, TOS, DF and TTL: the kernel's GRO rule (what the
	// segments the kernel cuts from the run will carry is the first's).
	if proto != r.proto || hl != r.hl || pkt[1] != f[1] || pkt[offFrag] != f[offFrag] || pkt[offTTL] != f[offTTL] ||
		string(pkt[offSrc:ipv4MinHeader]) != string(f[offSrc:ipv4MinHeader]) {
		return false
	}
	seg, fs := pkt[ipv4MinHeader:], f[ipv4MinHeader:]
	n := len(seg) - hl
	if n > r.gso || r.payload+n+ipv4MinHeader+hl > 65535 {
		return false
	}
	switch proto {
	case protoTCP:
		// Ports and ACK equal, the next sequence number, equal options.
		if string(seg[:4]) != string(fs[:4]) || string(seg[8:12]) != string(fs[8:12]) ||
			binary.BigEndian.Uint32(seg[4:]) != r.nextSeq || string(seg[tcpMinHeaderLen:hl]) != string(fs[tcpMinHeaderLen:hl]) {
			return false
		}
		r.nextSeq += uint32(n)
		r.psh = seg[13]&tcpFlagPSH != 0
	case protoUDP:
		if string(seg[:4]) != string(fs[:4]) {
			return false
		}
	}
	r.pkts = append(r.pkts, pkt)
	r.payload += n
	r.last = n
	return true
}

// finish rewrites the run's first packet to describe the whole run and fills
// hdr, the virtio-net header to write in front of it. A run of one packet
// goes as it came, with an empty header.
func (r *run) finish(hdr *[vnetHdrLen]byte) {
	clear(hdr[:])
	if len(r.pkts) < 2 {
		return
	}
	f := r.first
	copy(r.saved[:], f[:ipv4MinHeader+r.hl])
	total := ipv4MinHeader + r.hl + r.payload
	binary.BigEndian.PutUint16(f[offTotalLen:], uint16(total))
	f[offChecksum], f[offChecksum+1] = 0, 0
	binary.BigEndian.PutUint16(f[offChecksum:], checksum(f[:ipv4MinHeader]))
	seg := f[ipv4MinHeader:]
	csumAt, gsoType := tcpCsumOffset, byte(vnetGSOTCPv4)
	if r.proto == protoUDP {
		csumAt, gsoType = udpCsumOffset, vnetGSOUDPL4
		binary.BigEndian.PutUint16(seg[4:], uint16(total-ipv4MinHeader))
	} else if r.psh {
		seg[13] |= tcpFlagPSH // the kernel gives the last segment the flags it clears on the others
	}
	// NEEDS_CSUM: the checksum field holds the pseudo-header sum, the
	// kernel adds the rest for every segment it cuts.
	binary.BigEndian.PutUint16(seg[csumAt:], pseudoSum(f, r.proto, total-ipv4MinHeader))
	hdr[0] = vnetNeedsCsum
	hdr[1] = gsoType
	binary.LittleEndian.PutUint16(hdr[2:], uint16(ipv4MinHeader+r.hl))
	binary.LittleEndian.PutUint16(hdr[4:], uint16(r.gso))
	binary.LittleEndian.PutUint16(hdr[6:], ipv4MinHeader)
	binary.LittleEndian.PutUint16(hdr[8:], uint16(csumAt))
}

// restore undoes finish's rewrite of the first packet.
func (r *run) restore() {
	if len(r.pkts) > 1 {
		copy(r.first, r.saved[:ipv4MinHeader+r.hl])
	}
}

// pseudoSum is the folded, not complemented, sum of the IPv4 pseudo-header
// of pkt for a transport segment of length n.
func pseudoSum(pkt []byte, proto byte, n int) uint16 {
	sum := uint32(proto) + uint32(n)
	for i := offSrc; i < ipv4MinHeader; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(pkt[i:]))
	}
	for sum>>16 != 0 {
		sum = (sum & 0xffff) + sum>>16
	}
	return uint16(sum)
}

// tunWriter writes runs to a TUN device's file descriptor with writev, the
// virtio-net header first. Its buffers are allocated once.
type tunWriter struct {
	rc  syscall.RawConn
	hdr [vnetHdrLen]byte
	iov []unix.Iovec
	// uso is true while the device takes UDP segmentation offload (Linux
	// ≥ 6.2); without it UDP runs are not built.
	uso bool
}

// newTUNWriter returns a writer for dev, or nil when dev is not a TUN with
// virtio-net headers.
func newTUNWriter(dev tun.Device) *tunWriter {
	rc := vnetRawConn(dev)
	if rc == nil {
		return nil
	}
	w := &tunWriter{rc: rc, iov: make([]unix.Iovec, 0, 1+gsoMaxSegments)}
	// wireguard-go asked for these offloads when it opened the device; asking
	// again tells whether the USO part was granted.
	const offloads = unix.TUN_F_CSUM | unix.TUN_F_TSO4 | unix.TUN_F_TSO6 | unix.TUN_F_USO4 | unix.TUN_F_USO6
	_ = rc.Control(func(fd uintptr) { w.uso = unix.IoctlSetInt(int(fd), unix.TUNSETOFFLOAD, offloads) == nil })
	return w
}

// vnetRawConn returns the raw descriptor of dev when it is a TUN with
// virtio-net headers (wireguard-go turns them on when the kernel has them,
// and then reads and writes in batches), or nil.
func vnetRawConn(dev tun.Device) syscall.RawConn {
	f := dev.File()
	if f == nil || dev.BatchSize() < 2 {
		return nil
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// errTUNRefused wraps a write the kernel refused for its content (EINVAL):
// a run the kernel would not segment, which is then written packet by packet.
var errTUNRefused = errors.New("TUN refused the packet")

// write writes the run to the device: as one packet the kernel segments
// when it holds more than one; if the kernel refuses that, packet by packet
// as they came (each valid on its own), returning errTUNRefused with the
// outcome of those writes.
func (w *tunWriter) write(r *run) error {
	r.finish(&w.hdr)
	w.iov = appendIov(w.iov[:0], w.hdr[:])
	for i, p := range r.pkts {
		if i > 0 {
			p = p[ipv4MinHeader+r.hl:]
		}
		w.iov = appendIov(w.iov, p)
	}
	err := w.writev()
	if !errors.Is(err, unix.EINVAL) || len(r.pkts) < 2 {
		return err
	}
	r.restore()
	err = fmt.Errorf("%w: run of %d %s segments of %d bytes: %w", errTUNRefused, len(r.pkts), protoName(r.proto), r.gso, err)
	clear(w.hdr[:])
	for _, p := range r.pkts {
		w.iov = appendIov(appendIov(w.iov[:0], w.hdr[:]), p)
		if werr := w.writev(); werr != nil {
			return errors.Join(err, werr)
		}
	}
	return err
}

func appendIov(iov []unix.Iovec, b []byte) []unix.Iovec {
	v := unix.Iovec{Base: unsafe.SliceData(b)}
	v.SetLen(len(b))
	return append(iov, v)
}

func (w *tunWriter) writev() error {
	var errno unix.Errno
	err := w.rc.Write(func(fd uintptr) bool {
		_, _, errno = unix.Syscall(unix.SYS_WRITEV, fd, uintptr(unsafe.Pointer(unsafe.SliceData(w.iov))), uintptr(len(w.iov)))
		return errno != unix.EAGAIN
	})
	if err != nil {
		// Only a closed (or closing) file makes the raw write itself fail.
		return fmt.Errorf("%w: %v", os.ErrClosed, err)
	}
	switch errno {
	case 0:
		return nil
	case unix.EBADFD:
		return os.ErrClosed
	}
	return errno
}

func protoName(p byte) string {
	switch p {
	case protoTCP:
		return "TCP"
	case protoUDP:
		return "UDP"
	}
	return "other"
}
