package lease

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/weft-net/weft/internal/netconf"
)

// FormatKey returns the last path element of a lease key in flannel's format:
// "172.30.19.0-24", or "10.5.52.0-24&fc00::-64" for a dual-stack lease. A zero
// v6 gives the IPv4-only form; a zero v4 is written as flannel writes it for an
// IPv6-only lease, "0.0.0.0-0".
func FormatKey(v4, v6 netip.Prefix) string {
	var b strings.Builder
	if v4.IsValid() {
		b.WriteString(v4.Addr().String())
		b.WriteByte('-')
		b.WriteString(strconv.Itoa(v4.Bits()))
	} else {
		b.WriteString("0.0.0.0-0")
	}
	if v6.IsValid() {
		b.WriteByte('&')
		b.WriteString(v6.Addr().String())
		b.WriteByte('-')
		b.WriteString(strconv.Itoa(v6.Bits()))
	}
	return b.String()
}

// ParseKey parses the last path element of a lease key (not the full key).
// It accepts exactly what FormatKey produces, so that a parsed key always maps
// back to the same etcd key: canonical addresses, network addresses only (no
// host bits), no leading zeros. "0.0.0.0-0" parses to a zero v4 (IPv6-only).
func ParseKey(key string) (v4, v6 netip.Prefix, err error) {
	s4, s6, dual := strings.Cut(key, "&")
	v4, err = parseKeyPart(s4, false)
	if err != nil {
		return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("lease key %q: %w", key, err)
	}
	if dual {
		v6, err = parseKeyPart(s6, true)
		if err != nil {
			return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("lease key %q: %w", key, err)
		}
	}
	if v4.Addr().IsUnspecified() && v4.Bits() == 0 {
		// flannel's spelling of "no IPv4 subnet" in an IPv6-only network.
		if !v6.IsValid() {
			return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("lease key %q: 0.0.0.0-0 needs an IPv6 part", key)
		}
		v4 = netip.Prefix{}
	}
	return v4, v6, nil
}

func parseKeyPart(s string, six bool) (netip.Prefix, error) {
	family, maxBits := "IPv4", 32
	if six {
		family, maxBits = "IPv6", 128
	}
	i := strings.LastIndexByte(s, '-')
	if i < 0 {
		return netip.Prefix{}, fmt.Errorf("%s part %q: want <address>-<prefix length>", family, s)
	}
	as, ls := s[:i], s[i+1:]
	addr, err := netip.ParseAddr(as)
	if err != nil || addr.Zone() != "" || addr.Is4() == six || addr.Is4In6() {
		return netip.Prefix{}, fmt.Errorf("%s part %q: %q is not an %s address", family, s, as, family)
	}
	bits, err := strconv.Atoi(ls)
	if err != nil || bits < 0 || bits > maxBits || strconv.Itoa(bits) != ls {
		return netip.Prefix{}, fmt.Errorf("%s part %q: prefix length %q must be a number 0..%d", family, s, ls, maxBits)
	}
	p := netip.PrefixFrom(addr, bits)
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("%s part %q: %s has host bits set (network address is %s)", family, s, as, p.Masked().Addr())
	}
	if buf := [64]byte{}; string(addr.AppendTo(buf[:0])) != as {
		return netip.Prefix{}, fmt.Errorf("%s part %q: address must be written canonically as %s", family, s, addr)
	}
	return p, nil
}

// wireAttrs is the JSON shape flannel writes; field order matters for
// byte-compatibility with flannel's values.
type wireAttrs struct {
	PublicIP      string
	PublicIPv6    *string
	BackendType   string          `json:",omitempty"`
	BackendData   json.RawMessage `json:",omitempty"`
	BackendV6Data json.RawMessage `json:",omitempty"`
	// WeftNodeName is weft's own field, last so that the fields before it
	// stay byte for byte flannel's; flanneld decodes the value with
	// encoding/json into its LeaseAttrs, which drops unknown fields.
	WeftNodeName string `json:",omitempty"`
	// WeftUDPKernelDecap says this host's udp backend decapsulates in the
	// kernel (its tc ingress program is attached): only then may a peer
	// send it what its own in-kernel path sends (TSO super-packets, partial
	// inner checksums), which a user-space receiver drops. Omitted when
	// false, so that the value stays byte for byte what it was without it.
	WeftUDPKernelDecap bool `json:",omitempty"`
}

// MaxNodeNameLen bounds a host identity: a DNS name (253) fits.
const MaxNodeNameLen = 253

// CheckNodeName says what is wrong with a host identity (nil when
// nothing): 1 to 253 characters of letters, digits, '.', '_', ':' and '-',
// so that it can be printed in a log line or an error as it is.
func CheckNodeName(name string) error {
	if name == "" || len(name) > MaxNodeNameLen {
		return fmt.Errorf("node name %.80q: must be 1 to %d characters long", name, MaxNodeNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == ':' || c == '-') {
			return fmt.Errorf("node name %.80q: character %q at %d is not a letter, digit, '.', '_', ':' or '-'", name, c, i)
		}
	}
	return nil
}

// ParseAttrs parses a lease value. PublicIP is required and must be IPv4;
// PublicIPv6 is null, absent or an IPv6 address. Backend data is kept raw
// (compacted): its meaning belongs to the backend, which validates it.
func ParseAttrs(data []byte) (Attrs, error) {
	var w wireAttrs
	if err := json.Unmarshal(data, &w); err != nil {
		return Attrs{}, fmt.Errorf("lease value %.80q: not a JSON lease object: %w", data, err)
	}
	var a Attrs
	ip, err := netip.ParseAddr(w.PublicIP)
	if w.PublicIP == "" {
		return Attrs{}, fmt.Errorf("lease value: PublicIP is missing: an IPv4 address is required")
	}
	if err != nil || !ip.Is4() {
		return Attrs{}, fmt.Errorf("lease value: PublicIP %q: must be an IPv4 address", w.PublicIP)
	}
	a.PublicIP = ip
	if w.PublicIPv6 != nil {
		ip6, err := netip.ParseAddr(*w.PublicIPv6)
		if err != nil || !ip6.Is6() || ip6.Is4In6() || ip6.Zone() != "" {
			return Attrs{}, fmt.Errorf("lease value: PublicIPv6 %q: must be null or an IPv6 address", *w.PublicIPv6)
		}
		a.PublicIPv6 = ip6
	}
	a.BackendType = internBackendType(w.BackendType)
	if a.BackendData, err = compactRaw(w.BackendData); err != nil {
		return Attrs{}, fmt.Errorf("lease value: BackendData: %w", err)
	}
	if a.BackendV6Data, err = compactRaw(w.BackendV6Data); err != nil {
		return Attrs{}, fmt.Errorf("lease value: BackendV6Data: %w", err)
	}
	if w.WeftNodeName != "" {
		if err := CheckNodeName(w.WeftNodeName); err != nil {
			return Attrs{}, fmt.Errorf("lease value: WeftNodeName: %w", err)
		}
		a.NodeName = w.WeftNodeName
	}
	a.UDPKernelDecap = w.WeftUDPKernelDecap
	return a, nil
}

// compactRaw normalises backend data so that parse → marshal → parse is
// stable; JSON null means "none", as an absent field does.
func compactRaw(raw json.RawMessage) (json.RawMessage, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	// json.Unmarshal already copied raw and checked it is valid JSON; a
	// value with no whitespace byte at all is compact as it is (flannel
	// and weft write it so), and needs no second copy.
	if bytes.IndexAny(raw, " \t\r\n") < 0 {
		return raw, nil
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// internBackendType returns the known backend names as constants, so that
// thousands of decoded leases share them instead of holding a copy each.
func internBackendType(t string) string {
	switch t {
	case netconf.BackendVXLAN:
		return netconf.BackendVXLAN
	case netconf.BackendHostGW:
		return netconf.BackendHostGW
	case netconf.BackendUDP:
		return netconf.BackendUDP
	}
	return t
}

// MarshalJSON writes the value byte-compatibly with flannel:
// {"PublicIP":"10.64.3.7","PublicIPv6":null,"BackendType":"vxlan","BackendData":{...}}.
// BackendType, BackendData, BackendV6Data, WeftNodeName and
// WeftUDPKernelDecap are left out when empty (false), so a value without a
// node name is exactly flannel's.
func (a Attrs) MarshalJSON() ([]byte, error) {
	if !a.PublicIP.Is4() {
		return nil, fmt.Errorf("lease value: PublicIP %q: must be an IPv4 address", a.PublicIP)
	}
	if a.NodeName != "" {
		if err := CheckNodeName(a.NodeName); err != nil {
			return nil, fmt.Errorf("lease value: WeftNodeName: %w", err)
		}
	}
	w := wireAttrs{PublicIP: a.PublicIP.String(), BackendType: a.BackendType, WeftNodeName: a.NodeName,
		WeftUDPKernelDecap: a.UDPKernelDecap}
	if a.PublicIPv6.IsValid() {
		if !a.PublicIPv6.Is6() || a.PublicIPv6.Is4In6() {
			return nil, fmt.Errorf("lease value: PublicIPv6 %q: must be an IPv6 address", a.PublicIPv6)
		}
		s := a.PublicIPv6.String()
		w.PublicIPv6 = &s
	}
	if string(a.BackendData) != "null" {
		w.BackendData = a.BackendData
	}
	if string(a.BackendV6Data) != "null" {
		w.BackendV6Data = a.BackendV6Data
	}
	return json.Marshal(w)
}

// VtepMAC returns BackendData's VtepMAC (vxlan) as written, or "" when there
// is none. It does not validate the MAC: that is the backend's job.
func (a Attrs) VtepMAC() string {
	var d struct{ VtepMAC string }
	if len(a.BackendData) == 0 || json.Unmarshal(a.BackendData, &d) != nil {
		return ""
	}
	return d.VtepMAC
}
