package dataplane

// Which WireGuard peers the leases ask for: one plan (wgDev.plan) that weftd
// gives its devices and `weftctl doctor` checks them against
// (WireGuardPeers).

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netconf"
	"github.com/weft-net/weft/internal/wgengine"
)

// WireGuardDevice is what the leases ask of one of this host's WireGuard
// devices: its name, listen port and peers.
type WireGuardDevice struct {
	Name       string
	ListenPort uint16
	Peers      []wgengine.Peer
	// Skipped are the leases it leaves out, and why.
	Skipped []string
}

// WireGuardPeers is what snap asks of the WireGuard devices of a host
// whose public key is pub, for `weftctl doctor`: the same plan weftd's
// devices are given, so there is one definition of a peer.
func WireGuardPeers(cfg netconf.Config, host Host, pub wgengine.Key, snap lease.Snapshot) ([]WireGuardDevice, error) {
	o, err := wireGuardOptions(cfg)
	if err != nil {
		return nil, err
	}
	var out []WireGuardDevice
	for _, w := range wgLayout(o, wgengine.Key{}, cfg.EnableIPv6) {
		w.pub, w.host = pub, host
		peers, skipped := w.plan(snap)
		d := WireGuardDevice{Name: w.name, ListenPort: uint16(w.port), Peers: peers}
		for _, sk := range append(skipped[0], skipped[1]...) {
			d.Skipped = append(d.Skipped, fmt.Sprintf("%s: %s", sk.peer, sk.msg))
		}
		out = append(out, d)
	}
	return out, nil
}

// setPeers gives the device one peer per usable lease of snap, before the
// driver writes the route that sends it traffic, and returns the leases
// left out of the driver's family.
func (w *wgDev) setPeers(snap lease.Snapshot, d *Desired) []skippedPeer {
	peers, skipped := w.plan(snap)
	if w.eng != nil {
		if err := w.eng.SetPeers(peers); err != nil {
			// Every peer given was checked by plan: this is the device
			// refusing its configuration, retried by the next apply.
			w.log.Error("configure WireGuard peers", "err", err)
		}
	}
	if d.Family == unix.AF_INET6 {
		return skipped[1]
	}
	return skipped[0]
}

// plan is the device's peers for snap, and the leases it leaves out, per
// family of the subnets they would have carried (IPv4, IPv6).
func (w *wgDev) plan(snap lease.Snapshot) ([]wgengine.Peer, [2][]skippedPeer) {
	var skipped [2][]skippedPeer
	own4, own6 := snap.Own.Subnet.Masked(), snap.Own.IPv6Subnet.Masked()
	ownKey := w.pub
	byKey := make(map[wgengine.Key]netip.Prefix, len(snap.Peers))
	peers := make([]wgengine.Peer, 0, len(snap.Peers))
	for _, p := range snap.Peers {
		var (
			allowed  []netip.Prefix
			sub4     netip.Prefix // the subnets it would carry, for skips
			sub6     netip.Prefix
			ok4, ok6 bool // its address of the family is usable
		)
		if err := checkPeer(p, own4, w.host); err == nil {
			ok4 = true
		} else if w.v4 {
			skipped[0] = append(skipped[0], skippedPeer{peer: p.Subnet, reason: SkipInvalid, msg: err.Error()})
		}
		if w.v4 && ok4 {
			sub4 = p.Subnet.Masked()
			allowed = append(allowed, sub4)
		}
		if w.v6 || w.endpoints6() {
			skip, err := peer6(p, own6, w.host)
			switch {
			case skip:
			case err != nil && w.v6:
				skipped[1] = append(skipped[1], skippedPeer{peer: p.IPv6Subnet, reason: SkipInvalid, msg: err.Error()})
			case err == nil:
				ok6 = true
				if w.v6 {
					sub6 = p.IPv6Subnet.Masked()
					allowed = append(allowed, sub6)
				}
			}
		}
		if len(allowed) == 0 {
			continue
		}
		skip := func(format string, a ...any) {
			msg := fmt.Sprintf(format, a...)
			if sub4.IsValid() {
				skipped[0] = append(skipped[0], skippedPeer{peer: sub4, reason: SkipInvalid, msg: msg})
			}
			if sub6.IsValid() {
				skipped[1] = append(skipped[1], skippedPeer{peer: sub6, reason: SkipInvalid, msg: msg})
			}
		}
		if !strings.EqualFold(p.Attrs.BackendType, netconf.BackendWireGuard) {
			skip("backend type %q, want wireguard", p.Attrs.BackendType)
			continue
		}
		key, port, err := w.peerData(p)
		if err != nil {
			skip("%s", err)
			continue
		}
		switch other, dup := byKey[key]; {
		case key == ownKey:
			skip("PublicKey %s: is this host's own key", key)
			continue
		case dup:
			skip("PublicKey %s: already the key of peer %s", key, other)
			continue
		}
		var ep netip.AddrPort
		switch six := w.endpoint6(p, ok4, ok6); {
		case six && ok6:
			ep = netip.AddrPortFrom(p.Attrs.PublicIPv6, port)
		case !six && ok4:
			ep = netip.AddrPortFrom(p.Attrs.PublicIP, port)
		default:
			skip("no usable PublicIP%s for Mode %s", map[bool]string{true: "v6"}[six], w.opts.mode)
			continue
		}
		byKey[key] = allowed[0]
		peers = append(peers, wgengine.Peer{
			PublicKey: key, Endpoint: ep, AllowedIPs: allowed, PSK: w.opts.psk, Keepalive: w.opts.keepalive,
			Greets: p.Attrs.NodeName != "", // weft writes WeftNodeName; flannel does not
		})
	}
	return peers, skipped
}

// endpoint6 says whether the device reaches peer p at its PublicIPv6.
func (w *wgDev) endpoint6(p *lease.Lease, ok4, ok6 bool) bool {
	switch {
	case !w.endpoints6():
		return false
	case !w.endpoints4():
		return true
	}
	// Mode auto, as flannel's selectMode: IPv4 unless the peer's IPv4
	// address is private and both IPv6 addresses are public.
	switch {
	case !ok6:
		return false
	case !ok4:
		return true
	case !p.Attrs.PublicIP.IsPrivate() && w.host.PublicIP.IsValid():
		return false
	}
	return !p.Attrs.PublicIPv6.IsPrivate() && w.host.PublicIP6.IsValid() && !w.host.PublicIP6.IsPrivate()
}

// peerData decodes a peer's key and port: from BackendV6Data for
// flannel-wg-v6, else from BackendData (a single device's BackendV6Data
// must name the same key). A port of 0 or none means our own, as flanneld,
// which published none before 0.26, assumes.
func (w *wgDev) peerData(p *lease.Lease) (wgengine.Key, uint16, error) {
	what, raw := "BackendData", p.Attrs.BackendData
	if !w.v4 {
		what, raw = "BackendV6Data", p.Attrs.BackendV6Data
	}
	key, port, err := decodeWGData(what, raw)
	if err != nil {
		return wgengine.Key{}, 0, err
	}
	if w.v4 && w.v6 && len(p.Attrs.BackendV6Data) > 0 {
		key6, _, err := decodeWGData("BackendV6Data", p.Attrs.BackendV6Data)
		if err != nil {
			return wgengine.Key{}, 0, err
		}
		if key6 != key {
			return wgengine.Key{}, 0, fmt.Errorf("BackendV6Data PublicKey %s: differs from BackendData's %s (one device, one key)", key6, key)
		}
	}
	if port == 0 {
		port = uint16(w.port)
	}
	return key, port, nil
}

// decodeWGData decodes one wireguard BackendData or BackendV6Data: its
// public key, and its port (0 when absent).
func decodeWGData(what string, raw json.RawMessage) (wgengine.Key, uint16, error) {
	if len(raw) == 0 {
		return wgengine.Key{}, 0, fmt.Errorf("no %s (the peer publishes no WireGuard key)", what)
	}
	var data wgLeaseData
	if err := json.Unmarshal(raw, &data); err != nil {
		return wgengine.Key{}, 0, fmt.Errorf("%s %.80s: not a wireguard object: %w", what, raw, err)
	}
	key, err := wgengine.ParseKey(data.PublicKey)
	if err != nil {
		return wgengine.Key{}, 0, fmt.Errorf("%s PublicKey: %w", what, err)
	}
	if key.IsZero() {
		return wgengine.Key{}, 0, fmt.Errorf("%s PublicKey: all zeros, not a key", what)
	}
	if data.Port < 0 || data.Port > 65535 {
		return wgengine.Key{}, 0, fmt.Errorf("%s Port %d: must be in 0..65535", what, data.Port)
	}
	return key, uint16(data.Port), nil
}
