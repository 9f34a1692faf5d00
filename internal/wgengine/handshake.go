package wgengine

import (
	"net/netip"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/device"
)

// This file is what the engine adds to wireguard-go's handshake schedule:
// greeting new peers, so that sessions exist before traffic needs them,
// and restarting a handshake that crossed the peer's, so that a crossing
// costs a quarter of a second instead of WireGuard's 5 to 15 s.

// greet starts a handshake with every peer the device did not have, the
// first configuration's included:
//   - A joining host has usually tried to reach us before our watch told
//     us of it; its initiation was dropped (unknown key) and WireGuard
//     would retry only after REKEY_TIMEOUT (5 s). Our initiation, which it
//     accepts, opens the session at once.
//   - After a restart our device has no sessions while its peers still
//     hold the old ones: what they send is dropped here (unknown receiver
//     index) and, as long as we send nothing back, they start a new
//     handshake only after KEEPALIVE_TIMEOUT + REKEY_TIMEOUT (5+10 s). Our
//     initiation replaces their session at once.
//
// Hosts that start together learn of each other in the same instant (one
// etcd watch) and would greet each other in the same instant. Two
// initiations that cross fail both: each side answers the other's and
// forgets its own, so each rejects the response it gets ("invalid response
// message"), and no session is made. Worse, when both greetings are
// dropped (the peer does not know us yet, or its underlay guard does not
// admit us yet), both sides' retransmit timers, 5 s + 0..333 ms of jitter,
// start in the same instant and cross again, round after round, whenever
// the jitter difference is smaller than the time a loaded host takes to
// handle a handshake. So between weft devices only the side with the
// smaller public key greets at once; the other greets after greetDelay,
// and only if no handshake completed meanwhile: the two sides' handshake
// schedules are then greetDelay apart and do not cross.
//
// A peer that does not greet (Peer.Greets false: flannel's kernel device,
// a stock wireguard-go) is greeted at once whatever the keys: it has no
// greeting to cross with, and a greeting held back a second would start
// our side's handshake just when traffic starts the peer's — the crossing
// the stagger is there to avoid. It is greeted again after greetDelay if
// no handshake completed: it will not greet us, so an answer lost to our
// own guard (see greetLate) would otherwise wait for our retransmit.
//
// A peer that does not know us yet drops the greeting, and WireGuard
// retries for REKEY_ATTEMPT_TIME: a few small datagrams.
func (e *Engine) greet(peers []Peer) {
	var later []Key
	for _, p := range peers {
		switch {
		case !p.Greets:
			e.sendGreeting(p.PublicKey)
			later = append(later, p.PublicKey) // again if the answer was lost (greetLate)
		case greetsFirst(e.pub, p.PublicKey):
			e.sendGreeting(p.PublicKey)
		default:
			later = append(later, p.PublicKey)
		}
	}
	if len(later) > 0 {
		time.AfterFunc(greetDelay, func() { e.greetLate(later) })
	}
}

// greetDelay is how long the side with the larger public key waits before
// greeting: longer than a loaded host takes to answer an initiation (tens
// of ms), so that the smaller key's greeting has made the session, and
// well inside REKEY_TIMEOUT minus its jitter (4.67 s), so that its retries
// stay apart from the other side's.
const greetDelay = time.Second

// greetsFirst reports whether the device whose public key is own greets
// the peer whose key is peer at once (the smaller key), rather than after
// greetDelay.
func greetsFirst(own, peer Key) bool {
	return strings.Compare(string(own[:]), string(peer[:])) < 0
}

// greetLate greets those of keys that the device still has and has no
// completed handshake with. The greeting is forced past wireguard-go's
// limit of one handshake message per REKEY_TIMEOUT (5 s), which counts
// answers too: when the peer's greeting came and we answered it, and our
// answer was lost — our own underlay guard, which admits a new peer only
// after the dataplane applied it, drops the peer's confirmation, or the
// peer's guard drops our answer — nothing has completed a second later,
// and an unforced greeting would be swallowed by that limit, leaving the
// session to the peer's retransmit 5 s after its greeting (e2e
// TestWireGuardDualStack's lab converged in 5.2–5.4 s in 5 of 8 runs).
func (e *Engine) greetLate(keys []Key) {
	have, err := e.peers()
	if err != nil {
		return // closed: nothing to greet
	}
	for _, k := range keys {
		if p, ok := have[k]; ok && p.LastHandshake.IsZero() {
			if dp := e.dev.LookupPeer(device.NoisePublicKey(k)); dp != nil {
				dp.ExpireCurrentKeypairs() // no session: nothing to lose
				dp.SendKeepalive()
			}
		}
	}
}

// sendGreeting sends peer k a keepalive, which, with no session yet,
// starts a handshake.
func (e *Engine) sendGreeting(k Key) {
	if p := e.dev.LookupPeer(device.NoisePublicKey(k)); p != nil {
		p.SendKeepalive()
	}
}

// invalidResponse is wireguard-go's debug line for a handshake response
// that does not authenticate.
const invalidResponse = "Received invalid response message from %s"

// badResponseEvery is how often a peer's failing handshakes are logged,
// and the window in which a second failure makes one worth logging:
// WireGuard retries every 5 s, while a single failure is also what a late
// answer to an initiation we have since replaced looks like. It is also
// how often, at most, a crossing with one endpoint is repaired by
// retryCrossed: a pre-shared key that differs fails every handshake, and
// must not make us send more of them than WireGuard's own schedule.
const badResponseEvery = time.Minute

type badResponses struct {
	first, logged, retried time.Time
	n                      int
}

// noteBadResponse handles a handshake response that failed to
// authenticate: the peer knows our key (it answered our initiation) but
// the session keys differ. Between hosts configured from the same leases
// that is either both sides' initiations crossing — each answered the
// other's and so forgot its own — or a pre-shared key that differs.
//
// A crossing is repaired at once (retryCrossed, at most once a
// badResponseEvery per endpoint). From the second failure in a
// badResponseEvery, and at most once a badResponseEvery per endpoint, the
// failures are logged: no session is made and no traffic passes, which
// wireguard-go would say only in a debug line.
func (e *Engine) noteBadResponse(from string) {
	now := time.Now()
	e.badMu.Lock()
	b := e.badResponse[from]
	if b == nil {
		if len(e.badResponse) >= endpointCacheMax {
			clear(e.badResponse) // bounded: endpoints come from the network
		}
		b = &badResponses{first: now}
		e.badResponse[from] = b
	}
	if now.Sub(b.first) > badResponseEvery {
		b.first, b.n = now, 0
	}
	b.n++
	log := b.n >= 2 && now.Sub(b.logged) >= badResponseEvery
	if log {
		b.logged = now
	}
	retry := now.Sub(b.retried) >= badResponseEvery && !e.crossCheck.Load()
	if retry {
		b.retried = now
		e.crossCheck.Store(true)
	}
	n := b.n
	e.badMu.Unlock()
	if log {
		e.log.Warn("WireGuard handshakes with this peer fail: its responses do not authenticate, no session, no traffic (its pre-shared key differs from ours: PSK in the network config; or both sides' handshakes crossed)", "endpoint", from, "failures", n)
	}
	if retry {
		time.AfterFunc(crossRetryDelay, func() { e.retryCrossed(from, false) })
	}
}

// crossRetryDelay is how long after a rejected response the device looks
// whether a session was made anyway: in a crossing, the peer may have
// taken our answer to its initiation, and its first data packet then
// confirms our side's session within a round trip or two.
const crossRetryDelay = 250 * time.Millisecond

// retryCrossed starts a new handshake with the peer at endpoint from if no
// handshake with it completed since the rejected response, nor in the
// REKEY_AFTER_TIME (120 s) before it, so that no session serves it. WireGuard
// itself would wait for its retransmit timer (5 s) — or, when the peer
// took our answer and thinks the session made, for 15 s of silence — and
// sends no initiation within REKEY_TIMEOUT of its last handshake message,
// answers included; ExpireCurrentKeypairs lifts that limit (and stops
// sending on a session the peer may not have), so the keepalive starts
// the handshake now. The other side of a crossing is not disturbed: it
// answers our initiation as any other.
//
// When the peer is weft, it repairs the crossing too: the side with the
// larger key looks again greetDelay later (late), so that the two sides'
// new initiations do not cross in turn, and finds the session made.
//
// e.crossCheck keeps one check in flight: each reads the device's peers,
// and responses come from the network (a flood of forged ones from many
// endpoints must not become a flood of reads).
func (e *Engine) retryCrossed(from string, late bool) {
	done := true
	defer func() {
		if done {
			e.crossCheck.Store(false)
		}
	}()
	ep, err := netip.ParseAddrPort(from)
	if err != nil {
		return
	}
	have, err := e.peers()
	if err != nil {
		return // closed
	}
	for k, p := range have {
		if p.Endpoint != ep {
			continue
		}
		if !p.LastHandshake.IsZero() && time.Since(p.LastHandshake) < device.RekeyAfterTime {
			// A session was made after all, or one that has not yet
			// been renewed serves on: WireGuard's retry in 5 s does
			// not interrupt it, and a forged response (its MAC needs
			// only our public key) must not make us drop it.
			return
		}
		e.mu.Lock()
		silent := e.silent[k]
		e.mu.Unlock()
		if !late && !silent && !greetsFirst(e.pub, k) {
			done = false
			time.AfterFunc(greetDelay, func() { e.retryCrossed(from, true) })
			return
		}
		if dp := e.dev.LookupPeer(device.NoisePublicKey(k)); dp != nil {
			e.log.Debug("handshakes crossed: starting a new one", "peer", k, "endpoint", ep)
			dp.ExpireCurrentKeypairs()
			dp.SendKeepalive()
		}
		return
	}
}
