package netconf

import (
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

var pfx = netip.MustParsePrefix

var equateNetip = cmpopts.EquateComparable(netip.Prefix{}, netip.Addr{})

func TestParseDefaults(t *testing.T) {
	tests := []struct {
		name string
		json string
		want Config
	}{
		{
			name: "seed config",
			json: `{ "Network": "172.30.0.0/16", "SubnetLen": 24, "Backend": { "Type": "vxlan" } }`,
			want: Config{EnableIPv4: true, Network: pfx("172.30.0.0/16"), SubnetLen: 24,
				SubnetMin: pfx("172.30.1.0/24"), SubnetMax: pfx("172.30.255.0/24"),
				BackendType: "vxlan", Backend: json.RawMessage(`{ "Type": "vxlan" }`)},
		},
		{
			name: "no backend is vxlan, SubnetLen 24 for a /16",
			json: `{"Network":"10.5.0.0/16"}`,
			want: Config{EnableIPv4: true, Network: pfx("10.5.0.0/16"), SubnetLen: 24,
				SubnetMin: pfx("10.5.1.0/24"), SubnetMax: pfx("10.5.255.0/24"), BackendType: "vxlan"},
		},
		{
			name: "a /22 still gets /24s",
			json: `{"Network":"10.5.4.0/22"}`,
			want: Config{EnableIPv4: true, Network: pfx("10.5.4.0/22"), SubnetLen: 24,
				SubnetMin: pfx("10.5.5.0/24"), SubnetMax: pfx("10.5.7.0/24"), BackendType: "vxlan"},
		},
		{
			name: "a /23 is split in four",
			json: `{"Network":"10.5.4.0/23"}`,
			want: Config{EnableIPv4: true, Network: pfx("10.5.4.0/23"), SubnetLen: 25,
				SubnetMin: pfx("10.5.4.128/25"), SubnetMax: pfx("10.5.5.128/25"), BackendType: "vxlan"},
		},
		{
			name: "a /28 is split in four /30s",
			json: `{"Network":"10.5.4.16/28"}`,
			want: Config{EnableIPv4: true, Network: pfx("10.5.4.16/28"), SubnetLen: 30,
				SubnetMin: pfx("10.5.4.20/30"), SubnetMax: pfx("10.5.4.28/30"), BackendType: "vxlan"},
		},
		{
			name: "SubnetLen 0 means the default",
			json: `{"Network":"10.0.0.0/8","SubnetLen":0}`,
			want: Config{EnableIPv4: true, Network: pfx("10.0.0.0/8"), SubnetLen: 24,
				SubnetMin: pfx("10.0.1.0/24"), SubnetMax: pfx("10.255.255.0/24"), BackendType: "vxlan"},
		},
		{
			name: "SubnetMin and SubnetMax as in the ops note, keys in any case",
			json: `{"network":"10.10.0.0/16", "subnetmin": "10.10.1.0", "SUBNETMAX": "10.10.254.0", "backend":{"type":"HOST-GW"}}`,
			want: Config{EnableIPv4: true, Network: pfx("10.10.0.0/16"), SubnetLen: 24,
				SubnetMin: pfx("10.10.1.0/24"), SubnetMax: pfx("10.10.254.0/24"),
				BackendType: "host-gw", Backend: json.RawMessage(`{"type":"HOST-GW"}`)},
		},
		{
			name: "SubnetMin as a prefix of SubnetLen, Min == Max",
			json: `{"Network":"10.10.0.0/16","SubnetLen":20,"SubnetMin":"10.10.16.0/20","SubnetMax":"10.10.16.0"}`,
			want: Config{EnableIPv4: true, Network: pfx("10.10.0.0/16"), SubnetLen: 20,
				SubnetMin: pfx("10.10.16.0/20"), SubnetMax: pfx("10.10.16.0/20"), BackendType: "vxlan"},
		},
		{
			name: "later duplicate wins, null is absent",
			json: `{"Network":"10.1.0.0/16","network":"10.2.0.0/16","SubnetLen":null,"Backend":{"Type":"udp","type":"alloc"}}`,
			want: Config{EnableIPv4: true, Network: pfx("10.2.0.0/16"), SubnetLen: 24,
				SubnetMin: pfx("10.2.1.0/24"), SubnetMax: pfx("10.2.255.0/24"),
				BackendType: "alloc", Backend: json.RawMessage(`{"Type":"udp","type":"alloc"}`)},
		},
		{
			name: "Backend without Type is vxlan",
			json: `{"Network":"10.1.0.0/16","Backend":{"VNI":4}}`,
			want: Config{EnableIPv4: true, Network: pfx("10.1.0.0/16"), SubnetLen: 24,
				SubnetMin: pfx("10.1.1.0/24"), SubnetMax: pfx("10.1.255.0/24"),
				BackendType: "vxlan", Backend: json.RawMessage(`{"VNI":4}`)},
		},
		{
			name: "dual stack with IPv6 defaults",
			json: `{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","EnableNFTables":true}`,
			want: Config{EnableIPv4: true, EnableIPv6: true, EnableNFTables: true,
				Network: pfx("10.1.0.0/16"), SubnetLen: 24, SubnetMin: pfx("10.1.1.0/24"), SubnetMax: pfx("10.1.255.0/24"),
				IPv6Network: pfx("fc00::/48"), IPv6SubnetLen: 64,
				IPv6SubnetMin: pfx("fc00:0:0:1::/64"), IPv6SubnetMax: pfx("fc00:0:0:ffff::/64"),
				BackendType: "vxlan"},
		},
		{
			name: "IPv6 only, small network, explicit bounds",
			json: `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/120","IPv6SubnetMin":"fc00::","IPv6SubnetMax":"fc00::80/122"}`,
			want: Config{EnableIPv6: true,
				IPv6Network: pfx("fc00::/120"), IPv6SubnetLen: 122,
				IPv6SubnetMin: pfx("fc00::/122"), IPv6SubnetMax: pfx("fc00::80/122"),
				BackendType: "vxlan"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, warnings, err := Parse([]byte(tt.json))
			if err != nil {
				t.Fatalf("Parse(%s): %v", tt.json, err)
			}
			if len(warnings) != 0 {
				t.Errorf("warnings: %q", warnings)
			}
			if d := cmp.Diff(tt.want, got, equateNetip); d != "" {
				t.Errorf("Parse(%s) (-want +got):\n%s", tt.json, d)
			}
			if err := got.Validate(); err != nil {
				t.Errorf("Validate: %v", err)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		json, want string
	}{
		{`{"Network":"172.30.0.0/16","SubnetLen":33}`, `SubnetLen 33: must be at most 30`},
		{`{"Network":"172.30.0.0/16","SubnetLen":31}`, `SubnetLen 31: must be at most 30`},
		{`{"Network":"172.30.0.0/16","SubnetLen":17}`, `SubnetLen 17: must be at least Network prefix + 2 (/16 → 18)`},
		{`{"Network":"172.30.0.0/16","SubnetLen":-1}`, `SubnetLen -1: must be at least Network prefix + 2 (/16 → 18)`},
		{`{"Network":"172.30.0.0/16","SubnetLen":"24"}`, `SubnetLen "24": must be an integer`},
		{`{"Network":"172.30.0.0/16","SubnetLen":24.5}`, `SubnetLen 24.5: must be an integer`},
		{`{"Network":"172.30.0.0/16","SubnetLen":99999999999}`, `SubnetLen 99999999999: out of range`},
		{`{"Network":"10.0.0.300/16"}`, `Network "10.0.0.300/16": not an IPv4 CIDR`},
		{`{"Network":"10.0.0.0"}`, `Network "10.0.0.0": not an IPv4 CIDR`},
		{`{"Network":"fc00::/16"}`, `Network "fc00::/16": not an IPv4 CIDR`},
		{`{"Network":10}`, `Network 10: must be a string`},
		{`{"Network":"10.1.2.0/16"}`, `Network "10.1.2.0/16": host bits set (the network address is 10.1.0.0/16)`},
		{`{"Network":"10.1.2.0/29"}`, `Network 10.1.2.0/29: too small: with no SubnetLen the prefix must be at most /28`},
		{`{"Network":"10.1.2.0/29","SubnetLen":30}`, `SubnetLen 30: must be at least Network prefix + 2 (/29 → 31)`},
		{`{}`, `Network: required when EnableIPv4 is true`},
		{`{"SubnetLen":24}`, `Network: required when EnableIPv4 is true`},
		{`{"Network":"172.30.0.0/16","SubnetMin":"10.1.0.0"}`, `SubnetMin 10.1.0.0: outside Network 172.30.0.0/16`},
		{`{"Network":"172.30.0.0/16","SubnetMax":"172.31.0.0"}`, `SubnetMax 172.31.0.0: outside Network 172.30.0.0/16`},
		{`{"Network":"172.30.0.0/16","SubnetMin":"172.30.1.128"}`, `SubnetMin 172.30.1.128: not on a /24 boundary`},
		{`{"Network":"172.30.0.0/16","SubnetMax":"172.30.1.1"}`, `SubnetMax 172.30.1.1: not on a /24 boundary`},
		{`{"Network":"172.30.0.0/16","SubnetMin":"172.30.1.0/25"}`, `SubnetMin "172.30.1.0/25": prefix length must be the subnet length 24`},
		{`{"Network":"172.30.0.0/16","SubnetMin":"banana"}`, `SubnetMin "banana": not an IPv4 address`},
		{`{"Network":"172.30.0.0/16","SubnetMin":"fc00::"}`, `SubnetMin "fc00::": not an IPv4 address`},
		{`{"Network":"172.30.0.0/16","SubnetMin":17}`, `SubnetMin 17: must be a string`},
		{`{"Network":"172.30.0.0/16","SubnetMin":"172.30.9.0","SubnetMax":"172.30.2.0"}`,
			`SubnetMin 172.30.9.0 > SubnetMax 172.30.2.0: SubnetMin must not be greater than SubnetMax`},
		{`{"Network":"172.30.0.0/16","Backend":{"Type":"foo"}}`,
			`Backend.Type "foo": unknown backend (known: vxlan, host-gw, udp, alloc, ipip, wireguard)`},
		{`{"Network":"172.30.0.0/16","Backend":{"Type":1}}`, `Backend.Type 1: must be a string`},
		{`{"Network":"172.30.0.0/16","Backend":"vxlan"}`, `Backend "vxlan": must be a JSON object`},
		{`{"Network":"172.30.0.0/16","Backend":{"Type":"vxlan","VNI":0}}`, `Backend.VNI 0: must be in 1..16777215`},
		{`{"Network":"172.30.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}`, `Backend.VNI 16777216: must be in 1..16777215`},
		{`{"Network":"172.30.0.0/16","Backend":{"Type":"vxlan","Port":65536}}`, `Backend.Port 65536: must be in 0..65535`},
		{`{"Network":"172.30.0.0/16","Backend":{"Type":"vxlan","Port":-1}}`, `Backend.Port -1: must be in 0..65535`},
		{`{"Network":"172.30.0.0/16","Backend":{"Type":"vxlan","MTU":60}}`, `Backend.MTU 60: must be 0 (the underlay's) or 68..65535`},
		{`{"Network":"172.30.0.0/16","Backend":{"Type":"vxlan","GBP":"yes"}}`, `Backend.GBP "yes": must be true or false`},
		{`{"Network":"172.30.0.0/16","Backend":{"Type":"udp","Port":0}}`, `Backend.Port 0: must be in 1..65535`},
		{`{"Network":"172.30.0.0/16","Backend":{"Type":"wireguard","PSK":"short"}}`, `Backend.PSK (hidden): must be the base64 encoding of 32 bytes`},
		{`{"Network":"172.30.0.0/16","EnableIPv4":false}`, `EnableIPv4 false: at least one of EnableIPv4 and EnableIPv6 must be true`},
		{`{"Network":"172.30.0.0/16","EnableIPv4":"false"}`, `EnableIPv4 "false": must be true or false`},
		{`{"Network":"172.30.0.0/16","EnableIPv6":true}`, `IPv6Network: required when EnableIPv6 is true`},
		{`{"Network":"172.30.0.0/16","EnableIPv6":true,"IPv6Network":"10.0.0.0/8"}`, `IPv6Network "10.0.0.0/8": not an IPv6 CIDR`},
		{`{"Network":"172.30.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetLen":127}`, `IPv6SubnetLen 127: must be at most 126`},
		{`{"Network":"172.30.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetLen":49}`, `IPv6SubnetLen 49: must be at least IPv6Network prefix + 2 (/48 → 50)`},
		{`{"Network":"172.30.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetMin":"fc01::"}`, `IPv6SubnetMin fc01::: outside IPv6Network fc00::/48`},
		{`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/120","IPv6SubnetMin":"fc00::10"}`, `IPv6SubnetMin fc00::10: not on a /122 boundary`},
		{`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/125"}`, `IPv6Network fc00::/125: too small: with no IPv6SubnetLen the prefix must be at most /124`},
		{`{"Network":"0.0.0.0/0"}`, `Network 0.0.0.0/0: too wide: the prefix must be at least /8 (the overlay would cover the underlay and the default route)`},
		{`{"Network":"64.0.0.0/2"}`, `Network 64.0.0.0/2: too wide: the prefix must be at least /8 (the overlay would cover the underlay and the default route)`},
		{`{"Network":"127.0.0.0/16"}`, `Network 127.0.0.0/16: overlaps loopback 127.0.0.0/8`},
		{`{"Network":"169.254.0.0/16"}`, `Network 169.254.0.0/16: overlaps link-local 169.254.0.0/16`},
		{`{"Network":"169.0.0.0/8"}`, `Network 169.0.0.0/8: overlaps link-local 169.254.0.0/16`},
		{`{"Network":"224.1.0.0/16"}`, `Network 224.1.0.0/16: overlaps multicast 224.0.0.0/4`},
		{`{"Network":"0.0.0.0/8"}`, `Network 0.0.0.0/8: overlaps 0.0.0.0/8 ("this network")`},
		{`{"Network":"255.0.0.0/8"}`, `Network 255.0.0.0/8: overlaps the broadcast address 255.255.255.255`},
		{`{"Network":"172.30.0.0/16","EnableIPv6":true,"IPv6Network":"::/0"}`, `IPv6Network ::/0: too wide: the prefix must be at least /8 (the overlay would cover the underlay and the default route)`},
		{`{"Network":"172.30.0.0/16","EnableIPv6":true,"IPv6Network":"::/120"}`, `IPv6Network ::/120: overlaps ::/8 (unspecified, loopback ::1, IPv4-mapped)`},
		{`{"Network":"172.30.0.0/16","EnableIPv6":true,"IPv6Network":"fe80::/64"}`, `IPv6Network fe80::/64: overlaps link-local fe80::/10`},
		{`{"Network":"172.30.0.0/16","EnableIPv6":true,"IPv6Network":"ff05::/64"}`, `IPv6Network ff05::/64: overlaps multicast ff00::/8`},
		{`[1,2]`, `config [1,2]: must be a JSON object`},
		{`null`, `config null: must be a JSON object`},
		{`{"Network":"172.30.0.0/16",}`, `malformed JSON at byte offset 28: invalid character '}' looking for beginning of object key string`},
		{`{"Network":"172.30.0.0/16"} x`, `malformed JSON at byte offset 29: invalid character 'x' after top-level value`},
		{``, `malformed JSON at byte offset 0: unexpected end of JSON input`},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			got, _, err := Parse([]byte(tt.json))
			if err == nil {
				t.Fatalf("Parse(%s) = %+v, want error %q", tt.json, got, tt.want)
			}
			if err.Error() != tt.want {
				t.Errorf("Parse(%s) error\n got %q\nwant %q", tt.json, err, tt.want)
			}
			var ce *Error
			if !strings.HasPrefix(tt.want, "malformed") && !errors.As(err, &ce) {
				t.Errorf("error %v is not a *netconf.Error", err)
			}
		})
	}
}

func TestParseWarnings(t *testing.T) {
	_, w, err := Parse([]byte(`{"Network":"10.1.0.0/16","Netwrok":"x","Backend":{"Type":"vxlan","VNl":2,"MacPrefix":"0e:00"}}`))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"Netwrok: unknown key, ignored",
		"Backend.VNl: unknown key for backend vxlan, ignored",
		"Backend.MacPrefix: unknown key for backend vxlan, ignored",
	}
	if d := cmp.Diff(want, w); d != "" {
		t.Errorf("warnings (-want +got):\n%s", d)
	}
	_, w, err = Parse([]byte(`{"Network":"10.1.0.0/16","Backend":{"Type":"host-gw","VNI":2}}`))
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"Backend.VNI: unknown key for backend host-gw, ignored"}, w); d != "" {
		t.Errorf("warnings (-want +got):\n%s", d)
	}
}

func TestBackendOptions(t *testing.T) {
	c, _, err := Parse([]byte(`{"Network":"10.1.0.0/16"}`))
	if err != nil {
		t.Fatal(err)
	}
	vx, err := c.VXLAN()
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(VXLANOptions{VNI: 1}, vx); d != "" {
		t.Errorf("vxlan defaults (-want +got):\n%s", d)
	}
	if _, err := c.UDP(); err == nil {
		t.Error("UDP() on a vxlan config: want an error")
	}

	c, _, err = Parse([]byte(`{"Network":"10.1.0.0/16","Backend":{"Type":"VXLAN","vni":4096,"Port":4789,"GBP":true,"DirectRouting":true,"learning":true,"MTU":1400}}`))
	if err != nil {
		t.Fatal(err)
	}
	vx, err = c.VXLAN()
	if err != nil {
		t.Fatal(err)
	}
	want := VXLANOptions{VNI: 4096, Port: 4789, GBP: true, DirectRouting: true, Learning: true, MTU: 1400}
	if d := cmp.Diff(want, vx); d != "" {
		t.Errorf("vxlan (-want +got):\n%s", d)
	}

	c, _, err = Parse([]byte(`{"Network":"10.1.0.0/16","Backend":{"Type":"udp"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if u, err := c.UDP(); err != nil || u.Port != 8285 {
		t.Errorf("UDP() = %+v, %v; want Port 8285", u, err)
	}
	c, _, err = Parse([]byte(`{"Network":"10.1.0.0/16","Backend":{"Type":"udp","Port":9000}}`))
	if err != nil {
		t.Fatal(err)
	}
	if u, err := c.UDP(); err != nil || u.Port != 9000 {
		t.Errorf("UDP() = %+v, %v; want Port 9000", u, err)
	}

	// ipip is flannel's, not weft's: refused by Parse and Validate, naming
	// the backend and what weft supports.
	const noIPIP = `Backend.Type "ipip": flannel's ipip backend is not implemented by weft (weft supports: vxlan, host-gw, udp, alloc, wireguard)`
	if _, _, err = Parse([]byte(`{"Network":"10.1.0.0/16","Backend":{"Type":"IPIP","DirectRouting":true}}`)); err == nil || err.Error() != noIPIP {
		t.Errorf("Parse(ipip) error = %v, want %s", err, noIPIP)
	}
	vc := c
	vc.BackendType, vc.Backend = BackendIPIP, nil
	if err := vc.Validate(); err == nil || err.Error() != noIPIP {
		t.Errorf("Validate(ipip) error = %v, want %s", err, noIPIP)
	}
	if _, _, err = Parse([]byte(`{"Network":"10.1.0.0/16","Backend":{"Type":"wireguard","Mode":"both"}}`)); err == nil ||
		err.Error() != `Backend.Mode "both": must be one of separate, auto, ipv4, ipv6` {
		t.Errorf("Parse(wireguard Mode both) error = %v", err)
	}
	c, _, err = Parse([]byte(`{"Network":"10.1.0.0/16","Backend":{"Type":"wireguard","PSK":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}}`))
	if err != nil {
		t.Fatal(err)
	}
	if o, err := c.WireGuard(); err != nil || o.ListenPort != 51820 || o.ListenPortV6 != 51821 || o.Mode != "separate" || o.PSK == "" {
		t.Errorf("WireGuard() = %+v, %v", o, err)
	}
}

func TestSubnets(t *testing.T) {
	c, _, err := Parse([]byte(`{"Network":"172.30.0.0/16","SubnetMin":"172.30.10.0","SubnetMax":"172.30.19.0"}`))
	if err != nil {
		t.Fatal(err)
	}
	if n := c.SubnetCount(); n != 10 {
		t.Errorf("SubnetCount = %d, want 10", n)
	}
	for i, want := range map[int]string{0: "172.30.10.0/24", 9: "172.30.19.0/24", 5: "172.30.15.0/24"} {
		if got := c.SubnetAt(i); got != pfx(want) {
			t.Errorf("SubnetAt(%d) = %v, want %v", i, got, want)
		}
	}
	for _, i := range []int{-1, 10} {
		if got := c.SubnetAt(i); got.IsValid() {
			t.Errorf("SubnetAt(%d) = %v, want the zero Prefix", i, got)
		}
	}
	for p, want := range map[string]bool{
		"172.30.10.0/24": true, "172.30.19.0/24": true, "172.30.9.0/24": false, "172.30.20.0/24": false,
		"172.30.10.0/25": false, "172.30.10.1/24": false, "10.0.0.0/24": false,
	} {
		if got := c.Contains(pfx(p)); got != want {
			t.Errorf("Contains(%s) = %v, want %v", p, got, want)
		}
	}
	if c.Contains(netip.Prefix{}) {
		t.Error("Contains(zero) = true")
	}

	// Every subnet of the default range, walked by index, is contained.
	c, _, err = Parse([]byte(`{"Network":"10.0.0.0/8","SubnetLen":20}`))
	if err != nil {
		t.Fatal(err)
	}
	if n := c.SubnetCount(); n != 4095 {
		t.Fatalf("SubnetCount = %d, want 4095", n)
	}
	for i := 0; i < c.SubnetCount(); i++ {
		if p := c.SubnetAt(i); !c.Contains(p) {
			t.Fatalf("SubnetAt(%d) = %v not contained", i, p)
		}
	}

	c, _, err = Parse([]byte(`{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48"}`))
	if err != nil {
		t.Fatal(err)
	}
	if n := c.IPv6SubnetCount(); n != 65535 {
		t.Errorf("IPv6SubnetCount = %d, want 65535", n)
	}
	if got := c.IPv6SubnetAt(2); got != pfx("fc00:0:0:3::/64") {
		t.Errorf("IPv6SubnetAt(2) = %v", got)
	}
	if !c.ContainsIPv6(pfx("fc00:0:0:ffff::/64")) || c.ContainsIPv6(pfx("fc00::/64")) {
		t.Error("ContainsIPv6 wrong at the range ends")
	}
	c, _, err = Parse([]byte(`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/8"}`))
	if err != nil {
		t.Fatal(err)
	}
	if n := c.IPv6SubnetCount(); n <= 1<<40 {
		t.Errorf("IPv6SubnetCount = %d, want saturated huge", n)
	}
	if c.SubnetCount() != 0 || c.SubnetAt(0).IsValid() {
		t.Error("IPv4 off but IPv4 subnets reported")
	}
}

func TestValidateRejects(t *testing.T) {
	good, _, err := Parse([]byte(`{"Network":"10.1.0.0/16"}`))
	if err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(*Config){
		"no family":      func(c *Config) { c.EnableIPv4 = false },
		"bad backend":    func(c *Config) { c.BackendType = "gre" },
		"min off bounds": func(c *Config) { c.SubnetMin = pfx("10.2.0.0/24") },
		"min > max":      func(c *Config) { c.SubnetMin, c.SubnetMax = c.SubnetMax, c.SubnetMin },
		"len too long":   func(c *Config) { c.SubnetLen = 31 },
		"zero network":   func(c *Config) { c.Network = netip.Prefix{} },
		"wrong min len":  func(c *Config) { c.SubnetMin = pfx("10.1.1.0/25") },
		"loopback net": func(c *Config) {
			c.Network, c.SubnetMin, c.SubnetMax = pfx("127.1.0.0/16"), pfx("127.1.1.0/24"), pfx("127.1.255.0/24")
		},
		"v6 link-local": func(c *Config) {
			c.EnableIPv6, c.IPv6Network, c.IPv6SubnetLen = true, pfx("fe80::/48"), 64
			c.IPv6SubnetMin, c.IPv6SubnetMax = pfx("fe80:0:0:1::/64"), pfx("fe80:0:0:ffff::/64")
		},
	} {
		c := good
		mut(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: Validate accepted %+v", name, c)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		`{ "Network": "172.30.0.0/16", "SubnetLen": 24, "Backend": { "Type": "vxlan" } }`,
		`{"Network":"10.10.0.0/16", "SubnetMin": "10.10.1.0", "SubnetMax": "10.10.254.0"}`,
		`{"Network":"10.5.4.16/28"}`,
		`{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetLen":96}`,
		`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/120","IPv6SubnetMin":"fc00::40"}`,
		`{"Network":"172.30.0.0/16","Backend":{"Type":"udp","Port":1}}`,
		`{"network":"1.0.0.0/8","network":null}`,
		`[]`, `"x"`, `{`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, _, err := Parse(data)
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Parse(%q) gave a config that fails Validate: %v\n%+v", data, err, c)
		}
		if c.EnableIPv4 {
			if c.SubnetMin.Addr().Compare(c.SubnetMax.Addr()) > 0 ||
				!c.Network.Contains(c.SubnetMin.Addr()) || !c.Network.Contains(c.SubnetMax.Addr()) ||
				c.SubnetLen > 30 || c.SubnetLen < c.Network.Bits()+2 {
				t.Fatalf("invariants broken: %+v", c)
			}
			n := c.SubnetCount()
			if n < 1 || c.SubnetAt(0) != c.SubnetMin || c.SubnetAt(n-1) != c.SubnetMax || c.SubnetAt(n).IsValid() {
				t.Fatalf("SubnetCount %d / SubnetAt disagree with [%v, %v]", n, c.SubnetMin, c.SubnetMax)
			}
			if !c.Contains(c.SubnetMin) || !c.Contains(c.SubnetMax) {
				t.Fatalf("Contains rejects its own bounds: %+v", c)
			}
		}
		if c.EnableIPv6 {
			if c.IPv6SubnetMin.Addr().Compare(c.IPv6SubnetMax.Addr()) > 0 ||
				!c.IPv6Network.Contains(c.IPv6SubnetMin.Addr()) || !c.IPv6Network.Contains(c.IPv6SubnetMax.Addr()) ||
				c.IPv6SubnetLen > 126 || c.IPv6SubnetLen < c.IPv6Network.Bits()+2 {
				t.Fatalf("IPv6 invariants broken: %+v", c)
			}
			if c.IPv6SubnetAt(0) != c.IPv6SubnetMin || !c.ContainsIPv6(c.IPv6SubnetMax) {
				t.Fatalf("IPv6 SubnetAt/Contains disagree: %+v", c)
			}
		}
	})
}

// BenchmarkParse: weftd parses the config on every watch event of the key.
func BenchmarkParse(b *testing.B) {
	data := []byte(`{"Network":"172.30.0.0/16","SubnetLen":24,"SubnetMin":"172.30.1.0","SubnetMax":"172.30.254.0","Backend":{"Type":"vxlan","VNI":1,"DirectRouting":true}}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := Parse(data); err != nil {
			b.Fatal(err)
		}
	}
}
