package rules

import (
	"fmt"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
)

// state is what weft owns, as read from the kernel over netlink.
type state struct {
	masq, fwd ownedChain
	weft      []nftChain // chains of table ip weft; nil when the table is absent
}

// ownedChain is one iptables-mode chain and the jumps into it from its base
// chain (POSTROUTING or FORWARD).
type ownedChain struct {
	exists bool
	rules  []string // rule fingerprints in chain order
	sem    []string // the same rules in semantic form (semRule)
	jumps  []jump
}

type jump struct {
	pos    int // 1-based rule number in the base chain, as iptables counts
	handle uint64
	table  *nftables.Table
	chain  *nftables.Chain
	ours   bool // exactly weft's jump: our comment, nothing else
	fp     string
}

type nftChain struct {
	desc  string // name, type, hook, priority, policy
	rules []string
}

// fingerprint renders the owned state as one string: equal strings mean
// equal rules in equal order. Positions of jumps inside the base chains are
// left out on purpose: other software adding rules around them is not drift.
func (st *state) fingerprint() string {
	var b strings.Builder
	for _, x := range []struct {
		name string
		ch   *ownedChain
	}{{MasqChain, &st.masq}, {FwdChain, &st.fwd}} {
		fmt.Fprintf(&b, "[%s exists=%v]", x.name, x.ch.exists)
		for _, r := range x.ch.rules {
			b.WriteString("|r:")
			b.WriteString(r)
		}
		for _, j := range x.ch.jumps {
			b.WriteString("|j:")
			b.WriteString(j.fp)
		}
	}
	fmt.Fprintf(&b, "[%s exists=%v]", NFTTable, st.weft != nil)
	for _, c := range st.weft {
		b.WriteString("|c:")
		b.WriteString(c.desc)
		for _, r := range c.rules {
			b.WriteString("|r:")
			b.WriteString(r)
		}
	}
	return b.String()
}

// read collects the owned state: one table dump, one chain dump and one rule
// dump per relevant chain — no process is started.
func (m *Manager) read() (*state, error) {
	c, err := m.nft()
	if err != nil {
		return nil, err
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return nil, fmt.Errorf("list nf_tables ip tables: %w", err)
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return nil, fmt.Errorf("list nf_tables ip chains: %w", err)
	}
	byKey := make(map[string]*nftables.Chain, len(chains))
	for _, ch := range chains {
		byKey[ch.Table.Name+"/"+ch.Name] = ch
	}
	st := &state{}
	for _, o := range []struct {
		table, base, chain, comment string
		dst                         *ownedChain
	}{
		{"nat", "POSTROUTING", MasqChain, MasqComment, &st.masq},
		{"filter", "FORWARD", FwdChain, FwdComment, &st.fwd},
	} {
		if base := byKey[o.table+"/"+o.base]; base != nil {
			rules, err := c.GetRules(base.Table, base)
			if err != nil {
				return nil, fmt.Errorf("list rules of %s %s: %w", o.table, o.base, err)
			}
			for i, r := range rules {
				if !jumpsTo(r, o.chain) {
					continue
				}
				o.dst.jumps = append(o.dst.jumps, jump{
					pos: i + 1, handle: r.Handle, table: base.Table, chain: base,
					ours: isOurJump(r, o.chain, o.comment), fp: ruleFP(r),
				})
			}
		}
		if ch := byKey[o.table+"/"+o.chain]; ch != nil {
			o.dst.exists = true
			rules, err := c.GetRules(ch.Table, ch)
			if err != nil {
				return nil, fmt.Errorf("list rules of %s %s: %w", o.table, o.chain, err)
			}
			for _, r := range rules {
				o.dst.rules = append(o.dst.rules, ruleFP(r))
				o.dst.sem = append(o.dst.sem, semRule(r))
			}
		}
	}
	if slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == NFTTable }) {
		st.weft = []nftChain{}
		var own []*nftables.Chain
		for _, ch := range chains {
			if ch.Table.Name == NFTTable {
				own = append(own, ch)
			}
		}
		slices.SortFunc(own, func(a, b *nftables.Chain) int { return strings.Compare(a.Name, b.Name) })
		for _, ch := range own {
			rules, err := c.GetRules(ch.Table, ch)
			if err != nil {
				return nil, fmt.Errorf("list rules of table ip %s chain %s: %w", NFTTable, ch.Name, err)
			}
			nc := nftChain{desc: chainDesc(ch)}
			for _, r := range rules {
				nc.rules = append(nc.rules, ruleFP(r))
			}
			st.weft = append(st.weft, nc)
		}
	}
	return st, nil
}

func chainDesc(ch *nftables.Chain) string {
	d := fmt.Sprintf("%s type=%s", ch.Name, ch.Type)
	if ch.Hooknum != nil {
		d += fmt.Sprintf(" hook=%d", *ch.Hooknum)
	}
	if ch.Priority != nil {
		d += fmt.Sprintf(" prio=%d", *ch.Priority)
	}
	if ch.Policy != nil {
		d += fmt.Sprintf(" policy=%d", *ch.Policy)
	}
	return d
}

// ruleFP is a rule's identity: its expressions in order, marshalled, with
// counters left out (they change with every packet), plus its user data
// (where nft keeps comments).
func ruleFP(r *nftables.Rule) string {
	var b strings.Builder
	for _, e := range r.Exprs {
		if _, ok := e.(*expr.Counter); ok {
			continue
		}
		raw, err := expr.Marshal(byte(nftables.TableFamilyIPv4), e)
		if err != nil {
			fmt.Fprintf(&b, "%T%+v;", e, e)
			continue
		}
		fmt.Fprintf(&b, "%x;", raw)
	}
	fmt.Fprintf(&b, "u%x", r.UserData)
	return b.String()
}

func jumpsTo(r *nftables.Rule, chain string) bool {
	return slices.ContainsFunc(r.Exprs, func(e expr.Any) bool {
		v, ok := e.(*expr.Verdict)
		return ok && (v.Kind == expr.VerdictJump || v.Kind == expr.VerdictGoto) && v.Chain == chain
	})
}

// isOurJump reports whether r is exactly `-m comment --comment <comment> -j
// <chain>`: an unconditional jump, so a flanneld leftover or a hand-made
// conditional jump is replaced rather than adopted.
func isOurJump(r *nftables.Rule, chain, comment string) bool {
	var n int
	var commented, jumps bool
	for _, e := range r.Exprs {
		switch e := e.(type) {
		case *expr.Counter:
			continue
		case *expr.Match:
			if c, ok := e.Info.(*xt.Comment); ok && e.Name == "comment" && string(*c) == comment {
				commented = true
			}
		case *expr.Verdict:
			jumps = e.Kind == expr.VerdictJump && e.Chain == chain
		}
		n++
	}
	return n == 2 && commented && jumps
}
