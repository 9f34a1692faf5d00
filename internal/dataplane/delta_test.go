package dataplane

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/rtnl"
)

// deltaSequence returns a reproducible sequence of snapshots in which every
// step changes a few peers: joins, leaves, a new host address, a new VtepMAC
// (sometimes one another peer just gave up, or one still in use), a lease
// with garbage in it. A clean sequence has no garbage and no VtepMAC
// collisions: the common case, which a delta handles peer by peer.
func deltaSequence(typ string, steps int, clean bool) []lease.Snapshot {
	rng := rand.New(rand.NewPCG(1, 2))
	const pool = 40
	type peer struct {
		in       bool
		mac, pub int
		garbage  bool
	}
	peers := make([]peer, pool)
	for i := range peers {
		peers[i] = peer{in: i%2 == 0, mac: i, pub: i}
	}
	var out []lease.Snapshot
	fresh := 2 * pool // VtepMACs no peer used yet
	for range steps {
		var ls []lease.Lease
		for i, p := range peers {
			if !p.in {
				continue
			}
			var l lease.Lease
			if typ == "vxlan" {
				l = vxlanPeer(i+2, publicIP(p.pub))
				l.Attrs.BackendData, _ = json.Marshal(VXLANLeaseData{VNI: 1, VtepMAC: mac(p.mac).String()})
			} else {
				l = hostgwPeer(i+2, publicIP(p.pub))
			}
			if p.garbage {
				l.Attrs.BackendData = json.RawMessage(`{"VtepMAC":"nope"}`)
				l.Attrs.BackendType = "vxlan"
			}
			ls = append(ls, l)
		}
		out = append(out, snapshot(1, ls...))
		for range 1 + rng.IntN(4) {
			p := &peers[rng.IntN(pool)]
			switch rng.IntN(5) {
			case 0, 1:
				p.in = !p.in
			case 2:
				p.pub = rng.IntN(pool + 10)
			case 3:
				if clean {
					p.mac = fresh
					fresh++
				} else {
					p.mac = rng.IntN(pool + 10) // may collide with another peer's
				}
			case 4:
				p.garbage = !p.garbage && !clean
			}
		}
	}
	return out
}

// TestDeltaMatchesFull applies a sequence of snapshots through the delta path
// in one namespace and through full passes in another, and compares the
// whole kernel state after every step; at the end a fresh backend's full pass
// over the delta-built state must find nothing to change.
func TestDeltaMatchesFull(t *testing.T) {
	for _, tc := range []struct {
		typ   string
		clean bool
	}{{"vxlan", false}, {"vxlan", true}, {"host-gw", false}} {
		typ := tc.typ
		t.Run(fmt.Sprintf("%s/clean=%t", typ, tc.clean), func(t *testing.T) {
			ctx := context.Background()
			mk := func() (*lab, Backend) {
				l := newLab(t, hostAddr, swAddr)
				h := l.host
				h.BlackholeRoute = true
				b := l.backendHost(t, typ, `{}`, h)
				_, _, err := b.Init(ctx)
				must(t, err)
				return l, b
			}
			dl, db := mk()
			fl, fb := mk()
			delta := db.(deltaApplier)
			seq := deltaSequence(typ, 30, tc.clean)
			for i, s := range seq {
				err := delta.ApplyDelta(ctx, s)
				ferr := fb.Apply(ctx, s)
				// host-gw reports unreachable peers (moved off the segment);
				// both paths must agree on that too.
				if fmt.Sprint(err) != fmt.Sprint(ferr) {
					t.Fatalf("step %d: delta apply: %v; full apply: %v", i, err, ferr)
				}
				if vb := driverOf(db, 0); err == nil {
					// The state kept up to date peer by peer must be the
					// state computed from scratch.
					got := vb.want.Load()
					f := vb.facts
					f.Dev = got.Dev
					exp := vb.spec.render(s, f, nil)
					if d := cmp.Diff(flatten(exp), flatten(got), cmp.AllowUnexported(skippedPeer{}), cmpopts.EquateEmpty(), cmpopts.EquateComparable(netip.Prefix{}, netip.Addr{})); d != "" {
						t.Fatalf("step %d: desired state kept by the delta differs from the one computed whole (-whole +kept):\n%s", i, d)
					}
				}
				want := kernelState(t, fl.ns.Handle, "flannel.1")
				if d := cmp.Diff(want, kernelState(t, dl.ns.Handle, "flannel.1")); d != "" {
					t.Fatalf("step %d: delta state differs from full state (-full +delta):\n%s", i, d)
				}
			}
			if vb := driverOf(db, 0); typ == "vxlan" {
				if vb.passes.full != 1 || vb.passes.delta != len(seq)-1 || vb.passes.incremental == 0 {
					t.Errorf("passes = %+v, want 1 full then %d deltas, some of them incremental", vb.passes, len(seq)-1)
				}
				t.Logf("passes: %+v", vb.passes)
			}
			before := kernelState(t, dl.ns.Handle, "flannel.1")
			fresh := dl.backendHost(t, typ, `{}`, func() Host { h := dl.host; h.BlackholeRoute = true; return h }())
			_, _, err := fresh.Init(ctx)
			must(t, err)
			last := seq[len(seq)-1]
			must(t, fresh.Apply(ctx, last))
			if d := cmp.Diff(before, kernelState(t, dl.ns.Handle, "flannel.1")); d != "" {
				t.Errorf("a fresh full pass changed the delta-built state (-before +after):\n%s", d)
			}
		})
	}
}

// TestVXLANWatcherIgnoresOwnDeletes: the deletions an apply makes (a peer
// left) do not count as drift, so a leave costs one apply; a deletion of a
// wanted entry by somebody else still does.
func TestVXLANWatcherIgnoresOwnDeletes(t *testing.T) {
	l := newLab(t, hostAddr, swAddr)
	be := l.backend(t, "vxlan", `{}`)
	ctx := context.Background()
	_, _, err := be.Init(ctx)
	must(t, err)
	b := driverOf(be, 0)
	filter := b.watchFilter()
	p2, p3, p4 := vxlanPeer(2, publicIP(2)), vxlanPeer(3, publicIP(3)), vxlanPeer(4, publicIP(4))
	must(t, be.Apply(ctx, snapshot(1, p2, p3, p4)))

	var (
		mu    sync.Mutex
		dels  []any
		drift []bool
	)
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	fd := l.ns.Fd()
	rch := make(chan netlink.RouteUpdate, 64)
	nch := make(chan netlink.NeighUpdate, 64)
	must(t, netlink.RouteSubscribeWithOptions(rch, done, netlink.RouteSubscribeOptions{Namespace: &fd}))
	must(t, netlink.NeighSubscribeWithOptions(nch, done, netlink.NeighSubscribeOptions{Namespace: &fd}))
	go func() {
		for {
			select {
			case u, ok := <-rch:
				if !ok {
					return
				}
				if u.Type == unix.RTM_DELROUTE {
					mu.Lock()
					dels, drift = append(dels, u.Dst.String()), append(drift, filter.route(u))
					mu.Unlock()
				}
			case u, ok := <-nch:
				if !ok {
					return
				}
				if u.Type == unix.RTM_DELNEIGH {
					mu.Lock()
					dels, drift = append(dels, fmt.Sprintf("%v %v", u.IP, u.HardwareAddr)), append(drift, filter.neigh(u))
					mu.Unlock()
				}
			}
		}
	}()
	seen := func(n int) func() (bool, string) {
		return func() (bool, string) {
			mu.Lock()
			defer mu.Unlock()
			return len(dels) >= n, fmt.Sprint(dels)
		}
	}

	// p4 leaves: route, neighbour and FDB entry go; none of it is drift.
	must(t, be.(deltaApplier).ApplyDelta(ctx, snapshot(1, p2, p3)))
	eventually(t, 2*time.Second, "three deletions seen", seen(3))
	mu.Lock()
	for i, d := range drift {
		if d {
			t.Errorf("weft's own deletion %v counted as drift", dels[i])
		}
	}
	n := len(dels)
	mu.Unlock()

	// Somebody else deletes p2's route: drift.
	must(t, l.ns.Handle.RouteDel(&netlink.Route{Dst: ipNet(p2.Subnet), Table: unix.RT_TABLE_MAIN, Protocol: rtnl.ProtWeft}))
	eventually(t, 2*time.Second, "manual deletion seen", seen(n+1))
	mu.Lock()
	if !drift[n] {
		t.Errorf("manual deletion of wanted route %v not counted as drift", dels[n])
	}
	mu.Unlock()
	if b.passes.full != 1 || b.passes.delta != 1 {
		t.Errorf("passes = %+v, want 1 full + 1 delta", b.passes)
	}
}

// deltaRecorder is a recorder that also takes deltas, recording which kind
// of apply the loop chose.
type deltaRecorder struct {
	*recorder
	kmu       sync.Mutex
	kinds     []string
	failDelta int
}

func (r *deltaRecorder) Apply(ctx context.Context, s lease.Snapshot) error {
	r.kmu.Lock()
	r.kinds = append(r.kinds, "full")
	r.kmu.Unlock()
	return r.recorder.Apply(ctx, s)
}

func (r *deltaRecorder) ApplyDelta(ctx context.Context, s lease.Snapshot) error {
	r.kmu.Lock()
	r.kinds = append(r.kinds, "delta")
	fail := r.failDelta > 0
	if fail {
		r.failDelta--
	}
	r.kmu.Unlock()
	if fail {
		return fmt.Errorf("injected delta failure")
	}
	return r.recorder.Apply(ctx, s)
}

func (r *deltaRecorder) got() []string {
	r.kmu.Lock()
	defer r.kmu.Unlock()
	return append([]string(nil), r.kinds...)
}

// TestLoopChoosesDelta: only a new snapshot after a successful apply is a
// delta; the first apply, kernel events, retries after a failure and resyncs
// are full passes.
func TestLoopChoosesDelta(t *testing.T) {
	r := &deltaRecorder{recorder: &recorder{events: make(chan struct{}, 1)}}
	snaps, _ := runLoop(t, r, time.Hour)
	step := func(what string, do func(), want ...string) {
		t.Helper()
		n := len(r.got())
		do()
		eventually(t, 2*time.Second, what, func() (bool, string) {
			g := r.got()
			return len(g) >= n+len(want) && cmp.Equal(g[n:], want), fmt.Sprint(g[n:])
		})
	}
	step("first snapshot", func() { snaps <- lease.Snapshot{Revision: 1} }, "full")
	step("second snapshot", func() { snaps <- lease.Snapshot{Revision: 2} }, "delta")
	step("kernel event", func() { r.events <- struct{}{} }, "full")
	step("third snapshot", func() { snaps <- lease.Snapshot{Revision: 3} }, "delta")
	r.kmu.Lock()
	r.failDelta = 1
	r.kmu.Unlock()
	step("failed delta, then retry", func() { snaps <- lease.Snapshot{Revision: 4} }, "delta", "full")
	step("after the retry", func() { snaps <- lease.Snapshot{Revision: 5} }, "delta")
}

// TestDeltaBulk: every peer leaving in one snapshot, then all coming back,
// through the delta path (too many changes to update peer by peer: the
// batched diff of two whole desired states) leaves exactly what a full pass
// would.
func TestDeltaBulk(t *testing.T) {
	ctx := context.Background()
	l := newLab(t, hostAddr, swAddr)
	b := l.backend(t, "vxlan", `{}`)
	_, _, err := b.Init(ctx)
	must(t, err)
	all := benchPeers(600, func(i int) lease.Lease { return vxlanPeer(i, publicIP(i)) })
	none := snapshot(1)
	vb := driverOf(b, 0)
	must(t, b.Apply(ctx, all))
	for i, s := range []lease.Snapshot{none, all, none} {
		must(t, b.(deltaApplier).ApplyDelta(ctx, s))
		if d := cmp.Diff(kernelStateWant("vxlan", s), kernelState(t, l.ns.Handle, "flannel.1")); d != "" {
			t.Fatalf("step %d (%d peers): kernel differs from the snapshot (-want +got):\n%s", i, len(s.Peers), d)
		}
	}
	if vb.passes.delta != 3 || vb.passes.incremental != 0 {
		t.Errorf("passes %+v: want 3 deltas, none of them peer by peer", vb.passes)
	}
}
