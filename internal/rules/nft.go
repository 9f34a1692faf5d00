package rules

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
)

// applyNFT replaces table weft of each family in one netlink batch and, in
// the same batch, removes iptables mode's chains and jumps of both families:
// the mode switch is one transaction, so traffic never sees both rule sets
// or neither. A family d has no network for ends up without table weft.
func (m *Manager) applyNFT(d Desired, st *state) error {
	c, err := m.nft()
	if err != nil {
		return err
	}
	for i, f := range families {
		fs := &st.fam[i]
		for _, o := range []*ownedChain{&fs.masq, &fs.fwd} {
			for _, j := range o.jumps {
				if err := c.DelRule(&nftables.Rule{Table: j.table, Chain: j.chain, Handle: j.handle}); err != nil {
					return fmt.Errorf("queue deletion of jump rule %d in %s %s %s: %w", j.handle, f.name, j.table.Name, j.chain.Name, err)
				}
			}
		}
		for _, x := range []struct {
			table, chain string
			ch           *ownedChain
		}{{"nat", MasqChain, &fs.masq}, {"filter", FwdChain, &fs.fwd}} {
			if x.ch.exists {
				ch := &nftables.Chain{Name: x.chain, Table: &nftables.Table{Name: x.table, Family: f.tf}}
				c.FlushChain(ch)
				c.DelChain(ch)
			}
		}

		t := &nftables.Table{Name: NFTTable, Family: f.tf}
		// add+delete makes the delete valid whether or not the table exists;
		// the table is then rebuilt from scratch in the same transaction.
		c.AddTable(t)
		c.DelTable(t)
		if !wantsTable(d, f) {
			continue
		}
		c.AddTable(t)
		masq, fwd := nftRules(d, f)
		if d.IPMasq {
			ch := c.AddChain(&nftables.Chain{
				Name: NFTMasq, Table: t, Type: nftables.ChainTypeNAT,
				Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource,
			})
			for _, r := range masq {
				c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: r, UserData: userdata.AppendString(nil, userdata.TypeComment, MasqComment)})
			}
		}
		if d.ForwardRules {
			accept := nftables.ChainPolicyAccept
			ch := c.AddChain(&nftables.Chain{
				Name: NFTFwd, Table: t, Type: nftables.ChainTypeFilter,
				Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept,
			})
			for _, r := range fwd {
				c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: r, UserData: userdata.AppendString(nil, userdata.TypeComment, FwdComment)})
			}
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("replace nftables tables ip/ip6 %s (masq=%v forward=%v ipv6=%v): %w", NFTTable, d.IPMasq, d.ForwardRules, d.IPv6Network.IsValid(), err)
	}
	return nil
}

// nftRules are the nftables equivalents of iptablesRules for family f, in
// the same order.
func nftRules(d Desired, f *family) (masq, fwd [][]expr.Any) {
	n, s, _ := d.nets(f)
	mc := f.multicast
	verdict := func(k expr.VerdictKind) expr.Any { return &expr.Verdict{Kind: k} }
	masquerade := func() expr.Any { return &expr.Masq{FullyRandom: d.RandomFully} }
	cat := func(parts ...[]expr.Any) []expr.Any {
		var out []expr.Any
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	one := func(e expr.Any) []expr.Any { return []expr.Any{e} }
	mark := binaryutil.NativeEndian.PutUint32(kubeProxyMark)
	src := func(p netip.Prefix, eq bool) []expr.Any { return prefixMatch(f, f.saddr, p, eq) }
	dst := func(p netip.Prefix, eq bool) []expr.Any { return prefixMatch(f, f.daddr, p, eq) }
	masq = [][]expr.Any{
		{
			&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mark, Xor: []byte{0, 0, 0, 0}},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: mark},
			&expr.Verdict{Kind: expr.VerdictReturn},
		},
		cat(src(s, true), dst(n, true), one(verdict(expr.VerdictReturn))),
		cat(src(n, true), dst(s, true), one(verdict(expr.VerdictReturn))),
		cat(src(n, false), dst(s, true), one(verdict(expr.VerdictReturn))),
		cat(src(n, true), dst(mc, false), one(masquerade())),
		cat(src(n, false), dst(n, true), one(masquerade())),
	}
	fwd = [][]expr.Any{
		cat(src(n, true), one(verdict(expr.VerdictAccept))),
		cat(dst(n, true), one(verdict(expr.VerdictAccept))),
	}
	return masq, fwd
}

// prefixMatch matches the address of family f at off against p (eq: in p,
// else not in p): load the whole address, mask it, compare with the network
// address.
func prefixMatch(f *family, off uint32, p netip.Prefix, eq bool) []expr.Any {
	op := expr.CmpOpEq
	if !eq {
		op = expr.CmpOpNeq
	}
	bitsLen := int(f.alen) * 8
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: f.alen},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: f.alen, Mask: net.CIDRMask(p.Bits(), bitsLen), Xor: make([]byte, f.alen)},
		&expr.Cmp{Op: op, Register: 1, Data: p.Masked().Addr().AsSlice()},
	}
}
