package subnetenv

import (
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

var (
	pfx         = netip.MustParsePrefix
	equateNetip = cmpopts.EquateComparable(netip.Prefix{})
)

func TestWriteGolden(t *testing.T) {
	tests := []struct {
		name string
		env  Env
		want string
	}{
		{
			name: "COMPAT.md example",
			env:  Env{Network: pfx("172.30.0.0/16"), Subnet: pfx("172.30.19.1/24"), MTU: 1450},
			want: "FLANNEL_NETWORK=172.30.0.0/16\nFLANNEL_SUBNET=172.30.19.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
		},
		{
			name: "dual stack, ip-masq",
			env: Env{Network: pfx("10.5.0.0/16"), Subnet: pfx("10.5.52.1/24"),
				IPv6Network: pfx("fc00::/48"), IPv6Subnet: pfx("fc00:0:0:34::1/64"), MTU: 1430, IPMasq: true},
			want: "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.52.1/24\n" +
				"FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:34::1/64\n" +
				"FLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n",
		},
		{
			name: "IPv6 only",
			env:  Env{IPv6Network: pfx("fc00::/48"), IPv6Subnet: pfx("fc00:0:0:34::1/64"), MTU: 1430},
			want: "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:34::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "run", "flannel", "subnet.env")
			if err := Write(path, tt.env); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Errorf("file content\n got %q\nwant %q", got, tt.want)
			}
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o644 {
				t.Errorf("file mode %v, want 0644", fi.Mode().Perm())
			}
			di, err := os.Stat(filepath.Dir(path))
			if err != nil {
				t.Fatal(err)
			}
			if di.Mode().Perm() != 0o755 {
				t.Errorf("dir mode %v, want 0755", di.Mode().Perm())
			}
			back, err := Read(path)
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tt.env, back, equateNetip); d != "" {
				t.Errorf("Read after Write (-want +got):\n%s", d)
			}
			ents, _ := os.ReadDir(filepath.Dir(path))
			if len(ents) != 1 {
				t.Errorf("directory holds %d entries, want only subnet.env (temp file left?)", len(ents))
			}
		})
	}
}

func TestWriteReplacesAndRefuses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "subnet.env")
	e := Env{Network: pfx("172.30.0.0/16"), Subnet: pfx("172.30.19.1/24"), MTU: 1450}
	if err := Write(path, e); err != nil {
		t.Fatal(err)
	}
	e.Subnet = pfx("172.30.20.1/24")
	if err := Write(path, e); err != nil {
		t.Fatal(err)
	}
	if got, _ := Read(path); got.Subnet != e.Subnet {
		t.Errorf("second Write not visible: %v", got.Subnet)
	}
	for name, bad := range map[string]Env{
		"network address as subnet": {Network: pfx("172.30.0.0/16"), Subnet: pfx("172.30.19.0/24")},
		"no subnet":                 {Network: pfx("172.30.0.0/16")},
		"nothing":                   {},
		"subnet outside network":    {Network: pfx("172.30.0.0/16"), Subnet: pfx("10.0.0.1/24")},
		"no network":                {Subnet: pfx("172.30.19.1/24")},
		"v6 in v4 field":            {Network: pfx("172.30.0.0/16"), Subnet: pfx("fc00::1/64")},
		"bad mtu":                   {Network: pfx("172.30.0.0/16"), Subnet: pfx("172.30.19.1/24"), MTU: -1},
	} {
		if err := Write(path, bad); err == nil {
			t.Errorf("%s: Write accepted %+v", name, bad)
		}
	}
	if got, _ := Read(path); got.Subnet != e.Subnet {
		t.Errorf("a refused Write changed the file: %v", got.Subnet)
	}
}

func TestReadMissing(t *testing.T) {
	_, err := Read(filepath.Join(t.TempDir(), "nope.env"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Read of a missing file: %v, want fs.ErrNotExist", err)
	}
}

func TestParseTolerant(t *testing.T) {
	data := "# written by hand\n\nexport FLANNEL_NETWORK=\"172.30.0.0/16\"\n" +
		"FLANNEL_SUBNET='172.30.72.1/24'   # the bip\r\n  FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\nOTHER=x y z\"\n"
	_, err := Parse([]byte(data))
	if err == nil || !strings.Contains(err.Error(), "line 7") {
		t.Fatalf("want an error on line 7, got %v", err)
	}
	data = strings.Replace(data, `OTHER=x y z"`, `OTHER="x y z"`, 1)
	got, err := Parse([]byte(data))
	if err != nil {
		t.Fatal(err)
	}
	want := Env{Network: pfx("172.30.0.0/16"), Subnet: pfx("172.30.72.1/24"), MTU: 1450, IPMasq: true}
	if d := cmp.Diff(want, got, equateNetip); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
	if l := LeaseSubnet(got); l != pfx("172.30.72.0/24") {
		t.Errorf("LeaseSubnet = %v", l)
	}
	if l := LeaseSubnet(Env{}); l.IsValid() {
		t.Errorf("LeaseSubnet(zero) = %v, want zero", l)
	}
	if h := HostSubnet(pfx("172.30.72.0/24")); h != pfx("172.30.72.1/24") {
		t.Errorf("HostSubnet = %v", h)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct{ data, want string }{
		{"FLANNEL_SUBNET=172.30.72.1/24\nFLANNEL_MTU=abc\n", `line 2: FLANNEL_MTU "abc": not an integer in 0..65535`},
		{"FLANNEL_SUBNET=172.30.72.1/24\nFLANNEL_IPMASQ=yes\n", `line 2: FLANNEL_IPMASQ "yes": must be true or false`},
		{"FLANNEL_SUBNET=172.30.72.300/24\n", `line 1: FLANNEL_SUBNET "172.30.72.300/24": not an IPv4 address with prefix length`},
		{"FLANNEL_SUBNET=172.30.72.1\n", `line 1: FLANNEL_SUBNET "172.30.72.1": not an IPv4 address with prefix length`},
		{"FLANNEL_NETWORK=172.30.1.0/16\nFLANNEL_SUBNET=172.30.72.1/24\n", `line 1: FLANNEL_NETWORK "172.30.1.0/16": host bits set`},
		{"FLANNEL_IPV6_SUBNET=10.0.0.1/24\n", `line 1: FLANNEL_IPV6_SUBNET "10.0.0.1/24": not an IPv6 address with prefix length`},
		{"FLANNEL_NETWORK=172.30.0.0/16\nFLANNEL_MTU=1450\n", `no FLANNEL_SUBNET (nor FLANNEL_IPV6_SUBNET)`},
		{"", `no FLANNEL_SUBNET (nor FLANNEL_IPV6_SUBNET)`},
		{"FLANNEL_SUBNET\n", `line 1 "FLANNEL_SUBNET": not NAME=VALUE`},
		{"1X=2\n", `line 1 "1X=2": "1X" is not a variable name`},
		{"A=\"open\n", `line 1 "A=\"open": unterminated " quote`},
		{"A=\"x\"y\n", `line 1 "A=\"x\"y": text "y" after the closing quote`},
	}
	for _, tt := range tests {
		_, err := Parse([]byte(tt.data))
		if err == nil || err.Error() != tt.want {
			t.Errorf("Parse(%q)\n got %v\nwant %s", tt.data, err, tt.want)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("FLANNEL_NETWORK=172.30.0.0/16\nFLANNEL_SUBNET=172.30.19.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"))
	f.Add([]byte("FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:34::1/64\nFLANNEL_MTU=1430\n"))
	f.Add([]byte("export FLANNEL_SUBNET='10.0.0.1/8' # x\n#c\n\nFLANNEL_IPMASQ=\"true\"\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := Parse(data)
		if err != nil {
			return
		}
		if !e.Subnet.IsValid() && !e.IPv6Subnet.IsValid() {
			t.Fatalf("Parse(%q) succeeded without a subnet", data)
		}
		out, err := Format(e)
		if err != nil {
			return // parsable but inconsistent (e.g. no FLANNEL_NETWORK): Write refuses it
		}
		back, err := Parse(out)
		if err != nil {
			t.Fatalf("Parse(Format(%+v)) = %v\n%s", e, err, out)
		}
		if d := cmp.Diff(e, back, equateNetip); d != "" {
			t.Fatalf("round trip (-first +second):\n%s", d)
		}
	})
}
