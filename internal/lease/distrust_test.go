package lease

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/netconf"
)

// counts records the Rejected and Alert hooks, as the metrics package would.
type counts struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *counts) add(k string) {
	c.mu.Lock()
	c.n[k]++
	c.mu.Unlock()
}

func (c *counts) get(k string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[k]
}

// newHookedManager is newTestManager on its own store (as each host has),
// with its rejections and alerts counted.
func newHookedManager(s *Store, cfg netconf.Config, ip netip.Addr, log *slog.Logger) (*Manager, *counts) {
	c := &counts{n: map[string]int{}}
	own := NewStore(s.Client(), testPrefix, log)
	own.setRejectHook(c.add)
	m := newTestManager(own, cfg, ip, log)
	m.cfg.Hooks = Hooks{Rejected: c.add, Alert: c.add}
	return m, c
}

// vxlanValue is a lease value as a vxlan host writes it.
func vxlanValue(ip, mac string) string {
	return fmt.Sprintf(`{"PublicIP":%q,"PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":%q}}`, ip, mac)
}

// peerAt returns the snapshot's peer with IPv4 subnet sub, and how many
// peers have it.
func peerAt(s Snapshot, sub netip.Prefix) (*Lease, int) {
	var p *Lease
	n := 0
	for _, l := range s.Peers {
		if l.Subnet == sub {
			p, n = l, n+1
		}
	}
	return p, n
}

func atRev(rev int64) func(Snapshot) bool { return func(s Snapshot) bool { return s.Revision >= rev } }

// Finding 2: a second key for a victim's IPv4 subnet — its dual-stack
// spelling in an IPv4-only network, or another IPv6 part in a dual-stack
// one — must not take the victim's route: the victim (the older key) stays
// the one peer for its subnet, the forgery is rejected and counted.
func TestDuplicateSubnetKeyRejected(t *testing.T) {
	t.Run("ipv4-only", func(t *testing.T) {
		_, _, s, _ := newTestStore(t)
		victim := newTestManager(s, testNet(), hostIP(2), nil)
		vl := runManager(t, victim)
		obs, c := newHookedManager(s, testNet(), hostIP(1), nil)
		runManager(t, obs)

		rev := put(t, s.Client(), s.Key(vl.Subnet, netip.MustParsePrefix("fc00::/64")), vxlanValue("10.64.66.66", "0e:66:66:66:66:66"))
		snap := waitSnap(t, obs, 5*time.Second, "the forged key seen", atRev(rev))
		if p, n := peerAt(snap, vl.Subnet); n != 1 || p.Attrs.PublicIP != hostIP(2) {
			t.Fatalf("observer has %d peers for %s (%v), want only the victim %s", n, vl.Subnet, peerSubnets(snap), hostIP(2))
		}
		if got := c.get(ReasonIPv6Off); got != 1 {
			t.Errorf("rejected %s counted %d times, want 1", ReasonIPv6Off, got)
		}
	})
	t.Run("dual-stack", func(t *testing.T) {
		_, _, s, _ := newTestStore(t)
		cfg := testNet()
		cfg.EnableIPv6 = true
		cfg.IPv6Network = netip.MustParsePrefix("fc00::/48")
		cfg.IPv6SubnetLen = 64
		cfg.IPv6SubnetMin = netip.MustParsePrefix("fc00:0:0:1::/64")
		cfg.IPv6SubnetMax = netip.MustParsePrefix("fc00:0:0:ff::/64")
		victim := newTestManager(s, cfg, hostIP(2), nil)
		vl := runManager(t, victim)
		obs, c := newHookedManager(s, cfg, hostIP(1), nil)
		ol := runManager(t, obs)

		free4 := netip.MustParsePrefix("172.30.250.0/24")
		free6 := netip.MustParsePrefix("fc00:0:0:fe::/64")
		if free4 == vl.Subnet || free4 == ol.Subnet || free6 == vl.IPv6Subnet || free6 == ol.IPv6Subnet {
			t.Skip("random subnets hit the attacker's; rerun")
		}
		put(t, s.Client(), s.Key(vl.Subnet, free6), vxlanValue("10.64.66.66", "0e:66:66:66:66:66"))
		rev := put(t, s.Client(), s.Key(free4, vl.IPv6Subnet), vxlanValue("10.64.66.67", "0e:66:66:66:66:67"))
		snap := waitSnap(t, obs, 5*time.Second, "the forged keys seen", atRev(rev))
		if p, n := peerAt(snap, vl.Subnet); n != 1 || p.Attrs.PublicIP != hostIP(2) || p.IPv6Subnet != vl.IPv6Subnet {
			t.Fatalf("observer has %d peers for %s (%v), want only the victim", n, vl.Subnet, peerSubnets(snap))
		}
		if _, n := peerAt(snap, free4); n != 0 {
			t.Errorf("the key copying the victim's IPv6 subnet %s is published", vl.IPv6Subnet)
		}
		if c.get(ReasonDuplicateSubnet) != 1 || c.get(ReasonDuplicateIPv6Subnet) != 1 {
			t.Errorf("rejections counted: %v, want one %s and one %s", c.n, ReasonDuplicateSubnet, ReasonDuplicateIPv6Subnet)
		}
	})
}

// Finding 12 (lease half): a peer whose PublicIP cannot be a host's is
// rejected and counted, never handed to the dataplane.
func TestNonUnicastPublicIPRejected(t *testing.T) {
	_, _, s, lb := newTestStore(t)
	obs, c := newHookedManager(s, testNet(), hostIP(1), slog.New(slog.NewTextHandler(lb, nil)))
	runManager(t, obs)
	key := func(i int) string { return fmt.Sprintf("172.30.%d.0-24", 200+i) }
	bad := map[string]string{
		key(1): vxlanValue("224.0.0.1", "0e:00:00:00:02:01"),
		key(2): vxlanValue("255.255.255.255", "0e:00:00:00:02:02"),
		key(3): vxlanValue("127.0.0.1", "0e:00:00:00:02:03"),
		key(4): vxlanValue("0.0.0.0", "0e:00:00:00:02:04"),
		key(5): vxlanValue("169.254.1.1", "0e:00:00:00:02:05"),
		key(6): `{"PublicIP":"10.64.2.6","PublicIPv6":"ff02::1","BackendType":"host-gw"}`,
		key(7): `{"PublicIP":"10.64.2.7","PublicIPv6":"fe80::1","BackendType":"host-gw"}`,
	}
	var rev int64
	for k, v := range bad {
		rev = max(rev, put(t, s.Client(), s.SubnetsPrefix()+k, v))
	}
	rev = put(t, s.Client(), s.SubnetsPrefix()+key(8), vxlanValue("10.64.2.8", "0e:00:00:00:02:08"))
	snap := waitSnap(t, obs, 5*time.Second, "every lease seen", atRev(rev))
	good := "172.30.208.0/24"
	if got := peerSubnets(snap); len(got) != 1 || got[0] != good {
		t.Errorf("published peers %v, want only %s", got, good)
	}
	if got := c.get(ReasonPublicIPNotUnicast); got != len(bad) {
		t.Errorf("%s counted %d times, want %d", ReasonPublicIPNotUnicast, got, len(bad))
	}
	if !strings.Contains(lb.String(), "PublicIP 224.0.0.1 is a multicast address") {
		t.Errorf("log does not say why 224.0.0.1 is rejected:\n%s", lb)
	}
}

// Finding 4: forged leases copying a live host's PublicIP or VtepMAC must
// not make the others drop it (the older lease wins), and the victim says
// so: logged, counted and listed in Warnings for /readyz.
func TestForgedPublicIPAndVtepMAC(t *testing.T) {
	_, _, s, _ := newTestStore(t)
	log, lb := newLogger()
	victim, vc := newHookedManager(s, testNet(), hostIP(2), log)
	vl := runManager(t, victim)
	obs, oc := newHookedManager(s, testNet(), hostIP(1), nil)
	runManager(t, obs)
	if w := victim.Warnings(); len(w) != 0 {
		t.Fatalf("warnings before any forgery: %q", w)
	}

	victimMAC := vl.Attrs.VtepMAC()
	forgedIP := s.SubnetsPrefix() + "172.30.251.0-24"
	forgedMAC := s.SubnetsPrefix() + "172.30.252.0-24"
	put(t, s.Client(), forgedIP, vxlanValue(hostIP(2).String(), "0e:66:66:66:66:01"))
	rev := put(t, s.Client(), forgedMAC, vxlanValue("10.64.66.66", victimMAC))
	snap := waitSnap(t, obs, 5*time.Second, "the forged keys seen", atRev(rev))
	p, n := peerAt(snap, vl.Subnet)
	if n != 1 || p.Attrs.PublicIP != hostIP(2) || p.Attrs.VtepMAC() != victimMAC {
		t.Fatalf("observer dropped the victim %s: peers %v", vl.Subnet, peerSubnets(snap))
	}
	if len(snap.Peers) != 1 {
		t.Errorf("observer publishes the forgeries too: %v", peerSubnets(snap))
	}
	if oc.get(ReasonDuplicatePublicIP) != 1 || oc.get(ReasonDuplicateVtepMAC) != 1 {
		t.Errorf("observer counted %v, want one %s and one %s", oc.n, ReasonDuplicatePublicIP, ReasonDuplicateVtepMAC)
	}

	// The victim reports both, once per write.
	waitFor(t, 5*time.Second, "the victim's warnings", func() bool { return len(victim.Warnings()) == 2 })
	w := strings.Join(victim.Warnings(), "\n")
	if !strings.Contains(w, forgedIP) || !strings.Contains(w, "PublicIP "+hostIP(2).String()) ||
		!strings.Contains(w, forgedMAC) || !strings.Contains(w, "VtepMAC "+victimMAC) {
		t.Errorf("victim's warnings do not name both forgeries:\n%s", w)
	}
	if got := vc.get(AlertOwnClaimed); got != 2 {
		t.Errorf("victim counted %d %s alerts, want 2", got, AlertOwnClaimed)
	}
	if n := lb.Count("another lease names this host's"); n != 2 {
		t.Errorf("victim logged the forgeries %d times, want 2:\n%s", n, lb)
	}
	// Gone from etcd, gone from the warnings.
	if _, err := s.Client().Delete(context.Background(), forgedIP); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Client().Delete(context.Background(), forgedMAC); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the victim's warnings cleared", func() bool { return len(victim.Warnings()) == 0 })
}

// Finding 3: a host whose own key is rewritten by someone else (here its
// VtepMAC, which would blackhole it) writes its value back by compare-and-
// swap on the same etcd lease and alerts; `weftctl leases reserve` on the
// live host (Store.Reserve) keeps its values, so that peers keep reaching it
// and the host carries on with its subnet as a reservation.
func TestOwnLeaseRewriteAndReserveOnLiveHost(t *testing.T) {
	_, _, s, _ := newTestStore(t)
	ctx := context.Background()
	log, lb := newLogger()
	host, hc := newHookedManager(s, testNet(), hostIP(3), log)
	hl := runManager(t, host)
	obs := newTestManager(NewStore(s.Client(), testPrefix, nil), testNet(), hostIP(1), nil)
	runManager(t, obs)
	key := s.Key(hl.Subnet, netip.Prefix{})
	orig, err := s.Get(ctx, hl.Subnet)
	if err != nil {
		t.Fatal(err)
	}
	origVal, _ := orig.Attrs.MarshalJSON()

	// The attack: same PublicIP, another VtepMAC, kept on the host's lease.
	put(t, s.Client(), key, vxlanValue(hostIP(3).String(), "0e:66:66:66:66:66"), clientv3.WithLease(clientv3.LeaseID(hl.EtcdLease)))
	waitFor(t, 5*time.Second, "the host's value written back", func() bool {
		l, err := s.Get(ctx, hl.Subnet)
		v, _ := l.Attrs.MarshalJSON()
		return err == nil && string(v) == string(origVal) && l.EtcdLease == hl.EtcdLease
	})
	if held, _, _ := host.Status(); !held || host.Own().EtcdLease != hl.EtcdLease {
		t.Errorf("host after the rewrite: held %t, own %+v", held, host.Own())
	}
	waitFor(t, 5*time.Second, "the rewrite among the warnings", func() bool {
		w := strings.Join(host.Warnings(), "\n")
		return strings.Contains(w, "own lease "+key+" was rewritten") && strings.Contains(w, "BackendData") && strings.Contains(w, "restored")
	})
	if got := hc.get(AlertOwnRewritten); got != 1 {
		t.Errorf("%s counted %d times, want 1", AlertOwnRewritten, got)
	}
	if n := lb.Count("own lease rewritten by someone else"); n != 1 {
		t.Errorf("rewrite logged %d times, want 1", n)
	}

	// The operator's reserve on the live host.
	if err := s.Reserve(ctx, hl.Subnet, Attrs{PublicIP: hostIP(3)}); err != nil {
		t.Fatalf("Reserve on the live host: %v", err)
	}
	got, err := s.Get(ctx, hl.Subnet)
	if err != nil || !got.Reserved() || got.Attrs.BackendType != "vxlan" || got.Attrs.VtepMAC() != orig.Attrs.VtepMAC() {
		t.Fatalf("after reserve: %+v, %v; want a reservation with the host's backend values", got, err)
	}
	snap := waitSnap(t, obs, 5*time.Second, "the reservation seen", atRev(got.ModRevision))
	if p, n := peerAt(snap, hl.Subnet); n != 1 || p.Attrs.BackendType != "vxlan" || p.Attrs.VtepMAC() != orig.Attrs.VtepMAC() {
		t.Errorf("observer's peer for the reserved host: %d, %+v", n, p)
	}
	waitFor(t, 5*time.Second, "the host on its reservation", func() bool { return host.Own().Reserved() })
	if held, _, reason := host.Status(); !held || host.Own().Subnet != hl.Subnet {
		t.Errorf("host after reserve: held %t (%s), own %v", held, reason, host.Own().Subnet)
	}
	if got := hc.get(AlertOwnRewritten); got != 1 {
		t.Errorf("the operator's reserve counted as an attack: %d alerts", got)
	}
	if l, _ := s.Get(ctx, hl.Subnet); !l.Reserved() {
		t.Errorf("the host fought the reservation: %+v", l)
	}
}

// Finding 6: put/delete cycles of huge malformed keys, and huge values,
// must leave nothing behind in the store or the manager, and a bounded log.
func TestMalformedKeysBounded(t *testing.T) {
	_, _, s, _ := newTestStore(t)
	log, lb := newLogger()
	m, c := newHookedManager(s, testNet(), hostIP(1), log)
	runManager(t, m)
	ctx := context.Background()
	huge := strings.Repeat("x", 200<<10)
	const cycles = 50
	for i := range cycles {
		k := fmt.Sprintf("%s%d-%s", s.SubnetsPrefix(), i, huge)
		put(t, s.Client(), k, `{"PublicIP":"10.64.9.9"}`)
		if _, err := s.Client().Delete(ctx, k); err != nil {
			t.Fatal(err)
		}
		v := s.SubnetsPrefix() + "172.30.240.0-24"
		put(t, s.Client(), v, `{"PublicIP":"10.64.9.9","BackendType":"host-gw","BackendData":"`+huge[:100<<10]+`"}`)
		if _, err := s.Client().Delete(ctx, v); err != nil {
			t.Fatal(err)
		}
	}
	rev := put(t, s.Client(), s.SubnetsPrefix()+"172.30.241.0-24", vxlanValue("10.64.9.10", "0e:00:00:00:09:10"))
	waitSnap(t, m, 10*time.Second, "every write seen", atRev(rev))

	m.mu.Lock()
	held := 0
	for l := range m.peers.all() {
		held += len(m.keyOf(l))
	}
	for k := range m.rejected {
		held += len(k)
	}
	for k := range m.claimed {
		held += len(k)
	}
	m.mu.Unlock()
	m.s.mu.Lock()
	for k := range m.s.bad {
		held += len(k)
	}
	bad := len(m.s.bad)
	m.s.mu.Unlock()
	t.Logf("after %d put/delete cycles of 200 KB keys and 100 KB values: %d bytes of keys held, %d remembered as bad, %d bytes of log",
		cycles, held, bad, len(lb.String()))
	if bad != 0 || held > 1<<10 {
		t.Errorf("%d bytes of keys held and %d bad keys remembered after the keys were deleted", held, bad)
	}
	if n := len(lb.String()); n > 16<<10 {
		t.Errorf("%d bytes of log for %d malformed writes, want under 16 KiB", n, 2*cycles)
	}
	if got := c.get(ReasonMalformed); got != 2*cycles {
		t.Errorf("%s counted %d times, want %d (once per write)", ReasonMalformed, got, 2*cycles)
	}
}
