// Package dataplane turns lease snapshots into kernel state. Each backend
// (vxlan, host-gw, udp, alloc) says what the kernel should hold for a given
// snapshot; one reconcile loop (Loop) owns the only goroutine that changes the
// kernel: inputs — lease snapshots, link events, timers — only mark it dirty.
package dataplane

import (
	"context"
	"encoding/json"

	"github.com/weft-net/weft/internal/lease"
)

// Published is what a backend asks to be written into this host's lease.
type Published struct {
	BackendType string
	BackendData json.RawMessage // nil when the backend publishes nothing (host-gw, udp, alloc)
	// BackendV6Data is the lease's BackendV6Data: what the IPv6 side of a
	// dual-stack backend publishes ({"VNI":1,"VtepMAC":…} of flannel-v6.<VNI>
	// for vxlan); nil when the network is IPv4 only or the backend publishes
	// nothing.
	BackendV6Data json.RawMessage
}

// Backend programs one kind of data path.
type Backend interface {
	// Init prepares the host before the lease is acquired (for vxlan: the
	// device, whose MAC goes into the lease) and returns what to publish and
	// the MTU containers must use.
	Init(ctx context.Context) (Published, int, error)
	// Apply makes the kernel match the desired state for snap: adds what is
	// missing, replaces what differs, removes what is stale among the objects
	// the backend owns. It is called only from the reconcile loop.
	Apply(ctx context.Context, snap lease.Snapshot) error
	// Events signals kernel changes that may need a reconcile (a deleted
	// device, a route removed by hand). It may return nil.
	Events() <-chan struct{}
	// Close releases sockets and goroutines. It leaves the kernel state in
	// place so that a restart does not interrupt traffic.
	Close() error
}
