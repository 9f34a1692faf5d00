package dataplane

// The IPv6 side of the vxlan backend in a dual-stack network (COMPAT.md
// "VXLAN data path"): a second kernel vxlan device, flannel-v6.<VNI>, whose
// underlay is IPv6 (local = the interface's IPv6 address), carrying the
// peers' IPv6 subnets with the same three static entries per peer as the
// IPv4 device:
//
//	route  <peer v6 subnet> via <its network address> dev flannel-v6.N onlink metric 1024 proto 87
//	neigh  <its network address> lladdr <peer BackendV6Data VtepMAC> dev flannel-v6.N permanent
//	fdb    <that VtepMAC> dst <peer PublicIPv6> dev flannel-v6.N self permanent
//
// A Linux vxlan device has one underlay family, so IPv6 needs its own device
// (as in flannel); its MAC is published as BackendV6Data and, like
// flannel.<VNI>'s, kept across restarts and recreation. The MTU is the
// underlay's minus 70: an outer IPv6 header is 20 bytes longer than IPv4's.
//
// Applies are level-triggered like the IPv4 side: a full pass dumps the
// device address, IPv6 main-table routes with weft's protocol, IPv6
// neighbours and FDB entries of the device, and writes the differences; a
// delta (only the snapshot changed since the last successful apply) writes
// the difference between the two desired states.

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netconf"
	"github.com/weft-net/weft/internal/rtnl"
)

// vxlan6Overhead is what VXLAN over IPv6 adds to every frame: outer IPv6
// (40) + UDP (8) + VXLAN (8) + inner Ethernet (14).
const vxlan6Overhead = 70

// vxlan6Backend's desired state (want) is replaced whole, never changed in
// place, so its wantMu is never held for writing. Its rtnl socket is shared
// with the IPv4 half.
type vxlan6Backend struct {
	vxlanDevice // flannel-v6.<VNI>
	host        Host
	w           *watcher

	// Only the loop goroutine (and Init before it) touches these.
	filter watchFilter
}

func newVXLAN6(opts VXLANOptions, host Host, h *netlink.Handle, rt *rtnl.Conn, log *slog.Logger) *vxlan6Backend {
	name := fmt.Sprintf("flannel-v6.%d", opts.VNI)
	return &vxlan6Backend{
		vxlanDevice: vxlanDevice{
			opts: opts, family: unix.AF_INET6, h: h, rt: rt,
			log: log.With("device", name), name: name, overhead: vxlan6Overhead,
			applyWhat: "vxlan IPv6 apply", changedMsg: "vxlan IPv6 dataplane changed",
		},
		host: host,
		w:    newWatcher(host.NetNS, log),
	}
}

// Init resolves the interface and its IPv6 address, ensures flannel-v6.<VNI>
// and starts the kernel watch; peers wait for the first snapshot. The
// Published BackendData is the lease's BackendV6Data.
func (b *vxlan6Backend) Init(ctx context.Context) (Published, int, error) {
	host, err := resolveHost6(b.h, b.host)
	if err != nil {
		return Published{}, 0, err
	}
	b.host = host
	if _, err := b.ensureDevice(b.host, b.host.IfaceAddr6); err != nil {
		return Published{}, 0, err
	}
	b.filter = b.watchFilter(b.host.IfaceIndex)
	b.w.start(b.filter)
	data, err := json.Marshal(VXLANLeaseData{VNI: b.opts.VNI, VtepMAC: b.mac.String()})
	if err != nil {
		return Published{}, 0, fmt.Errorf("dataplane: encode vxlan IPv6 lease data: %w", err)
	}
	return Published{BackendType: netconf.BackendVXLAN, BackendData: data}, b.mtu(b.host.IfaceMTU), nil
}

func (b *vxlan6Backend) Events() <-chan struct{} { return b.w.ch }

func (b *vxlan6Backend) Close() error {
	b.w.close()
	b.rt.Close()
	return nil
}

// peerWant computes one peer's IPv6 entries; skip is true for a peer with no
// IPv6 lease (nothing to say about it), why non-empty for one that is wrong.
func (b *vxlan6Backend) peerWant(p *lease.Lease, own netip.Prefix, dev int, connected []netip.Prefix) (e peerEntries, skip bool, why string) {
	skip, err := peer6(p, own, b.host)
	switch {
	case skip:
		return e, true, ""
	case err != nil:
		return e, false, err.Error()
	case !strings.EqualFold(p.Attrs.BackendType, netconf.BackendVXLAN):
		return e, false, fmt.Sprintf("backend type %q, want vxlan", p.Attrs.BackendType)
	case len(p.Attrs.BackendV6Data) == 0:
		return e, false, "no BackendV6Data (the peer publishes no IPv6 VTEP)"
	}
	mac, err := decodeVtepMAC(p.Attrs.BackendV6Data)
	if err != nil {
		return e, false, "BackendV6Data: " + err.Error()
	}
	sub, pub := p.IPv6Subnet.Masked(), p.Attrs.PublicIPv6
	if b.opts.DirectRouting && coveredBy(connected, pub) {
		return peerEntries{route: routeWant{Dst: sub, Gw: pub, Link: b.host.IfaceIndex, Metric: v6Metric}, mac: mac, dst: pub, direct: true}, false, ""
	}
	return peerEntries{route: routeWant{Dst: sub, Gw: sub.Addr(), Link: dev, OnLink: true, Metric: v6Metric}, mac: mac, dst: pub}, false, ""
}

// desired computes what snap asks of the IPv6 device.
func (b *vxlan6Backend) desired(snap lease.Snapshot, dev int, connected []netip.Prefix) *vxlanState {
	own := snap.Own.IPv6Subnet.Masked()
	d := newVXLANState(own, dev, len(snap.Peers))
	b.fillDesired(d, snap, b.host.BlackholeRoute, func(p *lease.Lease) (peerEntries, bool, string) {
		return b.peerWant(p, own, dev, connected)
	})
	return d
}

// Apply reads the kernel and makes the IPv6 device's state match snap.
func (b *vxlan6Backend) Apply(ctx context.Context, snap lease.Snapshot) error {
	return b.apply(ctx, snap, true)
}

// ApplyDelta writes only the difference to the last successful apply; it
// is a full pass when there is none, the device was recreated or the own
// IPv6 subnet changed.
func (b *vxlan6Backend) ApplyDelta(ctx context.Context, snap lease.Snapshot) error {
	return b.apply(ctx, snap, false)
}

func (b *vxlan6Backend) apply(ctx context.Context, snap lease.Snapshot, full bool) error {
	return b.run(ctx, b, b.host, b.host.IfaceAddr6, snap, snap.Own.IPv6Subnet.Masked(), full)
}

// applyDelta diffs a freshly computed desired state against prev.
func (b *vxlan6Backend) applyDelta(ctx context.Context, snap lease.Snapshot, prev *vxlanState, dev int, t *tally) (*vxlanState, syncStats, error) {
	d := b.desired(snap, dev, b.connected)
	b.want.Store(d) // before any write: the deletions below are weft's own
	st := applyVXLANDiff(ctx, b.rt, unix.AF_INET6, prev, d, t)
	return d, st, ctx.Err()
}

// desiredFull is desired: the IPv6 state is always built anew.
func (b *vxlan6Backend) desiredFull(snap lease.Snapshot, dev int, connected []netip.Prefix) *vxlanState {
	return b.desired(snap, dev, connected)
}
