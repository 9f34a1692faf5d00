package netconf

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Error is a config value that breaks a rule. Its message names the key, the
// value and the rule, e.g. `SubnetLen 33: must be at most 30`, so that the one
// log line an operator sees is enough to fix the config.
type Error struct {
	Key   string // e.g. "SubnetLen", "Backend.VNI"
	Value string // the value as rendered in the message; empty when absent
	Rule  string
}

func (e *Error) Error() string {
	if e.Value == "" {
		return e.Key + ": " + e.Rule
	}
	return e.Key + " " + e.Value + ": " + e.Rule
}

// The backend types, as the config's Backend.Type and a lease's BackendType
// spell them (flannel's names). Code compares and writes these constants,
// never the bare strings, so that a backend's name lives here only.
const (
	BackendVXLAN     = "vxlan"
	BackendHostGW    = "host-gw"
	BackendUDP       = "udp"
	BackendAlloc     = "alloc"
	BackendIPIP      = "ipip"
	BackendWireGuard = "wireguard"
)

// KnownBackends lists flannel's backend types that weft recognises, in the
// order the error message names them.
var KnownBackends = []string{BackendVXLAN, BackendHostGW, BackendUDP, BackendAlloc, BackendIPIP, BackendWireGuard}

// SupportedBackends lists the backend types weft implements. A config
// naming one of flannel's others (ipip) is refused when it is parsed or
// validated, so weftctl config validate and weftd say so before a lease is
// taken.
var SupportedBackends = []string{BackendVXLAN, BackendHostGW, BackendUDP, BackendAlloc, BackendWireGuard}

// unsupported is the error for a backend flannel has and weft does not.
func unsupported(bt string) error {
	return &Error{Key: "Backend.Type", Value: strconv.Quote(bt),
		Rule: "flannel's " + bt + " backend is not implemented by weft (weft supports: " + strings.Join(SupportedBackends, ", ") + ")"}
}

// checkSupported refuses a known backend weft does not implement.
func checkSupported(bt string) error {
	for _, k := range SupportedBackends {
		if bt == k {
			return nil
		}
	}
	return unsupported(bt)
}

// DefaultBackend is used when the config has no Backend or no Backend.Type.
// flannel documents vxlan as its default but its code picks udp; we follow the
// documentation (COMPAT.md, "where weft differs").
const DefaultBackend = BackendVXLAN

var topKeys = []string{
	"Network", "SubnetLen", "SubnetMin", "SubnetMax",
	"EnableIPv4", "EnableIPv6",
	"IPv6Network", "IPv6SubnetLen", "IPv6SubnetMin", "IPv6SubnetMax",
	"EnableNFTables", "Backend",
}

// Parse parses the JSON stored at <prefix>/config, applies flannel's defaults
// and validates the result. Keys match case-insensitively, as with
// encoding/json; a later duplicate wins. The warnings name each unknown key
// (ignored, as flannel does). Every error names the key, the value and the
// rule it breaks; it is a *Error except for malformed JSON.
func Parse(data []byte) (Config, []string, error) {
	if !json.Valid(data) {
		var v any
		err := json.Unmarshal(data, &v)
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return Config{}, nil, fmt.Errorf("malformed JSON at byte offset %d: %w", se.Offset, err)
		}
		return Config{}, nil, fmt.Errorf("malformed JSON: %w", err)
	}
	top, unknown, err := members(data, topKeys)
	if err != nil {
		return Config{}, nil, &Error{Key: "config", Value: render(data), Rule: "must be a JSON object"}
	}
	var warnings []string
	for _, k := range unknown {
		warnings = append(warnings, fmt.Sprintf("%s: unknown key, ignored", k))
	}

	c := Config{EnableIPv4: true}
	if raw, ok := top["EnableIPv4"]; ok {
		if c.EnableIPv4, err = boolean("EnableIPv4", raw); err != nil {
			return Config{}, warnings, err
		}
	}
	if raw, ok := top["EnableIPv6"]; ok {
		if c.EnableIPv6, err = boolean("EnableIPv6", raw); err != nil {
			return Config{}, warnings, err
		}
	}
	if raw, ok := top["EnableNFTables"]; ok {
		if c.EnableNFTables, err = boolean("EnableNFTables", raw); err != nil {
			return Config{}, warnings, err
		}
	}
	if !c.EnableIPv4 && !c.EnableIPv6 {
		return Config{}, warnings, &Error{Key: "EnableIPv4", Value: "false", Rule: "at least one of EnableIPv4 and EnableIPv6 must be true"}
	}
	if c.EnableIPv4 {
		r, err := ipv4.resolve(top)
		if err != nil {
			return Config{}, warnings, err
		}
		c.Network, c.SubnetLen, c.SubnetMin, c.SubnetMax = r.network, r.subnetLen, r.min, r.max
	}
	if c.EnableIPv6 {
		r, err := ipv6.resolve(top)
		if err != nil {
			return Config{}, warnings, err
		}
		c.IPv6Network, c.IPv6SubnetLen, c.IPv6SubnetMin, c.IPv6SubnetMax = r.network, r.subnetLen, r.min, r.max
	}

	c.BackendType = DefaultBackend
	if raw, ok := top["Backend"]; ok {
		c.Backend = append(json.RawMessage(nil), raw...)
		bt, err := backendType(raw)
		if err != nil {
			return Config{}, warnings, err
		}
		c.BackendType = bt
	}
	bw, err := c.backendOptions()
	if err != nil {
		return Config{}, warnings, err
	}
	warnings = append(warnings, bw...)
	return c, warnings, nil
}

// backendType reads and checks Backend.Type.
func backendType(raw json.RawMessage) (string, error) {
	m, _, err := members(raw, []string{"Type"})
	if err != nil {
		return "", &Error{Key: "Backend", Value: render(raw), Rule: "must be a JSON object"}
	}
	tr, ok := m["Type"]
	if !ok {
		return DefaultBackend, nil
	}
	t, err := str("Backend.Type", tr)
	if err != nil {
		return "", err
	}
	bt := strings.ToLower(t)
	for _, k := range KnownBackends {
		if bt == k {
			return bt, checkSupported(bt)
		}
	}
	return "", &Error{Key: "Backend.Type", Value: strconv.Quote(t),
		Rule: "unknown backend (known: " + strings.Join(KnownBackends, ", ") + ")"}
}

// family holds what differs between the IPv4 and IPv6 halves of the config.
type family struct {
	name       string // "IPv4" / "IPv6", for messages
	keyPrefix  string // "" / "IPv6", prefixed to Network, SubnetLen, ...
	enableKey  string
	bits       int // address length
	maxLen     int // longest SubnetLen
	defaultLen int // SubnetLen when the Network is large enough
}

var (
	ipv4 = family{name: "IPv4", keyPrefix: "", enableKey: "EnableIPv4", bits: 32, maxLen: 30, defaultLen: 24}
	ipv6 = family{name: "IPv6", keyPrefix: "IPv6", enableKey: "EnableIPv6", bits: 128, maxLen: 126, defaultLen: 64}
)

func (f family) is(a netip.Addr) bool {
	if f.bits == 32 {
		return a.Is4()
	}
	return a.Is6() && !a.Is4In6()
}

// MinNetworkBits is the shortest Network (and IPv6Network) prefix accepted.
// A wider overlay would cover most of the address space: the underlay,
// etcd and the default route would fall inside it, and every host's routes
// to the overlay would shadow them. /8 still leaves 10.0.0.0/8 and
// fc00::/8 whole.
const MinNetworkBits = 8

// reserved are the ranges an overlay may not overlap, per family, with the
// reason: the kernel gives their addresses a meaning (loopback never leaves
// the host, multicast is not routed per host, link-local is not forwarded)
// that routing a subnet per host would contradict.
var reserved = map[int][]struct {
	p    netip.Prefix
	rule string
}{
	32: {
		{netip.MustParsePrefix("127.0.0.0/8"), "overlaps loopback 127.0.0.0/8"},
		{netip.MustParsePrefix("169.254.0.0/16"), "overlaps link-local 169.254.0.0/16"},
		{netip.MustParsePrefix("224.0.0.0/4"), "overlaps multicast 224.0.0.0/4"},
		{netip.MustParsePrefix("255.255.255.255/32"), "overlaps the broadcast address 255.255.255.255"},
		{netip.MustParsePrefix("0.0.0.0/8"), "overlaps 0.0.0.0/8 (\"this network\")"},
	},
	128: {
		{netip.MustParsePrefix("::/8"), "overlaps ::/8 (unspecified, loopback ::1, IPv4-mapped)"},
		{netip.MustParsePrefix("fe80::/10"), "overlaps link-local fe80::/10"},
		{netip.MustParsePrefix("ff00::/8"), "overlaps multicast ff00::/8"},
	},
}

// usable refuses a Network that is too wide or overlaps a reserved range.
func (f family) usable(key string, p netip.Prefix) error {
	if p.Bits() < MinNetworkBits {
		return &Error{Key: key, Value: p.String(),
			Rule: fmt.Sprintf("too wide: the prefix must be at least /%d (the overlay would cover the underlay and the default route)", MinNetworkBits)}
	}
	for _, r := range reserved[f.bits] {
		if r.p.Overlaps(p) {
			return &Error{Key: key, Value: p.String(), Rule: r.rule}
		}
	}
	return nil
}

type resolved struct {
	network   netip.Prefix
	subnetLen int
	min, max  netip.Prefix
}

// resolve applies flannel's defaults and rules to one address family.
func (f family) resolve(top map[string]json.RawMessage) (resolved, error) {
	var r resolved
	netKey, lenKey := f.keyPrefix+"Network", f.keyPrefix+"SubnetLen"
	minKey, maxKey := f.keyPrefix+"SubnetMin", f.keyPrefix+"SubnetMax"

	raw, ok := top[netKey]
	if !ok {
		return r, &Error{Key: netKey, Rule: "required when " + f.enableKey + " is true"}
	}
	s, err := str(netKey, raw)
	if err != nil {
		return r, err
	}
	p, err := netip.ParsePrefix(strings.TrimSpace(s))
	if err != nil || !f.is(p.Addr()) {
		return r, &Error{Key: netKey, Value: strconv.Quote(s), Rule: "not an " + f.name + " CIDR"}
	}
	if p.Masked() != p {
		return r, &Error{Key: netKey, Value: strconv.Quote(s),
			Rule: fmt.Sprintf("host bits set (the network address is %s)", p.Masked())}
	}
	if err := f.usable(netKey, p); err != nil {
		return r, err
	}
	r.network = p
	ones := p.Bits()

	if raw, ok := top[lenKey]; ok {
		if r.subnetLen, err = integer(lenKey, raw); err != nil {
			return r, err
		}
	}
	switch {
	case r.subnetLen == 0:
		// flannel's default: a /24 (/64) per host when the Network has room
		// for at least four of them, else a quarter of the Network.
		switch {
		case ones > f.maxLen-2:
			return r, &Error{Key: netKey, Value: p.String(),
				Rule: fmt.Sprintf("too small: with no %s the prefix must be at most /%d", lenKey, f.maxLen-2)}
		case ones <= f.defaultLen-2:
			r.subnetLen = f.defaultLen
		default:
			r.subnetLen = ones + 2
		}
	case r.subnetLen > f.maxLen:
		return r, &Error{Key: lenKey, Value: strconv.Itoa(r.subnetLen), Rule: fmt.Sprintf("must be at most %d", f.maxLen)}
	case r.subnetLen < ones+2:
		// Two bits at least: the first subnet is never leased, and a
		// network of two subnets would leave one host alone.
		return r, &Error{Key: lenKey, Value: strconv.Itoa(r.subnetLen),
			Rule: fmt.Sprintf("must be at least %s prefix + 2 (/%d → %d)", netKey, ones, ones+2)}
	}

	size := one.shl(f.bits - r.subnetLen)
	first := fromAddr(p.Addr())
	last := first.add(one.shl(f.bits - ones)).sub(size)
	r.min = netip.PrefixFrom(toAddr(f.bits, first.add(size)), r.subnetLen) // the first subnet is skipped, as in flannel
	r.max = netip.PrefixFrom(toAddr(f.bits, last), r.subnetLen)
	if raw, ok := top[minKey]; ok {
		if r.min, err = f.bound(minKey, raw, p, r.subnetLen); err != nil {
			return r, err
		}
	}
	if raw, ok := top[maxKey]; ok {
		if r.max, err = f.bound(maxKey, raw, p, r.subnetLen); err != nil {
			return r, err
		}
	}
	if r.min.Addr().Compare(r.max.Addr()) > 0 {
		return r, &Error{Key: minKey, Value: fmt.Sprintf("%s > %s %s", r.min.Addr(), maxKey, r.max.Addr()),
			Rule: minKey + " must not be greater than " + maxKey}
	}
	return r, nil
}

// bound parses SubnetMin or SubnetMax: an address (flannel's form) or a
// prefix of length subnetLen, inside network and on a subnet boundary.
func (f family) bound(key string, raw json.RawMessage, network netip.Prefix, subnetLen int) (netip.Prefix, error) {
	s, err := str(key, raw)
	if err != nil {
		return netip.Prefix{}, err
	}
	s = strings.TrimSpace(s)
	var a netip.Addr
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil || !f.is(p.Addr()) {
			return netip.Prefix{}, &Error{Key: key, Value: strconv.Quote(s), Rule: "not an " + f.name + " address"}
		}
		if p.Bits() != subnetLen {
			return netip.Prefix{}, &Error{Key: key, Value: strconv.Quote(s),
				Rule: fmt.Sprintf("prefix length must be the subnet length %d", subnetLen)}
		}
		a = p.Addr()
	} else {
		a, err = netip.ParseAddr(s)
		if err != nil || !f.is(a) || a.Zone() != "" {
			return netip.Prefix{}, &Error{Key: key, Value: strconv.Quote(s), Rule: "not an " + f.name + " address"}
		}
	}
	if !network.Contains(a) {
		return netip.Prefix{}, &Error{Key: key, Value: a.String(), Rule: fmt.Sprintf("outside %sNetwork %s", f.keyPrefix, network)}
	}
	sub := netip.PrefixFrom(a, subnetLen)
	if sub.Masked().Addr() != a {
		return netip.Prefix{}, &Error{Key: key, Value: a.String(), Rule: fmt.Sprintf("not on a /%d boundary", subnetLen)}
	}
	return sub, nil
}

// members reads the members of a JSON object in order, keyed by the name in
// known they match case-insensitively (as encoding/json matches struct
// fields); a later duplicate wins, and a null value counts as absent, as with
// encoding/json. Names matching nothing are returned in unknown, in order.
func members(data []byte, known []string) (map[string]json.RawMessage, []string, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil {
		return nil, nil, err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, nil, errors.New("not an object")
	}
	m := map[string]json.RawMessage{}
	var unknown []string
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, nil, err
		}
		name, _ := tok.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, nil, err
		}
		canon := ""
		for _, k := range known {
			if strings.EqualFold(k, name) {
				canon = k
				break
			}
		}
		if canon == "" {
			unknown = append(unknown, name)
			continue
		}
		if string(v) == "null" {
			delete(m, canon)
			continue
		}
		m[canon] = v
	}
	return m, unknown, nil
}

// render shows a JSON value in a message: compact, and cut when long.
func render(raw []byte) string {
	var b bytes.Buffer
	if json.Compact(&b, raw) != nil {
		b.Reset()
		b.Write(raw)
	}
	s := b.String()
	if len(s) > 64 {
		s = s[:61] + "..."
	}
	return s
}

func str(key string, raw json.RawMessage) (string, error) {
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", &Error{Key: key, Value: render(raw), Rule: "must be a string"}
	}
	return s, nil
}

func boolean(key string, raw json.RawMessage) (bool, error) {
	switch string(raw) {
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return false, &Error{Key: key, Value: render(raw), Rule: "must be true or false"}
}

func integer(key string, raw json.RawMessage) (int, error) {
	n, err := strconv.ParseInt(string(raw), 10, 32)
	if err == nil {
		return int(n), nil
	}
	if errors.Is(err, strconv.ErrRange) {
		return 0, &Error{Key: key, Value: render(raw), Rule: "out of range"}
	}
	return 0, &Error{Key: key, Value: render(raw), Rule: "must be an integer"}
}
