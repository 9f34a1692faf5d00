package migratev2

import (
	"context"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netconf"
	"github.com/weft-net/weft/internal/testutil/etcdtest"
	"github.com/weft-net/weft/internal/testutil/etcdv2test"
)

// The ops note's network (shared/seed): its config, as `etcdctl get` shows
// it, and its leases, as `etcdctl ls …/subnets/<subnet>` shows them.
const (
	seedPrefix = "/kube-centos/network"
	seedConfig = `{ "Network": "172.30.0.0/16", "SubnetLen": 24, "Backend": { "Type": "vxlan" } }`
	lease19    = `{"PublicIP":"10.64.3.7","BackendType":"vxlan","BackendData":{"VtepMAC":"d6:51:2e:80:5c:69"}}`
	lease60    = `{"PublicIP":"10.64.3.9","BackendType":"vxlan","BackendData":{"VtepMAC":"d6:51:2e:80:5c:6b"}}`
	lease83    = `{"PublicIP":"10.64.3.8","BackendType":"vxlan","BackendData":{"VtepMAC":"d6:51:2e:80:5c:6a"}}`
	badLease   = `{"PublicIP":"10.64.3","BackendType":"vxlan"}`
)

// seedV2 writes the ops note's network into etcd 3.4's v2 store with
// `ETCDCTL_API=2 etcdctl mk`: the config, two leases with TTLs (flannel
// 0.7's 24 h, and one with an hour left), a reservation (no TTL) and a
// lease whose PublicIP is not an address.
func seedV2(t *testing.T, srv *etcdv2test.Server) {
	srv.MkV2(t, seedPrefix+"/config", seedConfig, 0)
	srv.MkV2(t, seedPrefix+"/subnets/172.30.19.0-24", lease19, 86400)
	srv.MkV2(t, seedPrefix+"/subnets/172.30.60.0-24", lease60, 3600)
	srv.MkV2(t, seedPrefix+"/subnets/172.30.83.0-24", lease83, 0)
	srv.MkV2(t, seedPrefix+"/subnets/172.30.38.0-24", badLease, 86400)
}

func readPlan(t *testing.T, srv *etcdv2test.Server) Plan {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	read := time.Now()
	nodes, err := NewV2Client([]string{srv.Endpoint}, nil, "", "").List(ctx, seedPrefix)
	if err != nil {
		t.Fatalf("list v2: %v", err)
	}
	return NewPlan(seedPrefix, nodes, read)
}

func migrate(t *testing.T, cli *clientv3.Client, p Plan, apply bool) map[string]Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	rs, err := Migrate(ctx, cli, p, apply)
	if err != nil {
		t.Fatalf("migrate (apply %t): %v", apply, err)
	}
	m := map[string]Result{}
	for _, r := range rs {
		m[strings.TrimPrefix(r.Item.Key, seedPrefix+"/")] = r
	}
	return m
}

func revision(t *testing.T, cli *clientv3.Client) int64 {
	t.Helper()
	resp, err := cli.Get(context.Background(), "/", clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision
}

func leaseCount(t *testing.T, cli *clientv3.Client) int {
	t.Helper()
	resp, err := cli.Leases(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return len(resp.Leases)
}

// TestMigrateFromEtcd34 migrates flannel 0.7's data, written with the ops
// note's v2 etcdctl, into the same etcd's v3 store: dry run writes nothing,
// --apply writes the config, the leases with their remaining TTLs and the
// reservation without lease, leaves a conflicting v3 key alone, reports the
// malformed lease, and a second --apply writes nothing.
func TestMigrateFromEtcd34(t *testing.T) {
	srv := etcdv2test.Start(t)
	seedV2(t, srv)
	cli := srv.Client(t)
	ctx := context.Background()

	p := readPlan(t, srv)
	if len(p.Problems) != 1 || p.Problems[0].Key != seedPrefix+"/subnets/172.30.38.0-24" ||
		!strings.Contains(p.Problems[0].Reason, `PublicIP "10.64.3": must be an IPv4 address`) {
		t.Fatalf("problems = %+v, want the malformed 172.30.38.0-24 with its rule", p.Problems)
	}
	if len(p.Items) != 4 {
		t.Fatalf("plan has %d items, want config, 2 leases, 1 reservation: %+v", len(p.Items), p.Items)
	}

	// Dry run: every item would be written, and etcd is untouched: no key,
	// no lease granted, same revision.
	rev0 := revision(t, cli)
	dry := migrate(t, cli, p, false)
	for k, r := range dry {
		if r.Action != ActionWrite || r.Written {
			t.Errorf("dry run %s: action %s written %t, want a write not done", k, r.Action, r.Written)
		}
	}
	if got := dry["subnets/172.30.19.0-24"].TTL; got < 86400-5 || got > 86400 {
		t.Errorf("dry run TTL of 172.30.19.0-24 = %d, want 86400 ± 5", got)
	}
	if rev := revision(t, cli); rev != rev0 || leaseCount(t, cli) != 0 {
		t.Fatalf("dry run wrote: revision %d -> %d, %d etcd leases", rev0, rev, leaseCount(t, cli))
	}

	// A host already in v3 under the key of a v2 lease, with another value:
	// reported, never overwritten.
	conflicting := `{"PublicIP":"10.64.3.99","BackendType":"vxlan","BackendData":{"VtepMAC":"d6:51:2e:80:5c:99"}}`
	if _, err := cli.Put(ctx, seedPrefix+"/subnets/172.30.60.0-24", conflicting); err != nil {
		t.Fatal(err)
	}

	applied := migrate(t, cli, p, true)
	want := map[string]Action{"config": ActionWrite, "subnets/172.30.19.0-24": ActionWrite,
		"subnets/172.30.83.0-24": ActionWrite, "subnets/172.30.60.0-24": ActionConflict}
	for k, a := range want {
		if r := applied[k]; r.Action != a || r.Written != (a == ActionWrite) {
			t.Errorf("apply %s: action %s written %t (%s), want %s", k, r.Action, r.Written, r.Detail, a)
		}
	}
	if d := applied["subnets/172.30.60.0-24"].Detail; !strings.Contains(d, "10.64.3.99") {
		t.Errorf("conflict detail %q does not show the v3 value", d)
	}

	// What v3 holds now: the v2 values, byte for byte; the lease with its
	// remaining TTL; the reservation and the config without lease; the
	// conflicting key as it was.
	get := func(key string) (string, clientv3.LeaseID) {
		resp, err := cli.Get(ctx, seedPrefix+"/"+key)
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("v3 get %s: %v, %d keys", key, err, len(resp.Kvs))
		}
		return string(resp.Kvs[0].Value), clientv3.LeaseID(resp.Kvs[0].Lease)
	}
	if v, id := get("config"); v != seedConfig || id != 0 {
		t.Errorf("v3 config = %q lease %x, want %q without lease", v, id, seedConfig)
	}
	if v, id := get("subnets/172.30.83.0-24"); v != lease83 || id != 0 {
		t.Errorf("v3 reservation = %q lease %x, want %q without lease", v, id, lease83)
	}
	if v, _ := get("subnets/172.30.60.0-24"); v != conflicting {
		t.Errorf("conflicting v3 key overwritten: %q", v)
	}
	v, id := get("subnets/172.30.19.0-24")
	if v != lease19 || id == 0 {
		t.Fatalf("v3 lease = %q lease %x, want %q with an etcd lease", v, id, lease19)
	}
	ttl, err := cli.TimeToLive(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if ttl.TTL < 86400-5 || ttl.TTL > 86400 || ttl.GrantedTTL > 86400 {
		t.Errorf("etcd lease of 172.30.19.0-24: TTL %d (granted %d), want 86400 ± 5", ttl.TTL, ttl.GrantedTTL)
	}
	if resp, err := cli.Get(ctx, seedPrefix+"/subnets/172.30.38.0-24"); err != nil || len(resp.Kvs) != 0 {
		t.Errorf("the malformed lease was written to v3 (%v)", err)
	}
	// etcd hands lease IDs out in grant order: one per written lease, none
	// left over from the conflict.
	if n := leaseCount(t, cli); n != 1 {
		t.Errorf("%d etcd leases after apply, want 1 (the one written lease)", n)
	}

	// A second run: nothing to write, and nothing written.
	rev1 := revision(t, cli)
	again := migrate(t, cli, readPlan(t, srv), true)
	for k, r := range again {
		want := ActionPresent
		if k == "subnets/172.30.60.0-24" {
			want = ActionConflict
		}
		if r.Action != want || r.Written {
			t.Errorf("second apply %s: %s written %t (%s), want %s", k, r.Action, r.Written, r.Detail, want)
		}
	}
	if rev := revision(t, cli); rev != rev1 || leaseCount(t, cli) != 1 {
		t.Errorf("second apply wrote: revision %d -> %d, %d etcd leases", rev1, rev, leaseCount(t, cli))
	}
}

// TestMigratedHostsKeepTheirSubnets proves the point of the migration: a
// weft host (a lease.Manager, as weftd runs it) whose PublicIP is in a
// migrated lease or reservation takes that subnet from v3, and a new host
// takes another one.
func TestMigratedHostsKeepTheirSubnets(t *testing.T) {
	srv := etcdv2test.Start(t)
	seedV2(t, srv)
	cli := srv.Client(t)
	migrate(t, cli, readPlan(t, srv), true)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st := lease.NewStore(cli, seedPrefix, nil)
	raw, _, err := st.GetConfig(ctx)
	if err != nil {
		t.Fatalf("migrated config: %v", err)
	}
	cfg, _, err := netconf.Parse(raw)
	if err != nil {
		t.Fatalf("migrated config: %v", err)
	}
	host := func(ip, mac string) lease.Lease {
		t.Helper()
		m := lease.NewManager(lease.ManagerConfig{Store: st, Network: cfg, PublicIP: netip.MustParseAddr(ip),
			BackendType: "vxlan", BackendData: []byte(`{"VNI":1,"VtepMAC":"` + mac + `"}`)})
		l, err := m.Acquire(ctx)
		if err != nil {
			t.Fatalf("host %s: acquire: %v", ip, err)
		}
		return l
	}
	if l := host("10.64.3.7", "d6:51:2e:80:5c:69"); l.Subnet.String() != "172.30.19.0/24" || l.Reserved() {
		t.Errorf("host 10.64.3.7 took %s (reserved %t), want its migrated lease 172.30.19.0/24", l.Subnet, l.Reserved())
	}
	if l := host("10.64.3.8", "d6:51:2e:80:5c:6a"); l.Subnet.String() != "172.30.83.0/24" || !l.Reserved() {
		t.Errorf("host 10.64.3.8 took %s (reserved %t), want its migrated reservation 172.30.83.0/24", l.Subnet, l.Reserved())
	}
	if l := host("10.64.3.20", "d6:51:2e:80:5c:70"); l.Subnet.String() == "172.30.19.0/24" || l.Subnet.String() == "172.30.83.0/24" ||
		l.Subnet.String() == "172.30.60.0/24" {
		t.Errorf("a new host took a migrated subnet: %s", l.Subnet)
	}

	// weftd rewrote 10.64.3.7's lease with its own value (VNI added): a
	// later run sees the same host there, not a conflict, and writes nothing.
	again := migrate(t, cli, readPlan(t, srv), true)
	if r := again["subnets/172.30.19.0-24"]; r.Action != ActionSameHost {
		t.Errorf("after the host moved to weft: %s (%s), want %s", r.Action, r.Detail, ActionSameHost)
	}
}

// TestWriteRace: a key written by someone else between the v3 read and the
// write (a host starting weft meanwhile) is not overwritten: the
// transaction only creates, and the etcd lease granted for it is revoked.
func TestWriteRace(t *testing.T) {
	srv := etcdtest.New(t)
	cli := etcdtest.NewClient(t, srv)
	ctx := context.Background()
	key := seedPrefix + "/subnets/172.30.19.0-24"
	if _, err := cli.Put(ctx, key, lease60); err != nil {
		t.Fatal(err)
	}
	it := Item{Key: key, Value: lease19, Kind: KindLease, TTL: 600, PublicIP: netip.MustParseAddr("10.64.3.7")}
	r := write(ctx, cli, Result{Item: it, Action: ActionWrite}, time.Now())
	if r.Written || r.Action != ActionConflict {
		t.Errorf("write over an existing key: %s written %t (%s), want a conflict", r.Action, r.Written, r.Detail)
	}
	if resp, err := cli.Get(ctx, key); err != nil || string(resp.Kvs[0].Value) != lease60 {
		t.Errorf("existing key overwritten: %v %v", resp, err)
	}
	if n := leaseCount(t, cli); n != 0 {
		t.Errorf("%d etcd leases left, want the unused one revoked", n)
	}
}

// TestPlanRules checks each rule a v2 key is held to, with the rule named.
func TestPlanRules(t *testing.T) {
	cfgNode := Node{Key: "/n/config", Value: seedConfig}
	cases := []struct {
		node Node
		want string
	}{
		{Node{Key: "/n/subnets/172.30.7.5-24", Value: lease19, TTL: 10, Expires: true}, "host bits set"},
		{Node{Key: "/n/subnets/10.1.0.0-24", Value: lease19, TTL: 10, Expires: true}, "is not a /24 inside Network 172.30.0.0/16"},
		{Node{Key: "/n/subnets/172.30.5.0-25", Value: lease19, TTL: 10, Expires: true}, "is not a /24 inside Network"},
		{Node{Key: "/n/subnets/172.30.5.0-24", Value: `{"PublicIP":"127.0.0.1"}`}, "PublicIP 127.0.0.1 is a loopback address"},
		{Node{Key: "/n/subnets/172.30.5.0-24", Value: `{"PublicIP":"172.30.9.1"}`}, "lies inside the overlay"},
		{Node{Key: "/n/subnets/172.30.5.0-24", Value: `not json`}, "not a JSON lease object"},
		{Node{Key: "/n/subnets/172.30.5.0-24", Value: lease19, TTL: 0, Expires: true}, "expired in the v2 store"},
		{Node{Key: "/n/subnets/x", Dir: true}, "a directory under /n/subnets/"},
		{Node{Key: "/n/other", Value: "x"}, "neither the network config /n/config nor a lease"},
	}
	for _, c := range cases {
		p := NewPlan("/n/", []Node{{Key: "/n", Dir: true}, {Key: "/n/subnets", Dir: true}, cfgNode, c.node}, time.Now())
		if len(p.Problems) != 1 || p.Problems[0].Key != c.node.Key || !strings.Contains(p.Problems[0].Reason, c.want) {
			t.Errorf("%s %q: problems %+v, want one naming %q", c.node.Key, c.node.Value, p.Problems, c.want)
		}
		if len(p.Items) != 1 || p.Items[0].Kind != KindConfig {
			t.Errorf("%s: items %+v, want the config only", c.node.Key, p.Items)
		}
	}
	bad := NewPlan("/n", []Node{{Key: "/n/config", Value: `{"Network":"0.0.0.0/0"}`}}, time.Now())
	if len(bad.Problems) != 1 || !strings.Contains(bad.Problems[0].Reason, "network config: ") || len(bad.Items) != 0 {
		t.Errorf("invalid config: %+v", bad)
	}
	ttlCfg := NewPlan("/n", []Node{{Key: "/n/config", Value: seedConfig, TTL: 5, Expires: true}}, time.Now())
	if len(ttlCfg.Problems) != 1 || !strings.Contains(ttlCfg.Problems[0].Reason, "must not expire") {
		t.Errorf("config with TTL: %+v", ttlCfg)
	}
}

// TestV2NotServed: an etcd without the v2 store (the embedded 3.6+ etcd;
// 3.4 without --enable-v2 answers the same) is named as such.
func TestV2NotServed(t *testing.T) {
	srv := etcdtest.New(t)
	_, err := NewV2Client([]string{srv.Endpoint}, nil, "", "").List(context.Background(), seedPrefix)
	if err == nil || !strings.Contains(err.Error(), "does not serve the v2 API") {
		t.Fatalf("List against an etcd without v2: %v, want it to say v2 is not served", err)
	}
}

// TestV2BasicAuth: on an etcd whose v2 store has auth on (root user, guest
// role stripped of access), the read without credentials is refused with a
// clear error and the read with -etcd-username/password (HTTP basic auth)
// lists the keys.
func TestV2BasicAuth(t *testing.T) {
	srv := etcdv2test.Start(t)
	seedV2(t, srv)
	do := func(method, path, body string, auth bool) {
		t.Helper()
		req, err := http.NewRequest(method, srv.Endpoint+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		if auth {
			req.SetBasicAuth("root", "s3cret")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			t.Fatalf("%s %s: %s %s", method, path, resp.Status, b)
		}
	}
	// etcd's v2 auth API, as `etcdctl user add root; auth enable; role
	// revoke guest` does it.
	do("PUT", "/v2/auth/users/root", `{"user":"root","password":"s3cret"}`, false)
	do("PUT", "/v2/auth/enable", "", false)
	do("PUT", "/v2/auth/roles/guest", `{"role":"guest","revoke":{"kv":{"read":["/*"],"write":["/*"]}}}`, true)

	ctx := context.Background()
	_, err := NewV2Client([]string{srv.Endpoint}, nil, "", "").List(ctx, seedPrefix)
	if err == nil || !strings.Contains(err.Error(), "401 Unauthorized: the v2 store needs -etcd-username") {
		t.Errorf("read without credentials: %v, want a 401 naming -etcd-username", err)
	}
	nodes, err := NewV2Client([]string{srv.Endpoint}, nil, "root", "s3cret").List(ctx, seedPrefix)
	if err != nil {
		t.Fatalf("read with credentials: %v", err)
	}
	if p := NewPlan(seedPrefix, nodes, time.Now()); len(p.Items) != 4 {
		t.Errorf("read with credentials: %d items, want 4", len(p.Items))
	}
}
