package daemon

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/lease"
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

// TestJudgeConfig: which changes apply live and which need a restart, for
// a host holding 172.30.5.0/24.
func TestJudgeConfig(t *testing.T) {
	own := lease.Lease{Subnet: netip.MustParsePrefix("172.30.5.0/24")}
	cur := mustConfig(t, `{"Network":"172.30.0.0/16","Backend":{"Type":"vxlan"}}`)
	for _, tc := range []struct {
		next             string
		restart, live    string // substrings of the first restart/live item ("" = none)
		network, backend bool
	}{
		{next: `{"Network":"172.30.0.0/16","Backend":{"Type":"vxlan"}}`},
		{next: `{"Backend":{"Type":"vxlan"},"Network":"172.30.0.0/16"}`},
		{next: `{"Network":"172.16.0.0/12","Backend":{"Type":"vxlan"}}`, live: "Network 172.30.0.0/16 -> 172.16.0.0/12", network: true},
		{next: `{"Network":"172.30.0.0/16","Backend":{"Type":"vxlan","Port":4789}}`, live: "Backend options", backend: true},
		{next: `{"Network":"172.30.0.0/16","Backend":{"Type":"vxlan","MTU":1400}}`, live: "Backend options", backend: true},
		{next: `{"Network":"172.30.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}`, live: "Backend options", backend: true},
		{next: `{"Network":"172.30.0.0/16","Backend":{"Type":"host-gw"}}`, restart: "Backend.Type vxlan -> host-gw"},
		{next: `{"Network":"172.30.0.0/16","SubnetLen":25,"Backend":{"Type":"vxlan"}}`, restart: "SubnetLen 24 -> 25"},
		{next: `{"Network":"10.10.0.0/16","Backend":{"Type":"vxlan"}}`, restart: "does not contain this host's subnet 172.30.5.0/24"},
		{next: `{"Network":"172.30.0.0/16","Backend":{"Type":"vxlan","VNI":2}}`, restart: "vxlan VNI 1 -> 2"},
		{next: `{"Network":"172.30.0.0/16","EnableIPv6":true,"IPv6Network":"fd30::/48","Backend":{"Type":"vxlan"}}`, restart: "EnableIPv6 false -> true"},
	} {
		c := judgeConfig(cur, mustConfig(t, tc.next), own)
		first := func(xs []string) string {
			if len(xs) == 0 {
				return ""
			}
			return xs[0]
		}
		if got := first(c.restart); (tc.restart == "") != (got == "") || !strings.Contains(got, tc.restart) {
			t.Errorf("%s: restart %q, want %q", tc.next, c.restart, tc.restart)
		}
		if tc.restart != "" {
			continue
		}
		if got := first(c.live); (tc.live == "") != (got == "") || !strings.Contains(got, tc.live) {
			t.Errorf("%s: live %q, want %q", tc.next, c.live, tc.live)
		}
		if c.network != tc.network || c.backend != tc.backend {
			t.Errorf("%s: network %v backend %v, want %v %v", tc.next, c.network, c.backend, tc.network, tc.backend)
		}
	}
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
