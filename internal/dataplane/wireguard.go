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
// PublicIP:Port (a Port of 0 or none — flanneld before 0.26 publishes none —
// means our own ListenPort, which is what flanneld assumes), its allowed
// IPs its subnet, and the network's PSK and PersistentKeepaliveInterval.
// Kernel WireGuard peers (flanneld) and weft hosts therefore interoperate.
//
// Dual stack (EnableIPv6), as flannel's Mode says:
//
//   - separate (the default): a second device flannel-wg-v6 with the
//     lease's IPv6 address as a /128 and the IPv6Network route, listening
//     on the underlay's IPv6 address and ListenPortV6 (51821); its peers
//     are the leases' IPv6 subnets at [PublicIPv6]:<BackendV6Data Port>,
//     with BackendV6Data's key. Both devices have the one key of the key
//     file, as in flannel, and the lease publishes BackendV6Data
//     {"PublicKey","Port":ListenPortV6}.
//   - auto, ipv4, ipv6: flannel-wg alone carries both families (the /128
//     and the IPv6Network route too); each peer's allowed IPs are both its
//     subnets and its endpoint is its PublicIP (ipv4), its PublicIPv6
//     (ipv6), or, in auto, chosen as flannel chooses: IPv4 unless the
//     peer's IPv4 address is private and both its and our IPv6 addresses
//     are not. The device listens on ListenPort on the underlay's IPv4
//     and IPv6 addresses (ipv4 and ipv6: that family's only), and the port
//     of both endpoints is the peer's BackendData Port: flanneld's one
//     device listens there whatever its BackendV6Data says (flannel
//     publishes ListenPortV6 in it in every mode). weft publishes the port
//     it listens on, ListenPort, in both.
//
// Identity. The private key lives in /run/flannel/wgkey (WIREGUARD_KEY_FILE
// overrides), created 0600 when missing, so a restart publishes the same
// public key and peers keep their sessions' configuration; the restarted
// device greets every peer (wgengine), so peers still holding sessions with
// the old device move to a new one at once, not after 15 s without an
// answer.
//
// Trust. A peer's key comes from etcd: one that does not parse, is all
// zeros, is ours, or is already another lease's is a skipped peer (logged
// once, counted as invalid) and every other peer is still programmed. What
// arrives on the socket is WireGuard's to authenticate: a datagram that is
// not from a configured peer's key never reaches the TUN, and a peer may
// only send from its own subnets (its allowed IPs).
//
// Restarts. As with the udp backend, the devices are persistent
// (TUNSETPERSIST, tun.go): while weftd is stopped, traffic to other hosts
// is dropped there rather than sent in clear by the default route.
// flanneld deletes its devices on exit.
//
// Not here: the kernel's WireGuard when it has one; flannel's MTU option.

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netconf"
	"github.com/weft-net/weft/internal/wgengine"
)

// WireGuardDeviceName is flannel's device name for the wireguard backend's
// IPv4 (or single) device, WireGuardDeviceNameV6 its IPv6 device in Mode
// separate.
const (
	WireGuardDeviceName   = "flannel-wg"
	WireGuardDeviceNameV6 = "flannel-wg-v6"
)

// wgOverhead is what flannel subtracts from the underlay MTU for its
// WireGuard devices (enough for an outer IPv6 header).
const wgOverhead = 80

// wgLeaseData is the wireguard backend's BackendData and BackendV6Data.
type wgLeaseData struct {
	PublicKey string
	Port      int `json:",omitempty"`
}

// The wireguard Modes (netconf.WireGuardModes).
const (
	wgSeparate = "separate"
	wgAuto     = "auto"
	wgIPv4     = "ipv4"
	wgIPv6     = "ipv6"
)

// wgOptions are the wireguard options this backend uses, checked.
type wgOptions struct {
	port, port6 int
	mode        string
	psk         wgengine.Key
	keepalive   time.Duration
}

func wireGuardOptions(cfg netconf.Config) (wgOptions, error) {
	o, err := cfg.WireGuard()
	if err != nil {
		return wgOptions{}, fmt.Errorf("dataplane: wireguard backend options: %w", err)
	}
	w := wgOptions{port: o.ListenPort, port6: o.ListenPortV6, mode: strings.ToLower(o.Mode),
		keepalive: time.Duration(o.PersistentKeepaliveInterval) * time.Second}
	if w.mode == "" {
		w.mode = wgSeparate
	}
	if o.PSK != "" {
		if w.psk, err = wgengine.ParseKey(o.PSK); err != nil {
			return wgOptions{}, errors.New("dataplane: wireguard Backend.PSK: must be the base64 encoding of 32 bytes")
		}
	}
	if w.mode == wgIPv6 && !cfg.EnableIPv6 {
		return wgOptions{}, errors.New("dataplane: wireguard Backend.Mode \"ipv6\": needs EnableIPv6 (peers' IPv6 endpoints and keys are in their leases' BackendV6Data, which only a dual-stack network publishes); use separate, auto or ipv4 on an IPv4 network")
	}
	if w.mode == wgSeparate && cfg.EnableIPv6 && w.port6 == w.port {
		return wgOptions{}, fmt.Errorf("dataplane: wireguard Backend.ListenPortV6 %d: must differ from ListenPort in Mode separate (two devices listen)", w.port6)
	}
	return w, nil
}

// wireguardSpecs checks the backend's options and returns its desired
// state: like udp's, per family an address and the Network route through
// the family's device; peers are the engine's (wgDev.setPeers).
func wireguardSpecs(cfg netconf.Config, host Host) ([]spec, error) {
	o, err := wireGuardOptions(cfg)
	if err != nil {
		return nil, err
	}
	if !cfg.Network.IsValid() || !cfg.Network.Addr().Is4() {
		return nil, fmt.Errorf("dataplane: wireguard backend: Network %s: must be an IPv4 prefix (the route through %s)", cfg.Network, WireGuardDeviceName)
	}
	none := func(*lease.Lease, netip.Prefix, Facts) (PeerEntries, bool, string) { return PeerEntries{}, true, "" }
	network := cfg.Network.Masked()
	specs := []spec{{
		family: unix.AF_INET, label: netconf.BackendWireGuard, device: WireGuardDeviceName, addr: true, blackhole: host.BlackholeRoute,
		own:    func(snap lease.Snapshot) netip.Prefix { return snap.Own.Subnet.Masked() },
		static: func(_ netip.Prefix, f Facts) []Route { return []Route{{Dst: network, Link: f.Dev}} },
		peer:   none,
	}}
	if !cfg.EnableIPv6 {
		return specs, nil
	}
	dev6 := WireGuardDeviceName
	if o.mode == wgSeparate {
		dev6 = WireGuardDeviceNameV6
	}
	if !cfg.IPv6Network.IsValid() || !cfg.IPv6Network.Addr().Is6() || cfg.IPv6Network.Addr().Is4In6() {
		return nil, fmt.Errorf("dataplane: wireguard backend: IPv6Network %s: must be an IPv6 prefix (the route through %s)", cfg.IPv6Network, dev6)
	}
	network6 := cfg.IPv6Network.Masked()
	return append(specs, spec{
		family: unix.AF_INET6, label: "wireguard IPv6", device: dev6, addr: true, blackhole: host.BlackholeRoute,
		own:    func(snap lease.Snapshot) netip.Prefix { return snap.Own.IPv6Subnet.Masked() },
		static: func(_ netip.Prefix, f Facts) []Route { return []Route{{Dst: network6, Link: f.Dev, Metric: v6Metric}} },
		peer:   none,
	}), nil
}

// setupWireGuard loads the key, attaches to (or creates) the devices of
// the Mode, each running a WireGuard device that has no peers yet, and
// publishes the public key and ports.
func setupWireGuard(b *backend, specs []spec) (Published, int, error) {
	o, err := wireGuardOptions(b.cfg)
	if err != nil {
		return Published{}, 0, err
	}
	key, err := wgengine.LoadOrCreateKey(wgengine.KeyFile(), b.log)
	if err != nil {
		return Published{}, 0, fmt.Errorf("dataplane: %w", err)
	}
	devs := wgLayout(o, key, len(specs) > 1)
	pub := Published{BackendType: netconf.BackendWireGuard}
	for i, w := range devs {
		w.sockDir = os.Getenv(wgengine.SocketDirEnv)
		w.tunDev = tunDev{name: w.name, h: b.h, log: b.log.With("device", w.name, "port", w.port),
			running: func() bool { return w.eng != nil }, start: w.startEngine}
		if err := w.init(b.host); err != nil {
			for _, started := range devs[:i] {
				started.Close()
			}
			return Published{}, 0, err
		}
		data, err := json.Marshal(wgLeaseData{PublicKey: key.PublicKey().String(), Port: w.port})
		if err != nil {
			return Published{}, 0, fmt.Errorf("dataplane: wireguard lease data: %w", err)
		}
		if w.v4 {
			pub.BackendData = data
		}
		if w.v6 {
			pub.BackendV6Data = data
		}
	}
	b.add(specs[0], devs[0], b.log).before = devs[0].setPeers
	switch {
	case len(devs) > 1: // separate
		b.add(specs[1], devs[1], b.log).before = devs[1].setPeers
	case len(specs) > 1:
		// One device, two families: the IPv4 driver, which applies
		// first, configures every peer; the IPv6 one reports its family's
		// skipped peers.
		dev := devs[0]
		b.add(specs[1], dev, b.log).before = func(snap lease.Snapshot, _ *Desired) []skippedPeer {
			_, sk := dev.plan(snap)
			return sk[1]
		}
	}
	return pub, devs[0].mtu, nil
}

// wgLayout is the devices of Mode o.mode, not yet started: flannel-wg
// (IPv4, and IPv6 too in the single-device modes of a dual-stack network)
// and, in Mode separate with dual, flannel-wg-v6.
func wgLayout(o wgOptions, key wgengine.Key, dual bool) []*wgDev {
	dev := func(name string, port int, v4, v6 bool) *wgDev {
		w := &wgDev{opts: o, key: key, pub: key.PublicKey(), port: port, v4: v4, v6: v6}
		w.name = name
		return w
	}
	if o.mode != wgSeparate {
		return []*wgDev{dev(WireGuardDeviceName, o.port, true, dual)}
	}
	devs := []*wgDev{dev(WireGuardDeviceName, o.port, true, false)}
	if dual {
		devs = append(devs, dev(WireGuardDeviceNameV6, o.port6, false, true))
	}
	return devs
}

// wgDev is one WireGuard device (flannel-wg or flannel-wg-v6) and its TUN.
// v4 and v6 say which families of peer subnets it carries: flannel-wg in
// Mode separate IPv4, flannel-wg-v6 IPv6, a single device both (v6 in a
// dual-stack network only).
type wgDev struct {
	tunDev
	opts    wgOptions
	key     wgengine.Key
	pub     wgengine.Key // key's public key
	port    int
	v4, v6  bool
	sockDir string // "" = wgengine.DefaultSocketDir

	eng *wgengine.Engine // only the loop goroutine (and Init before it) touches it
}

// endpoints4 and endpoints6 say which families of peer endpoints the device
// uses, and so which underlay addresses it listens on.
func (w *wgDev) endpoints4() bool {
	return w.v4 && w.opts.mode != wgIPv6 || w.v6 && w.opts.mode == wgIPv4
}

func (w *wgDev) endpoints6() bool {
	return w.v6 && w.opts.mode != wgIPv4 || w.v4 && w.opts.mode == wgIPv6
}

func (w *wgDev) init(host Host) error {
	if w.endpoints4() && !host.IfaceAddr.Is4() {
		return fmt.Errorf("dataplane: wireguard local address %s on %s: must be IPv4", host.IfaceAddr, host.IfaceName)
	}
	if w.endpoints6() && (!host.IfaceAddr6.Is6() || host.IfaceAddr6.Is4In6()) {
		return fmt.Errorf("dataplane: wireguard local IPv6 address %q on %s: none (%s needs one)", host.IfaceAddr6, host.IfaceName, w.name)
	}
	w.host, w.mtu = host, host.IfaceMTU-wgOverhead
	if w.mtu < 576 {
		return fmt.Errorf("dataplane: wireguard backend: underlay %s MTU %d leaves %d for %s: must be at least 576", host.IfaceName, host.IfaceMTU, w.mtu, w.name)
	}
	_, err := w.ensure(host)
	return err
}

// Close stops the device; its TUN, address and route stay.
func (w *wgDev) Close() error {
	w.closed.Store(true)
	if w.eng != nil {
		err := w.eng.Close()
		w.eng = nil
		if err != nil {
			return fmt.Errorf("dataplane: stop wireguard device %s: %w", w.name, err)
		}
	}
	return nil
}

// startEngine stops the running device, if any, and starts one with no
// peers on dev (opened in the host's namespace, where this runs), listening
// on the underlay's addresses of the device's endpoint families; the same
// apply's setPeers gives it its peers.
func (w *wgDev) startEngine(dev tun.Device) error {
	if w.eng != nil {
		w.eng.Close()
		w.eng = nil
	}
	cfg := wgengine.Config{
		Name: w.name, TUN: dev, ListenPort: uint16(w.port),
		NetNS: w.host.NetNS, PrivateKey: w.key, SocketDir: w.sockDir, Log: w.log,
	}
	if w.endpoints4() {
		cfg.ListenAddr = w.host.IfaceAddr
	}
	if w.endpoints6() {
		cfg.ListenAddr6 = w.host.IfaceAddr6
	}
	eng, err := wgengine.New(cfg)
	if err != nil {
		dev.Close()
		return fmt.Errorf("dataplane: %w", err)
	}
	w.eng = eng
	return nil
}
