package netconf

import (
	"net/netip"
	"strings"
	"testing"
)

func mustParse(t *testing.T, s string) Config {
	t.Helper()
	c, _, err := Parse([]byte(s))
	if err != nil {
		t.Fatalf("parse %s: %v", s, err)
	}
	return c
}

// TestCompareConfigs: which changes apply live and which need a restart,
// for a host holding 172.30.5.0/24 and for one without a lease.
func TestCompareConfigs(t *testing.T) {
	own := netip.MustParsePrefix("172.30.5.0/24")
	cur := mustParse(t, `{"Network":"172.30.0.0/16","Backend":{"Type":"vxlan"}}`)
	for _, tc := range []struct {
		next             string
		noLease          bool   // judged for a host without a lease
		restart, live    string // substrings of the first restart/live item ("" = none)
		network, backend bool
	}{
		{next: `{"Network":"172.30.0.0/16","Backend":{"Type":"vxlan"}}`},
		{next: `{"Backend":{"Type":"vxlan"},"Network":"172.30.0.0/16"}`},
		{next: `{"Network":"172.16.0.0/12","Backend":{"Type":"vxlan"}}`, live: "Network 172.30.0.0/16 -> 172.16.0.0/12", network: true},
		{next: `{"Network":"172.30.0.0/16","SubnetMin":"172.30.10.0","Backend":{"Type":"vxlan"}}`, live: "SubnetMin/SubnetMax 172.30.1.0..172.30.255.0 -> 172.30.10.0..172.30.255.0", network: true},
		{next: `{"Network":"172.30.0.0/16","Backend":{"Type":"vxlan","Port":4789}}`, live: `Backend options {"Type":"vxlan"} -> {"Type":"vxlan","Port":4789}`, backend: true},
		{next: `{"Network":"172.30.0.0/16","Backend":{"Type":"vxlan","MTU":1400}}`, live: "Backend options", backend: true},
		{next: `{"Network":"172.30.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}`, live: "Backend options", backend: true},
		{next: `{"Network":"172.30.0.0/16","Backend":{"Type":"host-gw"}}`, restart: "Backend.Type vxlan -> host-gw"},
		{next: `{"Network":"172.30.0.0/16","SubnetLen":25,"Backend":{"Type":"vxlan"}}`, restart: "SubnetLen 24 -> 25"},
		{next: `{"Network":"10.10.0.0/16","Backend":{"Type":"vxlan"}}`, restart: "Network 172.30.0.0/16 -> 10.10.0.0/16, which does not contain this host's subnet 172.30.5.0/24"},
		{next: `{"Network":"10.10.0.0/16","Backend":{"Type":"vxlan"}}`, noLease: true, live: "Network 172.30.0.0/16 -> 10.10.0.0/16", network: true},
		{next: `{"Network":"172.30.0.0/16","Backend":{"Type":"vxlan","VNI":2}}`, restart: "vxlan VNI 1 -> 2"},
		{next: `{"Network":"172.30.0.0/16","EnableNFTables":true,"Backend":{"Type":"vxlan"}}`, restart: "EnableNFTables false -> true"},
		{next: `{"Network":"172.30.0.0/16","EnableIPv6":true,"IPv6Network":"fd30::/48","Backend":{"Type":"vxlan"}}`, restart: "EnableIPv6 false -> true"},
	} {
		o := own
		if tc.noLease {
			o = netip.Prefix{}
		}
		c := CompareConfigs(cur, mustParse(t, tc.next), o)
		first := func(xs []string) string {
			if len(xs) == 0 {
				return ""
			}
			return xs[0]
		}
		if got := first(c.Restart); (tc.restart == "") != (got == "") || !strings.Contains(got, tc.restart) {
			t.Errorf("%s: restart %q, want %q", tc.next, c.Restart, tc.restart)
		}
		if tc.restart != "" {
			continue
		}
		if got := first(c.Live); (tc.live == "") != (got == "") || !strings.Contains(got, tc.live) {
			t.Errorf("%s: live %q, want %q", tc.next, c.Live, tc.live)
		}
		if c.Network != tc.network || c.Backend != tc.backend {
			t.Errorf("%s: Network %v Backend %v, want %v %v", tc.next, c.Network, c.Backend, tc.network, tc.backend)
		}
	}
}
