// Package udpbpf is flannel's udp encapsulation done in the kernel: two tc
// BPF programs (tcx, kernel ≥ 6.6) beside internal/udpfwd's user-space
// engine, in the same wire format (the inner IPv4 packet as the whole
// payload of a UDP datagram between the hosts' PublicIP:Port, no extra
// header), so that the udp backend sends and receives like kernel vxlan: the
// sender's own system call carries each packet to the underlay, through no
// TUN ring and no user-space copy.
//
//   - egress of the TUN device (flannel0): the inner destination is looked
//     up in an LPM trie of peer subnets; on a hit the program grows the
//     packet by 28 bytes (bpf_skb_adjust_room, ENCAP_L3_IPV4|ENCAP_L4_UDP,
//     so a TSO packet becomes SKB_GSO_UDP_TUNNEL with its segment size kept),
//     writes the outer IPv4 header (checksum from a per-peer template) and
//     UDP header (source port ours, checksum 0 as flannel's), adds room for
//     an Ethernet header (bpf_skb_change_head: bpf_redirect_neigh drops an
//     skb without a MAC header, as an L3 TUN's is) and redirects it to the
//     underlay with bpf_redirect_neigh (the kernel routes it and fills the
//     Ethernet header from its neighbour table). No hit → the packet goes on into the TUN
//     and to the engine, which stays the fallback.
//   - ingress of the underlay: a datagram to our address and port from a
//     peer's PublicIP:Port, not a fragment, lengths consistent, carrying an
//     IPv4 packet from that peer's subnet to ours (the engine's admission
//     rules, docs/THREAT-MODEL.md finding 1) loses its outer 28 bytes and is
//     redirected into the TUN device's receive path (BPF_F_INGRESS), where
//     the engine's writes arrive too. Anything else goes on to the stack, so
//     the engine's socket sees it and counts its drop reason as before: one
//     place for the trust rules' metrics.
//
// Differences from the engine, on purpose: the inner TTL is not decremented
// (vxlan does not either); a non-zero outer UDP checksum is not verified
// (the inner packet's own checksums are, because adjust_room resets a
// device's CHECKSUM_UNNECESSARY); no ICMP is generated (a packet with no
// peer goes to the engine, which sends net unreachable).
//
// Which peers may be served in the kernel. A TSO packet leaves as one
// SKB_GSO_UDP_TUNNEL super-packet and a locally sent one keeps a partial
// inner checksum (CHECKSUM_PARTIAL). A real NIC (or the stack, for a NIC
// that cannot) segments and checksums it on the way out, so the wire carries
// flannel's format; but between veth pairs (the lab, e2e, bench) the skb
// crosses whole and a user-space receiver (flanneld, or weft's engine) would
// read one oversized datagram with an incomplete inner checksum. So Set is
// meant to be given only peers that decapsulate in the kernel too (weft
// hosts running this package); the caller decides (see Set).
//
// Status: a prototype, measured by bench/udp's modes udpbpf and udpbpf1. The
// udp backend (internal/dataplane/udp.go) attaches it beside the engine and
// serves weft peers (leases with WeftNodeName) through it; WEFT_UDP_BPF=off
// keeps the engine alone. Not handled yet: a recreated underlay interface (the
// ingress program stays on the old ifindex until flannel0 is reopened).
package udpbpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/udpfwd"
)

// MaxPeers is the size of the peer maps.
const MaxPeers = 65536

// Config is where the programs attach and what they claim.
type Config struct {
	TUNIndex      int        // flannel0's ifindex (an L3 TUN device)
	UnderlayIndex int        // the underlay interface's ifindex (Ethernet)
	Local         netip.Addr // the underlay IPv4 address: outer source, the only outer destination accepted
	Port          uint16     // this host's udp port (flannel's 8285)
}

// Path is the in-kernel udp path: its maps, programs and tcx links. Attach
// makes it; Close detaches and frees everything (nothing is pinned, so
// nothing outlives the process).
type Path struct {
	cfg             Config
	conf, out, in   *ebpf.Map
	stats           *ebpf.Map // per-CPU counters (see Stats)
	egress, ingress *ebpf.Program
	links           []link.Link
	own             netip.Prefix
	outSet          map[[outKeySize]byte][outValSize]byte
	inSet           map[[inKeySize]byte][inValSize]byte
}

// ErrUnsupported wraps the reasons the kernel refuses the path (no BPF, no
// tcx, not privileged, a big-endian host): the caller runs the engine alone.
var ErrUnsupported = errors.New("udpbpf: in-kernel udp path unavailable")

// Attach loads the programs and attaches them (tcx egress of the TUN
// device, tcx ingress of the underlay). It must run in the network
// namespace of the two interfaces (tcx resolves ifindexes in the caller's
// namespace). The maps start empty: nothing is encapsulated or
// decapsulated until Set.
func Attach(cfg Config) (_ *Path, err error) {
	if !cfg.Local.Is4() {
		return nil, fmt.Errorf("udpbpf: local address %s: must be IPv4", cfg.Local)
	}
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		return nil, fmt.Errorf("%w: the programs are written for little-endian hosts", ErrUnsupported)
	}
	p := &Path{cfg: cfg, outSet: map[[outKeySize]byte][outValSize]byte{}, inSet: map[[inKeySize]byte][inValSize]byte{}}
	defer func() {
		if err != nil {
			p.Close()
		}
	}()
	if p.conf, err = ebpf.NewMap(&ebpf.MapSpec{Name: "weft_udp_conf", Type: ebpf.Array, KeySize: 4, ValueSize: confSize, MaxEntries: 1}); err != nil {
		return nil, fmt.Errorf("%w: create conf map: %w", ErrUnsupported, err)
	}
	if p.out, err = ebpf.NewMap(&ebpf.MapSpec{Name: "weft_udp_out", Type: ebpf.LPMTrie, KeySize: outKeySize, ValueSize: outValSize,
		MaxEntries: MaxPeers, Flags: unix.BPF_F_NO_PREALLOC}); err != nil {
		return nil, fmt.Errorf("%w: create peer subnet map: %w", ErrUnsupported, err)
	}
	if p.in, err = ebpf.NewMap(&ebpf.MapSpec{Name: "weft_udp_in", Type: ebpf.Hash, KeySize: inKeySize, ValueSize: inValSize,
		MaxEntries: MaxPeers, Flags: unix.BPF_F_NO_PREALLOC}); err != nil {
		return nil, fmt.Errorf("%w: create peer address map: %w", ErrUnsupported, err)
	}
	if p.stats, err = ebpf.NewMap(&ebpf.MapSpec{Name: "weft_udp_stats", Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: numStats}); err != nil {
		return nil, fmt.Errorf("%w: create stats map: %w", ErrUnsupported, err)
	}
	// The own subnet starts as 255.255.255.255/32 (nothing is ours) until
	// Set: an all-ones mask with subnet 0 admits no destination but 0.0.0.0,
	// which no route sends to flannel0.
	if err := p.writeConf(netip.Prefix{}); err != nil {
		return nil, err
	}
	if p.egress, err = ebpf.NewProgram(&ebpf.ProgramSpec{Name: "weft_udp_egress", Type: ebpf.SchedCLS, License: "GPL",
		Instructions: egressProg(p.conf.FD(), p.out.FD(), p.stats.FD())}); err != nil {
		return nil, fmt.Errorf("%w: load egress program: %w", ErrUnsupported, err)
	}
	if p.ingress, err = ebpf.NewProgram(&ebpf.ProgramSpec{Name: "weft_udp_ingress", Type: ebpf.SchedCLS, License: "GPL",
		Instructions: ingressProg(p.conf.FD(), p.in.FD(), p.stats.FD())}); err != nil {
		return nil, fmt.Errorf("%w: load ingress program: %w", ErrUnsupported, err)
	}
	for _, a := range []struct {
		ifindex int
		prog    *ebpf.Program
		at      ebpf.AttachType
		what    string
	}{{cfg.UnderlayIndex, p.ingress, ebpf.AttachTCXIngress, "tcx ingress of the underlay"}, {cfg.TUNIndex, p.egress, ebpf.AttachTCXEgress, "tcx egress of the TUN"}} {
		l, err := link.AttachTCX(link.TCXOptions{Interface: a.ifindex, Program: a.prog, Attach: a.at})
		if err != nil {
			return nil, fmt.Errorf("%w: attach to %s (ifindex %d): %w", ErrUnsupported, a.what, a.ifindex, err)
		}
		p.links = append(p.links, l)
	}
	return p, nil
}

// writeConf writes the conf entry for own (invalid: nothing is ours).
func (p *Path) writeConf(own netip.Prefix) error {
	var v [confSize]byte
	if own.IsValid() {
		a := own.Masked().Addr().As4()
		copy(v[0:4], a[:])
		binary.BigEndian.PutUint32(v[4:8], ^uint32(0)<<(32-own.Bits()))
	} else {
		binary.BigEndian.PutUint32(v[4:8], ^uint32(0))
	}
	l := p.cfg.Local.As4()
	copy(v[8:12], l[:])
	binary.BigEndian.PutUint16(v[12:14], p.cfg.Port)
	binary.NativeEndian.PutUint32(v[16:20], uint32(p.cfg.TUNIndex))
	binary.NativeEndian.PutUint32(v[20:24], uint32(p.cfg.UnderlayIndex))
	if err := p.conf.Put(uint32(0), v); err != nil {
		return fmt.Errorf("udpbpf: write conf map (own subnet %s): %w", own, err)
	}
	return nil
}

// Set makes the maps hold exactly peers (each served in the kernel both
// ways) with own as this host's subnet. The peers pass the engine's rules
// first (udpfwd.NewTable): one it would leave out is left out here too and
// returned. Give it only peers that decapsulate in the kernel (see the
// package notes); packets to other peers keep going through the engine.
// On an error the maps may hold a mix; the next Set repairs them.
func (p *Path) Set(peers []udpfwd.Peer, own netip.Prefix) ([]udpfwd.SkippedPeer, error) {
	if !own.IsValid() || !own.Addr().Is4() {
		return nil, fmt.Errorf("udpbpf: own subnet %s: must be an IPv4 prefix", own)
	}
	_, skipped := udpfwd.NewTable(own, peers)
	bad := map[udpfwd.Peer]bool{}
	for _, s := range skipped {
		bad[s.Peer] = true
	}
	outWant := map[[outKeySize]byte][outValSize]byte{}
	inWant := map[[inKeySize]byte][inValSize]byte{}
	for _, peer := range peers {
		if bad[peer] {
			continue
		}
		sub := peer.Subnet.Masked()
		var ok [outKeySize]byte
		binary.NativeEndian.PutUint32(ok[0:4], uint32(sub.Bits()))
		a := sub.Addr().As4()
		copy(ok[4:], a[:])
		outWant[ok] = p.template(peer.Addr)
		var ik [inKeySize]byte
		pa := peer.Addr.Addr().As4()
		copy(ik[0:4], pa[:])
		binary.BigEndian.PutUint16(ik[4:6], peer.Addr.Port())
		var iv [inValSize]byte
		copy(iv[0:4], a[:])
		binary.BigEndian.PutUint32(iv[4:8], ^uint32(0)<<(32-sub.Bits()))
		inWant[ik] = iv
	}
	var errs []error
	// Add before delete, and the own subnet first: a peer is never
	// half-served longer than the two map writes.
	if own != p.own {
		if err := p.writeConf(own); err != nil {
			return skipped, err
		}
		p.own = own
	}
	errs = append(errs, syncMap(p.in, p.inSet, inWant, "peer address")...)
	errs = append(errs, syncMap(p.out, p.outSet, outWant, "peer subnet")...)
	return skipped, errors.Join(errs...)
}

// syncMap makes m (whose content is have) hold want, updating have as it goes.
func syncMap[K comparable, V comparable](m *ebpf.Map, have, want map[K]V, what string) []error {
	var errs []error
	for k, v := range want {
		if hv, ok := have[k]; ok && hv == v {
			continue
		}
		if err := m.Put(k, v); err != nil {
			errs = append(errs, fmt.Errorf("udpbpf: write %s map entry %v: %w", what, k, err))
			continue
		}
		have[k] = v
	}
	for k := range have {
		if _, ok := want[k]; ok {
			continue
		}
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("udpbpf: delete %s map entry %v: %w", what, k, err))
			continue
		}
		delete(have, k)
	}
	return errs
}

// template is the out map's value for a peer at dst: the outer IPv4 and UDP
// headers with the lengths and IPv4 checksum zero, and the sum the program
// completes the checksum from.
func (p *Path) template(dst netip.AddrPort) [outValSize]byte {
	var v [outValSize]byte
	h := v[:overhead]
	h[0] = 0x45
	binary.BigEndian.PutUint16(h[6:8], 0x4000) // DF, as the engine's socket sends (path MTU discovery on)
	h[8] = 64                                  // TTL
	h[9] = unix.IPPROTO_UDP
	src := p.cfg.Local.As4()
	copy(h[12:16], src[:])
	d := dst.Addr().As4()
	copy(h[16:20], d[:])
	binary.BigEndian.PutUint16(h[20:22], p.cfg.Port)
	binary.BigEndian.PutUint16(h[22:24], dst.Port())
	// The sum of the IPv4 header's words as the (little-endian) program
	// loads them: ones'-complement addition commutes with the byte swap,
	// so adding the byte-swapped length and folding gives the right bytes.
	var s uint32
	for i := 0; i < 20; i += 2 {
		s += uint32(binary.NativeEndian.Uint16(h[i:]))
	}
	binary.NativeEndian.PutUint32(v[28:32], s)
	return v
}

// Close detaches the programs and frees the maps; traffic falls back to
// the engine at once. A second Close does nothing.
func (p *Path) Close() error {
	var errs []error
	for _, l := range p.links {
		if err := l.Close(); err != nil {
			errs = append(errs, fmt.Errorf("udpbpf: detach: %w", err))
		}
	}
	p.links = nil
	for _, prog := range []*ebpf.Program{p.egress, p.ingress} {
		if prog != nil {
			errs = append(errs, prog.Close())
		}
	}
	for _, m := range []*ebpf.Map{p.conf, p.out, p.in, p.stats} {
		if m != nil {
			errs = append(errs, m.Close())
		}
	}
	p.egress, p.ingress, p.conf, p.out, p.in, p.stats = nil, nil, nil, nil, nil, nil
	return errors.Join(errs...)
}

// Stats are the in-kernel path's packet counters since Attach, summed over
// the CPUs. Packets the programs leave to the engine are not counted here:
// the engine counts them (udpfwd.Stats).
type Stats struct {
	Encapsulated uint64 // flannel0 egress: encapsulated and redirected to the underlay
	Decapsulated uint64 // underlay ingress: admitted, decapsulated and redirected into flannel0
}

// Stats reads the counters (zero after Close or on a read error).
func (p *Path) Stats() Stats {
	var st Stats
	if p == nil || p.stats == nil {
		return st
	}
	for idx, dst := range []*uint64{&st.Encapsulated, &st.Decapsulated} {
		var per []uint64
		if err := p.stats.Lookup(uint32(idx), &per); err != nil {
			continue
		}
		for _, v := range per {
			*dst += v
		}
	}
	return st
}
