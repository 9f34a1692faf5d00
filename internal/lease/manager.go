package lease

// The manager holds this host's lease and follows everybody else's.
//
// Design: one goroutine (Run) owns the state. It learns about the world from
// a single prefix watch on <prefix>/subnets/, started at the revision of the
// last list + 1, so every change after the list is seen exactly once; events
// at or below the state's revision are ignored, which makes re-listing at any
// time safe. When the watch fails (compaction, leader loss) the state is
// rebuilt from a fresh list. The dataplane gets whole snapshots through a
// latest-value channel: a burst of events becomes one snapshot, and a slow
// consumer only ever sees the newest state.
//
// Lease loss is decided on evidence only: a delete of our key seen on the
// watch (etcdctl rmdir, or etcd expiring the lease) or etcd answering a
// renewal with "lease not found". Silence — etcd unreachable, renewals timing
// out — is not loss: the key is still there for everybody else, and dropping
// it would disturb traffic for nothing.

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/latest"
	"github.com/weft-net/weft/internal/netconf"
)

// Defaults of ManagerConfig, flanneld's.
const (
	DefaultTTL         = 24 * time.Hour
	DefaultRenewMargin = 60 * time.Minute
)

// watchCheckInterval is how often Run asks etcd for a watch progress
// notification, to tell a live watch from a silent one for /readyz.
var watchCheckInterval = 5 * time.Second

// ManagerConfig is what the manager needs to acquire and keep a lease.
type ManagerConfig struct {
	Store   *Store
	Network netconf.Config

	// What to publish in the lease.
	PublicIP    netip.Addr
	PublicIPv6  netip.Addr
	BackendType string
	BackendData json.RawMessage
	// BackendV6Data is the IPv6 half's data (vxlan: the flannel-v6 device's
	// VtepMAC) on a dual-stack network; nil otherwise.
	BackendV6Data json.RawMessage

	// PrevSubnet is the subnet of the previous subnet.env (zero if none).
	PrevSubnet netip.Prefix
	// History, when not nil, is the start-up history replay begun earlier
	// (PrefetchHistory); the manager takes it over instead of replaying.
	History *HistoryPrefetch

	// NodeName is this host's identity (see CheckNodeName), written into
	// the lease. A lease naming our PublicIP is ours only when it names
	// this identity or none (flanneld's); one naming another identity is
	// another host's, and Acquire refuses with an *IdentityConflictError.
	// "" keeps the PublicIP as the only identity (as flanneld does).
	NodeName string
	// UDPKernelDecap is written as WeftUDPKernelDecap: the udp backend's
	// in-kernel receive path is attached on this host (false: omitted).
	UDPKernelDecap bool

	TTL         time.Duration // etcd lease TTL; DefaultTTL when 0
	RenewMargin time.Duration // renew this long before expiry; DefaultRenewMargin when 0
	Logger      *slog.Logger

	// WatchCheck is how often the watch is asked for a progress
	// notification; it is judged stalled after three silent periods. 5 s
	// when 0; tests shorten it.
	WatchCheck time.Duration
	// Hooks observe the manager (metrics); nil fields are skipped.
	Hooks Hooks
}

// Hooks let an observer (the metrics package) follow the manager without
// the manager knowing about Prometheus. They are called from the manager's
// goroutines, sometimes with its lock held: they must be quick and must not
// call back into the manager.
type Hooks struct {
	// Expiry is called with the held lease's expiry whenever it changes
	// (acquired, renewed); zero for a reservation, which never expires.
	Expiry func(time.Time)
	// Renewed is called after each renewal attempt; err is nil on success.
	Renewed func(err error)
	// Rejected is called once per written lease value that is skipped, with
	// one of the Reason* constants.
	Rejected func(reason string)
	// WatchRestarted is called when the watch is lost and re-established
	// from a fresh list.
	WatchRestarted func()
	// WatchAnswered is called on every watch response (events or a progress
	// notification): the time since the last call is the watch's lag.
	WatchAnswered func(time.Time)
	// Peers is called on every published snapshot with the number of other
	// hosts' leases known in etcd and the number handed to the dataplane.
	Peers func(known, accepted int)
	// Alert is called once per offending write with one of the Alert*
	// constants: something in etcd attacks this host (see Warnings).
	Alert func(kind string)
}

// Reasons a lease read from etcd is skipped, the label values of the
// rejected-leases metric.
const (
	ReasonMalformed         = "malformed"
	ReasonOutsideNetwork    = "subnet_outside_network"
	ReasonWrongLength       = "subnet_wrong_length"
	ReasonIPv6Subnet        = "ipv6_subnet_invalid"
	ReasonPublicIPInside    = "public_ip_in_overlay"
	ReasonVtepMAC           = "vtep_mac_not_unicast"
	ReasonDuplicatePublicIP = "duplicate_public_ip"
	// ReasonIPv6Off: a lease with an IPv6 part in a network without IPv6;
	// 172.30.5.0-24&fc00::-64 next to 172.30.5.0-24 is a second key for one
	// subnet, never a real host's.
	ReasonIPv6Off = "ipv6_subnet_ipv6_off"
	// ReasonPublicIPNotUnicast: a PublicIP(v6) that is multicast, broadcast,
	// loopback, unspecified or link-local: no host can be reached there, and
	// traffic sent there would loop back or flood.
	ReasonPublicIPNotUnicast  = "public_ip_not_unicast"
	ReasonDuplicateSubnet     = "duplicate_subnet"
	ReasonDuplicateIPv6Subnet = "duplicate_ipv6_subnet"
	ReasonDuplicateVtepMAC    = "duplicate_vtep_mac"
	// ReasonClaimsOwn: another key names this host's subnet or VtepMAC.
	ReasonClaimsOwn = "claims_this_host"
)

// RejectReasons lists every Reason* constant, for metrics that must exist
// before the first rejection.
var RejectReasons = []string{ReasonMalformed, ReasonOutsideNetwork, ReasonWrongLength, ReasonIPv6Subnet,
	ReasonPublicIPInside, ReasonVtepMAC, ReasonDuplicatePublicIP, ReasonIPv6Off, ReasonPublicIPNotUnicast,
	ReasonDuplicateSubnet, ReasonDuplicateIPv6Subnet, ReasonDuplicateVtepMAC, ReasonClaimsOwn}

// Kinds of Hooks.Alert, the label values of the lease-alerts metric.
const (
	// AlertOwnRewritten: someone else rewrote this host's own key (value or
	// etcd lease); the host wrote its own back.
	AlertOwnRewritten = "own_lease_rewritten"
	// AlertOwnClaimed: another key names this host's PublicIP, VtepMAC or
	// subnet.
	AlertOwnClaimed = "own_value_claimed"
	// AlertIdentityConflict: a lease names this host's PublicIP and another
	// host's identity; this host refused to take it (IdentityConflictError).
	AlertIdentityConflict = "identity_conflict"
)

// AlertKinds lists every Alert* constant.
var AlertKinds = []string{AlertOwnRewritten, AlertOwnClaimed, AlertIdentityConflict}

// ownAlertFor is how long a restored rewrite of our own key stays among the
// Warnings: long enough for an operator to see it on /readyz.
const ownAlertFor = time.Hour

// Manager acquires this host's lease, keeps it alive and watches the peers.
type Manager struct {
	cfg   ManagerConfig
	s     *Store
	cli   *clientv3.Client
	log   *slog.Logger
	r4    subnetRange
	r6    subnetRange
	six   bool
	udp   bool // a udp network: a peer lease with no BackendType is flanneld's udp lease (see kept)
	snaps chan Snapshot
	wake  chan struct{} // tells keepAlive that a new lease was installed
	// updates carries Update calls to Run, the only goroutine that may
	// change the ranges and our own values (see update.go).
	updates chan pendingUpdate

	mu     sync.Mutex
	held   bool
	own    Lease
	ownExp time.Time // when own's etcd lease runs out; zero for a reservation
	ownKey string
	rev    int64 // revision the peer state reflects
	// peers maps etcd key → decoded lease (our own key included; filtered
	// on publish). The leases are never modified once stored: the published
	// snapshots share them.
	peers     peerMap
	rejected  map[string]int64 // key → ModRevision already logged as not fitting the network
	idx       *peerIndex       // the published set; nil: rebuild on the next publish
	watchLive bool
	reason    string

	// ownMAC, ownMAC6: our VtepMACs (vxlan), which no peer may claim.
	ownMAC, ownMAC6 claim
	// claimed holds the other keys naming our PublicIP, VtepMAC or subnet,
	// with the warning shown for each (see Warnings).
	claimed map[string]ownClaim
	// restoreRev is the ModRevision of a foreign write of our own key that
	// Run must overwrite with our value (0: none); rewritten/rewrittenAt is
	// the warning about the last one.
	restoreRev  int64
	rewritten   string
	rewrittenAt time.Time
	warn        warnLimit

	// freed orders the allocation of new subnets (freehist.go); loaded
	// says the start-up replay of etcd's history was done.
	freed       freeHistory
	freedLoaded bool
	// replayOnly turns off pickNew's candidate checks (tests of the
	// replay itself).
	replayOnly bool
}

type ownClaim struct {
	rev int64 // ModRevision alerted on
	msg string
}

// NewManager returns a manager; call Acquire, then Run.
func NewManager(cfg ManagerConfig) *Manager {
	if cfg.TTL <= 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.RenewMargin <= 0 {
		cfg.RenewMargin = DefaultRenewMargin
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.WatchCheck <= 0 {
		cfg.WatchCheck = watchCheckInterval
	}
	if cfg.Hooks.Rejected != nil {
		cfg.Store.setRejectHook(cfg.Hooks.Rejected)
	}
	var mac, mac6 claim
	if strings.EqualFold(cfg.BackendType, netconf.BackendVXLAN) {
		mac, _ = macClaim(claimVtepMAC, cfg.BackendData)
		mac6, _ = macClaim(claimVtepMAC6, cfg.BackendV6Data)
	}
	return &Manager{
		ownMAC:   mac,
		ownMAC6:  mac6,
		claimed:  map[string]ownClaim{},
		warn:     warnLimit{period: time.Minute, burst: 20},
		cfg:      cfg,
		s:        cfg.Store,
		cli:      cfg.Store.cli,
		log:      cfg.Logger,
		r4:       v4Range(cfg.Network),
		r6:       v6Range(cfg.Network),
		six:      cfg.Network.EnableIPv6 && cfg.Network.IPv6Network.IsValid(),
		udp:      strings.EqualFold(cfg.BackendType, netconf.BackendUDP),
		snaps:    make(chan Snapshot, 1),
		wake:     make(chan struct{}, 1),
		updates:  make(chan pendingUpdate),
		peers:    newPeerMap(nil),
		rejected: map[string]int64{},
		reason:   "no lease acquired yet",
	}
}

// Snapshots delivers the newest snapshot; an unread one is replaced.
func (m *Manager) Snapshots() <-chan Snapshot { return m.snaps }

// Status reports, for /readyz, whether the lease is held and the watch is
// live, and why not when either is false.
func (m *Manager) Status() (leaseHeld bool, watchLive bool, reason string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.held, m.watchLive, m.reason
}

// Own returns the lease currently held (zero Subnet when none).
func (m *Manager) Own() Lease {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.own
}

// Acquire blocks until this host holds a lease, retrying with backoff on
// failure (a full range, etcd unreachable), logging each distinct failure
// once. It publishes the first snapshot. It returns ctx.Err() on cancel.
func (m *Manager) Acquire(ctx context.Context) (Lease, error) {
	if !m.r4.network.IsValid() {
		return Lease{}, fmt.Errorf("network config has no IPv4 Network: IPv6-only networks are not supported")
	}
	retry := newBackoff(200*time.Millisecond, 10*time.Second)
	lastErr := ""
	for {
		l, err := m.acquireOnce(ctx, m.cfg.PrevSubnet)
		if err == nil {
			return l, nil
		}
		if ctx.Err() != nil {
			return Lease{}, ctx.Err()
		}
		if ic := (*IdentityConflictError)(nil); errors.As(err, &ic) {
			m.setReason(err.Error())
			return Lease{}, err
		}
		if err.Error() != lastErr {
			m.log.Error("acquiring a subnet lease failed; retrying", "err", err)
			lastErr = err.Error()
		}
		m.setReason(err.Error())
		if err := retry.wait(ctx); err != nil {
			return Lease{}, err
		}
	}
}

// identityMatches reports whether a lease naming our PublicIP may be ours:
// it names our identity, or none (flanneld's, or weft's before -node-name),
// or we have none.
func (m *Manager) identityMatches(a Attrs) bool {
	return a.NodeName == "" || m.cfg.NodeName == "" || a.NodeName == m.cfg.NodeName
}

// IdentityConflictError is Acquire's refusal of a lease that names this
// host's PublicIP and another host's identity. It is not retried: only an
// operator can decide which host is which.
type IdentityConflictError struct {
	Key          string
	Subnet       netip.Prefix
	PublicIP     netip.Addr
	Theirs, Ours string
}

func (e *IdentityConflictError) Error() string {
	return fmt.Sprintf("lease %s (subnet %s) names this host's PublicIP %s but node %q, and this host is node %q: "+
		"two hosts share one PublicIP, and taking the lease would route one subnet to both; "+
		"give this host its own address with -public-ip (behind NAT: the address peers reach it at), "+
		"or fix -node-name/FLANNELD_NODE_NAME if %q is really this host, "+
		"or run `weftctl decommission` on %q (or `weftctl leases rm %s`) if that host is gone",
		e.Key, e.Subnet, e.PublicIP, e.Theirs, e.Ours, e.Theirs, e.Theirs, e.Subnet)
}

func (m *Manager) setReason(r string) {
	m.mu.Lock()
	m.reason = r
	m.mu.Unlock()
}

func (m *Manager) attrs() Attrs {
	return Attrs{PublicIP: m.cfg.PublicIP, PublicIPv6: m.cfg.PublicIPv6, BackendType: m.cfg.BackendType,
		BackendData: m.cfg.BackendData, BackendV6Data: m.cfg.BackendV6Data, NodeName: m.cfg.NodeName,
		UDPKernelDecap: m.cfg.UDPKernelDecap}
}

// fitsOwn reports whether an existing lease can be reused under the current
// config: right length, inside the network (reservations may be outside
// [SubnetMin, SubnetMax]), and with an IPv6 subnet exactly when IPv6 is on.
func (m *Manager) fitsOwn(l Lease) bool {
	if !m.r4.fits(l.Subnet) {
		return false
	}
	if m.six {
		return m.r6.fits(l.IPv6Subnet)
	}
	return !l.IPv6Subnet.IsValid()
}

// acquireOnce makes one acquisition attempt in COMPAT.md's order: (1) a
// lease or reservation naming our PublicIP (and our identity or none),
// (2) prev if free, (3) a free subnet never freed or freed longest ago
// (freehist.go). At most one etcd lease is granted, and it is revoked unless
// a key ends up attached to it.
func (m *Manager) acquireOnce(ctx context.Context, prev netip.Prefix) (Lease, error) {
	leases, rev, err := m.s.List(ctx)
	if err != nil {
		return Lease{}, err
	}
	attrs := m.attrs()
	val, err := attrs.MarshalJSON()
	if err != nil {
		return Lease{}, fmt.Errorf("lease value for this host: %w", err)
	}

	var granted clientv3.LeaseID
	used := false
	defer func() {
		if granted != 0 && !used {
			m.revoke(granted)
		}
	}()
	grant := func() (clientv3.LeaseID, error) {
		if granted == 0 {
			cctx, cancel := context.WithTimeout(ctx, callTimeout)
			defer cancel()
			resp, err := m.cli.Grant(cctx, int64(m.cfg.TTL/time.Second))
			if err != nil {
				return 0, fmt.Errorf("grant etcd lease (TTL %s): %w", m.cfg.TTL, err)
			}
			granted = resp.ID
		}
		return granted, nil
	}

	// (1) Reuse: reservations first, then the most recently written lease.
	// A lease naming our PublicIP and another identity belongs to another
	// host (a clone, a NAT sharing one address): taking it would route one
	// subnet to two hosts, so nothing is taken and the operator is told.
	var mine []Lease
	for _, l := range leases {
		if l.Attrs.PublicIP != m.cfg.PublicIP {
			continue
		}
		if !m.identityMatches(l.Attrs) {
			if m.cfg.Hooks.Alert != nil {
				m.cfg.Hooks.Alert(AlertIdentityConflict)
			}
			return Lease{}, &IdentityConflictError{Key: m.s.Key(l.Subnet, l.IPv6Subnet), Subnet: l.Subnet,
				PublicIP: m.cfg.PublicIP, Theirs: l.Attrs.NodeName, Ours: m.cfg.NodeName}
		}
		mine = append(mine, l)
	}
	slices.SortFunc(mine, func(a, b Lease) int {
		if a.Reserved() != b.Reserved() {
			if a.Reserved() {
				return -1
			}
			return 1
		}
		return cmp.Compare(b.ModRevision, a.ModRevision)
	})
	for _, l := range mine {
		key := m.s.Key(l.Subnet, l.IPv6Subnet)
		if !m.fitsOwn(l) {
			if !l.Reserved() {
				// Our own leftover from another config: free it (by CAS, so a
				// concurrent rewrite is not lost) rather than let it linger 24 h.
				m.log.Info("deleting own lease that does not fit the network config", "key", key, "network", m.r4.network, "subnetLen", m.r4.bits)
				m.casDelete(ctx, key, l.ModRevision)
			}
			continue
		}
		var id clientv3.LeaseID
		if !l.Reserved() {
			if id, err = grant(); err != nil {
				return Lease{}, err
			}
		}
		wrev, ok, err := m.cas(ctx, key, l.ModRevision, string(val), id)
		if err != nil {
			return Lease{}, err
		}
		if !ok {
			continue // rewritten meanwhile: not safe to take; try the next way
		}
		own := Lease{Subnet: l.Subnet, IPv6Subnet: l.IPv6Subnet, Attrs: attrs, EtcdLease: int64(id), ModRevision: wrev}
		var exp time.Time
		if !l.Reserved() {
			used = true
			exp = time.Now().Add(m.cfg.TTL)
			if l.EtcdLease != int64(id) {
				m.revoke(clientv3.LeaseID(l.EtcdLease)) // our previous run's lease; holds nothing now
			}
		}
		kind := "lease"
		if own.Reserved() {
			kind = "reservation"
		}
		m.log.Info("reusing "+kind+" for this host's public IP", "subnet", own.Subnet, "publicIP", m.cfg.PublicIP, "key", key)
		m.install(own, exp, key, leases, rev)
		return own, nil
	}

	taken := map[netip.Prefix]bool{}
	taken6 := map[netip.Prefix]bool{}
	for _, l := range leases {
		taken[l.Subnet] = true
		if l.IPv6Subnet.IsValid() {
			taken6[l.IPv6Subnet] = true
		}
	}
	try := func(v4 netip.Prefix) (Lease, bool, error) {
		var v6 netip.Prefix
		if m.six {
			var ok bool
			if v6, ok = pickFree(m.r6, taken6); !ok {
				return Lease{}, false, fmt.Errorf("IPv6 subnet range %s (%d subnets) has %d leases: %w", m.r6, m.r6.count(), inPool(m.r6, taken6), ErrRangeFull)
			}
		}
		id, err := grant()
		if err != nil {
			return Lease{}, false, err
		}
		key := m.s.Key(v4, v6)
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		wrev, ok, err := m.s.createIfFree(cctx, v4, key, string(val), id)
		cancel()
		if err != nil || !ok {
			taken[v4] = true
			return Lease{}, false, err
		}
		used = true
		own := Lease{Subnet: v4, IPv6Subnet: v6, Attrs: attrs, EtcdLease: int64(id), ModRevision: wrev}
		m.install(own, time.Now().Add(m.cfg.TTL), key, leases, rev)
		return own, true, nil
	}

	// (2) The previous subnet, when it is still ours to take.
	if prev.IsValid() && m.r4.inPool(prev) && !taken[prev] {
		l, ok, err := try(prev)
		if err != nil {
			return Lease{}, err
		}
		if ok {
			m.log.Info("acquired previous subnet", "subnet", l.Subnet, "key", m.s.Key(l.Subnet, l.IPv6Subnet))
			return l, nil
		}
	}

	// (3) A free subnet, never freed or freed longest ago (freehist.go);
	// a lost race moves on to another one.
	var picks newPicks
	for range 16 {
		v4, ok := m.pickNew(ctx, taken, leases, rev, &picks)
		if !ok {
			return Lease{}, fmt.Errorf("subnet range %s (%d subnets) has %d leases: %w", m.r4, m.r4.count(), inPool(m.r4, taken), ErrRangeFull)
		}
		l, ok, err := try(v4)
		if err != nil {
			return Lease{}, err
		}
		if ok {
			m.log.Info("acquired new subnet", "subnet", l.Subnet, "key", m.s.Key(l.Subnet, l.IPv6Subnet))
			return l, nil
		}
	}
	return Lease{}, fmt.Errorf("lost 16 creation races in range %s: %w", m.r4, ErrSubnetTaken)
}

// inPool counts the taken subnets inside r's [Min, Max].
func inPool(r subnetRange, taken map[netip.Prefix]bool) int64 {
	var n int64
	for p := range taken {
		if r.inPool(p) {
			n++
		}
	}
	return n
}

// pickFree returns a random subnet of r's pool that is not taken: random
// probes first (cheap when the pool is sparse), then a scan from a random
// start (when it is dense).
func pickFree(r subnetRange, taken map[netip.Prefix]bool) (netip.Prefix, bool) {
	n := r.count()
	if n <= 0 || inPool(r, taken) >= n {
		return netip.Prefix{}, false
	}
	for range 64 {
		if p := r.at(rand.Int64N(n)); !taken[p] {
			return p, true
		}
	}
	start := rand.Int64N(n)
	for i := range n {
		if p := r.at((start + i) % n); !taken[p] {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

// cas rewrites key if its ModRevision is still rev, on etcd lease id (none
// when 0).
func (m *Manager) cas(ctx context.Context, key string, rev int64, val string, id clientv3.LeaseID) (int64, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	var opts []clientv3.OpOption
	if id != 0 {
		opts = append(opts, clientv3.WithLease(id))
	}
	resp, err := m.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
		Then(clientv3.OpPut(key, val, opts...)).
		Commit()
	if err != nil {
		return 0, false, fmt.Errorf("compare-and-swap %s at revision %d: %w", key, rev, err)
	}
	return resp.Header.Revision, resp.Succeeded, nil
}

func (m *Manager) casDelete(ctx context.Context, key string, rev int64) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	_, err := m.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).Then(clientv3.OpDelete(key)).Commit()
	if err != nil {
		m.log.Warn("deleting stale own lease failed", "key", key, "err", err)
	}
}

// revoke releases an etcd lease we granted and no longer use; failure only
// means it lingers until its TTL, so it is logged, not returned.
func (m *Manager) revoke(id clientv3.LeaseID) {
	if id == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := m.cli.Revoke(ctx, id); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		m.log.Debug("revoking unused etcd lease failed; it expires by itself", "lease", fmt.Sprintf("%x", int64(id)), "err", err)
	}
}

// install makes own (expiring at exp) the held lease and leases@rev the
// peer state, and publishes a snapshot.
func (m *Manager) install(own Lease, exp time.Time, key string, leases []Lease, rev int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.own, m.ownExp, m.ownKey, m.held = own, exp, key, true
	m.idx = nil // which key is ours decides what is a peer
	if m.cfg.Hooks.Expiry != nil {
		m.cfg.Hooks.Expiry(exp)
	}
	m.reason = ""
	if !m.watchLive {
		m.reason = "etcd watch not live"
	}
	if rev > m.rev || m.peers.len() == 0 {
		m.setPeersLocked(leases, rev)
	}
	m.noteAllClaimsLocked()
	m.publishLocked()
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// setPeersLocked takes leases over: the manager keeps pointers into the
// slice (the caller must not use it after), so that a list of 20,000 leases
// is held once, not once as the list and once as 20,000 copies (issue 12).
// A lease later replaced or deleted keeps the slice alive until the next
// list replaces every one of them: at most one list's worth more.
func (m *Manager) setPeersLocked(leases []Lease, rev int64) {
	old := m.peers
	for i := range leases {
		m.typeLease(&leases[i])
	}
	m.peers = newPeerMap(leases)
	// Deleted while the watch was down: freed no later than rev.
	for l := range old.all() {
		if _, ok := m.peers.get(l.Subnet, l.IPv6Subnet); !ok {
			m.freed.note(l.Subnet, rev)
		}
	}
	for k := range m.rejected {
		if _, ok := m.peerByKey(k); !ok {
			delete(m.rejected, k)
		}
	}
	m.rev = rev
	m.idx = nil
}

// kept is the copy of a decoded lease the manager keeps and hands on.
//
// flanneld's udp backend writes its lease with no BackendType at all: its
// LeaseAttrs holds only the PublicIP, and BackendType is omitempty (flannel
// v0.28 pkg/backend/udp/udp_amd64.go, pkg/lease/lease.go), so the value is
// {"PublicIP":"10.64.3.7","PublicIPv6":null}. flannel's udp hosts route to
// every lease without looking at its type. In a udp network a lease without
// a type is therefore a udp host's, and is handed on as "udp" so that the
// backend programs it. Only the in-memory copy is typed: the value in etcd
// is never rewritten. A lease naming another backend keeps its type (and
// the backend refuses it), and so does a typeless lease in a network of
// any other backend, where flannel ignores it too.
func (m *Manager) kept(l Lease) *Lease {
	m.typeLease(&l)
	return &l
}

// typeLease gives a typeless lease in a udp network its type (see kept).
func (m *Manager) typeLease(l *Lease) {
	if l.Attrs.BackendType == "" && m.udp {
		l.Attrs.BackendType = netconf.BackendUDP
	}
}

// peerOK filters what the dataplane must never program: subnets that are
// not the network's, public IPs inside the overlay or not unicast, VTEP MACs
// that are not unicast, anything of this host's. Logged and counted once per
// write.
func (m *Manager) peerOK(l *Lease) bool {
	reason, why := m.distrust(*l)
	if why == "" {
		return true
	}
	m.rejectLocked(m.keyOf(l), *l, reason, why)
	return false
}

// distrust names what is wrong with a peer's lease ("" when nothing is).
// It is the one place a peer's lease is judged on its own; clashes between
// peers are decided by the peer index's election (claimsOf).
func (m *Manager) distrust(l Lease) (reason, why string) {
	switch {
	case !l.Subnet.IsValid() || !m.r4.network.Contains(l.Subnet.Addr()) || l.Subnet.Masked() != l.Subnet:
		return ReasonOutsideNetwork, fmt.Sprintf("subnet %s is not inside %s", l.Subnet, m.r4.network)
	case !m.r4.fits(l.Subnet):
		return ReasonWrongLength, fmt.Sprintf("subnet %s is not a /%d (SubnetLen of %s)", l.Subnet, m.r4.bits, m.r4.network)
	case l.IPv6Subnet.IsValid() && !m.six:
		return ReasonIPv6Off, fmt.Sprintf("IPv6 subnet %s in a network without IPv6 (EnableIPv6 is off)", l.IPv6Subnet)
	case l.IPv6Subnet.IsValid() && !m.r6.fits(l.IPv6Subnet):
		return ReasonIPv6Subnet, fmt.Sprintf("IPv6 subnet %s is not a /%d inside %s", l.IPv6Subnet, m.r6.bits, m.r6.network)
	case m.r4.network.Contains(l.Attrs.PublicIP):
		return ReasonPublicIPInside, fmt.Sprintf("PublicIP %s lies inside the overlay %s", l.Attrs.PublicIP, m.r4.network)
	case m.six && m.r6.network.Contains(l.Attrs.PublicIPv6):
		return ReasonPublicIPInside, fmt.Sprintf("PublicIPv6 %s lies inside the overlay %s", l.Attrs.PublicIPv6, m.r6.network)
	}
	if why := notUnicast("PublicIP", l.Attrs.PublicIP); why != "" {
		return ReasonPublicIPNotUnicast, why
	}
	if why := notUnicast("PublicIPv6", l.Attrs.PublicIPv6); why != "" {
		return ReasonPublicIPNotUnicast, why
	}
	if why := badVtepMAC(l); why != "" {
		return ReasonVtepMAC, why
	}
	if what := m.claimsOwnLocked(&l); what != "" {
		return ReasonClaimsOwn, what + " of this host"
	}
	return "", ""
}

// notUnicast says why a peer's public address cannot be a host's ("" when
// it can, or when it is absent): netconf.HostAddrProblem, the rule weftd
// applies to its own -public-ip.
func notUnicast(field string, a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	if what := netconf.HostAddrProblem(a); what != "" {
		return fmt.Sprintf("%s %s is %s, not a host's unicast address", field, a, what)
	}
	return ""
}

// claimsOwnLocked names what of this host's l claims too: our subnets or
// VtepMACs ("" when none). Our PublicIP is not a claim here: a lease naming
// it is not counted as a peer at all (see counted).
func (m *Manager) claimsOwnLocked(l *Lease) string {
	switch {
	case !m.held:
		return ""
	case l.Subnet == m.own.Subnet:
		return "subnet " + l.Subnet.String()
	case l.IPv6Subnet.IsValid() && l.IPv6Subnet == m.own.IPv6Subnet:
		return "IPv6 subnet " + l.IPv6Subnet.String()
	}
	if m.ownMAC.kind != claimVtepMAC || !strings.EqualFold(l.Attrs.BackendType, netconf.BackendVXLAN) {
		return ""
	}
	for _, c := range []claim{m.ownMAC, m.ownMAC6} {
		if c.kind < claimVtepMAC {
			continue
		}
		raw := l.Attrs.BackendData
		if c.kind == claimVtepMAC6 {
			raw = l.Attrs.BackendV6Data
		}
		if got, ok := macClaim(c.kind, raw); ok && got == c {
			return c.String()
		}
	}
	return ""
}

// badVtepMAC checks the VtepMAC of a vxlan lease. A lease without
// BackendData is left to the backend, which cannot program it anyway.
func badVtepMAC(l Lease) string {
	if !strings.EqualFold(l.Attrs.BackendType, netconf.BackendVXLAN) {
		return ""
	}
	for _, raw := range []json.RawMessage{l.Attrs.BackendData, l.Attrs.BackendV6Data} {
		if len(raw) == 0 || string(raw) == "null" {
			continue
		}
		if _, _, err := VtepMAC(raw); err != nil {
			return err.Error()
		}
	}
	return ""
}

// rejectLocked logs and counts a skipped lease once per write of its key;
// the log is rate-limited too, the count is not.
func (m *Manager) rejectLocked(key string, l Lease, reason, why string) {
	if r, seen := m.rejected[key]; seen && r == l.ModRevision {
		return
	}
	m.rejected[key] = l.ModRevision
	if ok, dropped := m.warn.allow(time.Now()); ok {
		m.log.Warn("skipping lease", "key", key, "reason", reason, "why", clip(why), "suppressedWarnings", dropped)
	}
	if m.cfg.Hooks.Rejected != nil {
		m.cfg.Hooks.Rejected(reason)
	}
}

// publishLocked sends the current state as a snapshot, replacing an unread
// one (only the goroutine holding m.mu sends).
func (m *Manager) publishLocked() {
	if !m.held {
		return
	}
	if m.idx == nil {
		m.rebuildIndexLocked()
	}
	// The index's own slice, capped: the index copies it before changing
	// it again (peerIndex.unshare), so what the dataplane holds never moves.
	x := m.idx
	x.shared = true
	snap := Snapshot{Own: m.own, Revision: m.rev, Peers: slices.Clip(x.sorted)}
	if m.cfg.Hooks.Peers != nil {
		m.cfg.Hooks.Peers(m.idx.known, len(snap.Peers))
	}
	latest.Send(m.snaps, snap)
}

// Run keeps the lease alive, follows the peers and re-acquires the lease
// when it is confirmed lost. It returns nil when ctx is cancelled.
func (m *Manager) Run(ctx context.Context) error {
	m.mu.Lock()
	if !m.held {
		m.mu.Unlock()
		return errors.New("lease manager: Run called before Acquire succeeded")
	}
	startRev := m.rev
	m.mu.Unlock()

	var (
		wch       clientv3.WatchChan
		wctx      context.Context
		wcancel   = context.CancelFunc(func() {})
		lastResp  time.Time
		relistC   <-chan time.Time
		reacqC    <-chan time.Time
		restoreC  <-chan time.Time
		relistB   = newBackoff(100*time.Millisecond, 2*time.Second) // short: a peer change after an etcd outage waits at most this long
		reacqB    = newBackoff(100*time.Millisecond, 5*time.Second)
		restoreB  = newBackoff(100*time.Millisecond, 5*time.Second)
		renewLost = make(chan int64, 1)
		check     = time.NewTicker(m.cfg.WatchCheck)
		lostOwn   netip.Prefix // subnet to get back, while not held
		lostID    int64        // etcd lease of the lost key, revoked once replaced
		lastRelog string
	)
	defer func() { wcancel(); check.Stop() }()
	// Renewals run on their own goroutine: a renewal stuck on an unreachable
	// etcd must not stall the watch or the status.
	kaDone := make(chan struct{})
	defer func() { <-kaDone }()
	go func() { defer close(kaDone); m.keepAlive(ctx, renewLost) }()

	startWatch := func(rev int64) {
		wcancel()
		wctx, wcancel = context.WithCancel(clientv3.WithRequireLeader(ctx))
		wch = m.cli.Watch(wctx, m.s.SubnetsPrefix(), clientv3.WithPrefix(), clientv3.WithRev(rev+1))
		lastResp = time.Now()
		m.answered(lastResp)
		m.setWatch(true, "")
	}
	watchLost := func(why string) {
		wcancel()
		wch = nil
		m.log.Warn("etcd watch lost; re-listing leases", "prefix", m.s.SubnetsPrefix(), "reason", why)
		m.setWatch(false, "etcd watch lost: "+why)
		if m.cfg.Hooks.WatchRestarted != nil {
			m.cfg.Hooks.WatchRestarted()
		}
		relistC = time.After(0)
	}
	ownLost := func(sub netip.Prefix) {
		lostOwn = sub
		m.mu.Lock()
		lostID = m.own.EtcdLease
		m.held = false
		m.reason = "own lease lost; re-acquiring " + sub.String()
		m.mu.Unlock()
		reacqB.reset()
		reacqC = time.After(0)
	}
	// restoreOwn writes our value back when someone else rewrote our key;
	// a failure (etcd unreachable) is retried with backoff.
	var restoreKey string
	var restoreRev, restoreID int64
	restoreOwn := func(retry bool) {
		if k, rev, id, ok := m.takeRestore(); ok {
			restoreKey, restoreRev, restoreID = k, rev, id
			restoreB.reset()
		} else if !retry || restoreRev == 0 {
			return // nothing new; a pending retry waits for its timer
		}
		if err := m.restore(ctx, restoreKey, restoreRev, restoreID); err != nil {
			if ctx.Err() == nil {
				m.log.Warn("writing own lease back failed; retrying", "key", restoreKey, "err", err)
				restoreC = time.After(restoreB.delay())
			}
			return
		}
		restoreRev, restoreC = 0, nil
	}
	startWatch(startRev)

	for {
		select {
		case <-ctx.Done():
			return nil

		case <-restoreC:
			restoreC = nil
			restoreOwn(true)

		case p := <-m.updates:
			if m.applyUpdate(p.u) {
				restoreOwn(false) // writes our new values, retried like a restore
			}
			close(p.done)

		case wresp, ok := <-wch:
			if why := watchFailure(wresp, ok); why != "" {
				watchLost(why)
				continue
			}
			lastResp = time.Now()
			m.answered(lastResp)
			m.setWatch(true, "")
			lost, sub := m.apply(wresp.Events)
			changed := len(wresp.Events) > 0
			// Coalesce a burst: apply whatever else is already waiting, then
			// publish once.
		drain:
			for {
				select {
				case w2, ok := <-wch:
					if why := watchFailure(w2, ok); why != "" {
						watchLost(why)
						break drain
					}
					changed = changed || len(w2.Events) > 0
					if l2, s2 := m.apply(w2.Events); l2 {
						lost, sub = true, s2
					}
				default:
					break drain
				}
			}
			if lost {
				ownLost(sub)
			}
			restoreOwn(false)
			// A progress notification (no events) changes nothing: publishing
			// it would make the dataplane re-apply every peer every few seconds.
			if changed || lost {
				m.mu.Lock()
				m.publishLocked()
				m.mu.Unlock()
			}

		case <-relistC:
			relistC = nil
			leases, rev, err := m.s.List(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				if err.Error() != lastRelog {
					m.log.Warn("re-listing leases failed; retrying", "err", err)
					lastRelog = err.Error()
				}
				relistC = time.After(relistB.delay())
				continue
			}
			lastRelog = ""
			relistB.reset()
			lost, sub := m.relisted(leases, rev)
			startWatch(rev)
			if lost {
				ownLost(sub)
			}
			restoreOwn(false)
			m.mu.Lock()
			m.publishLocked()
			m.mu.Unlock()

		case <-reacqC:
			reacqC = nil
			start := time.Now()
			l, err := m.acquireOnce(ctx, lostOwn)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				m.log.Error("re-acquiring the lease failed; retrying", "subnet", lostOwn, "err", err)
				m.setReason("re-acquiring lease: " + err.Error())
				reacqC = time.After(reacqB.delay())
				continue
			}
			m.log.Info("lease re-acquired", "subnet", l.Subnet, "previous", lostOwn, "took", time.Since(start).Round(time.Millisecond))
			lostOwn = netip.Prefix{}
			if lostID != 0 && lostID != l.EtcdLease {
				m.revoke(clientv3.LeaseID(lostID)) // it no longer holds our key
			}
			lostID = 0

		case id := <-renewLost:
			m.mu.Lock()
			still := m.held && m.own.EtcdLease == id
			m.mu.Unlock()
			if still {
				m.log.Warn("etcd says our lease is gone; re-acquiring", "lease", fmt.Sprintf("%x", id))
				ownLost(m.Own().Subnet)
			}

		case <-check.C:
			if wch == nil {
				continue
			}
			if time.Since(lastResp) > 3*m.cfg.WatchCheck {
				// A watch silent through three progress requests is not
				// trusted to come back by itself: after an etcd restart the
				// client's resumed stream can stay mute with no error. Start
				// over from a fresh list (retried until etcd answers), which
				// loses no event.
				watchLost(fmt.Sprintf("no answer on the etcd watch since %s", lastResp.Format(time.RFC3339)))
				continue
			}
			pctx, cancel := context.WithTimeout(wctx, time.Second)
			_ = m.cli.RequestProgress(pctx) // the answer arrives on wch
			cancel()
		}
	}
}

// keepAlive renews the held etcd lease RenewMargin before it expires. A
// failed renewal is retried with backoff and the lease is kept: only etcd
// answering "lease not found" is reported (on lost) as a loss.
func (m *Manager) keepAlive(ctx context.Context, lost chan<- int64) {
	retry := newBackoff(time.Second, time.Minute)
	var retryAt time.Time
	for {
		d := m.renewIn()
		if !retryAt.IsZero() {
			d = time.Until(retryAt)
		}
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-m.wake:
			t.Stop()
			retryAt = time.Time{} // a new lease: start over
			continue
		case <-t.C:
		}
		m.mu.Lock()
		held, id := m.held, m.own.EtcdLease
		m.mu.Unlock()
		if !held || id == 0 {
			retryAt = time.Time{}
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		resp, err := m.cli.KeepAliveOnce(cctx, clientv3.LeaseID(id))
		cancel()
		if m.cfg.Hooks.Renewed != nil && ctx.Err() == nil {
			m.cfg.Hooks.Renewed(err)
		}
		switch {
		case err == nil:
			retry.reset()
			retryAt = time.Time{}
			m.mu.Lock()
			if m.own.EtcdLease == id {
				m.ownExp = time.Now().Add(time.Duration(resp.TTL) * time.Second)
				if m.cfg.Hooks.Expiry != nil {
					m.cfg.Hooks.Expiry(m.ownExp)
				}
			}
			m.mu.Unlock()
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
			retryAt = time.Time{}
			select {
			case lost <- id:
			default:
			}
		case ctx.Err() != nil:
			return
		default:
			// Silence is not loss: keep the lease, keep trying.
			d := retry.delay()
			retryAt = time.Now().Add(d)
			m.log.Warn("renewing the lease failed; keeping it and retrying", "lease", fmt.Sprintf("%x", id), "retryIn", d.Round(time.Millisecond), "err", err)
		}
	}
}

// renewIn is when the next renewal is due: RenewMargin before expiry (or
// halfway, when the margin is not shorter than the TTL).
func (m *Manager) renewIn() time.Duration {
	m.mu.Lock()
	exp, held := m.ownExp, m.held
	m.mu.Unlock()
	if exp.IsZero() || !held {
		return time.Hour // a reservation, or nothing held: nothing to renew
	}
	margin := m.cfg.RenewMargin
	if margin >= m.cfg.TTL {
		margin = m.cfg.TTL / 2
	}
	return max(time.Until(exp.Add(-margin)), 0)
}

func (m *Manager) answered(t time.Time) {
	if m.cfg.Hooks.WatchAnswered != nil {
		m.cfg.Hooks.WatchAnswered(t)
	}
}

func watchFailure(w clientv3.WatchResponse, ok bool) string {
	switch {
	case !ok:
		return "watch channel closed"
	case w.CompactRevision != 0:
		return fmt.Sprintf("revision compacted up to %d", w.CompactRevision)
	case w.Canceled:
		if err := w.Err(); err != nil {
			return err.Error()
		}
		return "watch cancelled by etcd"
	case w.Err() != nil:
		return w.Err().Error()
	}
	return ""
}

func (m *Manager) setWatch(live bool, reason string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.watchLive == live && (live || m.reason == reason) {
		return
	}
	m.watchLive = live
	switch {
	case !live:
		m.reason = reason
	case m.held:
		m.reason = ""
	}
}

// apply folds watch events into the state. It reports whether our own lease
// was confirmed lost (deleted, or rewritten for another host) and its subnet.
func (m *Manager) apply(events []*clientv3.Event) (lost bool, sub netip.Prefix) {
	m.mu.Lock()
	defer m.mu.Unlock()
	// Every event of one transaction carries the same ModRevision: compare
	// with the revision before this response, not the one just applied.
	base := m.rev
	// A burst (one transaction deleting or writing thousands of keys) is
	// folded in by one rebuild at publish, not event by event: taking 5,000
	// leases out of the sorted index one at a time moves O(N²) pointers,
	// each behind a GC write barrier while a collection runs — 0.3 s of
	// bench/overlay's delete-all figure when the underlay guard's garbage
	// had started one (BenchmarkPeersDeleteAll5000).
	if len(events) > maxIndexEvents(m.peers.len()) {
		m.idx = nil
	}
	for _, ev := range events {
		kv := ev.Kv
		if kv.ModRevision <= base {
			continue // already reflected by a newer list
		}
		m.rev = max(m.rev, kv.ModRevision)
		key := string(kv.Key)
		var (
			l      Lease
			decErr error
		)
		if ev.Type != mvccpb.DELETE {
			l, decErr = m.s.decode(kv)
		}
		// The key's subnets: the decoded lease's, else parsed (a delete,
		// or a value that does not decode).
		v4, v6, isKey := l.Subnet, l.IPv6Subnet, ev.Type != mvccpb.DELETE && decErr == nil
		if !isKey {
			v4, v6, isKey = m.keySubnets(key)
		}
		if old, ok := m.peers.get(v4, v6); isKey && ok {
			m.indexRemoveLocked(key, old)
		}
		if ev.Type == mvccpb.DELETE {
			m.freed.noteKey(m.s.SubnetsPrefix(), key, kv.ModRevision)
			if isKey {
				m.peers.del(v4, v6)
			}
			delete(m.rejected, key)
			delete(m.claimed, key)
			m.s.forget(key)
			if m.held && key == m.ownKey {
				m.log.Warn("own lease deleted in etcd; re-acquiring", "key", key)
				lost, sub = true, m.own.Subnet
				m.held = false
			}
			continue
		}
		var lp *Lease
		if decErr != nil {
			if isKey {
				m.peers.del(v4, v6)
			}
		} else {
			lp = m.kept(l)
			m.peers.put(lp)
			m.indexAddLocked(key, lp)
		}
		m.noteClaimLocked(key, lp)
		if m.held && key == m.ownKey && kv.ModRevision > m.own.ModRevision {
			if m.ownWrittenLocked(key, lp, kv.ModRevision) {
				lost, sub = true, netip.Prefix{}
			}
		}
	}
	return lost, sub
}

// maxIndexEvents bounds the events of one watch response that the peer
// index folds in one by one; beyond it, rebuilding costs no more.
func maxIndexEvents(peers int) int { return 16 + peers/8 }

// ownWrittenLocked judges a write of our own key that we did not make (lp
// nil: a malformed value). It reports whether the key is no longer ours.
//
// The whole value is compared, not only the PublicIP: a rewrite that kept
// our PublicIP but dropped the backend fields (what `weftctl leases
// reserve` wrote) or changed the VtepMAC left every peer unable to reach us
// while we went on as if nothing happened. Such a write is undone with a
// compare-and-swap (by Run), logged, counted and shown in Warnings. What is
// adopted: our own value turned into a reservation in place (the operator's
// `leases reserve`, which keeps a live lease's values), and a reservation
// moved to another PublicIP (the operator giving our reserved subnet to
// another host; we acquire another).
func (m *Manager) ownWrittenLocked(key string, lp *Lease, rev int64) (lost bool) {
	want := m.attrs()
	if lp != nil && m.own.Reserved() && lp.Attrs.PublicIP != want.PublicIP {
		m.log.Warn("own reservation rewritten for another host; acquiring another subnet", "key", key, "publicIP", lp.Attrs.PublicIP)
		m.held = false
		return true
	}
	changed := ownDiff(lp, want, m.own.EtcdLease)
	if len(changed) == 0 || (len(changed) == 1 && changed[0] == "etcd lease" && lp.Reserved()) {
		// Ours as we wrote it, or turned into a reservation in place.
		exp := m.ownExp
		if lp.Reserved() {
			exp = time.Time{}
		}
		m.own = Lease{Subnet: lp.Subnet, IPv6Subnet: lp.IPv6Subnet, Attrs: m.own.Attrs, EtcdLease: lp.EtcdLease,
			ModRevision: lp.ModRevision, CreateRevision: lp.CreateRevision}
		m.ownExp = exp
		if m.cfg.Hooks.Expiry != nil {
			m.cfg.Hooks.Expiry(exp)
		}
		return false
	}
	what := strings.Join(changed, ", ")
	m.log.Warn("own lease rewritten by someone else; writing ours back", "key", key, "revision", rev, "changed", what)
	m.rewritten = fmt.Sprintf("own lease %s was rewritten by someone else at revision %d (%s); restoring it", key, rev, what)
	m.rewrittenAt = time.Now()
	m.restoreRev = rev
	if m.cfg.Hooks.Alert != nil {
		m.cfg.Hooks.Alert(AlertOwnRewritten)
	}
	return false
}

// ownDiff names the fields of our own key's value lp that differ from
// want, and "etcd lease" when it is not on etcd lease id.
func ownDiff(lp *Lease, want Attrs, id int64) []string {
	if lp == nil {
		return []string{"value malformed"}
	}
	var out []string
	a := lp.Attrs
	if a.PublicIP != want.PublicIP {
		out = append(out, "PublicIP "+a.PublicIP.String())
	}
	if a.PublicIPv6 != want.PublicIPv6 {
		out = append(out, "PublicIPv6")
	}
	if a.BackendType != want.BackendType {
		out = append(out, fmt.Sprintf("BackendType %.40q", a.BackendType))
	}
	if !sameJSON(a.BackendData, want.BackendData) {
		out = append(out, "BackendData")
	}
	if !sameJSON(a.BackendV6Data, want.BackendV6Data) {
		out = append(out, "BackendV6Data")
	}
	if a.NodeName != want.NodeName {
		out = append(out, fmt.Sprintf("WeftNodeName %.40q", a.NodeName))
	}
	if a.UDPKernelDecap != want.UDPKernelDecap {
		out = append(out, "WeftUDPKernelDecap")
	}
	if lp.EtcdLease != id {
		out = append(out, "etcd lease")
	}
	return out
}

// sameJSON compares backend data as ParseAttrs keeps it (compacted; null is
// none) with ours as configured.
func sameJSON(got, want json.RawMessage) bool {
	w, err := compactRaw(want)
	return err == nil && bytes.Equal(got, w)
}

// takeRestore returns what Run must write back over a foreign write of our
// own key: the key, the revision seen, our value and etcd lease.
func (m *Manager) takeRestore() (key string, rev int64, id int64, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	rev, m.restoreRev = m.restoreRev, 0
	if rev == 0 || !m.held {
		return "", 0, 0, false
	}
	return m.ownKey, rev, m.own.EtcdLease, true
}

// restore writes our value back over a foreign write of our own key seen at
// rev. A lost compare-and-swap means yet another write, which the watch
// brings and ownWrittenLocked judges again.
func (m *Manager) restore(ctx context.Context, key string, rev, id int64) error {
	val, err := m.attrs().MarshalJSON()
	if err != nil {
		return fmt.Errorf("restore %s: lease value for this host: %w", key, err)
	}
	wrev, ok, err := m.cas(ctx, key, rev, string(val), clientv3.LeaseID(id))
	if err != nil || !ok {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.held && m.ownKey == key && wrev > m.own.ModRevision {
		m.own.ModRevision = wrev
		m.rewritten = strings.TrimSuffix(m.rewritten, "restoring it") + "restored"
	}
	m.log.Info("own lease restored", "key", key, "revision", wrev)
	return nil
}

// noteClaimLocked keeps m.claimed up to date for key's new lease (nil:
// deleted or malformed): another key naming our PublicIP, VtepMAC or subnet
// is a forgery or a stale copy, and peers may drop us for it, so it is
// logged, counted (once per write) and shown in Warnings.
func (m *Manager) noteClaimLocked(key string, l *Lease) {
	var what string
	if l != nil && key != m.ownKey {
		what = m.ownValueNamedLocked(l)
	}
	if what == "" {
		delete(m.claimed, key)
		return
	}
	if c, ok := m.claimed[key]; ok && c.rev == l.ModRevision {
		return
	}
	msg := fmt.Sprintf("lease %s names this host's %s", key, what)
	m.claimed[key] = ownClaim{rev: l.ModRevision, msg: msg}
	if ok, dropped := m.warn.allow(time.Now()); ok {
		m.log.Warn("another lease names this host's address or subnet", "key", key, "claims", what, "revision", l.ModRevision, "suppressedWarnings", dropped)
	}
	if m.cfg.Hooks.Alert != nil {
		m.cfg.Hooks.Alert(AlertOwnClaimed)
	}
}

// ownValueNamedLocked names what of this host's a lease that is not our
// own key names: our PublicIP, subnets or VtepMACs ("" when none).
func (m *Manager) ownValueNamedLocked(l *Lease) string {
	switch {
	case !m.held:
		return ""
	case l.Attrs.PublicIP == m.cfg.PublicIP:
		return "PublicIP " + l.Attrs.PublicIP.String()
	}
	return m.claimsOwnLocked(l)
}

// noteAllClaimsLocked recomputes m.claimed from m.peers, after a relist or
// a new own lease.
func (m *Manager) noteAllClaimsLocked() {
	for k := range m.claimed {
		if _, ok := m.peerByKey(k); !ok {
			delete(m.claimed, k)
		}
	}
	for l := range m.peers.all() {
		// A key string only for a lease that names our values or was
		// noted before: 20,000 of them would be garbage at every relist.
		if len(m.claimed) == 0 && (m.isOwnKey(l) || m.ownValueNamedLocked(l) == "") {
			continue
		}
		m.noteClaimLocked(m.keyOf(l), l)
	}
}

// maxWarnings bounds Warnings: a flood of forged keys must not make
// /readyz a flood too.
const maxWarnings = 10

// Warnings returns the current alerts about this host's lease, for /readyz:
// other keys naming this host's PublicIP, VtepMAC or subnet, and a recent
// rewrite of our own key by someone else. Empty when there are none.
func (m *Manager) Warnings() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	if m.rewritten != "" && time.Since(m.rewrittenAt) < ownAlertFor {
		out = append(out, m.rewritten)
	}
	claims := make([]string, 0, len(m.claimed))
	for _, c := range m.claimed {
		claims = append(claims, c.msg)
	}
	slices.Sort(claims)
	if len(claims) > maxWarnings {
		claims = append(claims[:maxWarnings], fmt.Sprintf("and %d more leases naming this host's values", len(claims)-maxWarnings))
	}
	return append(out, claims...)
}

// relisted replaces the state with a fresh list and reports whether our own
// lease is gone from it.
func (m *Manager) relisted(leases []Lease, rev int64) (lost bool, sub netip.Prefix) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.setPeersLocked(leases, rev)
	if !m.held {
		return false, netip.Prefix{}
	}
	m.noteAllClaimsLocked()
	l, ok := m.peers.get(m.own.Subnet, m.own.IPv6Subnet)
	switch {
	case !ok:
		m.log.Warn("own lease missing after re-list; re-acquiring", "key", m.ownKey)
		m.held = false
		return true, m.own.Subnet
	case l.ModRevision > m.own.ModRevision && m.ownWrittenLocked(m.ownKey, l, l.ModRevision):
		return true, netip.Prefix{}
	}
	return false, netip.Prefix{}
}

func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return rand.N(d)
}
