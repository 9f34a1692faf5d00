package dataplane

// Dual stack (EnableIPv6): the IPv4 backend and its IPv6 counterpart side
// by side, as one Backend for the loop. Each half owns disjoint kernel
// objects (its own device, its family's routes and neighbours), so they are
// applied one after the other with no coordination beyond joining their
// errors; a kernel event of either half makes the loop re-apply both.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netconf"
)

type dualBackend struct {
	v4, v6 Backend

	ch   chan struct{}
	done chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

// newDualStack builds the dual-stack backend of cfg.BackendType (already
// lower-cased); only vxlan and host-gw have an IPv6 data path.
func newDualStack(cfg netconf.Config, host Host, h *netlink.Handle, log *slog.Logger) (Backend, error) {
	if !cfg.EnableIPv4 {
		return nil, fmt.Errorf("dataplane: IPv6-only networks (EnableIPv4 false) are not supported; enable IPv4 for a dual-stack network")
	}
	var opts VXLANOptions
	switch cfg.BackendType {
	case netconf.BackendVXLAN, "":
		var err error
		if opts, err = cfg.VXLAN(); err != nil {
			return nil, fmt.Errorf("dataplane: vxlan options: %w", err)
		}
	case netconf.BackendHostGW:
	default:
		return nil, fmt.Errorf("dataplane: backend type %q has no IPv6 data path (EnableIPv6 is supported with vxlan and host-gw)", cfg.BackendType)
	}
	// One socket for both halves: they are applied one after the other by
	// the same loop, and each half's Close closes it (idempotently).
	rt, err := openBackendRTNL(cfg.BackendType, host)
	if err != nil {
		return nil, err
	}
	if cfg.BackendType == netconf.BackendHostGW {
		return newDual(newHostGW(host, h, rt, log.With("backend", netconf.BackendHostGW)),
			newHostGW6(host, h, rt, log.With("backend", netconf.BackendHostGW, "family", "ipv6"))), nil
	}
	return newDual(newVXLAN(opts, host, h, rt, log.With("backend", netconf.BackendVXLAN)),
		newVXLAN6(opts, host, h, rt, log.With("backend", netconf.BackendVXLAN, "family", "ipv6"))), nil
}

func newDual(v4, v6 Backend) *dualBackend {
	return &dualBackend{v4: v4, v6: v6, ch: make(chan struct{}, 1), done: make(chan struct{})}
}

// Init initialises the IPv4 half, then the IPv6 half. The IPv6 half's data
// is the lease's BackendV6Data; the MTU is the smaller of the two, since a
// container has one MTU for both families.
func (d *dualBackend) Init(ctx context.Context) (Published, int, error) {
	pub4, mtu4, err := d.v4.Init(ctx)
	if err != nil {
		return Published{}, 0, err
	}
	pub6, mtu6, err := d.v6.Init(ctx)
	if err != nil {
		return Published{}, 0, fmt.Errorf("%w (IPv6 side of the dual-stack backend)", err)
	}
	d.forward(d.v4.Events())
	d.forward(d.v6.Events())
	return Published{BackendType: pub4.BackendType, BackendData: pub4.BackendData, BackendV6Data: pub6.BackendData}, min(mtu4, mtu6), nil
}

// forward passes one half's events on to the merged channel.
func (d *dualBackend) forward(ch <-chan struct{}) {
	if ch == nil {
		return
	}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		for {
			select {
			case <-d.done:
				return
			case <-ch:
				select {
				case d.ch <- struct{}{}:
				default: // already signalled: the loop coalesces anyway
				}
			}
		}
	}()
}

// Apply applies both halves fully; one failing does not stop the other.
func (d *dualBackend) Apply(ctx context.Context, snap lease.Snapshot) error {
	return errors.Join(d.v4.Apply(ctx, snap), d.v6.Apply(ctx, snap))
}

// ApplyDelta applies each half as a delta where it supports one.
func (d *dualBackend) ApplyDelta(ctx context.Context, snap lease.Snapshot) error {
	apply := func(b Backend) error {
		if da, ok := b.(deltaApplier); ok {
			return da.ApplyDelta(ctx, snap)
		}
		return b.Apply(ctx, snap)
	}
	return errors.Join(apply(d.v4), apply(d.v6))
}

func (d *dualBackend) Events() <-chan struct{} { return d.ch }

// skipped lists the peers either half left out, IPv4 first.
func (d *dualBackend) skipped() []skippedPeer {
	var out []skippedPeer
	for _, b := range []Backend{d.v4, d.v6} {
		if r, ok := b.(skipReporter); ok {
			out = append(out, r.skipped()...)
		}
	}
	return out
}

// Close stops the event merge and closes both halves.
func (d *dualBackend) Close() error {
	d.once.Do(func() { close(d.done) })
	d.wg.Wait()
	return errors.Join(d.v4.Close(), d.v6.Close())
}
