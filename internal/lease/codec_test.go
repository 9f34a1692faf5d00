package lease

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
)

func TestParseKey(t *testing.T) {
	good := []struct {
		key    string
		v4, v6 string
	}{
		{"172.30.19.0-24", "172.30.19.0/24", ""},
		{"10.5.52.0-24&fc00::-64", "10.5.52.0/24", "fc00::/64"},
		{"0.0.0.0-0&fc00:0:0:1::-64", "", "fc00:0:0:1::/64"},
		{"10.0.0.0-8", "10.0.0.0/8", ""},
	}
	for _, g := range good {
		v4, v6, err := ParseKey(g.key)
		if err != nil {
			t.Errorf("ParseKey(%q): %v", g.key, err)
			continue
		}
		if (g.v4 == "" && v4.IsValid()) || (g.v4 != "" && v4 != netip.MustParsePrefix(g.v4)) {
			t.Errorf("ParseKey(%q) v4 = %v, want %q", g.key, v4, g.v4)
		}
		if (g.v6 == "" && v6.IsValid()) || (g.v6 != "" && v6 != netip.MustParsePrefix(g.v6)) {
			t.Errorf("ParseKey(%q) v6 = %v, want %q", g.key, v6, g.v6)
		}
		if got := FormatKey(v4, v6); got != g.key {
			t.Errorf("FormatKey(ParseKey(%q)) = %q", g.key, got)
		}
	}
	bad := map[string]string{
		"":                        "address",
		"172.30.19.0/24":          "address",
		"172.30.19.1-24":          "host bits",
		"172.30.19.0-33":          "prefix length",
		"172.30.19.0-024":         "prefix length",
		"172.30.19.0-":            "prefix length",
		"fc00::-64":               "not an IPv4",
		"10.5.52.0-24&10.0.0.0-8": "not an IPv6",
		"10.5.52.0-24&FC00::-64":  "canonically",
		"10.5.52.0-24&fc00::1-64": "host bits",
		"0.0.0.0-0":               "needs an IPv6",
		"10.5.52.0-24&":           "address",
		"010.5.52.0-24":           "IPv4",
	}
	for key, want := range bad {
		_, _, err := ParseKey(key)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseKey(%q) error = %v, want one mentioning %q", key, err, want)
		}
	}
}

func TestAttrsJSON(t *testing.T) {
	// flannel's exact bytes for a vxlan lease.
	flannel := `{"PublicIP":"10.64.3.7","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"d6:51:2e:80:5c:69"}}`
	a, err := ParseAttrs([]byte(flannel))
	if err != nil {
		t.Fatal(err)
	}
	if a.PublicIP != netip.MustParseAddr("10.64.3.7") || a.BackendType != "vxlan" || a.VtepMAC() != "d6:51:2e:80:5c:69" {
		t.Errorf("parsed %+v", a)
	}
	out, err := a.MarshalJSON()
	if err != nil || string(out) != flannel {
		t.Errorf("MarshalJSON = %s, %v; want %s", out, err, flannel)
	}
	// Through encoding/json too (Attrs as a value inside another struct).
	out, _ = json.Marshal(struct{ A Attrs }{a})
	if !bytes.Contains(out, []byte(flannel)) {
		t.Errorf("json.Marshal = %s", out)
	}
	// host-gw: no BackendData; a reservation: PublicIP only.
	for in, want := range map[string]string{
		`{"PublicIP":"10.0.0.1","BackendType":"host-gw"}`:                                    `{"PublicIP":"10.0.0.1","PublicIPv6":null,"BackendType":"host-gw"}`,
		`{"PublicIP":"10.0.0.1"}`:                                                            `{"PublicIP":"10.0.0.1","PublicIPv6":null}`,
		`{"publicip":"10.0.0.1","BackendData":null}`:                                         `{"PublicIP":"10.0.0.1","PublicIPv6":null}`,
		`{"PublicIP":"10.0.0.1","PublicIPv6":"FC00::1","BackendData": { "VtepMAC" : "zz" }}`: `{"PublicIP":"10.0.0.1","PublicIPv6":"fc00::1","BackendData":{"VtepMAC":"zz"}}`,
	} {
		a, err := ParseAttrs([]byte(in))
		if err != nil {
			t.Errorf("ParseAttrs(%s): %v", in, err)
			continue
		}
		if out, _ := a.MarshalJSON(); string(out) != want {
			t.Errorf("round trip of %s = %s, want %s", in, out, want)
		}
	}
	bad := map[string]string{
		`not json`:                  "not a JSON lease object",
		`[1]`:                       "not a JSON lease object",
		`{}`:                        "PublicIP is missing",
		`null`:                      "PublicIP is missing",
		`{"PublicIP":"fc00::1"}`:    `PublicIP "fc00::1": must be an IPv4`,
		`{"PublicIP":"10.0.0.300"}`: `PublicIP "10.0.0.300"`,
		`{"PublicIP":"10.0.0.1","PublicIPv6":"1.2.3.4"}`: `PublicIPv6 "1.2.3.4"`,
		`{"PublicIP":1}`: "not a JSON lease object",
	}
	for in, want := range bad {
		_, err := ParseAttrs([]byte(in))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseAttrs(%s) error = %v, want one containing %q", in, err, want)
		}
	}
}

func FuzzParseKey(f *testing.F) {
	for _, s := range []string{"172.30.19.0-24", "10.5.52.0-24&fc00::-64", "0.0.0.0-0&fc00::-64", "1.2.3.4-32", "x-1", "1.2.3.0-24&", "::ffff:1.2.3.0-120"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, key string) {
		v4, v6, err := ParseKey(key)
		if err != nil {
			return
		}
		// Every accepted key maps back to itself: Get/Delete by parsed
		// subnet always address the same etcd key.
		if got := FormatKey(v4, v6); got != key {
			t.Fatalf("FormatKey(ParseKey(%q)) = %q", key, got)
		}
		if v4.IsValid() && (!v4.Addr().Is4() || v4.Masked() != v4) {
			t.Fatalf("ParseKey(%q) v4 = %v", key, v4)
		}
		if v6.IsValid() && (v6.Addr().Is4() || v6.Masked() != v6) {
			t.Fatalf("ParseKey(%q) v6 = %v", key, v6)
		}
	})
}

func FuzzParseAttrs(f *testing.F) {
	for _, s := range []string{
		`{"PublicIP":"10.64.3.7","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"d6:51:2e:80:5c:69"}}`,
		`{"PublicIP":"10.0.0.1"}`, `{"PublicIP":"10.0.0.1","PublicIPv6":"fc00::1","BackendV6Data":[1,2]}`, `{}`, `nul`,
		`{"PublicIP":"10.0.0.1","PublicIPv6":null,"BackendType":"udp","WeftNodeName":"n1","WeftUDPKernelDecap":true}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		a, err := ParseAttrs(data)
		if err != nil {
			return
		}
		if !a.PublicIP.Is4() {
			t.Fatalf("accepted PublicIP %v", a.PublicIP)
		}
		out, err := a.MarshalJSON()
		if err != nil {
			t.Fatalf("MarshalJSON of parsed %q: %v", data, err)
		}
		b, err := ParseAttrs(out)
		if err != nil {
			t.Fatalf("re-parse of %s: %v", out, err)
		}
		out2, _ := b.MarshalJSON()
		if !bytes.Equal(out, out2) {
			t.Fatalf("not stable: %s then %s", out, out2)
		}
	})
}
