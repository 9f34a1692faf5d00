package netconf

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
)

// Changes is how a new network config differs from the one in force, as
// weftd judges it: weftd applies Live while running, and runs on the old
// config until restarted when Restart is not empty. weftctl config set
// shows the same judgement before writing, so the two cannot disagree.
type Changes struct {
	// Restart names each change only a restart applies.
	Restart []string
	// Live names each change a running weftd applies.
	Live []string
	// Network: the Network or the leasable range changed (peers are judged
	// by the new one, subnet.env and the rules follow). Backend: the
	// backend's options changed (the dataplane is rebuilt).
	Network, Backend bool
}

// CompareConfigs judges next against the running cur for a host holding the
// subnet own (an invalid own — a host without a lease yet — makes any
// Network change live, since no subnet can fall out of it).
//
// Applied live: a Network that still contains own (peers are judged by it
// from then on), SubnetMin/SubnetMax (allocation only), and the backend's
// options (vxlan Port, GBP, DirectRouting, Learning, MTU; the dataplane is
// rebuilt, the device keeps its MAC). A restart is needed for what the
// kernel or the lease of every host is shaped by: the backend type,
// SubnetLen, EnableIPv4/EnableIPv6 and the IPv6 network, the vxlan VNI (it
// names the device), EnableNFTables (the rules' whole machinery), and a
// Network that no longer contains own (the host must take another lease).
func CompareConfigs(cur, next Config, own netip.Prefix) Changes {
	var c Changes
	restart := func(format string, a ...any) { c.Restart = append(c.Restart, fmt.Sprintf(format, a...)) }
	if !strings.EqualFold(cur.BackendType, next.BackendType) {
		restart("Backend.Type %s -> %s", cur.BackendType, next.BackendType)
	}
	if cur.SubnetLen != next.SubnetLen {
		restart("SubnetLen %d -> %d", cur.SubnetLen, next.SubnetLen)
	}
	if cur.EnableIPv4 != next.EnableIPv4 {
		restart("EnableIPv4 %t -> %t", cur.EnableIPv4, next.EnableIPv4)
	}
	if cur.EnableIPv6 != next.EnableIPv6 {
		restart("EnableIPv6 %t -> %t", cur.EnableIPv6, next.EnableIPv6)
	} else if next.EnableIPv6 && (cur.IPv6Network != next.IPv6Network || cur.IPv6SubnetLen != next.IPv6SubnetLen ||
		cur.IPv6SubnetMin != next.IPv6SubnetMin || cur.IPv6SubnetMax != next.IPv6SubnetMax) {
		restart("IPv6Network %s/%d -> %s/%d", cur.IPv6Network, cur.IPv6SubnetLen, next.IPv6Network, next.IPv6SubnetLen)
	}
	if cur.EnableNFTables != next.EnableNFTables {
		restart("EnableNFTables %t -> %t", cur.EnableNFTables, next.EnableNFTables)
	}
	if cur.Network != next.Network {
		if own.IsValid() && (!next.Network.Contains(own.Addr()) || next.Network.Bits() > own.Bits()) {
			restart("Network %s -> %s, which does not contain this host's subnet %s", cur.Network, next.Network, own)
		} else {
			c.Live = append(c.Live, fmt.Sprintf("Network %s -> %s", cur.Network, next.Network))
			c.Network = true
		}
	}
	if cur.SubnetMin != next.SubnetMin || cur.SubnetMax != next.SubnetMax {
		c.Live = append(c.Live, fmt.Sprintf("SubnetMin/SubnetMax %s..%s -> %s..%s", cur.SubnetMin.Addr(), cur.SubnetMax.Addr(), next.SubnetMin.Addr(), next.SubnetMax.Addr()))
		c.Network = true
	}
	if strings.EqualFold(cur.BackendType, next.BackendType) && !sameJSON(cur.Backend, next.Backend) {
		if strings.EqualFold(next.BackendType, BackendVXLAN) {
			a, errA := cur.VXLAN()
			b, errB := next.VXLAN()
			if errA == nil && errB == nil && a.VNI != b.VNI {
				restart("vxlan VNI %d -> %d (the device flannel.%d is replaced)", a.VNI, b.VNI, a.VNI)
			}
		}
		c.Live = append(c.Live, fmt.Sprintf("Backend options %s -> %s", compactJSON(cur.Backend), compactJSON(next.Backend)))
		c.Backend = true
	}
	return c
}

// sameJSON compares two JSON documents by meaning (spacing and key order
// aside).
func sameJSON(a, b json.RawMessage) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return bytes.Equal(a, b)
	}
	xa, _ := json.Marshal(x) // maps marshal with sorted keys
	ya, _ := json.Marshal(y)
	return bytes.Equal(xa, ya)
}

func compactJSON(raw json.RawMessage) string {
	var b bytes.Buffer
	if json.Compact(&b, raw) != nil {
		return string(raw)
	}
	return b.String()
}
