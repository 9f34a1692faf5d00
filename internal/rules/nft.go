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

// IPv4 header offsets of the source and destination addresses.
const (
	offSaddr = 12
	offDaddr = 16
)

// applyNFT replaces table ip weft in one netlink batch and, in the same
// batch, removes iptables mode's chains and jumps: the mode switch is one
// transaction, so traffic never sees both rule sets or neither.
func (m *Manager) applyNFT(d Desired, st *state) error {
	c, err := m.nft()
	if err != nil {
		return err
	}
	for _, o := range []*ownedChain{&st.masq, &st.fwd} {
		for _, j := range o.jumps {
			if err := c.DelRule(&nftables.Rule{Table: j.table, Chain: j.chain, Handle: j.handle}); err != nil {
				return fmt.Errorf("queue deletion of jump rule %d in %s %s: %w", j.handle, j.table.Name, j.chain.Name, err)
			}
		}
	}
	for _, x := range []struct {
		table, chain string
		ch           *ownedChain
	}{{"nat", MasqChain, &st.masq}, {"filter", FwdChain, &st.fwd}} {
		if x.ch.exists {
			ch := &nftables.Chain{Name: x.chain, Table: &nftables.Table{Name: x.table, Family: nftables.TableFamilyIPv4}}
			c.FlushChain(ch)
			c.DelChain(ch)
		}
	}

	t := &nftables.Table{Name: NFTTable, Family: nftables.TableFamilyIPv4}
	// add+delete makes the delete valid whether or not the table exists;
	// the table is then rebuilt from scratch in the same transaction.
	c.AddTable(t)
	c.DelTable(t)
	if d.IPMasq || d.ForwardRules {
		c.AddTable(t)
		masq, fwd := nftRules(d)
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
		return fmt.Errorf("replace nftables table ip %s (masq=%v forward=%v): %w", NFTTable, d.IPMasq, d.ForwardRules, err)
	}
	return nil
}

// nftRules are the nftables equivalents of IptablesRules, in the same order.
func nftRules(d Desired) (masq, fwd [][]expr.Any) {
	n, s := d.Network, d.Subnet
	mc := netip.MustParsePrefix(multicast)
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
	masq = [][]expr.Any{
		{
			&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mark, Xor: []byte{0, 0, 0, 0}},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: mark},
			&expr.Verdict{Kind: expr.VerdictReturn},
		},
		cat(prefixMatch(offSaddr, s, true), prefixMatch(offDaddr, n, true), one(verdict(expr.VerdictReturn))),
		cat(prefixMatch(offSaddr, n, true), prefixMatch(offDaddr, s, true), one(verdict(expr.VerdictReturn))),
		cat(prefixMatch(offSaddr, n, false), prefixMatch(offDaddr, s, true), one(verdict(expr.VerdictReturn))),
		cat(prefixMatch(offSaddr, n, true), prefixMatch(offDaddr, mc, false), one(masquerade())),
		cat(prefixMatch(offSaddr, n, false), prefixMatch(offDaddr, n, true), one(masquerade())),
	}
	fwd = [][]expr.Any{
		cat(prefixMatch(offSaddr, n, true), one(verdict(expr.VerdictAccept))),
		cat(prefixMatch(offDaddr, n, true), one(verdict(expr.VerdictAccept))),
	}
	return masq, fwd
}

// prefixMatch matches the IPv4 address at off against p (eq: in p, else not
// in p): load the 4 bytes, mask them, compare with the network address.
func prefixMatch(off uint32, p netip.Prefix, eq bool) []expr.Any {
	op := expr.CmpOpEq
	if !eq {
		op = expr.CmpOpNeq
	}
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: net.CIDRMask(p.Bits(), 32), Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: op, Register: 1, Data: p.Masked().Addr().AsSlice()},
	}
}
