package rules

// The underlay guard (issue 11, finding 5). The kernel decapsulates any
// VXLAN frame that reaches the vxlan port, and the udp backend's socket
// reads any datagram: without a filter a host with no lease can inject
// packets into the overlay. The guard accepts the encapsulation's UDP ports
// only from the peers' PublicIPs and drops and counts the rest:
//
//	table inet weft-guard {
//		counter dropped {}
//		set encap-ports { type inet_service; elements = { 8472 } }
//		set peers4 { type ipv4_addr; elements = { ...every peer's PublicIP } }
//		set peers6 { type ipv6_addr; elements = { ...PublicIPv6, dual-stack only } }
//		chain input {
//			type filter hook input priority filter; policy accept;
//			udp dport @encap-ports ip saddr != @peers4 counter name "dropped" drop
//			udp dport @encap-ports ip6 saddr != @peers6 counter name "dropped" drop
//		}
//	}
//
// Why its own nf_tables table, in both modes: iptables mode must keep
// flanneld's chains byte for byte (operators' scripts read `iptables -S`),
// and iptables cannot hold a set that changes one element at a time without
// ipset. An nf_tables table lives beside iptables-nft's tables (a drop in
// any base chain is final), so one implementation serves both modes, and
// switching modes never touches it. One inet table covers both families in
// one transaction, with one counter.
//
// Why sets: a join or leave changes one element — one netlink batch of add
// and delete element messages, never a rewrite of the table — so the cost of
// an event does not grow with the number of peers. A full write (first
// start, a repair, new ports) replaces the whole table in one transaction, so
// no packet sees a half-built guard.
//
// Source addresses: a peer's encapsulated packets leave from its vxlan
// device's local address (its -iface address), which is its PublicIP unless
// -public-ip names another address; behind a 1:1 NAT the receiver sees the
// PublicIP again. A host whose packets arrive from an address other than
// its lease's PublicIP is dropped like a stranger — and counted and logged,
// so the cause shows.
//
// Restart and etcd outages: the guard is written only once the peers are
// known (SetPeers); until then a table left by the previous run stays as it
// is — neither flushed (peers would be cut off) nor emptied. The daemon
// hands over only the snapshots the lease manager publishes, and an
// unreachable etcd publishes none, so the last peer set stays.

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netconf"
	"github.com/weft-net/weft/internal/rtnl"
)

// Names of the guard's objects.
const (
	GuardTable   = "weft-guard" // table inet weft-guard, both modes
	GuardChain   = "input"
	GuardCounter = "dropped"
	guardPorts   = "encap-ports"
	guardPeers4  = "peers4"
	guardPeers6  = "peers6"

	// elemChunk bounds the elements of one netlink message: its nested
	// element list has a 16-bit length (1,024 IPv6 elements are ~29 KiB).
	elemChunk = 1024
	// nftSendBuffer lets one batch carry a full write of 5,000 IPv4 and
	// 5,000 IPv6 peers (~250 KiB); the default buffer (~208 KiB) refuses it
	// with EMSGSIZE.
	nftSendBuffer = 4 << 20
)

// inet is the guard's table family; it is not in families, which are the
// per-family traffic rules.
var inet = &family{name: "inet", tf: nftables.TableFamilyINet, proto: unix.NFPROTO_INET}

// EncapPorts returns the UDP ports on which cfg's backend receives
// encapsulated traffic from peers: vxlan's Port (0: the kernel's 8472),
// udp's Port, wireguard's ListenPort. host-gw and alloc encapsulate nothing:
// nil, and no guard.
func EncapPorts(cfg netconf.Config) ([]uint16, error) {
	var (
		port  int
		extra []uint16
	)
	switch cfg.BackendType {
	case netconf.BackendVXLAN:
		o, err := cfg.VXLAN()
		if err != nil {
			return nil, err
		}
		port = cmp.Or(o.Port, netconf.DefaultVXLANPort)
	case netconf.BackendUDP:
		o, err := cfg.UDP()
		if err != nil {
			return nil, err
		}
		port = o.Port
	case netconf.BackendWireGuard:
		o, err := cfg.WireGuard()
		if err != nil {
			return nil, err
		}
		port = o.ListenPort
		// Mode separate in a dual-stack network: flannel-wg-v6 listens on
		// its own port, which the guard covers too.
		if cfg.EnableIPv6 && (o.Mode == "" || o.Mode == "separate") && o.ListenPortV6 != o.ListenPort {
			if o.ListenPortV6 < 1 || o.ListenPortV6 > 65535 {
				return nil, fmt.Errorf("rules: %s ListenPortV6 %d: must be in 1..65535", cfg.BackendType, o.ListenPortV6)
			}
			extra = append(extra, uint16(o.ListenPortV6))
		}
	default:
		return nil, nil
	}
	if port < 1 || port > 65535 {
		return nil, fmt.Errorf("rules: %s port %d: must be in 1..65535", cfg.BackendType, port)
	}
	return append([]uint16{uint16(port)}, extra...), nil
}

// WithGuardDropHook calls fn with the number of packets the guard dropped
// since the previous call, after each periodic check that saw new drops
// (metrics: weft_underlay_dropped_packets_total).
func WithGuardDropHook(fn func(packets uint64)) Option {
	return func(m *Manager) { m.onDrop = fn }
}

// guardState is the guard's part of the Manager; fields other than offer are
// guarded by Manager.mu.
type guardState struct {
	known bool           // SetPeers has been called: the peers are known
	peers []*lease.Lease // the latest peers handed over
	addrs peerAddrs      // the desired elements of the peer sets
	ports []uint16       // the ports of the last full write
	// written is the raw digest of the table's structure (chains, rules,
	// sets, ports) right after the last full write; nil: write it whole.
	written []byte
	// verified is the nf_tables generation (bumped by every commit, of any
	// table) read just before a check found the guard exact (isVerified:
	// none since weft's last write). While it holds, nothing can have
	// changed the guard, and a check costs one round trip instead of
	// dumping thousands of elements.
	verified   uint32
	isVerified bool
	drops      uint64 // the kernel counter's value at the last read

	offer struct { // the newest peers from OfferPeers, for Run
		sync.Mutex
		peers []*lease.Lease
		set   bool
	}
	wake chan struct{}
}

// peerAddrs is the desired content of the peer sets, kept from one snapshot
// to the next by their difference: the leases of a snapshot are shared and
// never modified, so an unchanged peer is the same pointer in the next one,
// and a walk over both slices (in ComparePeers order) finds the few that
// changed with pointer comparisons — a join among 5,000 peers touches one
// address, not 5,000. The walk stays correct on any order (an unmatched
// lease is removed, then added): order only makes it cheap.
type peerAddrs struct {
	prev     []*lease.Lease
	six      bool
	count    [2]map[[16]byte]int32 // per family: address → leases naming it (> 0)
	was      [2]map[[16]byte]bool  // scratch: presence before this update
	add, del [2][][16]byte         // the last update's difference
}

// peerKey is lease l's address of family index f as a set key.
func peerKey(l *lease.Lease, f int, six bool) ([16]byte, bool) {
	var k [16]byte
	if f == 0 {
		a := l.Attrs.PublicIP
		if !a.Is4() {
			return k, false
		}
		*(*[4]byte)(k[:4]) = a.As4()
		return k, true
	}
	a := l.Attrs.PublicIPv6
	if !six || !a.Is6() || a.Is4In6() {
		return k, false
	}
	return a.As16(), true
}

// update makes p describe next and records the difference in add and del.
// Turning IPv6 on or off starts over (every address is then "added").
func (p *peerAddrs) update(next []*lease.Lease, six bool) {
	if p.count[0] == nil || six != p.six {
		p.prev, p.six = nil, six
		for f := range p.count {
			p.count[f], p.was[f] = map[[16]byte]int32{}, map[[16]byte]bool{}
		}
	}
	adjust := func(l *lease.Lease, d int32) {
		for f := range p.count {
			if k, ok := peerKey(l, f, six); ok {
				if _, seen := p.was[f][k]; !seen {
					p.was[f][k] = p.count[f][k] > 0
				}
				p.count[f][k] += d
			}
		}
	}
	prev, all := p.prev, next
	for len(prev) > 0 || len(next) > 0 {
		switch {
		case len(prev) > 0 && len(next) > 0 && prev[0] == next[0]:
			prev, next = prev[1:], next[1:]
		case len(next) == 0 || len(prev) > 0 && lease.ComparePeers(prev[0], next[0]) <= 0:
			adjust(prev[0], -1)
			prev = prev[1:]
		default:
			adjust(next[0], +1)
			next = next[1:]
		}
	}
	for f := range p.count {
		p.add[f], p.del[f] = p.add[f][:0], p.del[f][:0]
		for k, was := range p.was[f] {
			now := p.count[f][k] > 0
			if !now {
				delete(p.count[f], k)
			}
			switch {
			case now && !was:
				p.add[f] = append(p.add[f], k)
			case was && !now:
				p.del[f] = append(p.del[f], k)
			}
		}
		if len(p.was[f]) > 64 {
			p.was[f] = map[[16]byte]bool{} // a full fill's scratch is not kept
		} else {
			clear(p.was[f])
		}
	}
	p.prev = all
}

// changed reports whether the last update changed any address.
func (p *peerAddrs) changed() bool {
	return len(p.add[0]) > 0 || len(p.del[0]) > 0 || len(p.add[1]) > 0 || len(p.del[1]) > 0
}

// OfferPeers hands the peers of a lease snapshot to Run, which updates the
// guard's sets; it never blocks, and only the newest offer is applied. The
// leases must not be modified afterwards (lease.Snapshot's are never).
func (m *Manager) OfferPeers(peers []*lease.Lease) {
	o := &m.guard.offer
	o.Lock()
	o.peers, o.set = peers, true
	o.Unlock()
	select {
	case m.guard.wake <- struct{}{}:
	default:
	}
}

// applyOffer applies the newest offer of OfferPeers, if any.
func (m *Manager) applyOffer() error {
	o := &m.guard.offer
	o.Lock()
	peers, ok := o.peers, o.set
	o.peers, o.set = nil, false
	o.Unlock()
	if !ok {
		return nil
	}
	return m.SetPeers(peers)
}

// SetPeers makes the guard's sets hold exactly the peers' PublicIPs (and
// PublicIPv6 when Desired has IPv6) now: one batch adding and deleting the
// elements that changed. Before the first Set only the peers are recorded.
func (m *Manager) SetPeers(peers []*lease.Lease) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.guard.known, m.guard.peers = true, peers
	if m.desired == nil {
		return nil
	}
	_, err := m.syncGuard(false)
	return err
}

// syncGuard makes the kernel's guard match the desired state. check: read
// the kernel (the periodic check: structure digest and every element);
// otherwise trust the last write and send only the difference (a join or
// leave). Called with mu held and m.desired set.
func (m *Manager) syncGuard(check bool) (changed bool, err error) {
	g := &m.guard
	if len(m.desired.EncapPorts) == 0 {
		if !check {
			return false, nil // Set and Check remove it; a join need not look
		}
		return m.removeGuard()
	}
	if !g.known {
		return false, nil // keep what a previous run left until the peers are known
	}
	// The previous snapshot's pointers are kept until the next update (a
	// few KiB at 5,000 peers): they make the next difference cheap.
	g.addrs.update(g.peers, m.desired.IPv6Network.IsValid())
	if !slices.Equal(g.ports, m.desired.EncapPorts) {
		g.written = nil
	}
	var gen uint32
	if check && g.written != nil {
		if gen, err = m.nftGeneration(); err != nil {
			return false, err
		}
		if g.isVerified && gen == g.verified && !g.addrs.changed() {
			return false, m.readDrops()
		}
	}
	g.isVerified = false
	if check && g.written != nil {
		digest, err := m.guardDigest()
		if err != nil {
			return false, err
		}
		if !bytes.Equal(digest, g.written) {
			m.log.Warn("underlay guard differed from what weft wrote; rewriting it", "table", "inet "+GuardTable)
			g.written = nil
		}
	}
	if g.written == nil {
		return true, m.writeGuard()
	}
	if check {
		changed, err = m.repairElems()
	} else {
		changed, err = m.sendDiff()
	}
	if err != nil {
		// The kernel is not what weft last wrote: replace the table whole.
		m.log.Warn("update the underlay guard's peer sets; rewriting the table", "err", err)
		return true, m.writeGuard()
	}
	if check {
		g.verified, g.isVerified = gen, !changed
		err = m.readDrops()
	}
	return changed, err
}

// nftGeneration reads the nf_tables ruleset generation, which every commit
// of any table bumps (set elements added by the packet path do not, and the
// guard has none of those).
func (m *Manager) nftGeneration() (uint32, error) {
	rc, err := m.rawConn()
	if err != nil {
		return 0, err
	}
	msgs, err := rc.Execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETGEN), Flags: netlink.Request},
		Data:   []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0},
	})
	if err != nil {
		return 0, fmt.Errorf("read the nf_tables generation: %w", err)
	}
	for _, msg := range msgs {
		if len(msg.Data) < 4 {
			continue
		}
		for a := rtnl.WalkAttrs(msg.Data[4:]); a.Next(); {
			if a.Type == unix.NFTA_GEN_ID && len(a.Value) == 4 {
				return binary.BigEndian.Uint32(a.Value), nil
			}
		}
	}
	return 0, errors.New("read the nf_tables generation: no NFTA_GEN_ID in the answer")
}

// guardSets are the peer sets' descriptions, indexed like families.
func guardSets(t *nftables.Table) [2]*nftables.Set {
	return [2]*nftables.Set{
		{Table: t, Name: guardPeers4, KeyType: nftables.TypeIPAddr},
		{Table: t, Name: guardPeers6, KeyType: nftables.TypeIP6Addr},
	}
}

func guardTableRef() *nftables.Table {
	return &nftables.Table{Name: GuardTable, Family: nftables.TableFamilyINet}
}

// writeGuard replaces table inet weft-guard with the desired one, elements
// included, in one transaction.
func (m *Manager) writeGuard() error {
	g := &m.guard
	c, err := m.nft()
	if err != nil {
		return err
	}
	t := guardTableRef()
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	c.AddObj(&nftables.CounterObj{Table: t, Name: GuardCounter})
	ports := &nftables.Set{Table: t, Name: guardPorts, KeyType: nftables.TypeInetService}
	pe := make([]nftables.SetElement, len(m.desired.EncapPorts))
	for i, p := range m.desired.EncapPorts {
		pe[i] = nftables.SetElement{Key: binaryutil.BigEndian.PutUint16(p)}
	}
	if err := c.AddSet(ports, pe); err != nil {
		return fmt.Errorf("queue set %s of table inet %s: %w", guardPorts, GuardTable, err)
	}
	sets := guardSets(t)
	for i, f := range families {
		if err := c.AddSet(sets[i], nil); err != nil {
			return fmt.Errorf("queue set %s of table inet %s: %w", sets[i].Name, GuardTable, err)
		}
		keys := make([][16]byte, 0, len(g.addrs.count[i]))
		for a := range g.addrs.count[i] {
			keys = append(keys, a)
		}
		if err := queueElems(c.SetAddElements, sets[i], keys, f.alen); err != nil {
			return err
		}
	}
	accept := nftables.ChainPolicyAccept
	ch := c.AddChain(&nftables.Chain{
		Name: GuardChain, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept,
	})
	for i, f := range families {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: guardRule(f, sets[i].Name)})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("replace table inet %s (ports %v, %d IPv4 and %d IPv6 peers): %w",
			GuardTable, m.desired.EncapPorts, len(g.addrs.count[0]), len(g.addrs.count[1]), err)
	}
	digest, err := m.guardDigest()
	if err != nil {
		return fmt.Errorf("read back table inet %s: %w", GuardTable, err)
	}
	if digest == nil {
		return fmt.Errorf("after write: table inet %s is absent", GuardTable)
	}
	g.written, g.ports, g.drops = digest, slices.Clone(m.desired.EncapPorts), 0
	m.log.Info("underlay guard written", "table", "inet "+GuardTable, "ports", m.desired.EncapPorts,
		"peers4", len(g.addrs.count[0]), "peers6", len(g.addrs.count[1]))
	return nil
}

// growSendBuffer lets one batch carry a full write of the guard with
// thousands of peers: SO_SNDBUFFORCE (weftd runs with CAP_NET_ADMIN) goes
// past net.core.wmem_max, SO_SNDBUF is the fallback.
func growSendBuffer(c *netlink.Conn) error {
	if sc, err := c.SyscallConn(); err == nil {
		var serr error
		if cerr := sc.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, nftSendBuffer)
		}); cerr == nil && serr == nil {
			return nil
		}
	}
	return c.SetWriteBuffer(nftSendBuffer)
}

// guardRule drops UDP to an encapsulation port from a source of family f
// that is not in set, and counts it.
func guardRule(f *family, set string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(f.proto)}},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: 1, SetName: guardPorts},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: f.saddr, Len: f.alen},
		&expr.Lookup{SourceRegister: 1, SetName: set, Invert: true},
		&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: GuardCounter},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}
}

// queueElems queues op (add or delete) of keys, alen bytes of each, in
// messages of at most elemChunk elements.
func queueElems(op func(*nftables.Set, []nftables.SetElement) error, s *nftables.Set, keys [][16]byte, alen uint32) error {
	for len(keys) > 0 {
		n := min(len(keys), elemChunk)
		el := make([]nftables.SetElement, n)
		for i := range el {
			el[i].Key = keys[i][:alen]
		}
		if err := op(s, el); err != nil {
			return fmt.Errorf("queue %d elements of set %s of table inet %s: %w", n, s.Name, GuardTable, err)
		}
		keys = keys[n:]
	}
	return nil
}

// sendDiff sends the last update's additions and deletions of both
// families in one batch.
func (m *Manager) sendDiff() (changed bool, err error) {
	g := &m.guard
	c, err := m.nft()
	if err != nil {
		return false, err
	}
	sets := guardSets(guardTableRef())
	var n int
	for i, f := range families {
		a := &g.addrs
		if err := queueElems(c.SetAddElements, sets[i], a.add[i], f.alen); err != nil {
			return false, err
		}
		if err := queueElems(c.SetDeleteElements, sets[i], a.del[i], f.alen); err != nil {
			return false, err
		}
		n += len(a.add[i]) + len(a.del[i])
	}
	if n == 0 {
		return false, nil
	}
	if err := c.Flush(); err != nil {
		return false, fmt.Errorf("add %d and delete %d IPv4, add %d and delete %d IPv6 peers in table inet %s: %w",
			len(g.addrs.add[0]), len(g.addrs.del[0]), len(g.addrs.add[1]), len(g.addrs.del[1]), GuardTable, err)
	}
	return true, nil
}

// repairElems reads both peer sets from the kernel and adds what is missing
// and deletes what is extra, in one batch. A set that holds exactly the
// peers is read once and costs no allocation per element.
func (m *Manager) repairElems() (changed bool, err error) {
	rc, err := m.rawConn()
	if err != nil {
		return false, err
	}
	g := &m.guard
	var missing, extra [2][][16]byte
	for i, f := range families {
		want, name := g.addrs.count[i], guardSets(nil)[i].Name
		var seen int
		err := dumpElems(rc, name, func(key []byte) {
			var k [16]byte
			copy(k[:], key)
			if _, ok := want[k]; ok && len(key) == int(f.alen) {
				seen++
			} else {
				extra[i] = append(extra[i], k)
			}
		})
		if err != nil {
			return false, err
		}
		if seen == len(want) {
			continue
		}
		// Some are missing: a second pass records which are there.
		got := make(map[[16]byte]bool, seen)
		if err := dumpElems(rc, name, func(key []byte) {
			var k [16]byte
			copy(k[:], key)
			got[k] = true
		}); err != nil {
			return false, err
		}
		for a := range want {
			if !got[a] {
				missing[i] = append(missing[i], a)
			}
		}
	}
	if extra[0] == nil && extra[1] == nil && missing[0] == nil && missing[1] == nil {
		return false, nil
	}
	c, err := m.nft()
	if err != nil {
		return false, err
	}
	sets := guardSets(guardTableRef())
	for i, f := range families {
		if err := queueElems(c.SetAddElements, sets[i], missing[i], f.alen); err != nil {
			return false, err
		}
		if err := queueElems(c.SetDeleteElements, sets[i], extra[i], f.alen); err != nil {
			return false, err
		}
	}
	if err := c.Flush(); err != nil {
		return false, fmt.Errorf("repair peer sets of table inet %s: %w", GuardTable, err)
	}
	m.log.Warn("underlay guard's peer sets differed from the peers; repaired", "table", "inet "+GuardTable,
		"missing4", len(missing[0]), "extra4", len(extra[0]), "missing6", len(missing[1]), "extra6", len(extra[1]))
	return true, nil
}

// removeGuard deletes table inet weft-guard when it exists (a backend
// without encapsulation).
func (m *Manager) removeGuard() (changed bool, err error) {
	m.guard.written, m.guard.ports, m.guard.isVerified = nil, nil, false
	rc, err := m.rawConn()
	if err != nil {
		return false, err
	}
	if ok, err := guardPresent(rc); err != nil || !ok {
		return false, err
	}
	c, err := m.nft()
	if err != nil {
		return false, err
	}
	c.DelTable(guardTableRef())
	if err := c.Flush(); err != nil {
		return false, fmt.Errorf("delete table inet %s (the backend has no encapsulation port): %w", GuardTable, err)
	}
	m.log.Info("underlay guard removed: the backend has no encapsulation port", "table", "inet "+GuardTable)
	return true, nil
}

func guardPresent(rc *netlink.Conn) (bool, error) {
	msgs, err := nftDump(rc, inet.proto, unix.NFT_MSG_GETTABLE, nil)
	if err != nil {
		return false, fmt.Errorf("dump nf_tables inet tables: %w", err)
	}
	for _, msg := range msgs {
		for a := rtnl.WalkAttrs(msg); a.Next(); {
			if a.Type == unix.NFTA_TABLE_NAME && string(bytes.TrimRight(a.Value, "\x00")) == GuardTable {
				return true, nil
			}
		}
	}
	return false, nil
}

// guardDigest returns the guard's structure as bytes from raw dumps — its
// chains' identities, its rules without counters, its sets' definitions and
// the ports' elements — or nil when the table is absent. Peer elements are
// left out: they change with every join and are checked by repairElems.
func (m *Manager) guardDigest() ([]byte, error) {
	rc, err := m.rawConn()
	if err != nil {
		return nil, err
	}
	if ok, err := guardPresent(rc); err != nil || !ok {
		return nil, err
	}
	out := []byte("G")
	msgs, err := nftDump(rc, inet.proto, unix.NFT_MSG_GETCHAIN, nil)
	if err != nil {
		return nil, fmt.Errorf("dump nf_tables inet chains: %w", err)
	}
	for _, msg := range msgs {
		var table []byte
		var fields []byte
		for a := rtnl.WalkAttrs(msg); a.Next(); {
			switch a.Type {
			case unix.NFTA_CHAIN_TABLE:
				table = bytes.TrimRight(a.Value, "\x00")
				fields = appendField(fields, byte(a.Type), a.Value)
			case unix.NFTA_CHAIN_NAME, unix.NFTA_CHAIN_TYPE, unix.NFTA_CHAIN_HOOK, unix.NFTA_CHAIN_POLICY, nftaChainFlags:
				fields = appendField(fields, byte(a.Type), a.Value)
			}
		}
		if string(table) == GuardTable {
			out = append(append(out, 'c'), fields...)
		}
	}
	if out, err = appendRules(out, rc, inet, GuardTable, ""); err != nil {
		return nil, err
	}
	if msgs, err = nftDump(rc, inet.proto, unix.NFT_MSG_GETSET, rtnl.AppendAttrString(nil, unix.NFTA_SET_TABLE, GuardTable)); err != nil {
		return nil, fmt.Errorf("dump sets of table inet %s: %w", GuardTable, err)
	}
	for _, msg := range msgs {
		out = append(out, 's')
		for a := rtnl.WalkAttrs(msg); a.Next(); {
			switch a.Type {
			case unix.NFTA_SET_NAME, unix.NFTA_SET_FLAGS, unix.NFTA_SET_KEY_TYPE, unix.NFTA_SET_KEY_LEN:
				out = appendField(out, byte(a.Type), a.Value)
			}
		}
	}
	err = dumpElems(rc, guardPorts, func(key []byte) { out = appendField(out, 'p', key) })
	return out, err
}

// dumpElems calls fn with the key of every element of the guard's set.
func dumpElems(rc *netlink.Conn, set string, fn func(key []byte)) error {
	req := rtnl.AppendAttrString(nil, unix.NFTA_SET_ELEM_LIST_TABLE, GuardTable)
	req = rtnl.AppendAttrString(req, unix.NFTA_SET_ELEM_LIST_SET, set)
	msgs, err := nftDump(rc, inet.proto, unix.NFT_MSG_GETSETELEM, req)
	if err != nil {
		return fmt.Errorf("dump elements of set %s of table inet %s: %w", set, GuardTable, err)
	}
	for _, msg := range msgs {
		for a := rtnl.WalkAttrs(msg); a.Next(); {
			if a.Type != unix.NFTA_SET_ELEM_LIST_ELEMENTS {
				continue
			}
			for e := rtnl.WalkAttrs(a.Value); e.Next(); {
				for k := rtnl.WalkAttrs(e.Value); k.Next(); {
					if k.Type != unix.NFTA_SET_ELEM_KEY {
						continue
					}
					for v := rtnl.WalkAttrs(k.Value); v.Next(); {
						if v.Type == unix.NFTA_DATA_VALUE {
							fn(v.Value)
						}
					}
				}
			}
		}
	}
	return nil
}

// readDrops reads the guard's counter and reports the packets dropped since
// the last read: a hook call and one log line per check at most.
func (m *Manager) readDrops() error {
	rc, err := m.rawConn()
	if err != nil {
		return err
	}
	req := rtnl.AppendAttrString(nil, unix.NFTA_OBJ_TABLE, GuardTable)
	req = rtnl.AppendAttrString(req, unix.NFTA_OBJ_NAME, GuardCounter)
	req = binary.NativeEndian.AppendUint16(req, 8)
	req = binary.NativeEndian.AppendUint16(req, unix.NFTA_OBJ_TYPE)
	req = binary.BigEndian.AppendUint32(req, unix.NFT_OBJECT_COUNTER)
	msgs, err := rc.Execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETOBJ), Flags: netlink.Request},
		Data:   append([]byte{inet.proto, unix.NFNETLINK_V0, 0, 0}, req...),
	})
	if err != nil {
		return fmt.Errorf("read counter %s of table inet %s: %w", GuardCounter, GuardTable, err)
	}
	var packets uint64
	var found bool
	for _, msg := range msgs {
		if len(msg.Data) < 4 {
			continue
		}
		for a := rtnl.WalkAttrs(msg.Data[4:]); a.Next(); {
			if a.Type != unix.NFTA_OBJ_DATA {
				continue
			}
			for d := rtnl.WalkAttrs(a.Value); d.Next(); {
				if d.Type == unix.NFTA_COUNTER_PACKETS && len(d.Value) == 8 {
					packets, found = binaryutil.BigEndian.Uint64(d.Value), true
				}
			}
		}
	}
	if !found {
		return errors.New("read counter " + GuardCounter + " of table inet " + GuardTable + ": no packet count in the answer")
	}
	g := &m.guard
	delta := packets - g.drops
	if packets < g.drops { // the table was replaced by someone else
		delta = packets
	}
	g.drops = packets
	if delta == 0 {
		return nil
	}
	m.log.Warn("underlay guard dropped encapsulated packets from addresses that are not peers",
		"packets", delta, "ports", m.desired.EncapPorts, "total", packets, "table", "inet "+GuardTable)
	if m.onDrop != nil {
		m.onDrop(delta)
	}
	return nil
}
