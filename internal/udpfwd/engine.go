// Package udpfwd is the packet engine of weft's udp backend: it moves IPv4
// packets between the TUN device flannel0 and a UDP socket, in flannel's wire
// format (the inner IP packet, unchanged but for its TTL, is the whole UDP
// payload; one port, 8285 by default, for sending and receiving).
//
// flanneld's engine is a single-threaded C loop doing one read() and one
// sendto() per packet. This one moves batches, using wireguard-go's tun
// package and a conn.Bind of its own (Bind, bind.go; no WireGuard crypto):
//
//   - TUN with IFF_VNET_HDR and TSO/USO offloads: one read() returns a TCP or
//     UDP super-packet of up to 64 KiB that is cut here into MTU-sized
//     segments with complete checksums, each sent as a header built aside
//     plus its payload where the read put it (segment.go); on receipt, the
//     datagrams of one flow in a GRO'd message go into the TUN in place as one
//     TSO/USO write that the kernel segments and checksums (coalesce.go), so
//     the kernel's stack sees few, large packets and user space copies none;
//   - UDP with recvmmsg/sendmmsg and UDP GSO/GRO: one sendmsg carries up to
//     64 datagrams to one peer, one recvmsg returns as many; the socket
//     listens on the underlay interface's IPv4 address only;
//   - 7 MiB socket buffers (SO_RCVBUFFORCE/SO_SNDBUFFORCE) and a TUN queue
//     of TUNQueueLen packets, so that a burst while the engine waits for a
//     CPU is queued rather than dropped;
//   - buffers allocated once per goroutine; the route lookup is a map probe on
//     an immutable table (Table) read through an atomic pointer, so the
//     control plane swaps the peer set without stopping or locking the engine.
//
// Per received datagram the engine does what flannel's does not: it trusts
// nothing on the wire. A datagram is written to flannel0 only when it comes
// from a current peer's PublicIP:Port, holds a well-formed IPv4 packet whose
// source lies in that peer's subnet and whose destination lies in this
// host's subnet; anything else (a stranger on the underlay forging a
// container's address, a peer relaying for a third party) is dropped,
// counted by reason and logged at most once per reason every 10 s. The check
// is one map probe per change of sender in a batch and two masked compares.
//
// Per packet sent the engine does what flannel's does: longest-prefix match of the
// destination to a peer, TTL decrement with an incremental checksum update
// (packets whose TTL would reach 0 are dropped), ICMP net unreachable back
// into flannel0 for destinations no peer owns; and, beyond flannel, ICMP
// fragmentation needed for a DF packet bigger than the path.
package udpfwd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"
)

// headroom is the space left in front of every packet buffer: the TUN device
// writes its 10-byte virtio-net header there.
const headroom = 16

// bufSize holds the largest IPv4 packet (64 KiB) after the headroom; TUN
// reads of super-packets and UDP GSO coalescing both need it.
const bufSize = headroom + 65535

// DefaultPort is flannel's udp backend port.
const DefaultPort = 8285

// Config is what an Engine runs on.
type Config struct {
	TUN  tun.Device // opened by the caller (in the right network namespace); closed by Close
	Bind conn.Bind  // not yet opened; Start opens it on Port; closed by Close. The udp backend's is a *Bind on the underlay address.
	Port uint16
	// MTU is the largest inner packet that fits one UDP datagram on the
	// underlay (underlay MTU − 28). Bigger packets with DF get ICMP
	// fragmentation needed; without DF they are sent and the kernel fragments
	// the datagram. 0 = no check.
	MTU int
	Log *slog.Logger
	// OnDrop, when set, is called after each received batch with a count per
	// reason (one of DropReasons) of the datagrams dropped in it.
	OnDrop func(reason string, n uint64)
}

// Why a received datagram is dropped: the reason labels of
// weft_udp_dropped_packets_total.
const (
	DropUnknownSender = "unknown_sender"               // not from a current peer's PublicIP:Port (or no peer table yet)
	DropInnerSource   = "inner_source_not_peer_subnet" // inner source outside the sending peer's subnet
	DropInnerDest     = "inner_dest_not_local"         // inner destination outside this host's subnet (an open relay)
	DropMalformed     = "malformed"                    // not one whole IPv4 packet
)

// rx* index the receive drop counters, in the order of dropNames.
const (
	rxUnknownSender = iota
	rxInnerSource
	rxInnerDest
	rxMalformed
	rxReasons
)

var dropNames = [rxReasons]string{DropUnknownSender, DropInnerSource, DropInnerDest, DropMalformed}

// DropReasons lists every reason OnDrop may report.
func DropReasons() []string { return dropNames[:] }

// dropLogEvery is the shortest interval between two log lines about drops of
// one reason: a flood of forged datagrams must not become a flood of logs.
const dropLogEvery = 10 * time.Second

// Stats are cumulative packet counters.
type Stats struct {
	TxPackets, TxBytes uint64 // TUN → UDP
	RxPackets, RxBytes uint64 // UDP → TUN
	// RxWrites is the number of TUN writes of received packets by the
	// coalescing receive path (udpToTUNRuns): below RxPackets when runs of one
	// flow went as one write. 0 on the generic path.
	RxWrites       uint64
	NoRoute        uint64 // no peer for the destination (ICMP net unreachable)
	TooBig         uint64 // DF and bigger than MTU (ICMP fragmentation needed)
	TTLExpired     uint64
	Malformed      uint64 // not one whole IPv4 packet, from the TUN or the socket
	NotReady       uint64 // dropped before the first peer table arrived
	SendErrors     uint64 // failed sendmmsg batches
	TUNWriteErrors uint64
	// Received datagrams dropped as untrusted (see the package notes).
	UnknownSender, InnerSourceNotPeer, InnerDestNotLocal uint64
}

type counters struct {
	txPackets, txBytes, rxPackets, rxBytes, rxWrites, noRoute, tooBig, ttl, malformed, notReady, sendErrs, tunErrs atomic.Uint64
	drops                                                                                                          [rxReasons]atomic.Uint64
}

// Engine forwards packets between a TUN device and a UDP socket.
type Engine struct {
	cfg   Config
	log   *slog.Logger
	table atomic.Pointer[Table]
	c     counters
	// dropLogged is the UnixNano of the last log line per drop reason,
	// shared by the receive goroutines.
	dropLogged [rxReasons]atomic.Int64

	wg        sync.WaitGroup
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error
	started   bool
}

// New returns an engine; nothing runs until Start.
func New(cfg Config) (*Engine, error) {
	if cfg.TUN == nil || cfg.Bind == nil {
		return nil, errors.New("udpfwd: new engine: TUN and Bind are required")
	}
	if cfg.MTU < 0 || cfg.MTU > 65535 {
		return nil, fmt.Errorf("udpfwd: new engine: MTU %d: must be in 0..65535", cfg.MTU)
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Engine{cfg: cfg, log: cfg.Log, done: make(chan struct{})}, nil
}

// SetPeers replaces the peer table atomically; packets in flight finish with
// the table they started with. Until the first call the engine drops what it
// reads from the TUN without ICMP errors (after a restart, "no peer known
// yet" must not be reported to containers as "network unreachable"), and
// every received datagram as from an unknown sender.
func (e *Engine) SetPeers(t *Table) { e.table.Store(t) }

// Peers returns the current table (nil before the first SetPeers).
func (e *Engine) Peers() *Table { return e.table.Load() }

// Start opens the socket and starts the forwarding goroutines. The socket is
// created in the network namespace of the calling thread.
func (e *Engine) Start() error {
	if e.started {
		return errors.New("udpfwd: engine already started")
	}
	fns, port, err := e.cfg.Bind.Open(e.cfg.Port)
	if err != nil {
		return fmt.Errorf("udpfwd: listen on UDP port %d: %w", e.cfg.Port, err)
	}
	e.started = true
	// Best effort, like the socket buffers: with the kernel's default
	// queue the engine only drops more packets when it falls behind.
	if err := RaiseQueueLen(e.cfg.TUN, TUNQueueLen); err != nil {
		e.log.Warn("TUN queue left at its length", "want", TUNQueueLen, "err", err)
	}
	local := netip.AddrPortFrom(netip.IPv4Unspecified(), port) // StdNetBind: every address
	if lb, ok := e.cfg.Bind.(interface{ LocalAddr() netip.AddrPort }); ok {
		local = lb.LocalAddr()
	}
	e.log.Info("udp engine started", "listen", local, "tun_batch", e.cfg.TUN.BatchSize(), "udp_batch", e.cfg.Bind.BatchSize(), "mtu", e.cfg.MTU)
	e.wg.Add(2 + len(fns))
	go e.drainEvents()
	go e.tunToUDP()
	// weft's own Bind on a TUN with virtio-net headers: messages are
	// written to the TUN in place, in runs (coalesce.go).
	if b, ok := e.cfg.Bind.(*Bind); ok && len(fns) == 1 {
		if w := newTUNWriter(e.cfg.TUN); w != nil {
			if r := b.messages(rxMessages); r != nil {
				go e.udpToTUNRuns(r, w)
				return nil
			}
		}
	}
	for _, fn := range fns {
		go e.udpToTUN(fn)
	}
	return nil
}

// Close stops the engine: it closes the socket and the TUN file descriptor
// and waits for the goroutines. The TUN device itself survives if the caller
// made it persistent.
func (e *Engine) Close() error {
	e.closeOnce.Do(func() {
		close(e.done)
		e.closeErr = errors.Join(e.cfg.Bind.Close(), e.cfg.TUN.Close())
		e.wg.Wait()
	})
	return e.closeErr
}

// Stats returns the counters so far.
func (e *Engine) Stats() Stats {
	c := &e.c
	return Stats{
		TxPackets: c.txPackets.Load(), TxBytes: c.txBytes.Load(),
		RxPackets: c.rxPackets.Load(), RxBytes: c.rxBytes.Load(), RxWrites: c.rxWrites.Load(),
		NoRoute: c.noRoute.Load(), TooBig: c.tooBig.Load(), TTLExpired: c.ttl.Load(),
		Malformed: c.malformed.Load() + c.drops[rxMalformed].Load(), NotReady: c.notReady.Load(),
		SendErrors: c.sendErrs.Load(), TUNWriteErrors: c.tunErrs.Load(),
		UnknownSender: c.drops[rxUnknownSender].Load(), InnerSourceNotPeer: c.drops[rxInnerSource].Load(),
		InnerDestNotLocal: c.drops[rxInnerDest].Load(),
	}
}

// drainEvents empties the TUN's up/down event channel: wireguard-go's
// listeners block once it is full.
func (e *Engine) drainEvents() {
	defer e.wg.Done()
	ev := e.cfg.TUN.Events()
	for {
		select {
		case <-e.done:
			return
		case _, ok := <-ev:
			if !ok {
				return
			}
		}
	}
}

func isClosed(err error) bool {
	return errors.Is(err, os.ErrClosed) || errors.Is(err, net.ErrClosed)
}

// errLog logs the first error of a kind and then at most one per interval,
// so a broken peer cannot flood the log at packet rate.
type errLog struct {
	log  *slog.Logger
	msg  string
	last time.Time
	n    int
}

func (l *errLog) note(err error, args ...any) {
	l.n++
	if now := time.Now(); now.Sub(l.last) > 10*time.Second {
		l.log.Warn(l.msg, append(args, "err", err, "count", l.n)...)
		l.last, l.n = now, 0
	}
}

func makeBufs(n, size int) [][]byte {
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, size)
	}
	return bufs
}

// tunToUDP reads batches from the TUN device, routes each packet to its peer
// and sends each run of consecutive packets to one peer with one sendmmsg
// (coalesced with UDP GSO where the kernel allows). On a TUN with virtio-net
// headers and weft's Bind it reads the device itself and sends segments of
// super-packets without copying their payloads (segment.go); otherwise
// through wireguard-go's tun.Device.Read.
func (e *Engine) tunToUDP() {
	defer e.wg.Done()
	batch := e.cfg.TUN.BatchSize()
	rt := e.newRouter(batch)
	readErrs := errLog{log: e.log, msg: "read from TUN failed"}
	if b, ok := e.cfg.Bind.(*Bind); ok {
		if r := newTUNReader(e.cfg.TUN); r != nil {
			rt.sendTo = b.sendDgrams
			e.readSegments(r, rt, batch, &readErrs)
			return
		}
	}
	bufs := makeBufs(batch, bufSize)
	sizes := make([]int, batch)
	heads := make([][]byte, 0, batch)
	rt.sendTo = func(dgs []dgram, ep conn.Endpoint) error {
		heads = heads[:0]
		for _, d := range dgs {
			heads = append(heads, d.head)
		}
		return e.cfg.Bind.Send(heads, ep)
	}
	more := newReadiness(e.cfg.TUN)
	for {
		n, err := e.cfg.TUN.Read(bufs, sizes, headroom)
		// A read returns one packet unless the kernel handed over a GSO
		// super-packet. Small packets (DNS, VoIP, 64-byte floods) would then
		// cost one sendmmsg each; instead keep reading while the TUN queue
		// holds more, so they leave in one sendmmsg, coalesced by UDP GSO
		// when they have the same size. Stop with room for one more
		// super-packet (≤ 64 segments) in the batch. After a super-packet
		// (more than one segment) the batch is already full enough to be
		// worth a sendmmsg of its own, and the poll would cost more than the
		// syscall it could save.
		for last := n; err == nil && last == 1 && n <= batch-64 && more.ready(); n += last {
			last, err = e.cfg.TUN.Read(bufs[n:], sizes[n:], headroom)
		}
		if err != nil {
			if isClosed(err) {
				return
			}
			readErrs.note(err)
			if n == 0 {
				continue
			}
		}
		dgs := rt.dgs[:0]
		for i := range n {
			dgs = append(dgs, dgram{head: bufs[i][headroom : headroom+sizes[i]]})
		}
		rt.forward(dgs)
	}
}

// readSegments is tunToUDP's loop on its own reads of the device: one
// blocking read, then, while each read brings one packet (not a
// super-packet), reads that do not wait, so that small packets queued
// together leave in one sendmmsg (coalesced by UDP GSO when of one size) —
// without a poll before each read.
func (e *Engine) readSegments(r *tunReader, rt *router, batch int, readErrs *errLog) {
	bufs := makeBufs(batch, vnetHdrLen+65535)
	seg := newSegmenter(batch)
	bad := errLog{log: e.log, msg: "packet from TUN dropped"}
	for {
		dgs := rt.dgs[:0]
		for k, wait := 0, true; k < batch && len(dgs) <= batch-64; k, wait = k+1, false {
			n, err := r.read(bufs[k], wait)
			if err != nil {
				if isClosed(err) {
					return
				}
				readErrs.note(err)
				break
			}
			if n == 0 {
				break
			}
			before := len(dgs)
			dgs, err = seg.split(bufs[k][:n], dgs)
			if err == errNoRoom {
				rt.forward(dgs)
				before = 0
				dgs, err = seg.split(bufs[k][:n], rt.dgs[:0])
			}
			if err != nil {
				e.c.malformed.Add(1)
				bad.note(err)
			}
			if len(dgs)-before != 1 {
				break // a super-packet: worth a sendmmsg of its own
			}
		}
		if len(dgs) > 0 {
			rt.forward(dgs)
		}
	}
}

// router is the per-packet half of tunToUDP: route lookup, MTU and TTL, ICMP
// errors, and one send per run of packets to one peer.
type router struct {
	e        *Engine
	dgs      []dgram
	send     []dgram
	icmpBufs [][]byte
	icmpOut  [][]byte
	sendErrs errLog
	sendTo   func([]dgram, conn.Endpoint) error
}

func (e *Engine) newRouter(batch int) *router {
	return &router{
		e: e, dgs: make([]dgram, 0, batch), send: make([]dgram, 0, batch),
		icmpBufs: makeBufs(batch, headroom+icmpErrorMax), icmpOut: make([][]byte, 0, batch),
		sendErrs: errLog{log: e.log, msg: "send to peer failed"},
	}
}

// forward routes and sends dgs, packets read from the TUN.
func (rt *router) forward(dgs []dgram) {
	e, c := rt.e, &rt.e.c
	tbl := e.table.Load()
	if tbl == nil {
		c.notReady.Add(uint64(len(dgs)))
		return
	}
	var (
		txp, txb, noRoute, tooBig, ttl, bad uint64
		cur                                 = -1
		lastDst                             uint32
		lastPeer                            = -1
	)
	mtu := e.cfg.MTU
	flush := func() {
		if len(rt.send) == 0 {
			return
		}
		if err := rt.sendTo(rt.send, tbl.eps[cur]); err != nil {
			c.sendErrs.Add(1)
			rt.sendErrs.note(err, "peer", tbl.peers[cur].Addr)
		}
		rt.send = rt.send[:0]
	}
	rt.icmpOut = rt.icmpOut[:0]
	for _, d := range dgs {
		pkt := d.head // the IPv4 header and at least 8 bytes after it
		hl := checkIPv4Len(pkt, d.len())
		if hl == 0 {
			bad++
			continue
		}
		dst := binary.BigEndian.Uint32(pkt[offDst:])
		// A batch is usually one flow (a GSO super-packet split in
		// segments): one lookup per destination change, not per packet.
		if dst != lastDst || lastPeer < 0 {
			lastDst, lastPeer = dst, tbl.Lookup(dst)
		}
		j := lastPeer
		if j < 0 {
			noRoute++
			if m := buildICMPError(rt.icmpBufs[len(rt.icmpOut)][headroom:], pkt, hl, codeNetUnreach, 0); m > 0 {
				rt.icmpOut = append(rt.icmpOut, rt.icmpBufs[len(rt.icmpOut)][:headroom+m])
			}
			continue
		}
		if mtu > 0 && d.len() > mtu && binary.BigEndian.Uint16(pkt[offFrag:])&flagDF != 0 {
			tooBig++
			if m := buildICMPError(rt.icmpBufs[len(rt.icmpOut)][headroom:], pkt, hl, codeFragNeeded, uint16(mtu)); m > 0 {
				rt.icmpOut = append(rt.icmpOut, rt.icmpBufs[len(rt.icmpOut)][:headroom+m])
			}
			continue
		}
		if !decTTL(pkt) {
			ttl++
			continue
		}
		if j != cur {
			flush()
			cur = j
		}
		rt.send = append(rt.send, d)
		txp++
		txb += uint64(d.len())
	}
	flush()
	if len(rt.icmpOut) > 0 {
		if _, err := e.cfg.TUN.Write(rt.icmpOut, headroom); err != nil && !isClosed(err) {
			c.tunErrs.Add(1)
		}
	}
	c.txPackets.Add(txp)
	c.txBytes.Add(txb)
	if noRoute|tooBig|ttl|bad != 0 {
		c.noRoute.Add(noRoute)
		c.tooBig.Add(tooBig)
		c.ttl.Add(ttl)
		c.malformed.Add(bad)
	}
}

// udpToTUN receives batches from the socket, drops what is not from a peer
// for this host (admit), and writes the rest into the TUN device in one call,
// which coalesces TCP and UDP segments (GRO).
func (e *Engine) udpToTUN(recv conn.ReceiveFunc) {
	defer e.wg.Done()
	batch := e.cfg.Bind.BatchSize()
	bufs := makeBufs(batch, bufSize)
	pkts := make([][]byte, batch)
	for i := range pkts {
		pkts[i] = bufs[i][headroom:]
	}
	sizes := make([]int, batch)
	eps := make([]conn.Endpoint, batch)
	out := make([][]byte, 0, batch)
	recvErrs := errLog{log: e.log, msg: "receive from UDP socket failed"}
	writeErrs := errLog{log: e.log, msg: "write to TUN failed"}
	c := &e.c
	for {
		n, err := recv(pkts, sizes, eps)
		if err != nil {
			if isClosed(err) {
				return
			}
			recvErrs.note(err)
			continue
		}
		var (
			rxp, rxb, ttl uint64
			drops         [rxReasons]uint64
			a             admission
		)
		tbl := e.table.Load()
		out = out[:0]
		for i := range n {
			pkt := pkts[i][:sizes[i]]
			if why := a.admit(tbl, eps[i], pkt); why >= 0 {
				if drops[why] == 0 {
					e.logDrop(why, a.src, pkt)
				}
				drops[why]++
				continue
			}
			if !decTTL(pkt) {
				ttl++
				continue
			}
			out = append(out, bufs[i][:headroom+sizes[i]])
			rxp++
			rxb += uint64(sizes[i])
		}
		clear(eps[:n]) // let the endpoints the bind allocated go
		if len(out) > 0 {
			if _, err := e.cfg.TUN.Write(out, headroom); err != nil {
				if isClosed(err) {
					return
				}
				c.tunErrs.Add(1)
				writeErrs.note(err)
			}
		}
		e.countRx(rxp, rxb, 0, ttl, &drops)
	}
}

// rxMessages is the number of messages per receive of udpToTUNRuns: with
// UDP GRO each holds up to 64 datagrams (64 KiB).
const rxMessages = 16

// udpToTUNRuns is udpToTUN for weft's Bind on a TUN with virtio-net headers:
// it receives whole messages (up to 64 datagrams of one sender each), checks
// every datagram in place and writes each run of one flow's segments into
// the TUN with one writev (coalesce.go), without copying or checksumming.
func (e *Engine) udpToTUNRuns(r *msgReader, w *tunWriter) {
	defer e.wg.Done()
	bufs := makeBufs(rxMessages, 65535)
	msgs := make([]rxMsg, rxMessages)
	recvErrs := errLog{log: e.log, msg: "receive from UDP socket failed"}
	writeErrs := errLog{log: e.log, msg: "write to TUN failed"}
	c := &e.c
	cur := run{noUDP: !w.uso}
	for {
		n, err := r.read(bufs, msgs)
		if err != nil {
			if isClosed(err) {
				return
			}
			recvErrs.note(err)
			continue
		}
		var (
			rxp, rxb, ttl, writes uint64
			drops                 [rxReasons]uint64
			a                     admission
			closed                bool
		)
		tbl := e.table.Load()
		flush := func() {
			if len(cur.pkts) == 0 || closed {
				return
			}
			err := w.write(&cur)
			cur.pkts = cur.pkts[:0]
			writes++
			if err != nil {
				if isClosed(err) {
					closed = true
					return
				}
				c.tunErrs.Add(1)
				writeErrs.note(err)
			}
		}
		for i := range n {
			m := &msgs[i]
			for off := 0; off < m.n; off += m.seg {
				pkt := m.buf[off:min(off+m.seg, m.n)]
				if why := a.admitFrom(tbl, m.src, pkt); why >= 0 {
					if drops[why] == 0 {
						e.logDrop(why, a.src, pkt)
					}
					drops[why]++
					flush()
					continue
				}
				if !decTTL(pkt) {
					ttl++
					flush()
					continue
				}
				rxp++
				rxb += uint64(len(pkt))
				if len(cur.pkts) > 0 && cur.add(pkt) {
					continue
				}
				flush()
				cur.start(pkt)
			}
			flush() // a run never spans two messages: their buffers are not adjacent
		}
		if closed {
			return
		}
		e.countRx(rxp, rxb, writes, ttl, &drops)
	}
}

// countRx adds one received batch to the counters and reports its drops.
func (e *Engine) countRx(packets, bytes, writes, ttl uint64, drops *[rxReasons]uint64) {
	c := &e.c
	c.rxPackets.Add(packets)
	c.rxBytes.Add(bytes)
	if writes != 0 {
		c.rxWrites.Add(writes)
	}
	if ttl != 0 {
		c.ttl.Add(ttl)
	}
	for why, k := range drops {
		if k == 0 {
			continue
		}
		c.drops[why].Add(k)
		if e.cfg.OnDrop != nil {
			e.cfg.OnDrop(dropNames[why], k)
		}
	}
}

// admission decides, datagram by datagram, whether a received datagram may
// enter flannel0. It remembers the last sender: the datagrams of a batch
// usually come from one peer, so the table is probed once per sender change.
type admission struct {
	src    netip.AddrPort
	peer   int
	probed bool
}

// admit returns -1 if pkt, received from ep, is a well-formed IPv4 packet
// from a current peer's address, from that peer's subnet to this host's
// subnet; otherwise the rx* reason to drop it. tbl nil (no peer table yet)
// admits nothing.
func (a *admission) admit(tbl *Table, ep conn.Endpoint, pkt []byte) int {
	var src netip.AddrPort
	if se, ok := ep.(*conn.StdNetEndpoint); ok {
		src = se.AddrPort
	}
	return a.admitFrom(tbl, src, pkt)
}

// admitFrom is admit for a datagram from src.
func (a *admission) admitFrom(tbl *Table, src netip.AddrPort, pkt []byte) int {
	if !a.probed || src != a.src {
		a.src, a.peer, a.probed = src, -1, true
		if tbl != nil {
			a.peer = tbl.Sender(src)
		}
	}
	switch {
	case a.peer < 0:
		return rxUnknownSender
	case checkIPv4(pkt) == 0:
		return rxMalformed
	case !tbl.nets[a.peer].contains(binary.BigEndian.Uint32(pkt[offSrc:])):
		return rxInnerSource
	case !tbl.local.contains(binary.BigEndian.Uint32(pkt[offDst:])):
		return rxInnerDest
	}
	return -1
}

// logDrop logs one dropped datagram, at most once per reason every
// dropLogEvery whatever the number of receive goroutines, naming the sender
// and what the inner packet claimed.
func (e *Engine) logDrop(why int, sender netip.AddrPort, pkt []byte) {
	now := time.Now().UnixNano()
	last := e.dropLogged[why].Load()
	if now-last < int64(dropLogEvery) || !e.dropLogged[why].CompareAndSwap(last, now) {
		return
	}
	args := []any{"reason", dropNames[why], "sender", sender, "bytes", len(pkt), "dropped_before", e.c.drops[why].Load()}
	if len(pkt) >= ipv4MinHeader {
		args = append(args, "inner_src", netip.AddrFrom4([4]byte(pkt[offSrc:offSrc+4])), "inner_dst", netip.AddrFrom4([4]byte(pkt[offDst:offDst+4])))
	}
	e.log.Warn("dropped a datagram from the underlay", args...)
}

// readiness asks the kernel, without blocking, whether the TUN device has a
// packet queued (poll with a zero timeout). It is allocation-free: the
// control function is built once.
type readiness struct {
	rc  syscall.RawConn
	pfd [1]unix.PollFd
	ok  bool
	ctl func(fd uintptr)
}

func newReadiness(dev tun.Device) *readiness {
	r := &readiness{}
	if f := dev.File(); f != nil {
		if rc, err := f.SyscallConn(); err == nil {
			r.rc = rc
		}
	}
	r.ctl = func(fd uintptr) {
		r.pfd[0] = unix.PollFd{Fd: int32(fd), Events: unix.POLLIN}
		n, err := unix.Poll(r.pfd[:], 0)
		r.ok = err == nil && n > 0 && r.pfd[0].Revents&unix.POLLIN != 0
	}
	return r
}

func (r *readiness) ready() bool {
	if r.rc == nil {
		return false
	}
	r.ok = false
	if r.rc.Control(r.ctl) != nil {
		return false
	}
	return r.ok
}
