package rules

import (
	"fmt"
	"math/bits"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
)

// The semantic form of an iptables-mode rule: what it matches and does,
// independent of how a given iptables-nft version encodes it (a /24 is a
// 3-byte compare in one version and a masked 4-byte compare in another).
// Set uses it to see that a restarted daemon finds its rules already in
// place and need not start iptables-restore at all; anything it does not
// understand makes the rule compare unequal, which only costs a rewrite.

// natRangeRandomFully is NF_NAT_RANGE_PROTO_RANDOM_FULLY.
const natRangeRandomFully = 1 << 4

// semRule renders r's matches (sorted) followed by its action.
func semRule(f *family, r *nftables.Rule) string {
	var matches []string
	var action string
	var load *expr.Payload
	var meta *expr.Meta
	var mask []byte
	for _, e := range r.Exprs {
		switch e := e.(type) {
		case *expr.Counter:
		case *expr.Payload:
			load, meta, mask = e, nil, nil
		case *expr.Meta:
			load, meta, mask = nil, e, nil
		case *expr.Bitwise:
			mask = e.Mask
		case *expr.Cmp:
			matches = append(matches, semCmp(f, load, meta, mask, e))
			load, meta, mask = nil, nil, nil
		case *expr.Match:
			if c, ok := e.Info.(*xt.Comment); ok && e.Name == "comment" {
				matches = append(matches, "comment="+string(*c))
			} else {
				matches = append(matches, "?match:"+e.Name)
			}
		case *expr.Target:
			action = semTarget(e)
		case *expr.Masq:
			action = "MASQUERADE"
			if e.FullyRandom {
				action += " random-fully"
			}
			if e.Random || e.Persistent || e.ToPorts {
				action += " ?flags"
			}
		case *expr.Verdict:
			switch e.Kind {
			case expr.VerdictReturn:
				action = "RETURN"
			case expr.VerdictAccept:
				action = "ACCEPT"
			case expr.VerdictJump:
				action = "jump:" + e.Chain
			default:
				action = fmt.Sprintf("?verdict:%d", e.Kind)
			}
		default:
			matches = append(matches, fmt.Sprintf("?%T", e))
		}
	}
	slices.Sort(matches)
	return strings.Join(matches, " ") + " => " + action
}

func semCmp(f *family, load *expr.Payload, meta *expr.Meta, mask []byte, c *expr.Cmp) string {
	neg := ""
	switch c.Op {
	case expr.CmpOpEq:
	case expr.CmpOpNeq:
		neg = "!"
	default:
		return fmt.Sprintf("?cmp:%d", c.Op)
	}
	switch {
	case load != nil && load.Base == expr.PayloadBaseNetworkHeader && (load.Offset == f.saddr || load.Offset == f.daddr) && load.Len >= 1 && load.Len <= f.alen && len(c.Data) == int(load.Len):
		field := "s"
		if load.Offset == f.daddr {
			field = "d"
		}
		// ip6tables-nft loads only the bytes a prefix covers (a /64 is an
		// 8-byte compare), iptables-nft the same for IPv4; a mask narrows
		// the last byte.
		addr := make([]byte, f.alen)
		copy(addr, c.Data)
		m := make([]byte, f.alen)
		if mask != nil {
			copy(m, mask)
		} else {
			for i := range int(load.Len) {
				m[i] = 0xff
			}
		}
		ones, ok := maskOnes(m)
		if !ok {
			return "?mask"
		}
		a, _ := netip.AddrFromSlice(addr)
		return fmt.Sprintf("%s%s=%s", neg, field, netip.PrefixFrom(a, ones))
	case meta != nil && meta.Key == expr.MetaKeyMARK && len(c.Data) == 4:
		m := uint32(0xffffffff)
		if len(mask) == 4 {
			m = binaryutil.NativeEndian.Uint32(mask)
		}
		return fmt.Sprintf("%smark=0x%x/0x%x", neg, binaryutil.NativeEndian.Uint32(c.Data), m)
	}
	return "?cmp"
}

// maskOnes returns the prefix length of a contiguous network mask; ok is
// false for any other mask.
func maskOnes(m []byte) (ones int, ok bool) {
	i := 0
	for i < len(m) && m[i] == 0xff {
		i++
	}
	ones = i * 8
	if i == len(m) {
		return ones, true
	}
	lead := bits.LeadingZeros8(^m[i])
	if m[i]<<lead != 0 {
		return 0, false
	}
	for _, b := range m[i+1:] {
		if b != 0 {
			return 0, false
		}
	}
	return ones + lead, true
}

func semTarget(t *expr.Target) string {
	if t.Name != "MASQUERADE" {
		return "?target:" + t.Name
	}
	var flags uint32
	switch info := t.Info.(type) {
	case *xt.NatIPv4MultiRangeCompat:
		if len(*info) != 1 {
			return "?target:MASQUERADE"
		}
		flags = uint32((*info)[0].Flags)
	case *xt.Unknown:
		// IPv6 MASQUERADE carries struct nf_nat_range, which xt does not
		// decode: its first field is the flags, in host order.
		if len(*info) < 4 {
			return "?target:MASQUERADE"
		}
		flags = binaryutil.NativeEndian.Uint32((*info)[:4])
	default:
		return "?target:MASQUERADE"
	}
	out := "MASQUERADE"
	if flags&natRangeRandomFully != 0 {
		out += " random-fully"
		flags &^= natRangeRandomFully
	}
	if flags != 0 {
		out += fmt.Sprintf(" ?flags=%d", flags)
	}
	return out
}

// semWant is the semantic form of family f's iptables-mode chains for d.
func semWant(d Desired, f *family) (masq, fwd []string) {
	rule := func(action string, matches ...string) string {
		slices.Sort(matches)
		return strings.Join(matches, " ") + " => " + action
	}
	network, subnet, _ := d.nets(f)
	n, s := network.String(), subnet.String()
	mc, fc := "comment="+MasqComment, "comment="+FwdComment
	masquerade := "MASQUERADE"
	if d.RandomFully {
		masquerade += " random-fully"
	}
	masq = []string{
		rule("RETURN", fmt.Sprintf("mark=0x%x/0x%x", kubeProxyMark, kubeProxyMark), mc),
		rule("RETURN", "s="+s, "d="+n, mc),
		rule("RETURN", "s="+n, "d="+s, mc),
		rule("RETURN", "!s="+n, "d="+s, mc),
		rule(masquerade, "s="+n, "!d="+f.multicast.String(), mc),
		rule(masquerade, "!s="+n, "d="+n, mc),
	}
	fwd = []string{
		rule("ACCEPT", "s="+n, fc),
		rule("ACCEPT", "d="+n, fc),
	}
	return masq, fwd
}

// iptablesInPlace reports whether fs already holds family f's iptables-mode
// chains for d: owned chains with exactly the desired rules, one jump each
// (ours); or, where d wants none, no chain and no jump.
func iptablesInPlace(d Desired, f *family, fs *famState) bool {
	if d.NFTables {
		return false
	}
	masq, fwd := semWant(d, f)
	wantMasq, wantFwd := wants(d, f)
	ok := func(wanted bool, ch *ownedChain, rules []string) bool {
		if !wanted {
			return !ch.exists && len(ch.jumps) == 0
		}
		return ch.exists && slices.Equal(ch.sem, rules) && len(ch.jumps) == 1 && ch.jumps[0].ours
	}
	return ok(wantMasq, &fs.masq, masq) && ok(wantFwd, &fs.fwd, fwd)
}
