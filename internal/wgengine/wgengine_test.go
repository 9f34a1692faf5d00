package wgengine

import (
	"bufio"
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/weft-net/weft/internal/testutil/netnstest"
)

func TestPublicKeyRFC7748(t *testing.T) {
	// RFC 7748 section 6.1, Alice.
	var priv Key
	b, _ := hexKey("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
	priv = b
	want, _ := hexKey("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
	if got := priv.PublicKey(); got != want {
		t.Fatalf("PublicKey = %s, want %s", got, want)
	}
}

func TestParseKey(t *testing.T) {
	for _, s := range []string{"", "short", "AAAA", "!!!!AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", strings.Repeat("A", 60)} {
		if _, err := ParseKey(s); err == nil {
			t.Errorf("ParseKey(%q): no error", s)
		}
	}
	k, _ := GenerateKey()
	if got, err := ParseKey(k.String()); err != nil || got != k {
		t.Errorf("ParseKey(String()) = %v, %v", got, err)
	}
}

// TestLoadOrCreateKey: a missing file is created 0600 with flannel's format
// (base64, no newline) and read back as the same key; a file written by
// `wg genkey >file` (trailing newline) is accepted; garbage is refused with
// the file's name.
func TestLoadOrCreateKey(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "wgkey")
	k, err := LoadOrCreateKey(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode = %v, %v; want 0600", st.Mode(), err)
	}
	data, _ := os.ReadFile(path)
	if string(data) != k.String() || len(data) != 44 {
		t.Fatalf("key file holds %q, want %q", data, k.String())
	}
	again, err := LoadOrCreateKey(path, nil)
	if err != nil || again != k {
		t.Fatalf("second load = %v, %v; want the same key", again, err)
	}
	os.WriteFile(path, []byte(k.String()+"\n"), 0o600)
	if again, err := LoadOrCreateKey(path, nil); err != nil || again != k {
		t.Fatalf("load with newline = %v, %v", again, err)
	}
	os.WriteFile(path, []byte("not a key"), 0o600)
	if _, err := LoadOrCreateKey(path, nil); err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("garbage key file: err = %v, want one naming %s", err, path)
	}
	t.Setenv(KeyFileEnv, "/x/y")
	if KeyFile() != "/x/y" {
		t.Errorf("KeyFile() = %s with %s set", KeyFile(), KeyFileEnv)
	}
}

// side is one end of the two-host test: a namespace with an underlay
// address and an engine on a TUN holding an overlay address.
type side struct {
	ns      *netnstest.NS
	under   netip.Addr
	overlay netip.Prefix
	key     Key
	eng     *Engine
}

// newSide starts an engine in ns on wgt0 with a new key, listening on
// under (IPv4 or IPv6) port 51820; log (optional) gets the engine's lines.
func newSide(t *testing.T, ns *netnstest.NS, under, overlay string, sockDir string, log ...*slog.Logger) *side {
	t.Helper()
	key, _ := GenerateKey()
	return newSideKey(t, ns, under, overlay, sockDir, key, log...)
}

func newSideKey(t *testing.T, ns *netnstest.NS, under, overlay string, sockDir string, key Key, log ...*slog.Logger) *side {
	t.Helper()
	s := &side{ns: ns, under: netip.MustParseAddr(under), overlay: netip.MustParsePrefix(overlay), key: key}
	args := []string{"ip", "addr", "add", under + "/24", "dev", "u0"}
	if s.under.Is6() {
		args = []string{"ip", "addr", "add", under + "/64", "dev", "u0", "nodad"}
	}
	if out, err := ns.Run(args...); err != nil && !strings.Contains(out, "already assigned") && !strings.Contains(out, "exists") {
		t.Fatal(err, out)
	}
	fd := ns.Fd()
	cfg := Config{Name: "wgt0-" + ns.Name, ListenPort: 51820, NetNS: &fd, PrivateKey: s.key, SocketDir: sockDir}
	if s.under.Is6() {
		cfg.ListenAddr6 = s.under
	} else {
		cfg.ListenAddr = s.under
	}
	if len(log) > 0 {
		cfg.Log = log[0]
	}
	err := ns.Do(func() error {
		dev, err := tun.CreateTUN("wgt0", 1420)
		if err != nil {
			return err
		}
		cfg.TUN = dev
		s.eng, err = New(cfg)
		if err != nil {
			dev.Close()
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.eng.Close() })
	ns.MustRun(t, "ip", "addr", "add", s.overlay.Addr().String()+"/32", "dev", "wgt0")
	ns.MustRun(t, "ip", "link", "set", "wgt0", "up")
	ns.MustRun(t, "ip", "route", "add", "10.78.0.0/16", "dev", "wgt0")
	return s
}

// peer is s as a peer of the other side: a weft device, which greets.
func (s *side) peer() Peer {
	return Peer{PublicKey: s.key.PublicKey(), Endpoint: netip.AddrPortFrom(s.under, 51820),
		AllowedIPs: []netip.Prefix{s.overlay.Masked()}, Greets: true}
}

func ping(t *testing.T, from *side, to netip.Addr) error {
	t.Helper()
	_, err := from.ns.Run("ping", "-c1", "-W1", "-I", from.overlay.Addr().String(), to.String())
	return err
}

func waitPing(t *testing.T, from *side, to netip.Addr) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := ping(t, from, to)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s cannot ping %s through WireGuard: %v", from.ns.Name, to, err)
		}
	}
}

// TestTwoEngines: two devices in two namespaces connected by a veth talk
// once each has the other as a peer; SetPeers is level-triggered (the same
// set twice writes nothing new, a rotated key replaces the peer and traffic
// recovers, an invalid peer is refused without touching the valid one);
// the UAPI socket answers a "get" with the peers.
func TestTwoEngines(t *testing.T) {
	na, nb := netnstest.New(t, "wga"), netnstest.New(t, "wgb")
	if err := netnstest.VethPair(na, "u0", nb, "u0"); err != nil {
		t.Fatal(err)
	}
	sock := t.TempDir()
	a := newSide(t, na, "10.77.0.1", "10.78.1.1/24", sock)
	b := newSide(t, nb, "10.77.0.2", "10.78.2.1/24", "-")
	if err := a.eng.SetPeers([]Peer{b.peer()}); err != nil {
		t.Fatal(err)
	}
	if err := b.eng.SetPeers([]Peer{a.peer()}); err != nil {
		t.Fatal(err)
	}
	waitPing(t, a, b.overlay.Addr())
	waitPing(t, b, a.overlay.Addr())

	// Level-triggered: the same set again is a no-op, the peer read back
	// is the one given.
	if err := a.eng.SetPeers([]Peer{b.peer()}); err != nil {
		t.Fatal(err)
	}
	ps, err := a.eng.Peers()
	if err != nil || len(ps) != 1 || !samePeer(ps[0].Peer, b.peer()) || ps[0].LastHandshake.IsZero() {
		t.Fatalf("Peers() = %+v, %v; want b with a handshake", ps, err)
	}

	// An invalid peer (our own key, a taken allowed IP) is named in the
	// error; b stays.
	bad := a.peer()
	bad2 := b.peer()
	bad2.PublicKey, _ = GenerateKey()
	err = a.eng.SetPeers([]Peer{b.peer(), bad, bad2})
	if err == nil || !strings.Contains(err.Error(), "own") || !strings.Contains(err.Error(), "already peer") {
		t.Fatalf("SetPeers with invalid peers: err = %v", err)
	}
	waitPing(t, a, b.overlay.Addr())

	// b's key rotates (its lease is rewritten): b restarts its engine with
	// a new key, a replaces the peer; traffic recovers.
	b.eng.Close() // closes wgt0, which is not persistent: it goes
	b2 := newSide(t, nb, "10.77.0.2", "10.78.2.1/24", "-")
	if err := b2.eng.SetPeers([]Peer{a.peer()}); err != nil {
		t.Fatal(err)
	}
	if err := a.eng.SetPeers([]Peer{b2.peer()}); err != nil {
		t.Fatal(err)
	}
	waitPing(t, a, b2.overlay.Addr())
	ps, _ = a.eng.Peers()
	if len(ps) != 1 || ps[0].PublicKey != b2.key.PublicKey() {
		t.Fatalf("after rotation a has peers %+v, want only b's new key", ps)
	}

	// The UAPI socket: what `wg show` reads.
	c, err := net.Dial("unix", a.eng.SocketPath())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("get=1\n\n"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	sc := bufio.NewScanner(c)
	var lines []string
	for sc.Scan() && sc.Text() != "" {
		lines = append(lines, sc.Text())
	}
	got := strings.Join(lines, "\n")
	for _, w := range []string{"listen_port=51820", "public_key=" + b2.key.PublicKey().hex(), "allowed_ip=10.78.2.0/24", "errno=0"} {
		if !strings.Contains(got, w) {
			t.Errorf("UAPI get: no %q in\n%s", w, got)
		}
	}
	if st, err := os.Stat(a.eng.SocketPath()); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("UAPI socket mode %v, %v; want 0600", st.Mode(), err)
	}

	// Removing every peer.
	if err := a.eng.SetPeers(nil); err != nil {
		t.Fatal(err)
	}
	if ps, _ := a.eng.Peers(); len(ps) != 0 {
		t.Fatalf("after SetPeers(nil): %d peers", len(ps))
	}
	if ping(t, a, b2.overlay.Addr()) == nil {
		t.Fatal("ping went through with no peer")
	}
}

// pair is two namespaces joined by a veth (u0 on both sides).
func pair(t *testing.T) (*netnstest.NS, *netnstest.NS) {
	t.Helper()
	na, nb := netnstest.New(t, "wga"), netnstest.New(t, "wgb")
	if err := netnstest.VethPair(na, "u0", nb, "u0"); err != nil {
		t.Fatal(err)
	}
	return na, nb
}

// TestIPv6Endpoints: two devices whose peers' endpoints are IPv6 (the
// socket on the underlay's IPv6 address) talk, and carry IPv6 inner
// traffic too; an IPv4 endpoint on a device with no IPv4 socket is refused.
func TestIPv6Endpoints(t *testing.T) {
	na, nb := pair(t)
	a := newSide(t, na, "fd77::1", "10.78.1.1/24", "-")
	b := newSide(t, nb, "fd77::2", "10.78.2.1/24", "-")
	for _, s := range []*side{a, b} {
		o6 := "fd78:0:0:" + s.overlay.Addr().String()[6:7] + "::1"
		s.ns.MustRun(t, "ip", "addr", "add", o6+"/128", "dev", "wgt0", "nodad")
		s.ns.MustRun(t, "ip", "route", "add", "fd78::/48", "dev", "wgt0")
	}
	pa, pb := a.peer(), b.peer()
	pa.AllowedIPs = append(pa.AllowedIPs, netip.MustParsePrefix("fd78:0:0:1::/64"))
	pb.AllowedIPs = append(pb.AllowedIPs, netip.MustParsePrefix("fd78:0:0:2::/64"))
	if err := a.eng.SetPeers([]Peer{pb}); err != nil {
		t.Fatal(err)
	}
	if err := b.eng.SetPeers([]Peer{pa}); err != nil {
		t.Fatal(err)
	}
	waitPing(t, a, b.overlay.Addr())
	if _, err := a.ns.Run("ping", "-c1", "-W2", "fd78:0:0:2::1"); err != nil {
		t.Errorf("IPv6 inner ping over IPv6 endpoints: %v", err)
	}
	ps, _ := a.eng.Peers()
	if len(ps) != 1 || ps[0].Endpoint.String() != "[fd77::2]:51820" || ps[0].LastHandshake.IsZero() {
		t.Errorf("a's peers %+v, want b at [fd77::2]:51820 with a handshake", ps)
	}
	bad := pb
	bad.Endpoint = netip.MustParseAddrPort("10.77.0.2:51820")
	if err := a.eng.SetPeers([]Peer{bad}); err == nil || !strings.Contains(err.Error(), "no address of its family") {
		t.Errorf("IPv4 endpoint on an IPv6-only device: err %v", err)
	}
}

// syncBuf is a log sink the engine's goroutines write to.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// TestPSKMismatch: two devices that know each other's keys but were given
// different pre-shared keys make no session: no handshake completes, no
// ping passes, and the failing handshake is logged as a warning naming the
// peer's endpoint and the PSK.
func TestPSKMismatch(t *testing.T) {
	na, nb := pair(t)
	var logs syncBuf
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	a := newSide(t, na, "10.77.0.1", "10.78.1.1/24", "-", log)
	b := newSide(t, nb, "10.77.0.2", "10.78.2.1/24", "-", log)
	pa, pb := a.peer(), b.peer()
	pa.PSK, _ = GenerateKey()
	pb.PSK, _ = GenerateKey()
	if err := a.eng.SetPeers([]Peer{pb}); err != nil {
		t.Fatal(err)
	}
	if err := b.eng.SetPeers([]Peer{pa}); err != nil {
		t.Fatal(err)
	}
	// WireGuard retries a handshake every 5 s; the second failure is logged.
	deadline := time.Now().Add(12 * time.Second)
	for !strings.Contains(logs.String(), "handshakes with this peer fail") && time.Now().Before(deadline) {
		if ping(t, a, b.overlay.Addr()) == nil {
			t.Fatal("a ping passed between devices with different PSKs")
		}
	}
	for _, s := range []*side{a, b} {
		ps, _ := s.eng.Peers()
		if len(ps) != 1 || !ps[0].LastHandshake.IsZero() || ps[0].RxBytes > 1024 {
			t.Errorf("%s: peers %+v, want one with no handshake", s.ns.Name, ps)
		}
	}
	got := logs.String()
	if !strings.Contains(got, "level=WARN") || !strings.Contains(got, "pre-shared key") || !strings.Contains(got, "endpoint=10.77.0.") {
		t.Errorf("no warning naming the failing handshake:\n%s", got)
	}
	if n := strings.Count(got, "handshakes with this peer fail"); n > 2 {
		t.Errorf("%d warnings, want at most one per side:\n%s", n, got)
	}
}

// TestRestartGreets: a device restarted with its key (weftd restarted)
// starts a handshake with every peer of its first configuration, so a
// peer still holding a session with the old device gets a new one at once,
// without either side sending traffic (after a restart, the peer's packets
// to us would be dropped for up to 15 s while we send nothing).
func TestRestartGreets(t *testing.T) {
	na, nb := pair(t)
	a := newSide(t, na, "10.77.0.1", "10.78.1.1/24", "-")
	b := newSide(t, nb, "10.77.0.2", "10.78.2.1/24", "-")
	a.eng.SetPeers([]Peer{b.peer()})
	b.eng.SetPeers([]Peer{a.peer()})
	waitPing(t, a, b.overlay.Addr())
	ps, _ := a.eng.Peers()
	first := ps[0].LastHandshake

	b.eng.Close()
	time.Sleep(1100 * time.Millisecond) // handshake times have 1 s granularity in what we compare
	restarted := time.Now()
	b2 := newSideKey(t, nb, "10.77.0.2", "10.78.2.1/24", "-", b.key)
	if err := b2.eng.SetPeers([]Peer{a.peer()}); err != nil {
		t.Fatal(err)
	}
	// The restarted device greets at once or, when its key is the larger,
	// after greetDelay (see greet).
	deadline := time.Now().Add(greetDelay + 2*time.Second)
	for {
		ps, _ := a.eng.Peers()
		if len(ps) == 1 && ps[0].LastHandshake.After(first) {
			t.Logf("MEASURED new session %s after the restarted device's first configuration, no traffic sent", time.Since(restarted).Round(time.Millisecond))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a's session with b not renewed within %s of b's restart: %+v", greetDelay+2*time.Second, ps)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// needNft skips a test that stands in for an underlay guard with nft.
func needNft(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("nft (nftables) not installed: scripts/install-deps.sh installs it")
	}
}

// keysInGreetingOrder is two new private keys, the first the one whose
// device greets the other's at once (the smaller public key).
func keysInGreetingOrder() (Key, Key) {
	ka, _ := GenerateKey()
	kb, _ := GenerateKey()
	if !greetsFirst(ka.PublicKey(), kb.PublicKey()) {
		ka, kb = kb, ka
	}
	return ka, kb
}

// initiations records when a device's log says it sent a handshake
// initiation (wireguard-go's debug line).
type initiations struct {
	mu    sync.Mutex
	times []time.Time
}

func (r *initiations) Enabled(context.Context, slog.Level) bool { return true }
func (r *initiations) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *initiations) WithGroup(string) slog.Handler            { return r }
func (r *initiations) Handle(_ context.Context, rec slog.Record) error {
	if strings.Contains(rec.Message, "Sending handshake initiation") {
		r.mu.Lock()
		r.times = append(r.times, time.Now())
		r.mu.Unlock()
	}
	return nil
}

func (r *initiations) first() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.times) == 0 {
		return time.Time{}
	}
	return r.times[0]
}

// TestGreetStaggered: two devices configured with each other in the same
// instant (hosts starting together) whose greetings are dropped (each
// side's underlay guard does not admit the other yet: an nft drop rule)
// do not start their handshakes in the same instant — the smaller key
// greets at once, the larger greetDelay later — so that WireGuard's
// retries (5 s + 0..333 ms) do not cross once the guards admit them, and
// the session is made by the first retry. Before the fix both greeted at
// once and, on a loaded host, their retries crossed round after round
// (each side answers the other's initiation and rejects the response to
// its own): e2e TestWireGuardDualStack/auto did not converge in 25 s.
func TestGreetStaggered(t *testing.T) {
	needNft(t)
	na, nb := pair(t)
	ka, kb := keysInGreetingOrder() // a is the side that greets first
	var ra, rb initiations
	a := newSideKey(t, na, "10.77.0.1", "10.78.1.1/24", "-", ka, slog.New(&ra))
	b := newSideKey(t, nb, "10.77.0.2", "10.78.2.1/24", "-", kb, slog.New(&rb))
	for _, ns := range []*netnstest.NS{na, nb} {
		ns.MustRun(t, "nft", "add table inet wgguard; add chain inet wgguard in { type filter hook input priority 0; }; add rule inet wgguard in udp dport 51820 drop")
	}
	var wg sync.WaitGroup
	for _, s := range [][2]*side{{a, b}, {b, a}} {
		wg.Go(func() {
			if err := s[0].eng.SetPeers([]Peer{s[1].peer()}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	time.Sleep(greetDelay + 300*time.Millisecond)
	fa, fb := ra.first(), rb.first()
	if fa.IsZero() || fb.IsZero() {
		t.Fatalf("first initiations at %v (smaller key) and %v (larger key): want both to greet within %s", fa, fb, greetDelay+300*time.Millisecond)
	}
	if gap := fb.Sub(fa); gap < greetDelay*9/10 {
		t.Fatalf("the larger key greeted %s after the smaller: want about %s, so that their retries do not cross", gap, greetDelay)
	}
	admitted := time.Now()
	for _, ns := range []*netnstest.NS{na, nb} {
		ns.MustRun(t, "nft", "delete", "table", "inet", "wgguard")
	}
	deadline := admitted.Add(8 * time.Second) // the smaller key's retry at 5-5.33 s after its greeting
	for ping(t, a, b.overlay.Addr()) != nil {
		if time.Now().After(deadline) {
			t.Fatalf("no session %s after both guards admitted the peers", time.Since(admitted).Round(time.Millisecond))
		}
	}
	t.Logf("MEASURED larger key greeted %s after the smaller; session %s after the guards admitted the peers (%s after the greetings)",
		fb.Sub(fa).Round(time.Millisecond), time.Since(admitted).Round(time.Millisecond), time.Since(fa).Round(time.Millisecond))
}
