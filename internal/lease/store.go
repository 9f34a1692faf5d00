package lease

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Sentinel errors, matched with errors.Is.
var (
	// ErrSubnetTaken: the subnet's key exists (another host's lease or a
	// reservation), or a compare-and-swap lost against a concurrent write.
	ErrSubnetTaken = errors.New("subnet already taken")
	ErrNotFound    = errors.New("lease not found")
	ErrNoConfig    = errors.New("network config not found")
	// ErrRangeFull: every subnet in [SubnetMin, SubnetMax] is leased or reserved.
	ErrRangeFull = errors.New("no free subnet in range")
)

// callTimeout bounds each etcd call so that an unreachable etcd shows up as
// an error (and a retry) instead of a hang.
const callTimeout = 10 * time.Second

// Store reads and writes leases and the network config under one prefix.
type Store struct {
	cli    *clientv3.Client
	prefix string // without trailing slash
	log    *slog.Logger

	// bad remembers malformed keys already logged (clipped key → ModRevision),
	// so a re-list does not repeat the same warning; a new write is logged
	// again. Entries go on delete (forget) and on a re-list, and there are at
	// most maxBad of them: whoever can write etcd must not grow our memory.
	mu       sync.Mutex
	bad      map[string]int64
	rejected func(reason string) // counts malformed leases (Hooks.Rejected)
	warn     warnLimit
}

// Size limits of a lease read from etcd. The longest valid key name,
// "255.255.255.255-32&ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff-128", has 62
// bytes, and flannel's values have about 150: anything far beyond is not a
// lease, and is rejected before it is parsed, copied or logged whole.
const (
	maxKeyName = 100
	maxValue   = 4 << 10
	maxBad     = 1024
)

func (s *Store) setRejectHook(fn func(reason string)) {
	s.mu.Lock()
	s.rejected = fn
	s.mu.Unlock()
}

// NewStore returns a store for the network under prefix, e.g. /coreos.com/network.
func NewStore(cli *clientv3.Client, prefix string, log *slog.Logger) *Store {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Store{cli: cli, prefix: strings.TrimRight(prefix, "/"), log: log, bad: map[string]int64{},
		warn: warnLimit{period: time.Minute, burst: 20}}
}

// Client returns the etcd client the store uses.
func (s *Store) Client() *clientv3.Client { return s.cli }

// ConfigKey is <prefix>/config.
func (s *Store) ConfigKey() string { return ConfigKey(s.prefix) }

// ConfigKey is the key of the network config under prefix, <prefix>/config
// (a trailing slash of prefix ignored): the one spelling of it, for the
// callers that have a prefix and no Store (weftctl, the lab, etcd checks).
func ConfigKey(prefix string) string { return strings.TrimRight(prefix, "/") + "/config" }

// SubnetsPrefix is <prefix>/subnets/, under which every lease key lives.
func (s *Store) SubnetsPrefix() string { return SubnetsPrefix(s.prefix) }

// SubnetsPrefix is the one spelling of <prefix>/subnets/, for code that
// reads keys without a Store (weftctl migrate-v2 reading etcd's v2 store).
func SubnetsPrefix(prefix string) string { return strings.TrimRight(prefix, "/") + "/subnets/" }

// Key is the full etcd key of a lease.
func (s *Store) Key(v4, v6 netip.Prefix) string { return s.SubnetsPrefix() + FormatKey(v4, v6) }

// GetConfig returns the config value and the store revision it was read at
// (the header revision, so that a caller can watch from rev+1 even when the
// key is missing). A missing key is ErrNoConfig.
func (s *Store) GetConfig(ctx context.Context) ([]byte, int64, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	resp, err := s.cli.Get(ctx, s.ConfigKey())
	if err != nil {
		return nil, 0, fmt.Errorf("get %s: %w", s.ConfigKey(), err)
	}
	if len(resp.Kvs) == 0 {
		return nil, resp.Header.Revision, fmt.Errorf("%s: %w", s.ConfigKey(), ErrNoConfig)
	}
	return resp.Kvs[0].Value, resp.Header.Revision, nil
}

// List returns every well-formed lease under subnets/ and the revision it
// reflects, read in pages of listPage keys at one revision (O(N/listPage)
// round trips). Malformed keys or values are logged once per write and
// skipped. When the etcd leases run out: see Expirations.
//
// Why pages: at 20,000 leases one response is ~6 MB of key-values that
// were held whole beside their decoded copy — the start-up's transient
// peak of weftd's heap (issue 12). A page is decoded and dropped before the
// next is read. Should the revision be compacted away between two pages,
// the list starts over at the newest one.
func (s *Store) List(ctx context.Context) ([]Lease, int64, error) {
	for {
		leases, rev, err := s.listAt(ctx)
		if errors.Is(err, rpctypes.ErrCompacted) && ctx.Err() == nil {
			continue // compacted between two pages: list again at the newest revision
		}
		return leases, rev, err
	}
}

// listPage is the number of keys of one page of List (a variable for the
// tests). Larger pages save no time: 5,000 leases list in fewer ms in pages
// of 1,000 than in one (BenchmarkList5000).
var listPage = 1000

func (s *Store) listAt(ctx context.Context) ([]Lease, int64, error) {
	end := clientv3.GetPrefixRangeEnd(s.SubnetsPrefix())
	var (
		leases  []Lease
		rev     int64
		seenBad map[string]bool // nil until a malformed key: the usual case
		data    byteArena
	)
	for from := s.SubnetsPrefix(); ; {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(int64(listPage))}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		pctx, cancel := context.WithTimeout(ctx, callTimeout) // each page: a large list is not one call
		resp, err := s.cli.Get(pctx, from, opts...)
		cancel()
		if err != nil {
			return nil, 0, fmt.Errorf("list %s (from key %.120q, revision %d): %w", s.SubnetsPrefix(), from, rev, err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
			// Count is the whole range's; bounded, so that a wrong figure
			// cannot make us allocate more than 64 pages ahead.
			leases = make([]Lease, 0, min(resp.Count, int64(len(resp.Kvs)+listPage*64)))
		}
		if n := len(resp.Kvs); n > 0 {
			from = string(resp.Kvs[n-1].Key) + "\x00" // the next page starts after this one's last key
		}
		for i, kv := range resp.Kvs {
			resp.Kvs[i] = nil // dropped once decoded: a collection meanwhile frees it
			l, err := s.decode(kv)
			if err != nil {
				if seenBad == nil {
					seenBad = map[string]bool{}
				}
				seenBad[clip(string(kv.Key))] = true
				continue
			}
			l.Attrs.BackendData = data.keep(l.Attrs.BackendData)
			l.Attrs.BackendV6Data = data.keep(l.Attrs.BackendV6Data)
			leases = append(leases, l)
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
	}
	s.mu.Lock()
	for k := range s.bad {
		if !seenBad[k] {
			delete(s.bad, k) // gone or fixed: forget it so the map stays bounded
		}
	}
	s.mu.Unlock()
	return leases, rev, nil
}

// byteArena packs small byte slices into shared blocks. A list's backend
// data are 20,000 values of ~40 bytes at 20,000 peers, each its own 48-byte
// object: packed, they take what they hold and are a hundred objects for
// the collector instead of 20,000 (issue 12). A block lives as long as one
// of its values does: at most one list's worth, as the list's leases.
type byteArena struct{ block []byte }

const arenaBlock = 16 << 10

// keep returns a copy of b in the arena (b itself when empty or large),
// capped so that appending to it cannot write over its neighbour.
func (a *byteArena) keep(b []byte) []byte {
	if len(b) == 0 || len(b) > arenaBlock/8 {
		return b
	}
	if len(b) > cap(a.block)-len(a.block) {
		a.block = make([]byte, 0, arenaBlock)
	}
	n := len(a.block)
	a.block = append(a.block, b...)
	return a.block[n:len(a.block):len(a.block)]
}

// decode turns one etcd key-value into a Lease, logging (once per write) why
// it is skipped when it is malformed.
func (s *Store) decode(kv *mvccpb.KeyValue) (Lease, error) {
	l, err := s.parseKV(kv)
	if err != nil {
		s.reportBad(string(kv.Key), kv.ModRevision, err)
	}
	return l, err
}

func (s *Store) parseKV(kv *mvccpb.KeyValue) (Lease, error) {
	name, ok := strings.CutPrefix(string(kv.Key), s.SubnetsPrefix())
	switch {
	case !ok || strings.Contains(name, "/"):
		return Lease{}, fmt.Errorf("key %.120q is not a lease key under %s", kv.Key, s.SubnetsPrefix())
	case len(name) > maxKeyName:
		return Lease{}, fmt.Errorf("key name of %d bytes: a lease key name has at most %d", len(name), maxKeyName)
	case len(kv.Value) > maxValue:
		return Lease{}, fmt.Errorf("value of %d bytes: a lease value has at most %d", len(kv.Value), maxValue)
	}
	v4, v6, err := ParseKey(name)
	if err != nil {
		return Lease{}, err
	}
	a, err := ParseAttrs(kv.Value)
	if err != nil {
		return Lease{}, err
	}
	return Lease{Subnet: v4, IPv6Subnet: v6, Attrs: a, EtcdLease: kv.Lease, ModRevision: kv.ModRevision,
		CreateRevision: kv.CreateRevision}, nil
}

// reportBad counts a malformed write once and logs it, clipped and
// rate-limited: a flood of garbage keys must not become a flood of log.
func (s *Store) reportBad(key string, rev int64, err error) {
	key = clip(key)
	s.mu.Lock()
	old, seen := s.bad[key]
	if seen || len(s.bad) < maxBad {
		s.bad[key] = rev
	}
	hook := s.rejected
	s.mu.Unlock()
	if seen && old == rev {
		return
	}
	if hook != nil {
		hook(ReasonMalformed)
	}
	if ok, dropped := s.warn.allow(time.Now()); ok {
		s.log.Warn("skipping malformed lease", "key", key, "revision", rev, "err", clip(err.Error()), "suppressedWarnings", dropped)
	}
}

// forget drops what is remembered of a key that was deleted, so that
// put/delete cycles of garbage keys leave nothing behind.
func (s *Store) forget(key string) {
	s.mu.Lock()
	delete(s.bad, clip(key))
	s.mu.Unlock()
}

// find returns the key-value of the lease whose IPv4 subnet is subnet, in
// its IPv4-only or dual-stack spelling, with one prefix Get.
func (s *Store) find(ctx context.Context, subnet netip.Prefix) (*mvccpb.KeyValue, error) {
	if !subnet.Addr().Is4() || subnet.Masked() != subnet {
		return nil, fmt.Errorf("subnet %s: must be an IPv4 network address with prefix length", subnet)
	}
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	k := s.Key(subnet, netip.Prefix{})
	resp, err := s.cli.Get(ctx, k, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", k, err)
	}
	for _, kv := range resp.Kvs {
		if string(kv.Key) == k || strings.HasPrefix(string(kv.Key), k+"&") {
			return kv, nil
		}
	}
	return nil, fmt.Errorf("%s: %w", k, ErrNotFound)
}

// Get returns the lease of an IPv4 subnet, or ErrNotFound.
func (s *Store) Get(ctx context.Context, subnet netip.Prefix) (Lease, error) {
	kv, err := s.find(ctx, subnet)
	if err != nil {
		return Lease{}, err
	}
	return s.parseKV(kv)
}

// Expiries holds when etcd leases run out, by etcd lease ID.
type Expiries map[int64]time.Time

// Of is when the etcd lease behind l runs out; zero for a reservation,
// which never expires.
func (e Expiries) Of(l Lease) time.Time {
	if l.Reserved() {
		return time.Time{}
	}
	return e[l.EtcdLease]
}

// Expirations looks up when the etcd lease of each non-reserved lease runs
// out, with one TimeToLive call per distinct etcd lease, run concurrently.
// This is the per-key cost flannel pays on every list; weft pays it only in
// weftctl and doctor. A lease etcd no longer knows expires now (expired).
// What was found is returned with the errors.
func (s *Store) Expirations(ctx context.Context, leases []Lease) (Expiries, error) {
	exps := Expiries{}
	var ids []int64
	for _, l := range leases {
		if _, dup := exps[l.EtcdLease]; l.EtcdLease != 0 && !dup {
			exps[l.EtcdLease] = time.Time{}
			ids = append(ids, l.EtcdLease)
		}
	}
	type result struct {
		id  int64
		exp time.Time
		err error
	}
	work := make(chan int64)
	results := make(chan result)
	const workers = 32
	for range min(workers, len(ids)) {
		go func() {
			for id := range work {
				cctx, cancel := context.WithTimeout(ctx, callTimeout)
				resp, err := s.cli.TimeToLive(cctx, clientv3.LeaseID(id))
				cancel()
				r := result{id: id, err: err}
				if err == nil {
					r.exp = time.Now().Add(time.Duration(max(resp.TTL, 0)) * time.Second)
				} else {
					r.err = fmt.Errorf("time-to-live of etcd lease %x: %w", id, err)
				}
				results <- r
			}
		}()
	}
	go func() {
		defer close(work)
		for _, id := range ids {
			select {
			case work <- id:
			case <-ctx.Done():
				return
			}
		}
	}()
	var errs []error
	for range len(ids) {
		select {
		case r := <-results:
			exps[r.id] = r.exp
			if r.err != nil {
				errs = append(errs, r.err)
			}
		case <-ctx.Done():
			return exps, ctx.Err()
		}
	}
	return exps, errors.Join(errs...)
}

// Delete removes the lease of an IPv4 subnet (the seed's etcdctl rmdir),
// whether it is a live lease or a reservation. The etcd lease, if any, is
// left alone: it belongs to the host that holds it.
func (s *Store) Delete(ctx context.Context, subnet netip.Prefix) error {
	kv, err := s.find(ctx, subnet)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	if _, err := s.cli.Delete(ctx, string(kv.Key)); err != nil {
		return fmt.Errorf("delete %s: %w", kv.Key, err)
	}
	return nil
}

// Reserve writes a reservation: the subnet's key with no etcd lease, which
// never expires and which only the host with attrs.PublicIP uses. It refuses
// (ErrSubnetTaken) when another host holds the subnet; the operator deletes
// that lease first. A lease already held by the same PublicIP is turned into
// a reservation in place, and an existing reservation is updated.
//
// A key that already names attrs.PublicIP keeps its value (backend type and
// data, IPv6 fields): only the etcd lease is dropped. Writing the bare
// {"PublicIP":…} over a live host's lease made every peer skip that host
// (backend type "") until its weftd restarted; with its own value the host
// sees its key turned into a reservation and carries on.
func (s *Store) Reserve(ctx context.Context, subnet netip.Prefix, attrs Attrs) error {
	kv, err := s.find(ctx, subnet)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	var cur Attrs
	var perr error = ErrNotFound
	if kv != nil {
		cur, perr = ParseAttrs(kv.Value)
	}
	if kv != nil && kv.Lease != 0 && (perr != nil || cur.PublicIP != attrs.PublicIP) {
		holder := "a malformed value"
		if perr == nil {
			holder = cur.PublicIP.String()
		}
		return fmt.Errorf("reserve %s: held by %s on live etcd lease %x (delete it first): %w",
			subnet, holder, kv.Lease, ErrSubnetTaken)
	}
	if perr == nil && cur.PublicIP == attrs.PublicIP {
		attrs = cur
	}
	val, err := attrs.MarshalJSON()
	if err != nil {
		return fmt.Errorf("reserve %s: %w", subnet, err)
	}
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	if kv == nil {
		_, ok, err := s.createIfFree(ctx, subnet, s.Key(subnet, netip.Prefix{}), string(val), clientv3.NoLease)
		if err != nil {
			return fmt.Errorf("reserve %s: %w", subnet, err)
		}
		if !ok {
			return fmt.Errorf("reserve %s: created concurrently: %w", subnet, ErrSubnetTaken)
		}
		return nil
	}
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(string(kv.Key)), "=", kv.ModRevision)).
		Then(clientv3.OpPut(string(kv.Key), string(val))).
		Commit()
	if err != nil {
		return fmt.Errorf("reserve %s: put %s: %w", subnet, kv.Key, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("reserve %s: %s changed concurrently: %w", subnet, kv.Key, ErrSubnetTaken)
	}
	return nil
}

// Unreserve deletes a reservation; it refuses to delete a live lease (use
// Delete for that), so that a mistyped subnet cannot cut a host off.
func (s *Store) Unreserve(ctx context.Context, subnet netip.Prefix) error {
	kv, err := s.find(ctx, subnet)
	if err != nil {
		return err
	}
	if kv.Lease != 0 {
		return fmt.Errorf("unreserve %s: %s is a live lease (etcd lease %x), not a reservation", subnet, kv.Key, kv.Lease)
	}
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(string(kv.Key)), "=", kv.ModRevision),
			clientv3.Compare(clientv3.LeaseValue(string(kv.Key)), "=", clientv3.NoLease)).
		Then(clientv3.OpDelete(string(kv.Key))).
		Commit()
	if err != nil {
		return fmt.Errorf("unreserve %s: delete %s: %w", subnet, kv.Key, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("unreserve %s: %s changed concurrently, not deleted", subnet, kv.Key)
	}
	return nil
}

// createIfFree writes key=val (on etcd lease id, or none) in one
// transaction, only if no lease exists for the IPv4 subnet in either
// spelling (IPv4-only key or any dual-stack key starting with it), so that
// two hosts never hold one subnet. It reports whether it won and the
// revision of the write.
func (s *Store) createIfFree(ctx context.Context, v4 netip.Prefix, key, val string, id clientv3.LeaseID) (int64, bool, error) {
	k4 := s.Key(v4, netip.Prefix{})
	var opts []clientv3.OpOption
	if id != clientv3.NoLease {
		opts = append(opts, clientv3.WithLease(id))
	}
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(k4), "=", 0),
			clientv3.Compare(clientv3.CreateRevision(k4+"&"), "=", 0).WithPrefix()).
		Then(clientv3.OpPut(key, val, opts...)).
		Commit()
	if err != nil {
		return 0, false, fmt.Errorf("create %s: %w", key, err)
	}
	return resp.Header.Revision, resp.Succeeded, nil
}
