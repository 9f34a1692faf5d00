// Package netconf owns the network configuration JSON stored at
// <prefix>/config: parsing, defaults and validation, as flannel defines them
// (see shared/docs/COMPAT.md). Everything here is a pure function so that it
// can be fuzzed and reused by weftd and weftctl alike.
package netconf

import (
	"encoding/json"
	"net/netip"
)

// Config is a parsed, defaulted and validated network configuration.
type Config struct {
	EnableIPv4 bool
	EnableIPv6 bool

	Network   netip.Prefix // IPv4 overlay, e.g. 172.30.0.0/16
	SubnetLen int          // prefix length of one host's lease, e.g. 24
	SubnetMin netip.Prefix // first leasable subnet
	SubnetMax netip.Prefix // last leasable subnet

	IPv6Network   netip.Prefix
	IPv6SubnetLen int
	IPv6SubnetMin netip.Prefix
	IPv6SubnetMax netip.Prefix

	EnableNFTables bool

	// BackendType is the lower-cased backend name: vxlan, host-gw, udp, alloc, ...
	BackendType string
	// Backend is the raw Backend object, for the backend to decode its options.
	Backend json.RawMessage
}
