package lease

import (
	"encoding/json"
	"fmt"
	"net"
	"strings"
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
	s, ok := canonicalVtepMAC(string(raw))
	if !ok {
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
	if mac[0]&1 != 0 || [6]byte(mac) == ([6]byte{}) {
		return nil, true, fmt.Errorf("VtepMAC %s: must be a non-zero unicast MAC", mac)
	}
	return mac, true, nil
}

// canonicalVtepMAC matches exactly {"VNI":<digits>,"VtepMAC":"<17 chars>"},
// whose meaning as JSON is unambiguous.
func canonicalVtepMAC(s string) (string, bool) {
	rest, ok := strings.CutPrefix(s, `{"VNI":`)
	if !ok {
		return "", false
	}
	n := 0
	for n < len(rest) && n < 10 && rest[n] >= '0' && rest[n] <= '9' {
		n++
	}
	if n == 0 {
		return "", false
	}
	rest, ok = strings.CutPrefix(rest[n:], `,"VtepMAC":"`)
	if !ok || len(rest) != 17+2 || rest[17:] != `"}` {
		return "", false
	}
	mac := rest[:17]
	if strings.ContainsAny(mac, `"\`) {
		return "", false
	}
	return mac, true
}
