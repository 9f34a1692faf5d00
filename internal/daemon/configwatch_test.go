package daemon

import (
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/netconf"
)

func mustConfig(t *testing.T, s string) netconf.Config {
	t.Helper()
	c, _, err := netconf.Parse([]byte(s))
	if err != nil {
		t.Fatalf("parse %s: %v", s, err)
	}
	return c
}

// TestCheckMTU: an MTU over the NIC's minus the vxlan overhead is refused
// with both numbers and the fix; equal is accepted.
func TestCheckMTU(t *testing.T) {
	for _, tc := range []struct {
		cfg     string
		nic     int
		wantErr string
	}{
		{`{"Network":"172.30.0.0/16","Backend":{"Type":"vxlan"}}`, 1500, ""},
		{`{"Network":"172.30.0.0/16","Backend":{"Type":"vxlan","MTU":1450}}`, 1500, ""},
		{`{"Network":"172.30.0.0/16","Backend":{"Type":"vxlan","MTU":1451}}`, 1500, "Backend.MTU 1451 does not fit interface eth0: its MTU 1500 minus the 50 bytes vxlan adds is 1450"},
		{`{"Network":"172.30.0.0/16","Backend":{"Type":"vxlan","MTU":8950}}`, 9000, ""},
		{`{"Network":"172.30.0.0/16","Backend":{"Type":"host-gw"}}`, 1500, ""},
	} {
		err := checkMTU(mustConfig(t, tc.cfg), "eth0", tc.nic)
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("%s on %d: %v", tc.cfg, tc.nic, err)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), "at most 1450")):
			t.Errorf("%s on %d: error %v, want %q and the fix", tc.cfg, tc.nic, err, tc.wantErr)
		}
	}
}
