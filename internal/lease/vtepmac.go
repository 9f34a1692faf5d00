package lease

import (
	"encoding/json"
	"fmt"
	"net"
)

// VtepMAC reads the VtepMAC of vxlan BackendData ({"VNI":1,"VtepMAC":"…"}).
// present is false when the data names none (meaningless beside an
// error). err says what is wrong with
// data that is not a JSON object, or with a VtepMAC that is not a non-zero
// unicast 6-byte MAC (as a permanent FDB entry it would flood or blackhole
// the overlay).
//
// Both the lease manager (vetting every peer) and the vxlan backend read it
// for every lease, thousands at start: the form flannel and weft write is
// parsed without encoding/json, anything else goes through it.
func VtepMAC(raw json.RawMessage) (mac net.HardwareAddr, present bool, err error) {
	// The canonical form is read in place, without a string copy of raw:
	// the vxlan backend's full pass read every peer's, 1 MB of garbage a
	// pass at 20,000 peers (issue 12).
	var s string
	if c, ok := canonicalVtepMAC(raw); ok {
		var b [6]byte
		if hexMAC(c, b[:]) {
			return checkVtepMAC(net.HardwareAddr(b[:]))
		}
		s = string(c) // another spelling net.ParseMAC may take
	} else {
		var d struct{ VtepMAC *string }
		if err := json.Unmarshal(raw, &d); err != nil {
			return nil, false, fmt.Errorf("BackendData %.80s: not vxlan lease data: %w", raw, err)
		}
		if d.VtepMAC == nil {
			return nil, false, nil
		}
		s = *d.VtepMAC
	}
	mac, err = net.ParseMAC(s)
	if err != nil || len(mac) != 6 {
		return nil, true, fmt.Errorf("VtepMAC %q: not a 6-byte MAC address", s)
	}
	return checkVtepMAC(mac)
}

// checkVtepMAC refuses a MAC that cannot be a permanent FDB entry's.
func checkVtepMAC(mac net.HardwareAddr) (net.HardwareAddr, bool, error) {
	if mac[0]&1 != 0 || [6]byte(mac) == ([6]byte{}) {
		return nil, true, fmt.Errorf("VtepMAC %s: must be a non-zero unicast MAC", mac)
	}
	return mac, true, nil
}

// canonicalVtepMAC matches exactly {"VNI":<digits>,"VtepMAC":"<17 chars>"},
// whose meaning as JSON is unambiguous, and returns the 17 characters. It
// reads raw bytes or a string alike, copying neither.
func canonicalVtepMAC[T ~string | ~[]byte](s T) (T, bool) {
	const pre, mid = `{"VNI":`, `,"VtepMAC":"`
	if len(s) < len(pre) || string(s[:len(pre)]) != pre {
		return s[:0], false
	}
	rest := s[len(pre):]
	n := 0
	for n < len(rest) && n < 10 && rest[n] >= '0' && rest[n] <= '9' {
		n++
	}
	if n == 0 {
		return s[:0], false
	}
	rest = rest[n:]
	if len(rest) < len(mid) || string(rest[:len(mid)]) != mid {
		return s[:0], false
	}
	rest = rest[len(mid):]
	if len(rest) != 17+2 || string(rest[17:]) != `"}` {
		return s[:0], false
	}
	mac := rest[:17]
	for i := range len(mac) {
		if mac[i] == '"' || mac[i] == '\\' {
			return s[:0], false
		}
	}
	return mac, true
}
