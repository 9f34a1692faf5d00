package dataplane

// The vxlan backend, as flannel defines it (COMPAT.md "VXLAN data path"):
// one kernel vxlan device flannel.<VNI> with learning off, and for each peer
// three static entries that together replace what learning would have done:
//
//	route  <peer subnet> via <peer subnet address> dev flannel.N onlink
//	neigh  <peer subnet address> lladdr <peer VtepMAC> dev flannel.N permanent
//	fdb    <peer VtepMAC> dst <peer PublicIP> dev flannel.N self permanent
//
// The route sends a peer subnet's traffic to a "gateway" address that only
// exists as a neighbour entry; that entry gives the inner Ethernet header the
// peer's VTEP MAC; the FDB entry maps that MAC to the peer's underlay address
// for the outer UDP header. No ARP or flooding ever crosses the underlay.
//
// The device's MAC is published in the lease, so it must survive restarts: an
// existing compatible device is reused as is, and a device that must be
// recreated (incompatible, or deleted by someone) gets its previous MAC back.
//
// In a dual-stack network (EnableIPv6) a second device, flannel-v6.<VNI>,
// whose underlay is IPv6, carries the peers' IPv6 subnets with the same
// three entries per peer (metric 1024); its MAC is the lease's
// BackendV6Data. A Linux vxlan device has one underlay family, hence two
// devices, as in flannel.

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netconf"
)

// The encapsulation overheads: outer IPv4 (20) or IPv6 (40) + UDP (8) +
// VXLAN (8) + inner Ethernet (14).
const (
	vxlanOverhead  = 50
	vxlan6Overhead = 70
)

// VXLANLeaseData is the vxlan BackendData in a lease: {"VNI":1,"VtepMAC":"…"}.
type VXLANLeaseData struct {
	VNI     int
	VtepMAC string
}

// VXLANOptions are the vxlan backend's keys in the config's Backend object;
// netconf owns their decoding, defaults and validation.
type VXLANOptions = netconf.VXLANOptions

// vxlanSpec is the vxlan backend's desired state for family: per peer a
// route through the device to the peer subnet's network address, the
// neighbour that gives it the peer's VTEP MAC and the FDB entry that sends
// that MAC to the peer's PublicIP — or, with DirectRouting and the peer on
// the underlay's L2 segment, a route straight to its PublicIP.
func vxlanSpec(opts VXLANOptions, host Host, family uint8) spec {
	s := spec{
		family: family, label: netconf.BackendVXLAN, device: vxlanDevName(opts, family),
		own:  func(snap lease.Snapshot) netip.Prefix { return snap.Own.Subnet.Masked() },
		addr: true, blackhole: host.BlackholeRoute, macWhat: "VtepMAC",
		orderDependent: opts.DirectRouting, usesConnected: opts.DirectRouting,
	}
	if family == unix.AF_INET6 {
		s.label, s.macWhat = "vxlan IPv6", "IPv6 VtepMAC"
		s.own = func(snap lease.Snapshot) netip.Prefix { return snap.Own.IPv6Subnet.Masked() }
	}
	s.peer = func(p *lease.Lease, own netip.Prefix, f Facts) (PeerEntries, bool, string) {
		var (
			sub    netip.Prefix
			pub    netip.Addr
			data   = p.Attrs.BackendData
			metric int
		)
		if family == unix.AF_INET6 {
			skip, err := peer6(p, own, host)
			switch {
			case skip:
				return PeerEntries{}, true, ""
			case err != nil:
				return PeerEntries{}, false, err.Error()
			case len(p.Attrs.BackendV6Data) == 0 && strings.EqualFold(p.Attrs.BackendType, netconf.BackendVXLAN):
				return PeerEntries{}, false, "no BackendV6Data (the peer publishes no IPv6 VTEP)"
			}
			sub, pub, data, metric = p.IPv6Subnet.Masked(), p.Attrs.PublicIPv6, p.Attrs.BackendV6Data, v6Metric
		} else {
			if err := checkPeer(p, own, host); err != nil {
				return PeerEntries{}, false, err.Error()
			}
			sub, pub = p.Subnet.Masked(), p.Attrs.PublicIP
		}
		if !strings.EqualFold(p.Attrs.BackendType, netconf.BackendVXLAN) {
			return PeerEntries{}, false, fmt.Sprintf("backend type %q, want vxlan", p.Attrs.BackendType)
		}
		mac, err := decodeVtepMAC(data)
		if err != nil {
			if family == unix.AF_INET6 {
				return PeerEntries{}, false, "BackendV6Data: " + err.Error()
			}
			return PeerEntries{}, false, err.Error()
		}
		if opts.DirectRouting && coveredBy(f.Connected, pub) {
			return PeerEntries{Route: Route{Dst: sub, Gw: pub, Link: host.IfaceIndex, Metric: metric}, MAC: mac, Dst: pub, Direct: true}, false, ""
		}
		w := Route{Dst: sub, Gw: sub.Addr(), Link: f.Dev, OnLink: true, Metric: metric}
		if family == unix.AF_INET {
			w = viaNexthop(w, f) // nexthops.go
		}
		return PeerEntries{Route: w, MAC: mac, Dst: pub}, false, ""
	}
	return s
}

func vxlanDevName(opts VXLANOptions, family uint8) string {
	if family == unix.AF_INET6 {
		return fmt.Sprintf("flannel-v6.%d", opts.VNI)
	}
	return fmt.Sprintf("flannel.%d", opts.VNI)
}

// vxlanDev is a kernel vxlan device, flannel.<VNI> over IPv4 or
// flannel-v6.<VNI> over IPv6, and what weft keeps about it: the MAC (kept
// across restarts and recreation), link and index last found.
type vxlanDev struct {
	opts     VXLANOptions
	family   uint8 // of the underlay
	h        *netlink.Handle
	log      *slog.Logger
	name     string
	overhead int // what the encapsulation adds to a frame

	// Only the loop goroutine (and Init before it) touches these.
	mac      net.HardwareAddr
	lnk      *netlink.Vxlan
	devIndex atomic.Int32 // read by the watcher's filters
}

func newVXLANDev(opts VXLANOptions, family uint8, h *netlink.Handle, log *slog.Logger) *vxlanDev {
	d := &vxlanDev{opts: opts, family: family, h: h, name: vxlanDevName(opts, family), overhead: vxlanOverhead}
	if family == unix.AF_INET6 {
		d.overhead = vxlan6Overhead
	}
	d.log = log.With("device", d.name)
	return d
}

func (v *vxlanDev) index() int32 { return v.devIndex.Load() }

func (v *vxlanDev) link() netlink.Link {
	if v.lnk == nil {
		return nil
	}
	return v.lnk
}

// local is the device's local address: the underlay's address of the family.
func (v *vxlanDev) local(host Host) netip.Addr {
	if v.family == unix.AF_INET6 {
		return host.IfaceAddr6
	}
	return host.IfaceAddr
}

// leaseData is what the device publishes: its VNI and MAC.
func (v *vxlanDev) leaseData() (json.RawMessage, error) {
	data, err := json.Marshal(VXLANLeaseData{VNI: v.opts.VNI, VtepMAC: v.mac.String()})
	if err != nil {
		return nil, fmt.Errorf("dataplane: encode %s lease data: %w", v.name, err)
	}
	return data, nil
}

func (v *vxlanDev) port() int {
	if v.opts.Port == 0 {
		return netconf.DefaultVXLANPort
	}
	return v.opts.Port
}

// mtu is the device MTU over an underlay of MTU ifaceMTU.
func (v *vxlanDev) mtu(ifaceMTU int) int {
	if v.opts.MTU != 0 {
		return v.opts.MTU
	}
	return ifaceMTU - v.overhead
}

// wantDevice is the device weft would create over the underlay interface of
// host, with local address local.
func (v *vxlanDev) wantDevice(host Host, local netip.Addr) *netlink.Vxlan {
	la := netlink.NewLinkAttrs()
	la.Name = v.name
	la.MTU = v.mtu(host.IfaceMTU)
	la.HardwareAddr = v.mac
	return &netlink.Vxlan{
		LinkAttrs:    la,
		VxlanId:      v.opts.VNI,
		VtepDevIndex: host.IfaceIndex,
		SrcAddr:      local.AsSlice(),
		Port:         v.port(),
		Learning:     v.opts.Learning,
		GBP:          v.opts.GBP,
	}
}

// incompatible lists why an existing link cannot serve as our device; empty
// means it can be reused (MTU and up/down are fixed in place).
func incompatible(have netlink.Link, want *netlink.Vxlan) []string {
	v, ok := have.(*netlink.Vxlan)
	if !ok {
		return []string{fmt.Sprintf("type %s, want vxlan", have.Type())}
	}
	var d []string
	if v.VxlanId != want.VxlanId {
		d = append(d, fmt.Sprintf("id %d, want %d", v.VxlanId, want.VxlanId))
	}
	if v.VtepDevIndex != want.VtepDevIndex {
		d = append(d, fmt.Sprintf("dev #%d, want #%d", v.VtepDevIndex, want.VtepDevIndex))
	}
	if !v.SrcAddr.Equal(want.SrcAddr) {
		d = append(d, fmt.Sprintf("local %v, want %v", v.SrcAddr, want.SrcAddr))
	}
	if v.Port != want.Port {
		d = append(d, fmt.Sprintf("dstport %d, want %d", v.Port, want.Port))
	}
	if v.Learning != want.Learning {
		d = append(d, fmt.Sprintf("learning %t, want %t", v.Learning, want.Learning))
	}
	if v.GBP != want.GBP {
		d = append(d, fmt.Sprintf("gbp %t, want %t", v.GBP, want.GBP))
	}
	if len(v.Group) > 0 && !v.Group.IsUnspecified() {
		d = append(d, fmt.Sprintf("group %v, want none", v.Group))
	}
	return d
}

// ensure makes the device exist, match wantDevice over host's underlay, and
// be up, and records its index and MAC. It reports whether the device was
// (re)created, in which case the kernel dropped every route, neighbour and
// FDB entry on it.
func (b *vxlanDev) ensure(host Host) (created bool, err error) {
	local := b.local(host)
	want := b.wantDevice(host, local)
	have, err := b.h.LinkByName(b.name)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
		have = nil
		if b.lnk != nil {
			b.log.Warn("vxlan device disappeared; recreating it with the same MAC", "mac", b.mac.String())
		}
	case err != nil:
		return false, fmt.Errorf("dataplane: look up %s: %w", b.name, err)
	}
	if have != nil {
		if diff := incompatible(have, want); len(diff) > 0 {
			// Keep the MAC the lease already advertises.
			if b.mac == nil {
				b.mac = have.Attrs().HardwareAddr
				want.HardwareAddr = b.mac
			}
			b.log.Warn("existing vxlan device is incompatible; recreating it", "diff", strings.Join(diff, "; "))
			if err := b.h.LinkDel(have); err != nil && !isGone(err) {
				return false, fmt.Errorf("dataplane: delete incompatible %s: %w", b.name, err)
			}
			have = nil
		}
	}
	if have == nil {
		if err := b.h.LinkAdd(want); err != nil {
			return false, fmt.Errorf("dataplane: create vxlan device %s (id %d, local %s, dev %s, dstport %d): %w",
				b.name, want.VxlanId, local, host.IfaceName, want.Port, err)
		}
		created = true
		// Re-read: the kernel fills in the MAC and may have adjusted attributes.
		if have, err = b.h.LinkByName(b.name); err != nil {
			return true, fmt.Errorf("dataplane: re-read created %s: %w", b.name, err)
		}
		if diff := incompatible(have, want); len(diff) > 0 {
			return true, fmt.Errorf("dataplane: created %s does not match what was asked: %s", b.name, strings.Join(diff, "; "))
		}
	}
	attrs := have.Attrs()
	if attrs.MTU != want.MTU {
		if err := b.h.LinkSetMTU(have, want.MTU); err != nil {
			return created, fmt.Errorf("dataplane: set %s mtu %d: %w", b.name, want.MTU, err)
		}
	}
	if attrs.Flags&net.FlagUp == 0 {
		if err := b.h.LinkSetUp(have); err != nil {
			return created, fmt.Errorf("dataplane: set %s up: %w", b.name, err)
		}
	}
	b.lnk = have.(*netlink.Vxlan)
	b.mac = attrs.HardwareAddr
	b.devIndex.Store(int32(attrs.Index))
	if created {
		b.log.Info("vxlan device created", "index", attrs.Index, "mac", b.mac.String(), "mtu", want.MTU)
	}
	return created, nil
}

func decodeVtepMAC(raw json.RawMessage) (net.HardwareAddr, error) {
	mac, present, err := lease.VtepMAC(raw)
	if err == nil && !present {
		err = fmt.Errorf("BackendData %.80s: no VtepMAC", raw)
	}
	return mac, err
}

// vxlanSpecs is the vxlan backend's desired state per family.
func vxlanSpecs(cfg netconf.Config, host Host) ([]spec, error) {
	opts, err := cfg.VXLAN()
	if err != nil {
		return nil, fmt.Errorf("dataplane: vxlan options: %w", err)
	}
	var out []spec
	for _, fam := range families(cfg) {
		out = append(out, vxlanSpec(opts, host, fam))
	}
	return out, nil
}

// setupVXLAN makes flannel.<VNI> (and flannel-v6.<VNI>), whose MACs go
// into the lease; the MTU is the smaller of the two, since a container has
// one MTU for both families.
func setupVXLAN(b *backend, specs []spec) (Published, int, error) {
	host := b.host
	if !host.IfaceAddr.Is4() {
		return Published{}, 0, fmt.Errorf("dataplane: vxlan local address %s on %s: must be IPv4", host.IfaceAddr, host.IfaceName)
	}
	opts, err := b.cfg.VXLAN()
	if err != nil {
		return Published{}, 0, fmt.Errorf("dataplane: vxlan options: %w", err)
	}
	pub := Published{BackendType: netconf.BackendVXLAN}
	mtu := 0
	// Decided once: the kernel does not gain or lose nexthop objects while
	// weftd runs.
	nexthops := false
	if !b.noNexthops {
		nexthops, err = b.rt.ProbeNexthops()
	}
	switch {
	case err != nil:
		b.log.Warn("probing the kernel for nexthop objects failed; vxlan peer routes go in as plain via routes", "err", err)
	case nexthops:
		b.log.Info("kernel nexthop objects: vxlan peer routes go through one nexthop each (proto 87, id = the peer subnet's address)")
	default:
		b.log.Warn("this kernel makes no nexthop objects (Linux < 5.3?); vxlan peer routes go in as plain via routes, whose install time grows with the cluster size")
	}
	for _, s := range specs {
		dev := newVXLANDev(opts, s.family, b.h, b.log)
		log := b.log.With("device", dev.name)
		dev.mac = host.VtepMAC
		if s.family == unix.AF_INET6 {
			log = log.With("family", "ipv6")
			dev.mac = host.VtepMAC6
		}
		if _, err := dev.ensure(host); err != nil {
			return Published{}, 0, err
		}
		data, err := dev.leaseData()
		if err != nil {
			return Published{}, 0, err
		}
		if s.family == unix.AF_INET6 {
			pub.BackendV6Data = data
		} else {
			pub.BackendData = data
		}
		if m := dev.mtu(host.IfaceMTU); mtu == 0 || m < mtu {
			mtu = m
		}
		b.add(s, dev, log).nexthops = nexthops && s.family == unix.AF_INET
	}
	return pub, mtu, nil
}
