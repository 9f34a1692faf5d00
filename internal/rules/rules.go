// Package rules owns flannel's traffic rules — masquerade for traffic leaving
// the overlay and ACCEPT rules in FORWARD — and keeps the kernel matching them.
//
// Design:
//   - Two modes, as in flannel. iptables mode keeps flannel's chains
//     (nat FLANNEL-POSTRTG jumped to from POSTROUTING, filter FLANNEL-FWD
//     jumped to from FORWARD) so operators' scripts and `iptables -S` keep
//     working; nftables mode uses weft's own table `ip weft`.
//   - Dual-stack networks (Desired.IPv6Network set) get the same rules for
//     IPv6, as flanneld writes them: the same chains in ip6tables' nat and
//     filter tables (multicast exception ff00::/8), or table `ip6 weft` in
//     nftables mode. A separate ip6 table rather than one inet table keeps
//     the IPv4 side byte for byte what it was (no migration of `ip weft`,
//     operators' `nft list table ip weft` unchanged), mirrors flanneld's
//     per-family tables, and lets IPv6 be removed by deleting one table.
//     Without IPv6 in Desired the IPv6 objects are owned but must be absent:
//     turning IPv6 off (or restarting without it) removes them.
//   - Every write replaces whole owned chains atomically: iptables mode feeds
//     one iptables-restore --noflush (`:CHAIN - [0:0]` flushes the chain and
//     the rules follow in the same commit), nftables mode sends one netlink
//     batch that deletes and recreates the table. No packet ever sees a
//     half-written chain.
//   - Reading is cheap: the host's iptables is the nf_tables variant, so the
//     state of both modes is read over netlink (google/nftables), with no
//     process started. Set records a fingerprint of what it wrote (the rule
//     expressions in order, counters excluded); Check re-reads and compares
//     the whole owned state — order and duplicates, not only presence — and
//     forks iptables-restore only when it differs. flanneld instead execs
//     iptables -C for every rule every 5 s. Set first compares the kernel's
//     rules with the desired ones in semantic form (semantic.go), so a
//     restarted daemon that finds its rules in place starts no process.
//   - The jump into an owned chain must exist exactly once: duplicates and
//     foreign jumps (flanneld's "flanneld masq" leftovers after a binary swap)
//     are deleted by rule number in the same restore.
//   - The underlay guard (guard.go): in both modes, table inet weft-guard
//     accepts the backend's encapsulation ports (Desired.EncapPorts) only
//     from the peers' PublicIPs (SetPeers, OfferPeers) and drops and counts
//     the rest, so a host with no lease cannot inject into the overlay.
package rules

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netns"

	"github.com/weft-net/weft/internal/rtnl"
)

// Names of the objects weft owns.
const (
	MasqChain   = "FLANNEL-POSTRTG" // nat chain, iptables mode
	FwdChain    = "FLANNEL-FWD"     // filter chain, iptables mode
	MasqComment = "weftd masq"
	FwdComment  = "weftd forward"
	NFTTable    = "weft" // table ip weft, nftables mode
	NFTMasq     = "postrouting"
	NFTFwd      = "forward"

	kubeProxyMark = 0x4000
	multicast     = "224.0.0.0/4"
	multicast6    = "ff00::/8"
)

// Desired is the rule set the kernel should hold.
type Desired struct {
	Network      netip.Prefix // the overlay, e.g. 172.30.0.0/16
	Subnet       netip.Prefix // this host's lease, e.g. 172.30.19.0/24
	IPMasq       bool         // -ip-masq
	RandomFully  bool         // !-ip-masq-fully-random-disable
	ForwardRules bool         // -iptables-forward-rules
	NFTables     bool         // config EnableNFTables

	// IPv6Network and IPv6Subnet (config IPv6Network, the lease's IPv6
	// subnet) add the same rules for IPv6; zero values mean no IPv6 rules,
	// and any IPv6 objects weft finds are removed.
	IPv6Network netip.Prefix
	IPv6Subnet  netip.Prefix

	// EncapPorts are the UDP ports the backend receives encapsulated
	// traffic on (EncapPorts(cfg)); the guard accepts them only from peers.
	// Empty: no guard (host-gw, alloc), and any guard weft finds is removed.
	EncapPorts []uint16
}

// Validate checks the prefixes; the error names the value and the rule.
func (d Desired) Validate() error {
	if !d.Network.IsValid() || !d.Network.Addr().Is4() {
		return fmt.Errorf("rules: Network %v: must be an IPv4 prefix", d.Network)
	}
	if !d.Subnet.IsValid() || !d.Subnet.Addr().Is4() {
		return fmt.Errorf("rules: Subnet %v: must be an IPv4 prefix", d.Subnet)
	}
	if d.Subnet.Bits() < d.Network.Bits() || !d.Network.Contains(d.Subnet.Addr()) {
		return fmt.Errorf("rules: Subnet %v: must lie inside Network %v", d.Subnet, d.Network)
	}
	if slices.Contains(d.EncapPorts, 0) {
		return fmt.Errorf("rules: EncapPorts %v: port 0 is not a port to guard", d.EncapPorts)
	}
	if !d.IPv6Network.IsValid() && !d.IPv6Subnet.IsValid() {
		return nil
	}
	if !d.IPv6Network.IsValid() || !d.IPv6Network.Addr().Is6() || d.IPv6Network.Addr().Is4In6() {
		return fmt.Errorf("rules: IPv6Network %v: must be an IPv6 prefix when IPv6Subnet is set", d.IPv6Network)
	}
	if !d.IPv6Subnet.IsValid() || !d.IPv6Subnet.Addr().Is6() || d.IPv6Subnet.Addr().Is4In6() {
		return fmt.Errorf("rules: IPv6Subnet %v: must be an IPv6 prefix when IPv6Network is set", d.IPv6Subnet)
	}
	if d.IPv6Subnet.Bits() < d.IPv6Network.Bits() || !d.IPv6Network.Contains(d.IPv6Subnet.Addr()) {
		return fmt.Errorf("rules: IPv6Subnet %v: must lie inside IPv6Network %v", d.IPv6Subnet, d.IPv6Network)
	}
	return nil
}

func (d Desired) canonical() Desired {
	d.Network = d.Network.Masked()
	d.Subnet = d.Subnet.Masked()
	d.IPv6Network = d.IPv6Network.Masked()
	d.IPv6Subnet = d.IPv6Subnet.Masked()
	// A copy: the caller's slice may change after Set.
	d.EncapPorts = slices.Compact(slices.Sorted(slices.Values(d.EncapPorts)))
	return d
}

// Option configures a Manager.
type Option func(*Manager)

// WithNetNS makes the Manager work in the network namespace behind fd:
// netlink reads and writes go there, and iptables-restore is started from a
// thread switched into it. The caller keeps fd open while the Manager lives.
func WithNetNS(fd int) Option { return func(m *Manager) { m.nsFd = fd } }

// WithIptablesRestore sets the iptables-restore binary (default: found in PATH).
func WithIptablesRestore(path string) Option { return func(m *Manager) { m.restoreBin[0] = path } }

// WithIP6tablesRestore sets the ip6tables-restore binary (default: found in
// PATH), which writes the IPv6 side in iptables mode.
func WithIP6tablesRestore(path string) Option { return func(m *Manager) { m.restoreBin[1] = path } }

// WithResyncHook calls fn after every periodic check of Run (metrics):
// changed is true when the rules had drifted and were rewritten.
func WithResyncHook(fn func(changed bool, err error)) Option {
	return func(m *Manager) { m.onResync = fn }
}

// Manager owns the traffic rules. Its methods are safe for concurrent use.
type Manager struct {
	log        *slog.Logger
	nsFd       int
	restoreBin [2]string // iptables-restore, ip6tables-restore (indexed like families)
	onResync   func(changed bool, err error)
	onDrop     func(packets uint64)

	mu      sync.Mutex
	conn    *nftables.Conn
	desired *Desired
	written string // fingerprint of the owned state right after the last write
	fast    fastCheck
	guard   guardState
}

// New returns a Manager; nothing touches the kernel until Set.
func New(log *slog.Logger, opts ...Option) *Manager {
	m := &Manager{log: log, nsFd: -1, restoreBin: [2]string{"iptables-restore", "ip6tables-restore"}}
	m.guard.wake = make(chan struct{}, 1)
	for _, o := range opts {
		o(m)
	}
	return m
}

// Close releases the netlink socket.
func (m *Manager) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	ferr := m.fast.close()
	if m.conn == nil {
		return ferr
	}
	err := m.conn.CloseLasting()
	m.conn = nil
	return errors.Join(err, ferr)
}

// Set makes the kernel match d now, replacing the owned chains whole, and
// the underlay guard (once the peers are known, SetPeers).
func (m *Manager) Set(d Desired) error {
	if err := d.Validate(); err != nil {
		return err
	}
	d = d.canonical()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.desired = &d
	m.written = ""
	err := m.apply()
	_, gerr := m.syncGuard(true)
	return errors.Join(err, gerr)
}

// Check re-reads the owned state and rewrites it when it differs from what
// the last write left (a flushed chain, a deleted, duplicated or reordered
// rule, a lost or doubled jump, the other mode's leftovers), then checks the
// underlay guard (a deleted table, chain or set, a missing or extra peer)
// and reports its new drops. Before the first Set it does nothing.
func (m *Manager) Check() (changed bool, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.desired == nil {
		return false, nil
	}
	changed, err = m.checkRules()
	gchanged, gerr := m.syncGuard(true)
	return changed || gchanged, errors.Join(err, gerr)
}

// checkRules is Check of the traffic rules. Called with mu held.
func (m *Manager) checkRules() (changed bool, err error) {
	if m.written != "" {
		// Fast path (rawcheck.go): the same bytes as a state already
		// found correct. Otherwise the full comparison decides.
		raw, rerr := m.rawDigest()
		if rerr == nil && m.fast.good != nil && bytes.Equal(raw, m.fast.good) {
			m.fast.hits++
			return false, nil
		}
		st, err := m.read()
		if err != nil {
			return false, err
		}
		if st.fingerprint() == m.written {
			// Remember these bytes as correct, unless the rules changed
			// while they were being read.
			if again, err := m.rawDigest(); rerr == nil && err == nil && bytes.Equal(raw, again) {
				m.fast.good = again
			}
			return false, nil
		}
	}
	return true, m.apply()
}

// Run calls Check every period until ctx ends (-iptables-resync), and
// applies the peers of OfferPeers as they come.
func (m *Manager) Run(ctx context.Context, period time.Duration) {
	if period <= 0 {
		period = 5 * time.Second
	}
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.guard.wake:
			if err := m.applyOffer(); err != nil {
				m.log.Warn("update the underlay guard's peers failed; the periodic check retries", "err", err)
			}
			continue
		case <-t.C:
		}
		changed, err := m.Check()
		if m.onResync != nil {
			m.onResync(changed, err)
		}
		switch {
		case err != nil:
			m.log.Warn("traffic rules resync failed; retrying next period", "err", err)
		case changed:
			m.log.Info("traffic rules differed from the desired state and were rewritten")
		}
	}
}

// apply writes the desired state and records the fingerprint of what is
// then in the kernel. Called with mu held.
func (m *Manager) apply() error {
	m.fast.good = nil
	d := *m.desired
	st, err := m.read()
	if err != nil {
		return err
	}
	if d.NFTables {
		err = m.applyNFT(d, st)
	} else {
		err = m.applyIptables(d, st)
	}
	if err != nil {
		return err
	}
	after, err := m.read()
	if err != nil {
		return fmt.Errorf("read back traffic rules: %w", err)
	}
	if err := verify(d, after); err != nil {
		return err
	}
	m.written = after.fingerprint()
	return nil
}

// nft returns the lasting netlink connection, opening it on first use.
func (m *Manager) nft() (*nftables.Conn, error) {
	if m.conn != nil {
		return m.conn, nil
	}
	opts := []nftables.ConnOption{nftables.AsLasting(), nftables.WithSockOptions(growSendBuffer)}
	if m.nsFd >= 0 {
		opts = append(opts, nftables.WithNetNSFd(m.nsFd))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("open nf_tables netlink socket: %w", err)
	}
	m.conn = c
	return c, nil
}

// applyIptables writes iptables mode with one iptables-restore per family
// whose chains differ (each family's chains change in one commit), then
// removes nftables mode's tables of both families in one batch.
func (m *Manager) applyIptables(d Desired, st *state) error {
	for i, f := range families {
		fs := &st.fam[i]
		if iptablesInPlace(d, f, fs) {
			// A restarted daemon finds its own rules: no process, no rewrite.
			m.log.Debug("iptables rules already in place", "family", f.name, "network", d.Network, "ipv6_network", d.IPv6Network)
			continue
		}
		if script := restoreScript(d, f, fs); script != "" {
			if err := m.runRestore(m.restoreBin[i], script); err != nil {
				return err
			}
		}
	}
	var del []string
	for i, f := range families {
		if st.fam[i].weft != nil {
			c, err := m.nft()
			if err != nil {
				return err
			}
			c.DelTable(&nftables.Table{Name: NFTTable, Family: f.tf})
			del = append(del, f.name+" "+NFTTable)
		}
	}
	if del != nil {
		if err := m.conn.Flush(); err != nil {
			return fmt.Errorf("delete nftables tables %v after switching to iptables mode: %w", del, err)
		}
	}
	return nil
}

// runRestore feeds script to bin (iptables-restore or ip6tables-restore)
// with --noflush, in the Manager's namespace when it has one.
func (m *Manager) runRestore(bin, script string) error {
	run := func() error {
		cmd := exec.Command(bin, "--noflush", "-w", "5")
		cmd.Stdin = strings.NewReader(script)
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s --noflush: %w: %s\ninput:\n%s", bin, err, strings.TrimSpace(string(out)), script)
		}
		return nil
	}
	if m.nsFd < 0 {
		return run()
	}
	// A child process inherits the namespace of the thread that starts it.
	return rtnl.Do(netns.NsHandle(m.nsFd), run)
}

// IptablesRules renders the rules of the owned chains for d, in order, in
// the canonical form `iptables -S` prints them.
func IptablesRules(d Desired) (masq, fwd []string) { return iptablesRules(d, ipv4) }

// IP6tablesRules renders the IPv6 rules of the owned chains for d, in order,
// in the canonical form `ip6tables -S` prints them; nil when d has no IPv6.
func IP6tablesRules(d Desired) (masq, fwd []string) { return iptablesRules(d, ipv6) }

func iptablesRules(d Desired, f *family) (masq, fwd []string) {
	d = d.canonical()
	network, subnet, ok := d.nets(f)
	if !ok {
		return nil, nil
	}
	n, s := network.String(), subnet.String()
	mc := fmt.Sprintf("-m comment --comment %q", MasqComment)
	masqTarget := "-j MASQUERADE"
	if d.RandomFully {
		masqTarget += " --random-fully"
	}
	masq = []string{
		fmt.Sprintf("-A %s -m mark --mark 0x%x/0x%x %s -j RETURN", MasqChain, kubeProxyMark, kubeProxyMark, mc),
		fmt.Sprintf("-A %s -s %s -d %s %s -j RETURN", MasqChain, s, n, mc),
		fmt.Sprintf("-A %s -s %s -d %s %s -j RETURN", MasqChain, n, s, mc),
		fmt.Sprintf("-A %s ! -s %s -d %s %s -j RETURN", MasqChain, n, s, mc),
		fmt.Sprintf("-A %s -s %s ! -d %s %s %s", MasqChain, n, f.multicast, mc, masqTarget),
		fmt.Sprintf("-A %s ! -s %s -d %s %s %s", MasqChain, n, n, mc, masqTarget),
	}
	fc := fmt.Sprintf("-m comment --comment %q", FwdComment)
	fwd = []string{
		fmt.Sprintf("-A %s -s %s %s -j ACCEPT", FwdChain, n, fc),
		fmt.Sprintf("-A %s -d %s %s -j ACCEPT", FwdChain, n, fc),
	}
	return masq, fwd
}

// wants reports which iptables-mode chains of f d asks for.
func wants(d Desired, f *family) (masq, fwd bool) {
	_, _, ok := d.nets(f)
	ipt := ok && !d.NFTables
	return ipt && d.IPMasq, ipt && d.ForwardRules
}

// wantsTable reports whether d asks for table weft of family f.
func wantsTable(d Desired, f *family) bool {
	_, _, ok := d.nets(f)
	return ok && d.NFTables && (d.IPMasq || d.ForwardRules)
}

// restoreScript builds the (ip6)tables-restore input that turns family f's
// state fs into d. Jumps are deleted by rule number, highest first, so
// earlier numbers stay valid within the one commit.
func restoreScript(d Desired, f *family, fs *famState) string {
	masq, fwd := iptablesRules(d, f)
	wantMasq, wantFwd := wants(d, f)
	var b strings.Builder
	section := func(table, base, chain, comment string, rules []string, wanted bool, ch *ownedChain) {
		if !wanted && !ch.exists && len(ch.jumps) == 0 {
			return
		}
		fmt.Fprintf(&b, "*%s\n:%s - [0:0]\n", table, chain)
		keep := -1 // index in ch.jumps of the one jump to keep
		if wanted {
			keep = slices.IndexFunc(ch.jumps, func(j jump) bool { return j.ours })
		}
		for i := len(ch.jumps) - 1; i >= 0; i-- {
			if i != keep {
				fmt.Fprintf(&b, "-D %s %d\n", base, ch.jumps[i].pos)
			}
		}
		if !wanted {
			fmt.Fprintf(&b, "-X %s\n", chain)
		} else {
			if keep < 0 {
				fmt.Fprintf(&b, "-A %s -m comment --comment %q -j %s\n", base, comment, chain)
			}
			for _, r := range rules {
				b.WriteString(r)
				b.WriteByte('\n')
			}
		}
		b.WriteString("COMMIT\n")
	}
	section("nat", "POSTROUTING", MasqChain, MasqComment, masq, wantMasq, &fs.masq)
	section("filter", "FORWARD", FwdChain, FwdComment, fwd, wantFwd, &fs.fwd)
	return b.String()
}

// verify checks the state read back after a write has the expected shape, so
// a write that silently went elsewhere (e.g. a legacy-iptables host, whose
// rules nf_tables cannot see) is an error rather than a resync loop.
func verify(d Desired, st *state) error {
	for i, f := range families {
		fs := &st.fam[i]
		check := func(what string, wanted bool, ch *ownedChain, n int) error {
			if !wanted {
				if ch.exists || len(ch.jumps) > 0 {
					return fmt.Errorf("after write: %s %s still present (chain %v, %d jumps)", f.iptables, what, ch.exists, len(ch.jumps))
				}
				return nil
			}
			if !ch.exists || len(ch.rules) != n || len(ch.jumps) != 1 {
				return fmt.Errorf("after write: %s %s has %d rules and %d jumps (chain present: %v), want %d and 1; is %s the nf_tables variant?", f.iptables, what, len(ch.rules), len(ch.jumps), ch.exists, n, f.iptables)
			}
			return nil
		}
		masq, fwd := iptablesRules(d, f)
		wantMasq, wantFwd := wants(d, f)
		if err := check("nat "+MasqChain, wantMasq, &fs.masq, len(masq)); err != nil {
			return err
		}
		if err := check("filter "+FwdChain, wantFwd, &fs.fwd, len(fwd)); err != nil {
			return err
		}
		if want := wantsTable(d, f); (fs.weft != nil) != want {
			return fmt.Errorf("after write: table %s %s present=%v, want %v", f.name, NFTTable, fs.weft != nil, want)
		}
	}
	return nil
}
