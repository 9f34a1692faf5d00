package rules

import (
	"fmt"

	"github.com/google/nftables"
)

// Teardown removes everything weft's rules own, in both modes and both
// families — iptables mode's chains FLANNEL-POSTRTG/FLANNEL-FWD and the
// jumps into them, tables ip/ip6 weft, table inet weft-guard — for
// `weftctl decommission`. Then, because iptables-nft creates its nat and
// filter tables on first use and never removes them, each of those tables
// left with no rule at all and only accept policies is deleted too: such a
// table filters nothing, and deleting it leaves the host as it was before
// weft's first rule. A table with any rule or a drop policy (Docker's,
// kube-proxy's) is kept. It reports what it removed; calling it again
// removes nothing.
func (m *Manager) Teardown() (removed []string, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.desired, m.written = nil, ""
	st, err := m.read()
	if err != nil {
		return nil, err
	}
	for i, f := range families {
		fs := &st.fam[i]
		if fs.masq.exists || len(fs.masq.jumps) > 0 {
			removed = append(removed, fmt.Sprintf("%s nat %s", f.iptables, MasqChain))
		}
		if fs.fwd.exists || len(fs.fwd.jumps) > 0 {
			removed = append(removed, fmt.Sprintf("%s filter %s", f.iptables, FwdChain))
		}
		if fs.weft != nil {
			removed = append(removed, fmt.Sprintf("table %s %s", f.name, NFTTable))
		}
	}
	// applyNFT with nothing desired deletes the chains, their jumps and
	// tables weft in one batch, as a mode switch does.
	if err := m.applyNFT(Desired{}, st); err != nil {
		return nil, fmt.Errorf("remove weft's traffic rules: %w", err)
	}
	rc, err := m.rawConn()
	if err != nil {
		return removed, err
	}
	if ok, err := guardPresent(rc); err != nil {
		return removed, err
	} else if ok {
		c, err := m.nft()
		if err != nil {
			return removed, err
		}
		c.DelTable(guardTableRef())
		if err := c.Flush(); err != nil {
			return removed, fmt.Errorf("delete table inet %s: %w", GuardTable, err)
		}
		removed = append(removed, "table inet "+GuardTable)
	}
	m.guard.written, m.guard.ports, m.guard.isVerified = nil, nil, false
	empty, err := m.removeEmptyXtTables()
	return append(removed, empty...), err
}

// removeEmptyXtTables deletes the iptables-nft tables nat and filter of
// both families that hold no rule and no chain with a drop policy.
func (m *Manager) removeEmptyXtTables() (removed []string, err error) {
	c, err := m.nft()
	if err != nil {
		return nil, err
	}
	for _, f := range families {
		tables, err := c.ListTablesOfFamily(f.tf)
		if err != nil {
			return removed, fmt.Errorf("list %s tables: %w", f.name, err)
		}
		for _, t := range tables {
			if t.Name != "nat" && t.Name != "filter" {
				continue
			}
			chains, err := c.ListChainsOfTableFamily(f.tf)
			if err != nil {
				return removed, fmt.Errorf("list chains of %s %s: %w", f.name, t.Name, err)
			}
			inert := true
			for _, ch := range chains {
				if ch.Table.Name != t.Name {
					continue
				}
				if ch.Policy != nil && *ch.Policy != nftables.ChainPolicyAccept {
					inert = false
					break
				}
				rules, err := c.GetRules(t, ch)
				if err != nil {
					return removed, fmt.Errorf("list rules of %s %s %s: %w", f.name, t.Name, ch.Name, err)
				}
				if len(rules) > 0 {
					inert = false
					break
				}
			}
			if !inert {
				continue
			}
			c.DelTable(t)
			if err := c.Flush(); err != nil {
				return removed, fmt.Errorf("delete empty table %s %s: %w", f.name, t.Name, err)
			}
			removed = append(removed, fmt.Sprintf("empty table %s %s", f.name, t.Name))
		}
	}
	return removed, nil
}
