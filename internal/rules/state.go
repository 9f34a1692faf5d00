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
	fam [2]famState // indexed like families
}

// famState is what weft owns in one address family.
type famState struct {
	masq, fwd ownedChain
	weft      []nftChain // chains of table weft; nil when the table is absent
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
	for i, f := range families {
		fs := &st.fam[i]
		fmt.Fprintf(&b, "{%s}", f.name)
		for _, x := range []struct {
			name string
			ch   *ownedChain
		}{{MasqChain, &fs.masq}, {FwdChain, &fs.fwd}} {
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
		fmt.Fprintf(&b, "[%s exists=%v]", NFTTable, fs.weft != nil)
		for _, c := range fs.weft {
			b.WriteString("|c:")
			b.WriteString(c.desc)
			for _, r := range c.rules {
				b.WriteString("|r:")
				b.WriteString(r)
			}
		}
	}
	return b.String()
}

// read collects the owned state of both families: per family one table
// dump, one chain dump and one rule dump per relevant chain — no process is
// started. The IPv6 side is read even when Desired has no IPv6, so that
// leftovers are seen and removed.
func (m *Manager) read() (*state, error) {
	c, err := m.nft()
	if err != nil {
		return nil, err
	}
	st := &state{}
	for i, f := range families {
		if err := readFamily(c, f, &st.fam[i]); err != nil {
			return nil, err
		}
	}
	return st, nil
}

func readFamily(c *nftables.Conn, f *family, fs *famState) error {
	tables, err := c.ListTablesOfFamily(f.tf)
	if err != nil {
		return fmt.Errorf("list nf_tables %s tables: %w", f.name, err)
	}
	chains, err := c.ListChainsOfTableFamily(f.tf)
	if err != nil {
		return fmt.Errorf("list nf_tables %s chains: %w", f.name, err)
	}
	byKey := make(map[string]*nftables.Chain, len(chains))
	for _, ch := range chains {
		byKey[ch.Table.Name+"/"+ch.Name] = ch
	}
	for _, o := range []struct {
		table, base, chain, comment string
		dst                         *ownedChain
	}{
		{"nat", "POSTROUTING", MasqChain, MasqComment, &fs.masq},
		{"filter", "FORWARD", FwdChain, FwdComment, &fs.fwd},
	} {
		if base := byKey[o.table+"/"+o.base]; base != nil {
			rules, err := c.GetRules(base.Table, base)
			if err != nil {
				return fmt.Errorf("list rules of %s %s %s: %w", f.name, o.table, o.base, err)
			}
			for i, r := range rules {
				if !jumpsTo(r, o.chain) {
					continue
				}
				o.dst.jumps = append(o.dst.jumps, jump{
					pos: i + 1, handle: r.Handle, table: base.Table, chain: base,
					ours: isOurJump(r, o.chain, o.comment), fp: ruleFP(f, r),
				})
			}
		}
		if ch := byKey[o.table+"/"+o.chain]; ch != nil {
			o.dst.exists = true
			rules, err := c.GetRules(ch.Table, ch)
			if err != nil {
				return fmt.Errorf("list rules of %s %s %s: %w", f.name, o.table, o.chain, err)
			}
			for _, r := range rules {
				o.dst.rules = append(o.dst.rules, ruleFP(f, r))
				o.dst.sem = append(o.dst.sem, semRule(f, r))
			}
		}
	}
	if slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == NFTTable }) {
		fs.weft = []nftChain{}
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
				return fmt.Errorf("list rules of table %s %s chain %s: %w", f.name, NFTTable, ch.Name, err)
			}
			nc := nftChain{desc: chainDesc(ch)}
			for _, r := range rules {
				nc.rules = append(nc.rules, ruleFP(f, r))
			}
			fs.weft = append(fs.weft, nc)
		}
	}
	return nil
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
func ruleFP(f *family, r *nftables.Rule) string {
	var b strings.Builder
	for _, e := range r.Exprs {
		if _, ok := e.(*expr.Counter); ok {
			continue
		}
		raw, err := expr.Marshal(byte(f.tf), e)
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
