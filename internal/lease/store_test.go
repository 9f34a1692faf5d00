package lease

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/netconf"
)

func TestStoreListSkipsGarbage(t *testing.T) {
	_, cli, s, lb := newTestStore(t)
	ctx := context.Background()
	sp := s.SubnetsPrefix()
	grant, err := cli.Grant(ctx, 3600)
	if err != nil {
		t.Fatal(err)
	}
	put(t, cli, sp+"172.30.19.0-24", `{"PublicIP":"10.64.3.7","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"d6:51:2e:80:5c:69"}}`, clientv3.WithLease(grant.ID))
	put(t, cli, sp+"172.30.20.0-24", `{"PublicIP":"10.64.3.8","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"not-a-mac"}}`)
	put(t, cli, sp+"10.5.52.0-24&fc00::-64", `{"PublicIP":"10.64.3.9","PublicIPv6":"fc00::9"}`)
	// Garbage: a non-JSON value, a key that is no subnet, a nested key, a bad PublicIP.
	put(t, cli, sp+"172.30.21.0-24", `{"PublicIP":`)
	put(t, cli, sp+"hello", `{"PublicIP":"10.64.3.10"}`)
	put(t, cli, sp+"172.30.22.0-24/x", `{"PublicIP":"10.64.3.11"}`)
	put(t, cli, sp+"172.30.23.0-24", `{"PublicIP":"fc00::1"}`)
	put(t, cli, testPrefix+"/config", `{"Network":"172.30.0.0/16"}`) // not under subnets/

	for round := range 2 {
		leases, rev, err := s.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if rev == 0 || len(leases) != 3 {
			t.Fatalf("round %d: List = %d leases at rev %d, want 3: %+v", round, len(leases), rev, leases)
		}
		got := map[string]Lease{}
		for _, l := range leases {
			got[FormatKey(l.Subnet, l.IPv6Subnet)] = l
		}
		if l := got["172.30.19.0-24"]; l.EtcdLease != int64(grant.ID) || l.Reserved() || l.Attrs.VtepMAC() != "d6:51:2e:80:5c:69" {
			t.Errorf("172.30.19.0-24 = %+v", l)
		}
		if l := got["172.30.20.0-24"]; !l.Reserved() || l.Attrs.VtepMAC() != "not-a-mac" {
			t.Errorf("172.30.20.0-24 (backend data kept raw) = %+v", l)
		}
		if l := got["10.5.52.0-24&fc00::-64"]; l.Attrs.PublicIPv6 != netip.MustParseAddr("fc00::9") {
			t.Errorf("dual-stack lease = %+v", l)
		}
	}
	// Each malformed key is logged once, not once per list.
	for _, k := range []string{"172.30.21.0-24", "hello", "172.30.22.0-24/x", "172.30.23.0-24"} {
		if n := lb.Count(`key=` + sp + k + " "); n != 1 {
			t.Errorf("malformed key %s logged %d times, want 1; log:\n%s", k, n, lb)
		}
	}

	// Expirations: one TimeToLive per etcd lease; reservations stay zero.
	leases, _, _ := s.List(ctx)
	exps, err := s.Expirations(ctx, leases)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range leases {
		switch exp := exps.Of(l); {
		case l.Reserved() && !exp.IsZero():
			t.Errorf("reservation %s has expiration %v", l.Subnet, exp)
		case !l.Reserved() && (time.Until(exp) < 59*time.Minute || time.Until(exp) > time.Hour):
			t.Errorf("lease %s expires in %v, want ~1h", l.Subnet, time.Until(exp))
		}
	}
}

func TestStoreGetDeleteReserve(t *testing.T) {
	_, cli, s, _ := newTestStore(t)
	ctx := context.Background()
	p19 := netip.MustParsePrefix("172.30.19.0/24")
	p52 := netip.MustParsePrefix("10.5.52.0/24")
	grant, _ := cli.Grant(ctx, 3600)
	put(t, cli, s.Key(p19, netip.Prefix{}), `{"PublicIP":"10.64.3.7"}`, clientv3.WithLease(grant.ID))
	put(t, cli, s.Key(p52, netip.MustParsePrefix("fc00::/64")), `{"PublicIP":"10.64.3.9"}`)

	if l, err := s.Get(ctx, p19); err != nil || l.Attrs.PublicIP != netip.MustParseAddr("10.64.3.7") {
		t.Errorf("Get(%s) = %+v, %v", p19, l, err)
	}
	if l, err := s.Get(ctx, p52); err != nil || l.IPv6Subnet != netip.MustParsePrefix("fc00::/64") {
		t.Errorf("Get(%s) dual-stack = %+v, %v", p52, l, err)
	}
	if _, err := s.Get(ctx, netip.MustParsePrefix("172.30.1.0/24")); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(missing) err = %v, want ErrNotFound", err)
	}
	// "172.30.19.0-2" must not match "172.30.19.0-24".
	if _, err := s.Get(ctx, netip.MustParsePrefix("172.30.19.0/26")); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(/26) err = %v, want ErrNotFound", err)
	}

	// Reserve refuses a subnet held by another host's live lease…
	other := Attrs{PublicIP: netip.MustParseAddr("10.64.3.99")}
	if err := s.Reserve(ctx, p19, other); !errors.Is(err, ErrSubnetTaken) || !strings.Contains(err.Error(), "10.64.3.7") {
		t.Errorf("Reserve over live lease: %v, want ErrSubnetTaken naming the holder", err)
	}
	// …and Unreserve refuses to delete a live lease.
	if err := s.Unreserve(ctx, p19); err == nil || !strings.Contains(err.Error(), "live lease") {
		t.Errorf("Unreserve(live lease) = %v", err)
	}
	// The holder's own IP turns its lease into a reservation in place.
	if err := s.Reserve(ctx, p19, Attrs{PublicIP: netip.MustParseAddr("10.64.3.7")}); err != nil {
		t.Fatalf("Reserve for the holder: %v", err)
	}
	if l, _ := s.Get(ctx, p19); !l.Reserved() {
		t.Errorf("after Reserve: %+v, want a reservation", l)
	}
	// A new reservation, then unreserve it.
	p40 := netip.MustParsePrefix("172.30.40.0/24")
	if err := s.Reserve(ctx, p40, other); err != nil {
		t.Fatal(err)
	}
	if l, err := s.Get(ctx, p40); err != nil || !l.Reserved() || l.Attrs.PublicIP != other.PublicIP {
		t.Errorf("reserved lease = %+v, %v", l, err)
	}
	if err := s.Unreserve(ctx, p40); err != nil {
		t.Fatal(err)
	}
	if err := s.Unreserve(ctx, p40); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Unreserve = %v, want ErrNotFound", err)
	}
	// Reserving the IPv4 part of a dual-stack key must not create a twin.
	if err := s.Reserve(ctx, p52, other); !errors.Is(err, ErrSubnetTaken) && err != nil {
		t.Errorf("Reserve(dual-stack subnet) = %v", err)
	}
	if resp, _ := cli.Get(ctx, s.Key(p52, netip.Prefix{})); len(resp.Kvs) != 0 {
		t.Errorf("Reserve created a second key for %s", p52)
	}

	if err := s.Delete(ctx, p52); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, p52); !errors.Is(err, ErrNotFound) {
		t.Errorf("after Delete: %v", err)
	}
	if err := s.Delete(ctx, p52); !errors.Is(err, ErrNotFound) {
		t.Errorf("Delete(missing) = %v", err)
	}
}

func parseConfig(b []byte) (netconf.Config, error) {
	c, _, err := netconf.Parse(b)
	return c, err
}

func TestWaitConfig(t *testing.T) {
	_, cli, s, _ := newTestStore(t)
	log, lb := newLogger()

	type result struct {
		cfg netconf.Config
		err error
	}
	start := func(ctx context.Context) chan result {
		ch := make(chan result, 1)
		go func() {
			c, err := WaitConfig(ctx, s, parseConfig, log)
			ch <- result{c, err}
		}()
		return ch
	}

	t.Run("missing then written", func(t *testing.T) {
		ch := start(context.Background())
		waitFor(t, 5*time.Second, "the waiting message", func() bool { return lb.Count("waiting for network config") == 1 })
		if n := lb.Count("key=" + s.ConfigKey()); n != 1 {
			t.Errorf("waiting message names the key %d times", n)
		}
		written := time.Now()
		put(t, cli, s.ConfigKey(), `{"Network":"172.30.0.0/16","Backend":{"Type":"vxlan"}}`)
		select {
		case r := <-ch:
			if r.err != nil || r.cfg.Network != netip.MustParsePrefix("172.30.0.0/16") {
				t.Fatalf("WaitConfig = %+v, %v", r.cfg, r.err)
			}
			t.Logf("config picked up %v after it was written", time.Since(written))
			if d := time.Since(written); d > 2*time.Second {
				t.Errorf("took %v to notice the config", d)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("WaitConfig did not return after the config was written")
		}
		if n := lb.Count("waiting for network config"); n != 1 {
			t.Errorf("waiting logged %d times, want once", n)
		}
	})

	t.Run("invalid then fixed", func(t *testing.T) {
		put(t, cli, s.ConfigKey(), `{"Network":"172.30.0.0/16","SubnetLen":33}`)
		ch := start(context.Background())
		waitFor(t, 5*time.Second, "the invalid-config message", func() bool { return lb.Count("invalid network config") == 1 })
		// The same invalid value again: no new line. A different one: one more.
		put(t, cli, s.ConfigKey(), `{"Network":"172.30.0.0/16","SubnetLen":33}`)
		put(t, cli, s.ConfigKey(), `{"Network":"not-a-cidr"}`)
		waitFor(t, 5*time.Second, "the second invalid-config message", func() bool { return lb.Count("invalid network config") == 2 })
		out := lb.String()
		if !strings.Contains(out, "key="+s.ConfigKey()) || !strings.Contains(out, "not-a-cidr") {
			t.Errorf("log does not name key and value:\n%s", out)
		}
		put(t, cli, s.ConfigKey(), `{"Network":"10.9.0.0/16"}`)
		select {
		case r := <-ch:
			if r.err != nil || r.cfg.Network != netip.MustParsePrefix("10.9.0.0/16") {
				t.Fatalf("WaitConfig = %+v, %v", r.cfg, r.err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("WaitConfig did not return after the config was fixed")
		}
		if n := lb.Count("invalid network config"); n != 2 {
			t.Errorf("invalid config logged %d times, want 2 (once per distinct value)", n)
		}
	})

	t.Run("cancel", func(t *testing.T) {
		if _, err := cli.Delete(context.Background(), s.ConfigKey()); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		ch := start(ctx)
		time.Sleep(100 * time.Millisecond) // let it reach the watch; not an assertion
		cancel()
		t0 := time.Now()
		select {
		case r := <-ch:
			if !errors.Is(r.err, context.Canceled) {
				t.Errorf("err = %v, want context.Canceled", r.err)
			}
			if d := time.Since(t0); d > time.Second {
				t.Errorf("returned %v after cancel", d)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("WaitConfig ignored cancel")
		}
	})
}

// TestStoreListPages: a list in many pages (3 keys each here) returns
// every well-formed lease once, at the revision of its first page, with
// malformed keys on page boundaries skipped, and a key beyond the subnets
// range (the config, a sibling prefix) never read.
func TestStoreListPages(t *testing.T) {
	defer func(n int) { listPage = n }(listPage)
	listPage = 3
	_, cli, s, _ := newTestStore(t)
	ctx := context.Background()
	sp := s.SubnetsPrefix()
	want := map[string]bool{}
	for i := range 10 {
		k := FormatKey(netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 30, byte(10 + i), 0}), 24), netip.Prefix{})
		put(t, cli, sp+k, `{"PublicIP":"10.64.3.`+string(rune('1'+i%9))+`"}`)
		want[k] = true
		if i%3 == 1 {
			put(t, cli, sp+k+"x", `{"PublicIP":"10.64.3.1"}`) // malformed key, sorted right after a good one
		}
	}
	put(t, cli, testPrefix+"/subnets0", `{"PublicIP":"10.64.3.1"}`) // just past the range's end
	last := put(t, cli, testPrefix+"/config", `{"Network":"172.30.0.0/16"}`)
	leases, rev, err := s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rev != last {
		t.Errorf("List revision %d, want %d (the store's revision at the first page)", rev, last)
	}
	got := map[string]bool{}
	for _, l := range leases {
		k := FormatKey(l.Subnet, l.IPv6Subnet)
		if got[k] || !want[k] {
			t.Errorf("List returned %s twice or unexpectedly", k)
		}
		got[k] = true
	}
	if len(got) != len(want) {
		t.Errorf("List returned %d leases in pages of %d, want %d: %v", len(got), listPage, len(want), got)
	}
}
