package rules

import (
	"testing"
)

// TestCheckFastPath: once a full comparison found the rules as written,
// further checks are answered from the raw bytes — also after traffic moved
// the rule counters — and every kind of drift still reaches the full
// comparison and is repaired.
func TestCheckFastPath(t *testing.T) {
	bothModes(t, func(t *testing.T, nft bool) {
		ns, m := newManager(t)
		d := desired()
		d.NFTables = nft
		if err := m.Set(d); err != nil {
			t.Fatal(err)
		}
		mustCheck(t, m, false) // full comparison; remembers the bytes
		if m.fast.good == nil {
			t.Fatal("no raw digest remembered after a clean full check")
		}
		hits := m.fast.hits
		mustCheck(t, m, false)
		if m.fast.hits != hits+1 {
			t.Fatalf("second check did not take the fast path (hits %d → %d)", hits, m.fast.hits)
		}
		// Traffic through the ns's own loopback moves the nat counters.
		ns.MustRun(t, "ip", "link", "set", "lo", "up")
		ns.MustRun(t, "ping", "-c", "2", "-i", "0.2", "-W", "1", "127.0.0.1")
		mustCheck(t, m, false)
		if m.fast.hits != hits+2 {
			t.Errorf("counters changed by traffic defeated the fast path (hits %d → %d)", hits, m.fast.hits)
		}
		// Drift is seen through the fast path's bytes.
		if nft {
			ns.MustRun(t, "nft", "add", "rule", "ip", NFTTable, NFTFwd, "ip", "saddr", "172.30.0.0/16", "accept", "comment", `"weftd forward"`)
		} else {
			ns.MustRun(t, "iptables", "-w", "-t", "nat", "-A", MasqChain, "-s", "172.30.19.0/24", "-d", "172.30.0.0/16",
				"-m", "comment", "--comment", MasqComment, "-j", "RETURN")
		}
		mustCheck(t, m, true)
		if m.fast.good != nil {
			t.Error("raw digest kept across a rewrite")
		}
		if nft {
			assertNFT(t, ns, wantNFTMasq, wantNFTFwd)
		} else {
			assertIptables(t, ns, wantMasq, wantFwd)
		}
		// A foreign rule in FORWARD is no drift: one full comparison,
		// then the fast path again.
		ns.MustRun(t, "iptables", "-w", "-A", "FORWARD", "-s", "10.9.0.0/16", "-j", "ACCEPT")
		mustCheck(t, m, false)
		hits = m.fast.hits
		mustCheck(t, m, false)
		if m.fast.hits != hits+1 {
			t.Errorf("fast path not taken after a foreign rule was accepted (hits %d → %d)", hits, m.fast.hits)
		}
	})
}
