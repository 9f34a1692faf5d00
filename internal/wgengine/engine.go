// Package wgengine runs a WireGuard device in the daemon's process: the
// protocol of golang.zx2c4.com/wireguard/device on a TUN device, with
// udpfwd's batched, offloaded UDP socket (GSO/GRO) bound to the underlay
// address, so that weft's wireguard backend works on kernels without the
// WireGuard module and interoperates with kernel and wireguard-go peers.
//
// The engine is configured level-triggered: SetPeers is given every peer
// the device must have and adds, updates and removes peers until the
// device has exactly those. A peer is identified by its public key, so a
// host whose key changed is a new peer (the old one is removed).
//
// `wg show <name>` works: the engine serves wireguard-go's UAPI on the unix
// socket <SocketDir>/<name>.sock, where wireguard-tools looks for userspace
// devices (/var/run/wireguard). Only root (or the daemon's own user) may
// use it: it can read the private key.
package wgengine

import (
	"bufio"
	"cmp"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netns"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
)

// DefaultSocketDir is where wireguard-tools' `wg` finds userspace devices
// (compiled in: `wg` has no option for it). SocketDirEnv names another
// directory for weftd, for hosts that share one filesystem (the lab); `wg`
// then needs that directory mounted on /var/run/wireguard in a mount
// namespace of its own: unshare -m sh -c 'mount --bind DIR /run/wireguard && wg show'.
const (
	DefaultSocketDir = "/var/run/wireguard"
	SocketDirEnv     = "WEFT_WIREGUARD_SOCKET_DIR"
)

// Config says how to run one device.
type Config struct {
	// Name is the device's name (flannel-wg): the UAPI socket's name.
	Name string
	// TUN is the device's TUN, opened by the caller in the host's
	// namespace. The engine owns it from New on: Close closes it.
	TUN tun.Device
	// ListenAddr is the IPv4 address the UDP socket for IPv4 endpoints is
	// bound to (the underlay interface's), ListenAddr6 the IPv6 address of
	// the socket for IPv6 endpoints; a zero one means no peer of that
	// family, and at least one is needed. ListenPort is their port (0 = any
	// free port).
	ListenAddr  netip.Addr
	ListenAddr6 netip.Addr
	ListenPort  uint16
	// NetNS is the namespace the socket is opened in; nil = the current one.
	NetNS *netns.NsHandle
	// PrivateKey is the device's private key.
	PrivateKey Key
	// SocketDir is the directory of the UAPI socket; "" = DefaultSocketDir,
	// "-" = no socket.
	SocketDir string
	Log       *slog.Logger
}

// Peer is one peer the device must have.
type Peer struct {
	PublicKey  Key
	Endpoint   netip.AddrPort // where its datagrams go: PublicIP:port or [PublicIPv6]:port
	AllowedIPs []netip.Prefix // the inner addresses it may send from and is sent to
	PSK        Key            // zero = none
	Keepalive  time.Duration  // persistent keepalive, whole seconds; 0 = off
	// Greets says the peer is a weft device, which greets its new peers
	// as this engine does (see greet); false for flannel's kernel device
	// or a stock wireguard-go. It is not device state: Peers leaves it
	// false.
	Greets bool
}

// PeerStatus is one peer as the device has it.
type PeerStatus struct {
	Peer
	LastHandshake    time.Time // zero = never
	RxBytes, TxBytes uint64
}

// Engine is a running device.
type Engine struct {
	name string
	dev  *device.Device
	bind *bind
	pub  Key
	log  *slog.Logger

	mu     sync.Mutex   // serialises SetPeers
	silent map[Key]bool // the peers that do not greet (Peer.Greets false); under mu
	uapi   *uapiServer

	crossCheck atomic.Bool // a retryCrossed is pending

	badMu       sync.Mutex
	badResponse map[string]*badResponses // by endpoint

	closeOnce sync.Once
	closeErr  error
}

// New starts the device with no peers, listening on ListenAddr:ListenPort,
// and its UAPI socket.
func New(cfg Config) (*Engine, error) {
	if cfg.TUN == nil {
		return nil, errors.New("wgengine: no TUN device")
	}
	if cfg.Name == "" || strings.ContainsAny(cfg.Name, "/\x00") {
		return nil, fmt.Errorf("wgengine: device name %q: must be a non-empty interface name", cfg.Name)
	}
	if cfg.PrivateKey.IsZero() {
		return nil, fmt.Errorf("wgengine: %s: no private key", cfg.Name)
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("device", cfg.Name)
	b, err := newBind(cfg.ListenAddr, cfg.ListenAddr6, cfg.NetNS)
	if err != nil {
		return nil, fmt.Errorf("wgengine: %s: %w", cfg.Name, err)
	}
	e := &Engine{name: cfg.Name, bind: b, pub: cfg.PrivateKey.PublicKey(), log: log, badResponse: make(map[string]*badResponses)}
	e.dev = device.NewDevice(cfg.TUN, b, &device.Logger{
		// wireguard-go's own lines: handshakes and keepalives are
		// debug; its "errors" are mostly a peer not answering yet.
		Verbosef: func(f string, a ...any) {
			if f == invalidResponse && len(a) == 1 {
				e.noteBadResponse(fmt.Sprint(a[0]))
				return
			}
			log.Debug(fmt.Sprintf(f, a...))
		},
		Errorf: func(f string, a ...any) { log.Warn(fmt.Sprintf(f, a...)) },
	})
	conf := fmt.Sprintf("private_key=%s\nlisten_port=%d\n", cfg.PrivateKey.hex(), cfg.ListenPort)
	if err := e.dev.IpcSet(conf); err != nil {
		e.dev.Close()
		return nil, fmt.Errorf("wgengine: configure %s (listen port %d): %w", cfg.Name, cfg.ListenPort, err)
	}
	if err := e.dev.Up(); err != nil {
		e.dev.Close()
		return nil, fmt.Errorf("wgengine: bring %s up (UDP %s %s port %d): %w", cfg.Name, cfg.ListenAddr, cfg.ListenAddr6, cfg.ListenPort, err)
	}
	if cfg.SocketDir != "-" {
		dir := cmp.Or(cfg.SocketDir, DefaultSocketDir)
		if e.uapi, err = listenUAPI(dir, cfg.Name, e.dev, log); err != nil {
			e.dev.Close()
			return nil, fmt.Errorf("wgengine: %s: %w", cfg.Name, err)
		}
	}
	return e, nil
}

// PublicKey is the device's public key, the one peers must be given.
func (e *Engine) PublicKey() Key { return e.pub }

// ListenPort is the UDP port the device listens on (0 while it is down).
func (e *Engine) ListenPort() uint16 { return e.bind.LocalAddr().Port() }

// SocketPath is the UAPI socket's path, "" when there is none.
func (e *Engine) SocketPath() string {
	if e.uapi == nil {
		return ""
	}
	return e.uapi.path
}

// Close stops the UAPI socket and the device and closes its TUN and
// socket. Calling it again does nothing.
func (e *Engine) Close() error {
	e.closeOnce.Do(func() {
		if e.uapi != nil {
			e.closeErr = e.uapi.close()
		}
		e.dev.Close()
	})
	return e.closeErr
}

// checkPeer says why p cannot be a peer of this device, or nil.
func (e *Engine) checkPeer(p Peer) error {
	switch {
	case p.PublicKey.IsZero():
		return errors.New("public key is all zeros")
	case p.PublicKey == e.pub:
		return errors.New("public key is this device's own")
	case !p.Endpoint.IsValid() || p.Endpoint.Addr().Is4In6() || p.Endpoint.Addr().IsUnspecified() || p.Endpoint.Port() == 0:
		return fmt.Errorf("endpoint %s: must be an address and a port", p.Endpoint)
	case !e.bind.serves(p.Endpoint.Addr()):
		return fmt.Errorf("endpoint %s: the device listens on no address of its family", p.Endpoint)
	case len(p.AllowedIPs) == 0:
		return errors.New("no allowed IPs")
	case p.Keepalive < 0 || p.Keepalive > 65535*time.Second:
		return fmt.Errorf("keepalive %s: must be 0..65535s", p.Keepalive)
	}
	for _, a := range p.AllowedIPs {
		if !a.IsValid() || a.Masked() != a {
			return fmt.Errorf("allowed IP %s: not a network prefix", a)
		}
	}
	return nil
}

// SetPeers makes the device's peers exactly the valid ones of peers: adds
// the missing, rewrites those whose endpoint, allowed IPs, PSK or keepalive
// differ (their sessions survive), removes the others. An invalid peer (no
// key, its key twice, our own key, an allowed IP another peer already has)
// is left out and named in the error; the others are still configured.
func (e *Engine) SetPeers(peers []Peer) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	var errs []error
	want := make(map[Key]Peer, len(peers))
	owner := make(map[netip.Prefix]Key)
	for _, p := range peers {
		err := e.checkPeer(p)
		if _, dup := want[p.PublicKey]; err == nil && dup {
			err = errors.New("public key given for two peers")
		}
		for _, a := range p.AllowedIPs {
			if k, taken := owner[a]; err == nil && taken {
				err = fmt.Errorf("allowed IP %s is already peer %s's", a, k)
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("peer %s (%s): %w", p.PublicKey, p.Endpoint, err))
			continue
		}
		for _, a := range p.AllowedIPs {
			owner[a] = p.PublicKey
		}
		p.AllowedIPs = sortedPrefixes(p.AllowedIPs)
		p.Keepalive = p.Keepalive.Truncate(time.Second)
		want[p.PublicKey] = p
	}
	clear(e.silent)
	for k, p := range want {
		if !p.Greets {
			if e.silent == nil {
				e.silent = make(map[Key]bool)
			}
			e.silent[k] = true
		}
	}
	have, err := e.peers()
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	var b strings.Builder
	var added []Peer
	removed, written := 0, 0
	// Removals first: a rotated key's allowed IPs are then free for the
	// new peer (replace_allowed_ips would move them anyway).
	for k := range have {
		if _, ok := want[k]; !ok {
			fmt.Fprintf(&b, "public_key=%s\nremove=true\n", k.hex())
			removed++
		}
	}
	for _, k := range sortedKeys(want) {
		p := want[k]
		h, ok := have[k]
		if ok && samePeer(h.Peer, p) {
			continue
		}
		if !ok {
			added = append(added, p)
		}
		fmt.Fprintf(&b, "public_key=%s\npreshared_key=%s\nendpoint=%s\npersistent_keepalive_interval=%d\nreplace_allowed_ips=true\n",
			k.hex(), p.PSK.hex(), p.Endpoint, int(p.Keepalive/time.Second))
		for _, a := range p.AllowedIPs {
			fmt.Fprintf(&b, "allowed_ip=%s\n", a)
		}
		written++
	}
	if b.Len() > 0 {
		if err := e.dev.IpcSet(b.String()); err != nil {
			errs = append(errs, fmt.Errorf("wgengine: configure peers of %s (%d added or changed, %d removed): %w", e.name, written, removed, err))
		} else {
			e.log.Debug("peers changed", "peers", len(want), "written", written, "removed", removed)
			e.greet(added)
		}
	}
	return errors.Join(errs...)
}

// samePeer reports whether the device's peer h already is p. h's
// allowed IPs are sorted by peers.
func samePeer(h, p Peer) bool {
	return h.Endpoint == p.Endpoint && h.PSK == p.PSK && h.Keepalive == p.Keepalive && slices.Equal(h.AllowedIPs, p.AllowedIPs)
}

// Peers lists the device's peers, by public key.
func (e *Engine) Peers() ([]PeerStatus, error) {
	have, err := e.peers()
	if err != nil {
		return nil, err
	}
	out := make([]PeerStatus, 0, len(have))
	for _, k := range sortedKeys(have) {
		out = append(out, have[k])
	}
	return out, nil
}

// peers reads the device's peers back through its UAPI "get" operation, the
// same text `wg show` reads.
func (e *Engine) peers() (map[Key]PeerStatus, error) {
	s, err := e.dev.IpcGet()
	if err != nil {
		return nil, fmt.Errorf("wgengine: read peers of %s: %w", e.name, err)
	}
	have, err := parsePeers(s)
	if err != nil {
		return nil, fmt.Errorf("wgengine: read peers of %s: %w", e.name, err)
	}
	return have, nil
}

// parsePeers parses the peers of a UAPI "get" reply.
func parsePeers(s string) (map[Key]PeerStatus, error) {
	have := make(map[Key]PeerStatus)
	var cur *PeerStatus
	var sec, nsec int64
	flush := func() {
		if cur != nil {
			if sec != 0 || nsec != 0 {
				cur.LastHandshake = time.Unix(sec, nsec)
			}
			cur.AllowedIPs = sortedPrefixes(cur.AllowedIPs)
			have[cur.PublicKey] = *cur
		}
		sec, nsec = 0, 0
	}
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		if key == "public_key" {
			flush()
			k, err := hexKey(val)
			if err != nil {
				return nil, err
			}
			cur = &PeerStatus{Peer: Peer{PublicKey: k}}
			continue
		}
		if cur == nil {
			continue // a device line
		}
		var err error
		switch key {
		case "preshared_key":
			cur.PSK, err = hexKey(val)
		case "endpoint":
			cur.Endpoint, err = netip.ParseAddrPort(val)
		case "allowed_ip":
			var p netip.Prefix
			if p, err = netip.ParsePrefix(val); err == nil {
				cur.AllowedIPs = append(cur.AllowedIPs, p)
			}
		case "persistent_keepalive_interval":
			var n int
			n, err = strconv.Atoi(val)
			cur.Keepalive = time.Duration(n) * time.Second
		case "last_handshake_time_sec":
			sec, err = strconv.ParseInt(val, 10, 64)
		case "last_handshake_time_nsec":
			nsec, err = strconv.ParseInt(val, 10, 64)
		case "rx_bytes":
			cur.RxBytes, err = strconv.ParseUint(val, 10, 64)
		case "tx_bytes":
			cur.TxBytes, err = strconv.ParseUint(val, 10, 64)
		}
		if err != nil {
			return nil, fmt.Errorf("UAPI line %s=%s: %w", key, val, err)
		}
	}
	flush()
	return have, nil
}

func hexKey(s string) (Key, error) {
	var k Key
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(k) {
		return k, fmt.Errorf("UAPI key %.70q: not 64 hex digits", s)
	}
	copy(k[:], b)
	return k, nil
}

func sortedPrefixes(ps []netip.Prefix) []netip.Prefix {
	ps = slices.Clone(ps)
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
	})
	return ps
}

func sortedKeys[V any](m map[Key]V) []Key {
	ks := make([]Key, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.SortFunc(ks, func(a, b Key) int { return strings.Compare(string(a[:]), string(b[:])) })
	return ks
}
