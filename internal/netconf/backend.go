package netconf

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// DefaultVXLANPort is the UDP port of a vxlan backend whose Port is 0: the
// Linux kernel's default, which flannel keeps (not IANA's 4789). The
// dataplane creates flannel.<VNI> with it and the underlay guard opens it.
const DefaultVXLANPort = 8472

// VXLANOptions are the vxlan backend's options with flannel's defaults.
type VXLANOptions struct {
	VNI           int  // 1..16777215, default 1; the device is flannel.<VNI>
	Port          int  // UDP port; 0 = DefaultVXLANPort
	GBP           bool // group based policy extension
	DirectRouting bool // plain routes to peers on the same L2 segment
	Learning      bool // kernel FDB learning (off: entries come from leases)
	MTU           int  // 0 = underlay MTU minus the encapsulation
}

// UDPOptions are the udp backend's options.
type UDPOptions struct {
	Port int // default 8285
}

// IPIPOptions are the ipip backend's options.
type IPIPOptions struct {
	DirectRouting bool
}

// WireGuardOptions are the wireguard backend's options (flannel's names and
// defaults).
type WireGuardOptions struct {
	ListenPort                  int    // default 51820
	ListenPortV6                int    // flannel-wg-v6's port in Mode separate; default 51821
	PSK                         string // base64 of 32 bytes, or empty
	PersistentKeepaliveInterval int    // seconds, 0 = off
	Mode                        string // WireGuardModes; default "separate"
}

// WireGuardModes are the values of the wireguard backend's Mode: separate
// devices per family (flannel-wg, flannel-wg-v6), or one device (flannel-wg)
// carrying both, its peers' endpoints chosen automatically, IPv4 or IPv6.
var WireGuardModes = []string{"separate", "auto", "ipv4", "ipv6"}

// VXLAN decodes the Backend object as vxlan options.
func (c Config) VXLAN() (VXLANOptions, error) {
	o, _, err := decodeVXLAN(c.BackendType, c.Backend)
	return o, err
}

// UDP decodes the Backend object as udp options.
func (c Config) UDP() (UDPOptions, error) {
	o, _, err := decodeUDP(c.BackendType, c.Backend)
	return o, err
}

// IPIP decodes the Backend object as ipip options.
func (c Config) IPIP() (IPIPOptions, error) {
	o, _, err := decodeIPIP(c.BackendType, c.Backend)
	return o, err
}

// WireGuard decodes the Backend object as wireguard options.
func (c Config) WireGuard() (WireGuardOptions, error) {
	o, _, err := decodeWireGuard(c.BackendType, c.Backend)
	return o, err
}

// backendOptions checks the options of the configured backend, so that a bad
// VNI is refused when the config is validated, not when the device is made.
func (c Config) backendOptions() ([]string, error) {
	var w []string
	var err error
	switch c.BackendType {
	case BackendVXLAN:
		_, w, err = decodeVXLAN(c.BackendType, c.Backend)
	case BackendUDP:
		_, w, err = decodeUDP(c.BackendType, c.Backend)
	case BackendIPIP:
		_, w, err = decodeIPIP(c.BackendType, c.Backend)
	case BackendWireGuard:
		_, w, err = decodeWireGuard(c.BackendType, c.Backend)
	default: // host-gw, alloc: no options
		w, err = decodeOptions(c.BackendType, c.Backend, nil)
	}
	return w, err
}

func decodeVXLAN(bt string, raw json.RawMessage) (VXLANOptions, []string, error) {
	o := VXLANOptions{VNI: 1}
	if err := wantType(bt, BackendVXLAN); err != nil {
		return o, nil, err
	}
	w, err := decodeOptions(bt, raw, []option{
		{name: "VNI", i: &o.VNI, min: 1, max: 1<<24 - 1},
		{name: "Port", i: &o.Port, min: 0, max: 65535},
		{name: "GBP", b: &o.GBP},
		{name: "DirectRouting", b: &o.DirectRouting},
		{name: "Learning", b: &o.Learning},
		{name: "MTU", i: &o.MTU, min: 0, max: 65535},
	})
	if err == nil && o.MTU != 0 && o.MTU < 68 {
		err = &Error{Key: "Backend.MTU", Value: strconv.Itoa(o.MTU), Rule: "must be 0 (the underlay's) or 68..65535"}
	}
	return o, w, err
}

func decodeUDP(bt string, raw json.RawMessage) (UDPOptions, []string, error) {
	o := UDPOptions{Port: 8285}
	if err := wantType(bt, BackendUDP); err != nil {
		return o, nil, err
	}
	w, err := decodeOptions(bt, raw, []option{{name: "Port", i: &o.Port, min: 1, max: 65535}})
	return o, w, err
}

func decodeIPIP(bt string, raw json.RawMessage) (IPIPOptions, []string, error) {
	var o IPIPOptions
	if err := wantType(bt, BackendIPIP); err != nil {
		return o, nil, err
	}
	w, err := decodeOptions(bt, raw, []option{{name: "DirectRouting", b: &o.DirectRouting}})
	return o, w, err
}

func decodeWireGuard(bt string, raw json.RawMessage) (WireGuardOptions, []string, error) {
	o := WireGuardOptions{ListenPort: 51820, ListenPortV6: 51821, Mode: WireGuardModes[0]}
	if err := wantType(bt, BackendWireGuard); err != nil {
		return o, nil, err
	}
	w, err := decodeOptions(bt, raw, []option{
		{name: "ListenPort", i: &o.ListenPort, min: 1, max: 65535},
		{name: "ListenPortV6", i: &o.ListenPortV6, min: 1, max: 65535},
		{name: "PSK", s: &o.PSK},
		{name: "PersistentKeepaliveInterval", i: &o.PersistentKeepaliveInterval, min: 0, max: 65535},
		{name: "Mode", s: &o.Mode},
	})
	if err == nil && !slices.Contains(WireGuardModes, o.Mode) {
		err = &Error{Key: "Backend.Mode", Value: strconv.Quote(o.Mode), Rule: "must be one of " + strings.Join(WireGuardModes, ", ")}
	}
	if err == nil && o.PSK != "" {
		if k, derr := base64.StdEncoding.DecodeString(o.PSK); derr != nil || len(k) != 32 {
			err = &Error{Key: "Backend.PSK", Value: "(hidden)", Rule: "must be the base64 encoding of 32 bytes"}
		}
	}
	return o, w, err
}

func wantType(have, want string) error {
	if have != want {
		return fmt.Errorf("backend options: the config's backend is %q, not %q", have, want)
	}
	return nil
}

// option is one backend option: exactly one of i, b, s is set.
type option struct {
	name     string
	i        *int
	min, max int
	b        *bool
	s        *string
}

// decodeOptions fills opts from the Backend object (keys case-insensitive,
// like the top level) and warns about keys the backend does not know.
func decodeOptions(bt string, raw json.RawMessage, opts []option) ([]string, error) {
	if len(raw) == 0 {
		return nil, nil
	}
	known := []string{"Type"}
	for _, o := range opts {
		known = append(known, o.name)
	}
	m, unknown, err := members(raw, known)
	if err != nil {
		return nil, &Error{Key: "Backend", Value: render(raw), Rule: "must be a JSON object"}
	}
	var w []string
	for _, k := range unknown {
		w = append(w, fmt.Sprintf("Backend.%s: unknown key for backend %s, ignored", k, bt))
	}
	for _, o := range opts {
		v, ok := m[o.name]
		if !ok {
			continue
		}
		key := "Backend." + o.name
		switch {
		case o.i != nil:
			n, err := integer(key, v)
			if err != nil {
				return w, err
			}
			if n < o.min || n > o.max {
				return w, &Error{Key: key, Value: strconv.Itoa(n), Rule: fmt.Sprintf("must be in %d..%d", o.min, o.max)}
			}
			*o.i = n
		case o.b != nil:
			b, err := boolean(key, v)
			if err != nil {
				return w, err
			}
			*o.b = b
		case o.s != nil:
			s, err := str(key, v)
			if err != nil {
				return w, err
			}
			*o.s = s
		}
	}
	return w, nil
}
