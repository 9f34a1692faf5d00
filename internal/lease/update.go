package lease

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/weft-net/weft/internal/netconf"
)

// Update is a change of what a running manager accepts or publishes: a
// network config changed live in etcd, or this host's underlay changed (a
// new address, a recreated vxlan device with a new VtepMAC). Zero fields
// are left as they are.
type Update struct {
	// Network replaces the network config peers are judged by (a wider
	// Network admits peers it rejected as subnet_outside_network). The
	// caller has checked that it still contains this host's subnet and
	// keeps EnableIPv6 and SubnetLen: those need a restart.
	Network *netconf.Config
	// PublicIP, BackendData and BackendV6Data replace what this host's
	// lease says; a change is written to its key at once.
	PublicIP      netip.Addr
	BackendData   json.RawMessage
	BackendV6Data json.RawMessage
	// UDPKernelDecap, when not nil, replaces the lease's
	// WeftUDPKernelDecap (the udp backend's in-kernel path attached or gone).
	UDPKernelDecap *bool
}

// ErrNotRunning is returned by Update when Run has not started or has
// returned.
var ErrNotRunning = errors.New("lease manager is not running")

// Update hands u to Run, which applies it between two watch events: the
// subnet ranges and our own values are read without the lock by Run's
// goroutine (acquisition), so only Run may change them. It returns when Run
// has taken it; peers are re-judged and a snapshot published by then.
func (m *Manager) Update(ctx context.Context, u Update) error {
	if u.Network != nil && !u.Network.Network.IsValid() {
		return fmt.Errorf("lease update: network config without an IPv4 Network")
	}
	done := make(chan struct{})
	select {
	case m.updates <- pendingUpdate{u: u, done: done}:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

type pendingUpdate struct {
	u    Update
	done chan struct{}
}

// applyUpdate runs on Run's goroutine. It reports whether our own lease
// value changed, so that Run writes it (through the same retried
// write-back as a foreign rewrite).
func (m *Manager) applyUpdate(u Update) (ownChanged bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if u.Network != nil {
		old := m.r4.network
		m.cfg.Network = *u.Network
		m.r4, m.r6 = v4Range(*u.Network), v6Range(*u.Network)
		// Every peer is judged again against the new ranges: a lease
		// rejected as outside the old Network may fit the new one.
		m.rejected = map[string]int64{}
		m.idx = nil
		m.log.Info("network config updated", "network", m.r4.network, "previous", old)
	}
	before := m.attrs()
	if u.PublicIP.IsValid() {
		m.cfg.PublicIP = u.PublicIP
	}
	if u.BackendData != nil {
		m.cfg.BackendData = u.BackendData
		if strings.EqualFold(m.cfg.BackendType, netconf.BackendVXLAN) {
			m.ownMAC, _ = macClaim(claimVtepMAC, u.BackendData)
		}
	}
	if u.BackendV6Data != nil {
		m.cfg.BackendV6Data = u.BackendV6Data
		if strings.EqualFold(m.cfg.BackendType, netconf.BackendVXLAN) {
			m.ownMAC6, _ = macClaim(claimVtepMAC6, u.BackendV6Data)
		}
	}
	if u.UDPKernelDecap != nil {
		m.cfg.UDPKernelDecap = *u.UDPKernelDecap
	}
	after := m.attrs()
	ownChanged = before.PublicIP != after.PublicIP || !bytes.Equal(before.BackendData, after.BackendData) ||
		!bytes.Equal(before.BackendV6Data, after.BackendV6Data) || before.UDPKernelDecap != after.UDPKernelDecap
	if ownChanged {
		m.log.Info("own lease values changed; rewriting the lease", "key", m.ownKey, "publicIP", after.PublicIP)
		m.own.Attrs = after
		m.idx = nil // which leases name our PublicIP changed
		if m.held {
			// Written back by Run like a foreign rewrite: compare-and-swap
			// on the revision we know, retried until etcd answers.
			m.restoreRev = m.own.ModRevision
		}
	}
	if u.Network != nil || ownChanged {
		m.noteAllClaimsLocked()
		m.publishLocked()
	}
	return ownChanged
}
