package dataplane

// The wireguard backend, drop-in for flannel's "Type": "wireguard" (its
// backend/wireguard), in userspace: flannel needs the kernel's WireGuard
// module, which many kernels lack; weft runs the same protocol
// (golang.zx2c4.com/wireguard, internal/wgengine) inside weftd on a TUN
// device flannel-wg carrying
//
//	address  <lease network address>/32          (e.g. 10.5.19.0/32)
//	route    <Network> dev flannel-wg            (e.g. 10.5.0.0/16)
//	mtu      underlay MTU − 80 (flannel's overhead: outer IPv6 40 + UDP 8 +
//	         WireGuard header 16 + tag 16)
//
// with one WireGuard peer per lease: its public key from the lease's
// BackendData {"PublicKey":"<base64>","Port":51820}, its endpoint
// PublicIP:Port (a Port of 0 or none — flanneld publishes none — means our
// own ListenPort, which is what flanneld assumes), its allowed IPs its
// subnet, and the network's PSK and PersistentKeepaliveInterval. Kernel
// WireGuard peers (flanneld) and weft hosts therefore interoperate.
//
// Identity. The private key lives in /run/flannel/wgkey (WIREGUARD_KEY_FILE
// overrides), created 0600 when missing, so a restart publishes the same
// public key and peers keep their sessions' configuration.
//
// Trust. A peer's key comes from etcd: one that does not parse, is all
// zeros, is ours, or is already another lease's is a skipped peer (logged
// once, counted as invalid) and every other peer is still programmed. What
// arrives on the socket is WireGuard's to authenticate: a datagram that is
// not from a configured peer's key never reaches the TUN, and a peer may
// only send from its own subnet (its allowed IPs).
//
// Restarts. As with the udp backend, flannel-wg is persistent
// (TUNSETPERSIST): while weftd is stopped, traffic to other hosts is
// dropped there rather than sent in clear by the default route. flanneld
// deletes its device on exit.
//
// Not here yet: IPv6 (flannel-wg-v6, Mode auto/ipv6 with dual-stack); the
// kernel's WireGuard when it has one.

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netconf"
	"github.com/weft-net/weft/internal/wgengine"
)

// WireGuardDeviceName is flannel's device name for the wireguard backend's
// IPv4 (or single) device.
const WireGuardDeviceName = "flannel-wg"

// wgOverhead is what flannel subtracts from the underlay MTU for its
// WireGuard devices (enough for an outer IPv6 header).
const wgOverhead = 80

// wgLeaseData is the wireguard backend's BackendData.
type wgLeaseData struct {
	PublicKey string
	Port      int `json:",omitempty"`
}

// wgOptions are the wireguard options this backend uses, checked.
type wgOptions struct {
	port      int
	psk       wgengine.Key
	keepalive time.Duration
}

func wireGuardOptions(cfg netconf.Config) (wgOptions, error) {
	o, err := cfg.WireGuard()
	if err != nil {
		return wgOptions{}, fmt.Errorf("dataplane: wireguard backend options: %w", err)
	}
	w := wgOptions{port: o.ListenPort, keepalive: time.Duration(o.PersistentKeepaliveInterval) * time.Second}
	if o.PSK != "" {
		if w.psk, err = wgengine.ParseKey(o.PSK); err != nil {
			return wgOptions{}, errors.New("dataplane: wireguard Backend.PSK: must be the base64 encoding of 32 bytes")
		}
	}
	if o.Mode == "ipv6" {
		return wgOptions{}, errors.New("dataplane: wireguard Backend.Mode \"ipv6\": IPv6 endpoints are not supported by weft yet (use separate, auto or ipv4 on an IPv4 network)")
	}
	return w, nil
}

// wireguardSpecs checks the backend's options and returns its desired
// state: like udp's, an address and the Network route; peers are the
// engine's (wgDev.setPeers).
func wireguardSpecs(cfg netconf.Config, host Host) ([]spec, error) {
	if _, err := wireGuardOptions(cfg); err != nil {
		return nil, err
	}
	if !cfg.Network.IsValid() || !cfg.Network.Addr().Is4() {
		return nil, fmt.Errorf("dataplane: wireguard backend: Network %s: must be an IPv4 prefix (the route through %s)", cfg.Network, WireGuardDeviceName)
	}
	network := cfg.Network.Masked()
	return []spec{{
		family: unix.AF_INET, label: netconf.BackendWireGuard, device: WireGuardDeviceName, addr: true, blackhole: host.BlackholeRoute,
		own:    func(snap lease.Snapshot) netip.Prefix { return snap.Own.Subnet.Masked() },
		static: func(_ netip.Prefix, f Facts) []Route { return []Route{{Dst: network, Link: f.Dev}} },
		peer:   func(*lease.Lease, netip.Prefix, Facts) (PeerEntries, bool, string) { return PeerEntries{}, true, "" },
	}}, nil
}

// setupWireGuard loads the key, attaches to (or creates) flannel-wg with a
// device that has no peers yet, and publishes the public key and port.
func setupWireGuard(b *backend, specs []spec) (Published, int, error) {
	o, err := wireGuardOptions(b.cfg)
	if err != nil {
		return Published{}, 0, err
	}
	log := b.log.With("device", WireGuardDeviceName, "port", o.port)
	key, err := wgengine.LoadOrCreateKey(wgengine.KeyFile(), log)
	if err != nil {
		return Published{}, 0, fmt.Errorf("dataplane: %w", err)
	}
	w := &wgDev{opts: o, key: key, h: b.h, log: log, sockDir: os.Getenv(wgengine.SocketDirEnv)}
	if err := w.init(b.host); err != nil {
		return Published{}, 0, err
	}
	data, err := json.Marshal(wgLeaseData{PublicKey: key.PublicKey().String(), Port: o.port})
	if err != nil {
		return Published{}, 0, fmt.Errorf("dataplane: wireguard BackendData: %w", err)
	}
	d := b.add(specs[0], w, b.log)
	d.before = w.setPeers
	return Published{BackendType: netconf.BackendWireGuard, BackendData: data}, w.mtu(), nil
}

// wgDev is flannel-wg and the WireGuard device running on it.
type wgDev struct {
	opts    wgOptions
	key     wgengine.Key
	host    Host
	h       *netlink.Handle
	log     *slog.Logger
	sockDir string // "" = wgengine.DefaultSocketDir

	// Only the loop goroutine (and Init before it) touches these.
	eng      *wgengine.Engine
	lnk      netlink.Link
	devIndex atomic.Int32 // read by the watcher's filters
	closed   atomic.Bool  // an Apply after Close must not start a new engine
}

func (w *wgDev) mtu() int { return w.host.IfaceMTU - wgOverhead }

func (w *wgDev) index() int32 { return w.devIndex.Load() }

func (w *wgDev) link() netlink.Link { return w.lnk }

func (w *wgDev) init(host Host) error {
	if !host.IfaceAddr.Is4() {
		return fmt.Errorf("dataplane: wireguard local address %s on %s: must be IPv4", host.IfaceAddr, host.IfaceName)
	}
	w.host = host
	if w.mtu() < 576 {
		return fmt.Errorf("dataplane: wireguard backend: underlay %s MTU %d leaves %d for %s: must be at least 576", host.IfaceName, host.IfaceMTU, w.mtu(), WireGuardDeviceName)
	}
	_, err := w.ensure(host)
	return err
}

// Close stops the device; flannel-wg, its address and route stay.
func (w *wgDev) Close() error {
	w.closed.Store(true)
	if w.eng != nil {
		err := w.eng.Close()
		w.eng = nil
		if err != nil {
			return fmt.Errorf("dataplane: stop wireguard device: %w", err)
		}
	}
	return nil
}

// ensure makes flannel-wg exist as a TUN device with a running WireGuard
// device on it, the right MTU, and up. A TUN deleted by hand is recreated
// with a new device, whose peers the same apply's setPeers gives it.
func (w *wgDev) ensure(Host) (created bool, err error) {
	if w.closed.Load() {
		return false, errors.New("dataplane: wireguard backend is closed")
	}
	have, err := w.h.LinkByName(WireGuardDeviceName)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
		have = nil
	case err != nil:
		return false, fmt.Errorf("dataplane: look up %s: %w", WireGuardDeviceName, err)
	}
	if have != nil && have.Type() != "tuntap" {
		// flanneld's kernel device of the same name, left by a swap.
		w.log.Warn("existing device is not a TUN device; recreating it", "type", have.Type())
		if err := w.h.LinkDel(have); err != nil && !isGone(err) {
			return false, fmt.Errorf("dataplane: delete %s of type %s: %w", WireGuardDeviceName, have.Type(), err)
		}
		have = nil
	}
	if w.eng == nil || have == nil || int32(have.Attrs().Index) != w.devIndex.Load() {
		if w.eng != nil {
			w.log.Warn("TUN device disappeared or changed; restarting the WireGuard device")
			w.eng.Close()
			w.eng = nil
		}
		if err := w.start(); err != nil {
			return false, err
		}
		if have, err = w.h.LinkByName(WireGuardDeviceName); err != nil {
			return false, fmt.Errorf("dataplane: re-read %s after attaching: %w", WireGuardDeviceName, err)
		}
	}
	attrs := have.Attrs()
	if attrs.MTU != w.mtu() {
		if err := w.h.LinkSetMTU(have, w.mtu()); err != nil {
			return false, fmt.Errorf("dataplane: set %s mtu %d: %w", WireGuardDeviceName, w.mtu(), err)
		}
	}
	if attrs.Flags&net.FlagUp == 0 {
		if err := w.h.LinkSetUp(have); err != nil {
			return false, fmt.Errorf("dataplane: set %s up: %w", WireGuardDeviceName, err)
		}
	}
	created = int32(attrs.Index) != w.devIndex.Load()
	w.lnk = have
	w.devIndex.Store(int32(attrs.Index))
	return created, nil
}

// start opens flannel-wg in the host's namespace and starts the WireGuard
// device on it, listening on the underlay address.
func (w *wgDev) start() error {
	return inNS(w.host.NetNS, func() error {
		dev, err := wgengine.OpenTUN(WireGuardDeviceName, w.mtu())
		if err != nil {
			return fmt.Errorf("dataplane: %w", err)
		}
		w.eng, err = wgengine.New(wgengine.Config{
			Name: WireGuardDeviceName, TUN: dev, ListenAddr: w.host.IfaceAddr, ListenPort: uint16(w.opts.port),
			NetNS: w.host.NetNS, PrivateKey: w.key, SocketDir: w.sockDir, Log: w.log,
		})
		if err != nil {
			dev.Close()
			return fmt.Errorf("dataplane: %w", err)
		}
		return nil
	})
}

// setPeers gives the device one peer per usable lease of snap, before the
// driver writes the route that sends it traffic, and returns the leases
// left out.
func (w *wgDev) setPeers(snap lease.Snapshot, d *Desired) []skippedPeer {
	var skipped []skippedPeer
	skip := func(p netip.Prefix, format string, a ...any) {
		skipped = append(skipped, skippedPeer{peer: p, reason: SkipInvalid, msg: fmt.Sprintf(format, a...)})
	}
	own := w.key.PublicKey()
	byKey := make(map[wgengine.Key]netip.Prefix, len(snap.Peers))
	peers := make([]wgengine.Peer, 0, len(snap.Peers))
	for _, p := range snap.Peers {
		sub := p.Subnet.Masked()
		if err := checkPeer(p, d.Own, w.host); err != nil {
			skip(p.Subnet, "%s", err)
			continue
		}
		if !strings.EqualFold(p.Attrs.BackendType, netconf.BackendWireGuard) {
			skip(sub, "backend type %q, want wireguard", p.Attrs.BackendType)
			continue
		}
		key, port, err := w.peerData(p.Attrs.BackendData)
		if err != nil {
			skip(sub, "%s", err)
			continue
		}
		switch other, dup := byKey[key]; {
		case key == own:
			skip(sub, "BackendData PublicKey %s: is this host's own key", key)
			continue
		case dup:
			skip(sub, "BackendData PublicKey %s: already the key of peer %s", key, other)
			continue
		}
		byKey[key] = sub
		peers = append(peers, wgengine.Peer{
			PublicKey: key, Endpoint: netip.AddrPortFrom(p.Attrs.PublicIP, port),
			AllowedIPs: []netip.Prefix{sub}, PSK: w.opts.psk, Keepalive: w.opts.keepalive,
		})
	}
	if w.eng != nil {
		if err := w.eng.SetPeers(peers); err != nil {
			// Every peer given was checked above: this is the device
			// refusing its configuration, retried by the next apply.
			w.log.Error("configure WireGuard peers", "err", err)
		}
	}
	return skipped
}

// peerData decodes a peer's BackendData: its public key, and its port (0
// or absent: our own, as flanneld, which publishes none, assumes).
func (w *wgDev) peerData(raw json.RawMessage) (wgengine.Key, uint16, error) {
	var data wgLeaseData
	if err := json.Unmarshal(raw, &data); err != nil {
		return wgengine.Key{}, 0, fmt.Errorf("BackendData %.80s: not a wireguard object: %w", raw, err)
	}
	key, err := wgengine.ParseKey(data.PublicKey)
	if err != nil {
		return wgengine.Key{}, 0, fmt.Errorf("BackendData PublicKey: %w", err)
	}
	if key.IsZero() {
		return wgengine.Key{}, 0, errors.New("BackendData PublicKey: all zeros, not a key")
	}
	switch {
	case data.Port == 0:
		return key, uint16(w.opts.port), nil
	case data.Port < 0 || data.Port > 65535:
		return wgengine.Key{}, 0, fmt.Errorf("BackendData Port %d: must be in 0..65535", data.Port)
	}
	return key, uint16(data.Port), nil
}
