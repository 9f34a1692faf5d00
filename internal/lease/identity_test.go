package lease

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// Two hosts with one PublicIP and different identities (a cloned VM, two
// hosts behind one NAT address): the second is refused with an error naming
// both and the fix, and the first keeps its lease untouched.
func TestIdentitySamePublicIPRefused(t *testing.T) {
	_, cli, s, _ := newTestStore(t)
	log, _ := newLogger()
	ip := hostIP(1)
	a := newTestManager(s, testNet(), ip, log)
	a.cfg.NodeName = "host-a"
	own := runManager(t, a)
	val := readValue(t, s, own)
	if !strings.Contains(val, `"WeftNodeName":"host-a"`) {
		t.Fatalf("lease value %s: want WeftNodeName host-a", val)
	}

	var alerts []string
	b := newTestManager(s, testNet(), ip, log)
	b.cfg.NodeName = "host-b"
	b.cfg.Hooks.Alert = func(k string) { alerts = append(alerts, k) }
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := b.Acquire(ctx)
	var ic *IdentityConflictError
	if !errors.As(err, &ic) {
		t.Fatalf("second host with the same PublicIP: err %v, want an IdentityConflictError", err)
	}
	for _, want := range []string{`"host-a"`, `"host-b"`, ip.String(), own.Subnet.String(), "-public-ip", "-node-name", "weftctl decommission"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	if len(alerts) != 1 || alerts[0] != AlertIdentityConflict {
		t.Errorf("alerts %v, want one %s", alerts, AlertIdentityConflict)
	}
	if got := readValue(t, s, own); got != val {
		t.Errorf("first host's lease rewritten: %s, was %s", got, val)
	}
	if a.Own().Subnet != own.Subnet {
		t.Errorf("first host's subnet %v, want %v", a.Own().Subnet, own.Subnet)
	}
	_ = cli
}

// A lease flanneld wrote (no identity) naming our PublicIP is adopted, and
// our identity is written into it; one with our identity is adopted too.
func TestIdentityAdoptsFlanneldLease(t *testing.T) {
	_, cli, s, _ := newTestStore(t)
	log, _ := newLogger()
	ip := hostIP(2)
	sub := netip.MustParsePrefix("172.30.77.0/24")
	put(t, cli, s.Key(sub, netip.Prefix{}), `{"PublicIP":"`+ip.String()+`","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"d6:51:0a:40:00:02"}}`)
	m := newTestManager(s, testNet(), ip, log)
	m.cfg.NodeName = "host-c"
	own := runManager(t, m)
	if own.Subnet != sub {
		t.Fatalf("adopted subnet %v, want flanneld's %v", own.Subnet, sub)
	}
	if val := readValue(t, s, own); !strings.Contains(val, `"WeftNodeName":"host-c"`) || !strings.HasPrefix(val, `{"PublicIP":"`+ip.String()+`","PublicIPv6":null,"BackendType":"vxlan"`) {
		t.Fatalf("adopted lease value %s: want flannel's fields then WeftNodeName host-c", val)
	}
}

func readValue(t *testing.T, s *Store, l Lease) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := s.cli.Get(ctx, s.Key(l.Subnet, l.IPv6Subnet))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("get lease %v: %v (%d keys)", l.Subnet, err, len(resp.Kvs))
	}
	return string(resp.Kvs[0].Value)
}

func TestCheckNodeName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"4c4c4544004e3510", true}, {"node-1.example.com", true}, {"a:b_c", true},
		{"", false}, {"has space", false}, {"quote\"", false}, {strings.Repeat("a", 254), false}, {"ü", false},
	} {
		if err := CheckNodeName(tc.name); (err == nil) != tc.ok {
			t.Errorf("CheckNodeName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
	if _, err := ParseAttrs([]byte(`{"PublicIP":"10.0.0.1","WeftNodeName":"bad name"}`)); err == nil || !strings.Contains(err.Error(), "WeftNodeName") {
		t.Errorf("ParseAttrs with a bad WeftNodeName: %v, want an error naming the field", err)
	}
	a, err := ParseAttrs([]byte(`{"PublicIP":"10.0.0.1","PublicIPv6":null,"WeftNodeName":"n1"}`))
	if err != nil || a.NodeName != "n1" {
		t.Fatalf("ParseAttrs: %+v, %v", a, err)
	}
	b, _ := a.MarshalJSON()
	if string(b) != `{"PublicIP":"10.0.0.1","PublicIPv6":null,"WeftNodeName":"n1"}` {
		t.Errorf("MarshalJSON: %s", b)
	}
}
