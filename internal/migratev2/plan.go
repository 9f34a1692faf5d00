package migratev2

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netconf"
)

// Kind is what a migrated key is to weft.
type Kind int

const (
	KindConfig      Kind = iota // <prefix>/config
	KindLease                   // a lease: the v2 key had a TTL
	KindReservation             // a lease key without TTL: never expires
)

func (k Kind) String() string {
	switch k {
	case KindConfig:
		return "config"
	case KindLease:
		return "lease"
	}
	return "reservation"
}

// Item is one key to write to v3: the same key and value as in v2.
type Item struct {
	Key   string
	Value string
	Kind  Kind
	// TTL is the seconds the v2 key had left when read; 0 for the config
	// and reservations.
	TTL int64
	// Subnet and PublicIP of a lease or reservation.
	Subnet   netip.Prefix
	PublicIP netip.Addr
}

// Problem is a v2 key that is not migrated, and why (the rule it breaks).
type Problem struct {
	Key    string
	Reason string
}

// Plan is what the v2 store holds for one network, checked.
type Plan struct {
	Prefix   string // without trailing slash
	Items    []Item
	Problems []Problem
	// Read is when the v2 store was read: the TTLs count down from there.
	Read time.Time
}

// NewPlan checks every v2 key under prefix like weft checks what it reads
// from v3 (the config with netconf.Parse, lease keys and values with
// lease.ParseKey and lease.ParseAttrs): a bad key becomes a Problem naming
// the rule; the rest is still migrated.
func NewPlan(prefix string, nodes []Node, read time.Time) Plan {
	p := Plan{Prefix: strings.TrimRight(prefix, "/"), Read: read}
	configKey, subnets := lease.ConfigKey(p.Prefix), lease.SubnetsPrefix(p.Prefix)

	// The config first: leases are checked against its Network.
	var cfg *netconf.Config
	for _, n := range nodes {
		if n.Key != configKey {
			continue
		}
		c, err := p.config(n)
		if err != nil {
			p.Problems = append(p.Problems, Problem{Key: n.Key, Reason: err.Error()})
			continue
		}
		cfg = &c
	}
	for _, n := range nodes {
		switch name, isLease := strings.CutPrefix(n.Key, subnets); {
		case n.Key == configKey:
		case n.Dir && (n.Key == p.Prefix || n.Key+"/" == subnets):
			// The directories flannel's keys live in.
		case isLease:
			if err := p.lease(n, name, cfg); err != nil {
				p.Problems = append(p.Problems, Problem{Key: n.Key, Reason: err.Error()})
			}
		case n.Dir:
			// Its keys are listed on their own, and each is reported.
		default:
			p.Problems = append(p.Problems, Problem{Key: n.Key,
				Reason: fmt.Sprintf("neither the network config %s nor a lease under %s: not migrated", configKey, subnets)})
		}
	}
	return p
}

func (p *Plan) config(n Node) (netconf.Config, error) {
	switch {
	case n.Dir:
		return netconf.Config{}, fmt.Errorf("network config: a directory, want a JSON object")
	case n.Expires:
		// flannel never writes one; a config that expires would stop
		// every host that restarts after it.
		return netconf.Config{}, fmt.Errorf("network config: has a TTL (%ds left): a network config must not expire", n.TTL)
	}
	cfg, _, err := netconf.Parse([]byte(n.Value))
	if err != nil {
		return netconf.Config{}, fmt.Errorf("network config: %w", err)
	}
	p.Items = append(p.Items, Item{Key: n.Key, Value: n.Value, Kind: KindConfig})
	return cfg, nil
}

// lease checks one key under subnets/ and adds it to the plan.
func (p *Plan) lease(n Node, name string, cfg *netconf.Config) error {
	if n.Dir {
		return fmt.Errorf("a directory under %s/subnets/, want a lease key", p.Prefix)
	}
	v4, v6, err := lease.ParseKey(name)
	if err != nil {
		return err
	}
	attrs, err := lease.ParseAttrs([]byte(n.Value))
	if err != nil {
		return err
	}
	if what := netconf.HostAddrProblem(attrs.PublicIP); what != "" {
		return fmt.Errorf("lease value: PublicIP %s is %s, not a host's address", attrs.PublicIP, what)
	}
	if cfg != nil {
		// The rule weftd applies to every lease it reads: the subnet is a
		// SubnetLen-long piece of Network (SubnetMin/Max only bound what is
		// handed out; a reservation may lie outside them).
		switch {
		case !v4.IsValid() && cfg.EnableIPv4:
			return fmt.Errorf("lease key %q: no IPv4 subnet, but the network config has IPv4 on", name)
		case v4.IsValid() && (!cfg.EnableIPv4 || !cfg.Network.Contains(v4.Addr()) || v4.Bits() != cfg.SubnetLen):
			return fmt.Errorf("lease key %q: subnet %s is not a /%d inside Network %s", name, v4, cfg.SubnetLen, cfg.Network)
		case v6.IsValid() && (!cfg.EnableIPv6 || !cfg.IPv6Network.Contains(v6.Addr()) || v6.Bits() != cfg.IPv6SubnetLen):
			return fmt.Errorf("lease key %q: IPv6 subnet %s is not a /%d inside IPv6Network %s (EnableIPv6 %t)", name, v6, cfg.IPv6SubnetLen, cfg.IPv6Network, cfg.EnableIPv6)
		case cfg.Network.Contains(attrs.PublicIP):
			return fmt.Errorf("lease value: PublicIP %s lies inside the overlay %s", attrs.PublicIP, cfg.Network)
		}
	}
	if n.Expires && n.TTL <= 0 {
		return fmt.Errorf("expired in the v2 store (TTL %ds): not migrated", n.TTL)
	}
	it := Item{Key: n.Key, Value: n.Value, Kind: KindReservation, Subnet: v4, PublicIP: attrs.PublicIP}
	if n.Expires {
		it.Kind, it.TTL = KindLease, n.TTL
	}
	p.Items = append(p.Items, it)
	return nil
}
