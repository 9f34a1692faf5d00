package udpfwd

// The send path's TUN reader. With TSO/USO the kernel hands the engine a TCP
// or UDP super-packet of up to 64 KiB (a virtio-net header in front) that
// must leave as MTU-sized datagrams with complete checksums: a flanneld peer
// writes what it receives into a TUN without offloads, so nothing would
// complete them there. wireguard-go's tun.Device.Read copies every segment
// into a buffer of its own and then checksums it; here each segment is a
// header built in a small buffer plus its payload left where the read put
// it, the two sent as one datagram (two iovecs of a UDP_SEGMENT message), so
// the payload is read once (for its checksum) and copied only by the kernel.
// Reading the device here also lets the engine try a read without blocking
// (a would-block answer instead of a poll before every read).

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

// dgram is one datagram to send: head followed by body (nil for a packet
// sent whole).
type dgram struct{ head, body []byte }

func (d dgram) len() int { return len(d.head) + len(d.body) }

// tunReader reads packets from a TUN device with virtio-net headers.
type tunReader struct {
	rc syscall.RawConn
}

// newTUNReader returns a reader for dev, or nil when dev is not a TUN with
// virtio-net headers.
func newTUNReader(dev tun.Device) *tunReader {
	rc := vnetRawConn(dev)
	if rc == nil {
		return nil
	}
	return &tunReader{rc: rc}
}

// read reads one packet, its virtio-net header first, into buf (which must
// hold 64 KiB after the header) and returns its length; with wait false it
// returns 0 at once when no packet is queued.
func (r *tunReader) read(buf []byte, wait bool) (int, error) {
	var (
		n     int
		errno unix.Errno
	)
	err := r.rc.Read(func(fd uintptr) bool {
		m, _, e := unix.Syscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(buf))), uintptr(len(buf)))
		n, errno = int(m), e
		return errno != unix.EAGAIN || !wait
	})
	if err != nil {
		return 0, fmt.Errorf("%w: %v", os.ErrClosed, err)
	}
	switch errno {
	case 0:
		return n, nil
	case unix.EAGAIN:
		return 0, nil
	case unix.EBADFD:
		return 0, os.ErrClosed
	}
	return 0, errno
}

// segmenter cuts what the TUN reader read into datagrams. Its header buffers
// are allocated once.
type segmenter struct {
	heads [][]byte // per segment: IPv4 + TCP header (≤ 120 bytes)
}

func newSegmenter(n int) *segmenter {
	return &segmenter{heads: makeBufs(n, 120)}
}

// errBadGSO is a virtio-net header or super-packet the engine does not
// forward (the kernel sent something other than IPv4 TCP or UDP).
type errBadGSO struct{ why string }

func (e errBadGSO) Error() string { return "TUN packet dropped: " + e.why }

// errNoRoom says that the super-packet's segments do not fit in what is left
// of the batch: send the batch, then split it again.
var errNoRoom = errors.New("no room left in the batch")

// split appends to out the datagrams of the packet in raw (virtio-net header
// first) and returns out, which holds at most len(s.heads) datagrams. A packet whose
// checksum the kernel left to us (NEEDS_CSUM) gets it; a super-packet is cut
// at its gso_size, each segment with its own IPv4 length, ID and checksum
// and TCP sequence number, flags and checksum (or UDP length and checksum),
// as the kernel's own segmentation would.
func (s *segmenter) split(raw []byte, out []dgram) ([]dgram, error) {
	if len(raw) < vnetHdrLen {
		return out, errBadGSO{fmt.Sprintf("%d bytes: shorter than its virtio-net header", len(raw))}
	}
	flags, gsoType := raw[0], raw[1]
	gso := int(binary.LittleEndian.Uint16(raw[4:]))
	csumStart, csumOff := int(binary.LittleEndian.Uint16(raw[6:])), int(binary.LittleEndian.Uint16(raw[8:]))
	pkt := raw[vnetHdrLen:]
	if gsoType == unix.VIRTIO_NET_HDR_GSO_NONE {
		if flags&unix.VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
			at := csumStart + csumOff
			if at+2 > len(pkt) || csumStart > len(pkt) {
				return out, errBadGSO{fmt.Sprintf("checksum at %d+%d outside the %d-byte packet", csumStart, csumOff, len(pkt))}
			}
			// The field holds the pseudo-header sum; the rest is ours.
			c := ^fold(sum(pkt[csumStart:], 0))
			if c == 0 && csumOff == udpCsumOffset && len(pkt) > offProto && pkt[offProto] == protoUDP {
				c = 0xffff // 0 means "no checksum" in UDP
			}
			binary.BigEndian.PutUint16(pkt[at:], c)
		}
		return append(out, dgram{head: pkt}), nil
	}
	if len(pkt) < ipv4MinHeader || pkt[0]>>4 != 4 {
		return out, errBadGSO{fmt.Sprintf("GSO type %d on a packet that is not IPv4", gsoType)}
	}
	ihl := int(pkt[0]&0x0f) * 4
	var proto byte
	var hl int
	switch gsoType {
	case unix.VIRTIO_NET_HDR_GSO_TCPV4:
		if len(pkt) < ihl+tcpMinHeaderLen {
			return out, errBadGSO{"TCP super-packet shorter than its headers"}
		}
		proto, hl = protoTCP, int(pkt[ihl+12]>>4)*4
	case unix.VIRTIO_NET_HDR_GSO_UDP_L4:
		proto, hl = protoUDP, udpHeaderLen
	default:
		return out, errBadGSO{fmt.Sprintf("GSO type %d (IPv4 TCP and UDP only)", gsoType)}
	}
	hdrLen := ihl + hl
	switch {
	case ihl < ipv4MinHeader || csumStart != ihl || pkt[offProto] != proto:
		return out, errBadGSO{fmt.Sprintf("GSO type %d: transport header at %d, IPv4 header of %d bytes, protocol %d", gsoType, csumStart, ihl, pkt[offProto])}
	case hl < udpHeaderLen || (proto == protoTCP && hl < tcpMinHeaderLen) || hl > 60 || hdrLen >= len(pkt) || gso == 0:
		return out, errBadGSO{fmt.Sprintf("GSO type %d: headers of %d bytes, segment size %d in a %d-byte packet", gsoType, hdrLen, gso, len(pkt))}
	case (len(pkt)-hdrLen+gso-1)/gso > len(s.heads):
		return out, errBadGSO{fmt.Sprintf("%d-byte super-packet in segments of %d: more than %d", len(pkt), gso, len(s.heads))}
	case (len(pkt)-hdrLen+gso-1)/gso > len(s.heads)-len(out):
		return out, errNoRoom
	}
	tmpl := pkt[:hdrLen]
	id := binary.BigEndian.Uint16(tmpl[4:])
	seq := uint32(0)
	if proto == protoTCP {
		seq = binary.BigEndian.Uint32(tmpl[ihl+4:])
	}
	// The pseudo-header's addresses and protocol are every segment's.
	addrs := sum(tmpl[offSrc:offSrc+8], uint64(proto))
	for i, at := 0, hdrLen; at < len(pkt); i, at = i+1, at+gso {
		body := pkt[at:min(at+gso, len(pkt))]
		last := at+gso >= len(pkt)
		h := s.heads[len(out)][:hdrLen]
		copy(h, tmpl)
		binary.BigEndian.PutUint16(h[offTotalLen:], uint16(hdrLen+len(body)))
		binary.BigEndian.PutUint16(h[4:], id+uint16(i))
		h[offChecksum], h[offChecksum+1] = 0, 0
		binary.BigEndian.PutUint16(h[offChecksum:], checksum(h[:ihl]))
		t := h[ihl:]
		csumAt := udpCsumOffset
		if proto == protoTCP {
			csumAt = tcpCsumOffset
			binary.BigEndian.PutUint32(t[4:], seq+uint32(i*gso))
			if !last {
				t[13] &^= 0x01 | tcpFlagPSH // FIN and PSH belong to the last segment
			}
		} else {
			binary.BigEndian.PutUint16(t[4:], uint16(hl+len(body)))
		}
		t[csumAt], t[csumAt+1] = 0, 0
		c := ^fold(sum(body, sum(t, addrs+uint64(hl+len(body)))))
		if c == 0 && proto == protoUDP {
			c = 0xffff // 0 means "no checksum" in UDP
		}
		binary.BigEndian.PutUint16(t[csumAt:], c)
		out = append(out, dgram{head: h, body: body})
	}
	return out, nil
}
