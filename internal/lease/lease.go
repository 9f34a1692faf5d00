// Package lease owns the subnet leases kept in etcd under <prefix>/subnets/:
// their key and value format (flannel's), acquiring and renewing this host's
// lease, honouring reservations, and watching the other hosts' leases.
package lease

import (
	"encoding/json"
	"net/netip"
)

// Attrs is the JSON value stored at a lease key, in flannel's format:
//
//	{"PublicIP":"10.64.3.7","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"d6:51:2e:80:5c:69"}}
type Attrs struct {
	PublicIP      netip.Addr      // IPv4 address other hosts send overlay traffic to
	PublicIPv6    netip.Addr      // zero when absent
	BackendType   string          // e.g. "vxlan"
	BackendData   json.RawMessage // backend specific, e.g. {"VNI":1,"VtepMAC":"..."}; nil when none
	BackendV6Data json.RawMessage
	// NodeName is the identity of the host that holds the lease (weft's
	// -node-name, /etc/machine-id by default), written as WeftNodeName;
	// "" in a value flanneld wrote, which has none.
	NodeName string
	// UDPKernelDecap is true when the host's udp backend decapsulates in
	// the kernel (written as WeftUDPKernelDecap, only when true): a peer's
	// in-kernel path serves it only then (see internal/dataplane's udp notes).
	UDPKernelDecap bool
}

// Lease is one host's subnet, as read from (or written to) etcd.
type Lease struct {
	Subnet     netip.Prefix // IPv4 subnet, e.g. 172.30.19.0/24
	IPv6Subnet netip.Prefix // zero when the network is IPv4 only
	Attrs      Attrs

	// When the etcd lease behind the key runs out is not kept here: the
	// manager holds every peer's lease and never needs it (24 bytes a
	// peer, 0.5 MB at 20,000 peers, issue 12). Store.Expirations looks it
	// up for the tools that show it.

	// EtcdLease is the etcd lease ID the key is attached to; 0 for a reservation.
	EtcdLease int64
	// ModRevision is the etcd revision of the last write, for compare-and-swap.
	ModRevision int64
	// CreateRevision is the etcd revision that created the key. When leases
	// clash (one subnet, PublicIP or VtepMAC named by two keys), the older
	// key wins: a forgery is always newer than the lease it copies.
	CreateRevision int64
}

// Reserved reports whether the lease is a reservation: a key without an etcd
// lease, set by an operator, never expired and never taken by another host.
func (l Lease) Reserved() bool { return l.EtcdLease == 0 }

// Snapshot is the whole lease state the dataplane needs, handed over as one
// value (never as add/remove events) so that a lost event cannot strand state.
type Snapshot struct {
	Own Lease // this host's lease
	// Peers is every other host's valid lease, in ComparePeers order. The
	// leases are shared between snapshots and must never be modified: an
	// unchanged peer is the same pointer in the next snapshot. The slice is
	// shared too (with the manager's index), and must not be modified either.
	Peers []*Lease
	// Revision is the etcd revision this snapshot reflects.
	Revision int64
}
