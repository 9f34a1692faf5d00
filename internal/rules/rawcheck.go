package rules

// The periodic check's fast path. read() decodes every rule of the owned
// and base chains into google/nftables expressions and marshals them back
// for the fingerprint, which every 5 s costs CPU and garbage for nothing
// while the rules are as written (BenchmarkCheckNFTables; BENCHMARKS.md). Here
// the same chains are dumped raw and their bytes compared with the bytes seen
// the last time the full comparison found the rules as written: equal bytes
// (counters left out) mean equal rules in equal order, so nothing is decoded.
// Any difference, including one that does not matter (another program adding
// a rule to FORWARD), falls back to the full comparison, which decides; only
// then are the new bytes remembered.

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/rtnl"
)

// fastCheck is the fast path's state.
type fastCheck struct {
	conn *netlink.Conn
	// good is the raw digest of a state the full comparison found equal to
	// what the last write left; nil: none since that write.
	good []byte
	hits int // checks the fast path answered, for tests
}

func (f *fastCheck) close() error {
	if f.conn == nil {
		return nil
	}
	err := f.conn.Close()
	f.conn, f.good = nil, nil
	return err
}

// rawConn returns the lasting NETLINK_NETFILTER socket of the fast path.
func (m *Manager) rawConn() (*netlink.Conn, error) {
	if m.fast.conn != nil {
		return m.fast.conn, nil
	}
	cfg := &netlink.Config{}
	if m.nsFd >= 0 {
		cfg.NetNS = m.nsFd
	}
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, cfg)
	if err != nil {
		return nil, fmt.Errorf("open nf_tables netlink socket: %w", err)
	}
	m.fast.conn = c
	return c, nil
}

// rawChains are the chains whose rules the digest covers: the owned chains
// and the base chains that jump to them. Table weft is covered whole.
var rawChains = [...][2]string{
	{"nat", "POSTROUTING"}, {"nat", MasqChain},
	{"filter", "FORWARD"}, {"filter", FwdChain},
}

// rawDigest returns the owned state as bytes from raw dumps, per family
// (ip, then ip6): the tables' names, every chain's identity (table, name,
// type, hook, policy), and the rules of rawChains and of table weft without
// their counters. Called with mu held.
func (m *Manager) rawDigest() ([]byte, error) {
	c, err := m.rawConn()
	if err != nil {
		return nil, err
	}
	var out []byte
	for _, f := range families {
		if out, err = appendFamily(out, c, f); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func appendFamily(out []byte, c *netlink.Conn, f *family) ([]byte, error) {
	out = appendField(out, 'F', []byte{f.proto})
	msgs, err := nftDump(c, f.proto, unix.NFT_MSG_GETTABLE, nil)
	if err != nil {
		return nil, fmt.Errorf("dump nf_tables %s tables: %w", f.name, err)
	}
	// Rules are dumped only for chains and tables that exist: their
	// existence is already in the digest (names above), so one appearing
	// changes the bytes anyway, and an IPv4-only host pays two cheap dumps
	// for the empty ip6 side rather than seven.
	var weft bool
	for _, msg := range msgs {
		for a := rtnl.WalkAttrs(msg); a.Next(); {
			if a.Type == unix.NFTA_TABLE_NAME {
				out = appendField(out, 't', a.Value)
				weft = weft || string(bytes.TrimRight(a.Value, "\x00")) == NFTTable
			}
		}
	}
	if msgs, err = nftDump(c, f.proto, unix.NFT_MSG_GETCHAIN, nil); err != nil {
		return nil, fmt.Errorf("dump nf_tables %s chains: %w", f.name, err)
	}
	var present [len(rawChains)]bool
	for _, msg := range msgs {
		out = append(out, 'c')
		var table, name []byte
		for a := rtnl.WalkAttrs(msg); a.Next(); {
			switch a.Type {
			case unix.NFTA_CHAIN_TABLE, unix.NFTA_CHAIN_NAME, unix.NFTA_CHAIN_TYPE, unix.NFTA_CHAIN_HOOK,
				unix.NFTA_CHAIN_POLICY, nftaChainFlags:
				out = appendField(out, byte(a.Type), a.Value)
			}
			switch a.Type {
			case unix.NFTA_CHAIN_TABLE:
				table = bytes.TrimRight(a.Value, "\x00")
			case unix.NFTA_CHAIN_NAME:
				name = bytes.TrimRight(a.Value, "\x00")
			}
		}
		for i, tc := range rawChains {
			if string(table) == tc[0] && string(name) == tc[1] {
				present[i] = true
			}
		}
	}
	for i, tc := range rawChains {
		if !present[i] {
			continue
		}
		if out, err = appendRules(out, c, f, tc[0], tc[1]); err != nil {
			return nil, err
		}
	}
	if !weft {
		return out, nil
	}
	return appendRules(out, c, f, NFTTable, "")
}

// appendRules appends the rules of family f's table/chain (chain "" = the
// whole table) in kernel order, each as its chain, expressions other than
// counters, and user data (comments).
func appendRules(out []byte, c *netlink.Conn, f *family, table, chain string) ([]byte, error) {
	req := rtnl.AppendAttrString(nil, unix.NFTA_RULE_TABLE, table)
	if chain != "" {
		req = rtnl.AppendAttrString(req, unix.NFTA_RULE_CHAIN, chain)
	}
	msgs, err := nftDump(c, f.proto, unix.NFT_MSG_GETRULE, req)
	if err != nil {
		return nil, fmt.Errorf("dump rules of %s %s %s: %w", f.name, table, chain, err)
	}
	out = appendField(out, 'T', []byte(table+"/"+chain))
	for _, msg := range msgs {
		out = append(out, 'r')
		for a := rtnl.WalkAttrs(msg); a.Next(); {
			switch a.Type {
			case unix.NFTA_RULE_TABLE, unix.NFTA_RULE_CHAIN, unix.NFTA_RULE_USERDATA:
				out = appendField(out, byte(a.Type), a.Value)
			case unix.NFTA_RULE_EXPRESSIONS:
				for e := rtnl.WalkAttrs(a.Value); e.Next(); {
					if e.Type != unix.NFTA_LIST_ELEM || isCounter(e.Value) {
						continue
					}
					out = appendField(out, 'e', e.Value)
				}
			}
		}
	}
	return out, nil
}

// isCounter reports whether an expression is "counter", whose packet and
// byte counts change with traffic and are not part of a rule's identity.
func isCounter(expr []byte) bool {
	for a := rtnl.WalkAttrs(expr); a.Next(); {
		if a.Type == unix.NFTA_EXPR_NAME {
			return bytes.Equal(bytes.TrimRight(a.Value, "\x00"), []byte("counter"))
		}
	}
	return false
}

// nftDump runs one nf_tables dump of family proto and returns each answer's
// attributes (after the nfgenmsg header).
func nftDump(c *netlink.Conn, proto byte, msgType int, attrs []byte) ([][]byte, error) {
	data := append([]byte{proto, unix.NFNETLINK_V0, 0, 0}, attrs...)
	msgs, err := c.Execute(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | msgType),
			Flags: netlink.Request | netlink.Dump,
		},
		Data: data,
	})
	if err != nil {
		return nil, err
	}
	out := make([][]byte, 0, len(msgs))
	for _, m := range msgs {
		if len(m.Data) >= 4 {
			out = append(out, m.Data[4:])
		}
	}
	return out, nil
}

func appendField(out []byte, tag byte, v []byte) []byte {
	out = append(out, tag)
	out = binary.BigEndian.AppendUint32(out, uint32(len(v)))
	return append(out, v...)
}

// nftaChainFlags is NFTA_CHAIN_FLAGS, which x/sys/unix does not name.
const nftaChainFlags = 10
