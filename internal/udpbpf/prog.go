package udpbpf

import (
	"github.com/cilium/ebpf/asm"
)

// Kernel constants the programs use (include/uapi/linux/bpf.h, pkt_cls.h).
const (
	tcxNext     = -1 // TCX_NEXT: not ours, let the next program or the stack have it
	tcxDrop     = 2  // TCX_DROP
	adjRoomMAC  = 1  // BPF_ADJ_ROOM_MAC
	fixedGSO    = 1 << 0
	encapL3IPv4 = 1 << 1
	encapL4UDP  = 1 << 4
	fIngress    = 1 // BPF_F_INGRESS

	// struct __sk_buff offsets.
	skbLen      = 0
	skbProtocol = 16
	skbGSOSize  = 176

	// ETH_P_IP as the kernel keeps skb->protocol (network order), loaded
	// as a little-endian u32. The programs are built for little-endian
	// hosts only (see hostLE).
	ethPIPle = 0x0008

	ethHdr   = 14
	overhead = 28 // outer IPv4 (20) + UDP (8)
)

// Map value layouts, shared with udpbpf.go.
//
// conf (array, one entry, confSize bytes):
//
//	0  own subnet (4 bytes, network order)
//	4  own mask   (4 bytes, network order)
//	8  local underlay address (network order): the only outer destination accepted
//	12 port (2 bytes, network order), 2 bytes zero
//	16 TUN ifindex (u32, host order)
//	20 underlay ifindex (u32, host order)
//
// out (LPM trie; key {prefixlen u32 host order, address 4 bytes}):
//
//	0  outer IPv4 + UDP header template, 28 bytes: total length, header
//	   checksum and UDP length zero, UDP checksum zero (none, as flannel)
//	28 ones'-complement sum of the template's 16-bit words as the host
//	   loads them (u32): the checksum is this plus the total length, folded
//
// in (hash; key {peer address 4 bytes, peer port 2 bytes network order, 2 zero}):
//
//	0  peer subnet (4 bytes, network order)
//	4  peer mask   (4 bytes, network order)
const (
	confSize   = 24
	outKeySize = 8
	outValSize = 32
	inKeySize  = 8
	inValSize  = 8
)

// egressProg is the tcx egress program of the TUN device (flannel0, an L3
// device: the skb starts at the IPv4 header). A packet to a peer in the out
// map gets the outer IPv4 and UDP headers in front and is redirected to the
// underlay through the neighbour table; anything else goes on to the TUN
// and the user-space engine.
func egressProg(conf, out, stats int) asm.Instructions {
	const (
		key  = -8  // LPM key: prefixlen, then the inner destination
		zero = -12 // conf map key
		hdr  = -40 // the 28-byte outer header being built
	)
	return append(append(asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R6, skbProtocol, asm.Word),
		asm.JNE.Imm(asm.R2, ethPIPle, "next"),
		// The outer total length must fit 16 bits (a 64 KiB TSO packet
		// plus 28 may not): leave such a packet to the engine.
		asm.LoadMem(asm.R2, asm.R6, skbLen, asm.Word),
		asm.JGT.Imm(asm.R2, 65535-overhead, "next"),

		// key.addr = inner destination (IPv4 header offset 16).
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, 16),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, key+4),
		asm.Mov.Imm(asm.R4, 4),
		asm.FnSkbLoadBytes.Call(),
		asm.JNE.Imm(asm.R0, 0, "next"),
		asm.StoreImm(asm.RFP, key, 32, asm.Word),
		asm.LoadMapPtr(asm.R1, out),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, key),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "next"),
		asm.Mov.Reg(asm.R7, asm.R0),

		asm.StoreImm(asm.RFP, zero, 0, asm.Word),
		asm.LoadMapPtr(asm.R1, conf),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, zero),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "next"),
		asm.Mov.Reg(asm.R8, asm.R0),

		// Copy the template to the stack.
		asm.LoadMem(asm.R1, asm.R7, 0, asm.Word), asm.StoreMem(asm.RFP, hdr+0, asm.R1, asm.Word),
		asm.LoadMem(asm.R1, asm.R7, 4, asm.Word), asm.StoreMem(asm.RFP, hdr+4, asm.R1, asm.Word),
		asm.LoadMem(asm.R1, asm.R7, 8, asm.Word), asm.StoreMem(asm.RFP, hdr+8, asm.R1, asm.Word),
		asm.LoadMem(asm.R1, asm.R7, 12, asm.Word), asm.StoreMem(asm.RFP, hdr+12, asm.R1, asm.Word),
		asm.LoadMem(asm.R1, asm.R7, 16, asm.Word), asm.StoreMem(asm.RFP, hdr+16, asm.R1, asm.Word),
		asm.LoadMem(asm.R1, asm.R7, 20, asm.Word), asm.StoreMem(asm.RFP, hdr+20, asm.R1, asm.Word),
		asm.LoadMem(asm.R1, asm.R7, 24, asm.Word), asm.StoreMem(asm.RFP, hdr+24, asm.R1, asm.Word),
		asm.LoadMem(asm.R9, asm.R7, 28, asm.Word),

		// Room for the outer headers in front of the inner IPv4 header;
		// the kernel marks a TSO packet SKB_GSO_UDP_TUNNEL and keeps its
		// segment size (the underlay MTU is flannel0's + 28).
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, overhead),
		asm.Mov.Imm(asm.R3, adjRoomMAC),
		asm.Mov.Imm(asm.R4, fixedGSO|encapL3IPv4|encapL4UDP),
		asm.FnSkbAdjustRoom.Call(),
		asm.JNE.Imm(asm.R0, 0, "next"),

		// total length, header checksum, UDP length.
		asm.LoadMem(asm.R2, asm.R6, skbLen, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.HostTo(asm.BE, asm.R2, asm.Half),
		asm.StoreMem(asm.RFP, hdr+2, asm.R2, asm.Half),
		asm.Add.Reg(asm.R9, asm.R2),
		asm.Mov.Reg(asm.R3, asm.R9),
		asm.RSh.Imm(asm.R3, 16),
		asm.And.Imm(asm.R9, 0xffff),
		asm.Add.Reg(asm.R9, asm.R3),
		asm.Mov.Reg(asm.R3, asm.R9),
		asm.RSh.Imm(asm.R3, 16),
		asm.And.Imm(asm.R9, 0xffff),
		asm.Add.Reg(asm.R9, asm.R3),
		asm.Xor.Imm(asm.R9, 0xffff),
		asm.StoreMem(asm.RFP, hdr+10, asm.R9, asm.Half),
		asm.Sub.Imm(asm.R4, 20),
		asm.HostTo(asm.BE, asm.R4, asm.Half),
		asm.StoreMem(asm.RFP, hdr+24, asm.R4, asm.Half),

		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, 0),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, hdr),
		asm.Mov.Imm(asm.R4, overhead),
		asm.Mov.Imm(asm.R5, 0),
		asm.FnSkbStoreBytes.Call(),
		asm.JNE.Imm(asm.R0, 0, "drop"), // grown but not written: nobody can use it

		// bpf_redirect_neigh wants an skb with a MAC header before the
		// network header (it drops one without, as an L3 TUN's is): give
		// it room for one; the neighbour output writes the addresses.
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, ethHdr),
		asm.Mov.Imm(asm.R3, 0),
		asm.FnSkbChangeHead.Call(),
		asm.JNE.Imm(asm.R0, 0, "drop"),

		// The kernel routes the outer destination on the underlay and
		// fills the Ethernet header from its neighbour table.
	}, count(stats, -48, statEncap, "redirect")...), asm.Instructions{
		asm.LoadMem(asm.R1, asm.R8, 20, asm.Word).WithSymbol("redirect"),
		asm.Mov.Imm(asm.R2, 0),
		asm.Mov.Imm(asm.R3, 0),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnRedirectNeigh.Call(),
		asm.Return(),

		asm.Mov.Imm(asm.R0, tcxDrop).WithSymbol("drop"),
		asm.Return(),
		asm.Mov.Imm(asm.R0, tcxNext).WithSymbol("next"),
		asm.Return(),
	}...)
}

// ingressProg is the tcx ingress program of the underlay (Ethernet: the
// skb starts at the Ethernet header). It decapsulates what the engine would
// admit (internal/udpfwd: from a peer's PublicIP:Port to our address and
// port, a well-formed IPv4 packet from that peer's subnet to ours) and
// hands the inner packet to the TUN device as if the engine had written it;
// everything else goes on to the stack, where the engine's socket counts
// and logs its drop reason.
func ingressProg(conf, in, stats int) asm.Instructions {
	const (
		pkt  = -48 // outer IPv4 (20), UDP (8), inner IPv4 header (20)
		pkey = -56 // in map key
		zero = -60 // conf map key
		udp  = pkt + 20
		inr  = pkt + 28
	)
	return append(append(asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R6, skbProtocol, asm.Word),
		asm.JNE.Imm(asm.R2, ethPIPle, "next"),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, ethHdr),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, pkt),
		asm.Mov.Imm(asm.R4, 48),
		asm.FnSkbLoadBytes.Call(),
		asm.JNE.Imm(asm.R0, 0, "next"),

		// Outer: IPv4 without options, UDP, not a fragment.
		asm.LoadMem(asm.R2, asm.RFP, pkt, asm.Byte),
		asm.JNE.Imm(asm.R2, 0x45, "next"),
		asm.LoadMem(asm.R2, asm.RFP, pkt+9, asm.Byte),
		asm.JNE.Imm(asm.R2, 17, "next"),
		asm.LoadMem(asm.R2, asm.RFP, pkt+6, asm.Half),
		asm.And.Imm(asm.R2, 0xff3f), // MF and offset, as a little-endian load
		asm.JNE.Imm(asm.R2, 0, "next"),

		asm.StoreImm(asm.RFP, zero, 0, asm.Word),
		asm.LoadMapPtr(asm.R1, conf),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, zero),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "next"),
		asm.Mov.Reg(asm.R8, asm.R0),
		// To our address and port.
		asm.LoadMem(asm.R2, asm.RFP, pkt+16, asm.Word),
		asm.LoadMem(asm.R3, asm.R8, 8, asm.Word),
		asm.JNE.Reg(asm.R2, asm.R3, "next"),
		asm.LoadMem(asm.R2, asm.RFP, udp+2, asm.Half),
		asm.LoadMem(asm.R3, asm.R8, 12, asm.Half),
		asm.JNE.Reg(asm.R2, asm.R3, "next"),

		// Lengths agree: outer total = skb − Ethernet, UDP = outer − 20,
		// inner total = UDP − 8 (a GRO'd train of datagrams fails the
		// last and goes to the engine, which splits it).
		asm.LoadMem(asm.R2, asm.RFP, pkt+2, asm.Half),
		asm.HostTo(asm.BE, asm.R2, asm.Half),
		asm.LoadMem(asm.R3, asm.R6, skbLen, asm.Word),
		asm.Sub.Imm(asm.R3, ethHdr),
		asm.JNE.Reg(asm.R2, asm.R3, "next"),
		asm.LoadMem(asm.R3, asm.RFP, udp+4, asm.Half),
		asm.HostTo(asm.BE, asm.R3, asm.Half),
		asm.Add.Imm(asm.R3, 20),
		asm.JNE.Reg(asm.R2, asm.R3, "next"),
		asm.LoadMem(asm.R3, asm.RFP, inr+2, asm.Half),
		asm.HostTo(asm.BE, asm.R3, asm.Half),
		asm.Add.Imm(asm.R3, overhead),
		asm.JNE.Reg(asm.R2, asm.R3, "next"),
		// Inner: IPv4, header length at least 20.
		asm.LoadMem(asm.R2, asm.RFP, inr, asm.Byte),
		asm.Mov.Reg(asm.R3, asm.R2),
		asm.And.Imm(asm.R2, 0xf0),
		asm.JNE.Imm(asm.R2, 0x40, "next"),
		asm.And.Imm(asm.R3, 0x0f),
		asm.JLT.Imm(asm.R3, 5, "next"),

		// From a peer: its PublicIP and port.
		asm.LoadMem(asm.R2, asm.RFP, pkt+12, asm.Word),
		asm.StoreMem(asm.RFP, pkey, asm.R2, asm.Word),
		asm.LoadMem(asm.R2, asm.RFP, udp, asm.Half),
		asm.StoreMem(asm.RFP, pkey+4, asm.R2, asm.Word),
		asm.LoadMapPtr(asm.R1, in),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, pkey),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "next"),
		// Inner source in that peer's subnet, destination in ours.
		asm.LoadMem(asm.R2, asm.RFP, inr+12, asm.Word),
		asm.LoadMem(asm.R3, asm.R0, 4, asm.Word),
		asm.And.Reg(asm.R2, asm.R3),
		asm.LoadMem(asm.R3, asm.R0, 0, asm.Word),
		asm.JNE.Reg(asm.R2, asm.R3, "next"),
		asm.LoadMem(asm.R2, asm.RFP, inr+16, asm.Word),
		asm.LoadMem(asm.R3, asm.R8, 4, asm.Word),
		asm.And.Reg(asm.R2, asm.R3),
		asm.LoadMem(asm.R3, asm.R8, 0, asm.Word),
		asm.JNE.Reg(asm.R2, asm.R3, "next"),

		// Remove the outer headers (after the Ethernet header; a GSO
		// packet keeps its segment size) and deliver the inner packet
		// into the TUN device's receive path.
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, -overhead),
		asm.Mov.Imm(asm.R3, adjRoomMAC),
		asm.Mov.Imm(asm.R4, fixedGSO),
		asm.FnSkbAdjustRoom.Call(),
		asm.JNE.Imm(asm.R0, 0, "next"),
	}, count(stats, -64, statDecap, "redirect")...), asm.Instructions{
		asm.LoadMem(asm.R1, asm.R8, 16, asm.Word).WithSymbol("redirect"),
		asm.Mov.Imm(asm.R2, fIngress),
		asm.FnRedirect.Call(),
		asm.Return(),

		asm.Mov.Imm(asm.R0, tcxNext).WithSymbol("next"),
		asm.Return(),
	}...)
}

// The stats map (per-CPU array of u64, one slot per counter): packets the
// programs handed on encapsulated (egress) and decapsulated (ingress).
// Packets they leave to the engine are the engine's to count.
const (
	statEncap = 0
	statDecap = 1
	numStats  = 2
)

// count adds one to slot idx of the stats map, using the stack word at
// slot for the key, then goes on at the instruction named done. It keeps
// R6-R9 (the call clobbers R0-R5 only).
func count(stats int, slot int16, idx int32, done string) asm.Instructions {
	return asm.Instructions{
		asm.StoreImm(asm.RFP, slot, int64(idx), asm.Word),
		asm.LoadMapPtr(asm.R1, stats),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, int32(slot)),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, done),
		asm.LoadMem(asm.R1, asm.R0, 0, asm.DWord),
		asm.Add.Imm(asm.R1, 1),
		asm.StoreMem(asm.R0, 0, asm.R1, asm.DWord),
	}
}
