package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netconf"
	"github.com/weft-net/weft/internal/subnetenv"
)

// watchConfig sends every value written to the network config key after
// revision rev to out (latest value wins: only the newest config matters).
// A failed watch (compaction, leader lost) is replaced after a fresh read,
// whose value is sent too, so no write is missed. A deleted key is logged
// and otherwise ignored: the running config stays.
func watchConfig(ctx context.Context, cli *clientv3.Client, key string, rev int64, out chan []byte, log *slog.Logger) {
	for ctx.Err() == nil {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		for wresp := range cli.Watch(wctx, key, clientv3.WithRev(rev+1)) {
			if wresp.Err() != nil || wresp.CompactRevision != 0 {
				break
			}
			for _, ev := range wresp.Events {
				rev = ev.Kv.ModRevision
				if ev.Type == mvccpb.DELETE {
					log.Warn("network config deleted in etcd; keeping the running config", "key", key)
					continue
				}
				sendLatestBytes(out, ev.Kv.Value)
			}
		}
		cancel()
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
		gctx, gcancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := cli.Get(gctx, key)
		gcancel()
		if err != nil {
			continue // etcd unreachable: try again from the same revision
		}
		rev = resp.Header.Revision
		if len(resp.Kvs) > 0 {
			sendLatestBytes(out, resp.Kvs[0].Value)
		}
	}
}

func sendLatestBytes(ch chan []byte, b []byte) {
	for {
		select {
		case ch <- b:
			return
		default:
			select {
			case <-ch:
			default:
			}
		}
	}
}

// configChange is how a new network config differs from the running one.
type configChange struct {
	// restart names each change only a restart applies.
	restart []string
	// live names each change applied while running.
	live []string
	// network: Network or the leasable range changed; backend: the
	// backend's options changed (the dataplane is rebuilt).
	network, backend bool
}

// judgeConfig compares next with the running cur for a host holding own.
//
// Applied live: a Network that still contains the own subnet (peers are
// judged by it from then on), SubnetMin/SubnetMax (allocation only), and
// the backend's options (vxlan Port, GBP, DirectRouting, Learning, MTU; the
// dataplane is rebuilt, the device keeps its MAC). A restart is needed for
// what the kernel or the lease of every host is shaped by: the backend
// type, SubnetLen, EnableIPv4/EnableIPv6 and the IPv6 network, the vxlan
// VNI (it names the device), EnableNFTables (the rules' whole machinery),
// and a Network that no longer contains this host's subnet (it must take
// another lease).
func judgeConfig(cur, next netconf.Config, own lease.Lease) configChange {
	var c configChange
	restart := func(format string, a ...any) { c.restart = append(c.restart, fmt.Sprintf(format, a...)) }
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
		if !next.Network.Contains(own.Subnet.Addr()) || next.Network.Bits() > own.Subnet.Bits() {
			restart("Network %s -> %s, which does not contain this host's subnet %s", cur.Network, next.Network, own.Subnet)
		} else {
			c.live = append(c.live, fmt.Sprintf("Network %s -> %s", cur.Network, next.Network))
			c.network = true
		}
	}
	if cur.SubnetMin != next.SubnetMin || cur.SubnetMax != next.SubnetMax {
		c.live = append(c.live, fmt.Sprintf("SubnetMin/SubnetMax %s..%s -> %s..%s", cur.SubnetMin.Addr(), cur.SubnetMax.Addr(), next.SubnetMin.Addr(), next.SubnetMax.Addr()))
		c.network = true
	}
	if strings.EqualFold(cur.BackendType, next.BackendType) && !sameBackend(cur.Backend, next.Backend) {
		if strings.EqualFold(next.BackendType, netconf.BackendVXLAN) {
			a, errA := cur.VXLAN()
			b, errB := next.VXLAN()
			if errA == nil && errB == nil && a.VNI != b.VNI {
				restart("vxlan VNI %d -> %d (the device flannel.%d is replaced)", a.VNI, b.VNI, a.VNI)
			}
		}
		c.live = append(c.live, fmt.Sprintf("Backend options %s -> %s", compactJSON(cur.Backend), compactJSON(next.Backend)))
		c.backend = true
	}
	return c
}

// sameBackend compares two Backend objects by meaning (spacing and key
// order aside).
func sameBackend(a, b json.RawMessage) bool {
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

// onConfig judges a value written to the network config key and applies
// what it can. Runs on the relay goroutine.
func (n *engine) onConfig(ctx context.Context, raw []byte, key string, parse func([]byte) (netconf.Config, error)) {
	if string(raw) == n.cfgRaw {
		return
	}
	n.cfgRaw = string(raw)
	next, err := parse(raw)
	if err != nil {
		// The running config stays; a valid value later is judged again.
		n.log.Error("new network config is invalid; keeping the running one", "key", key, "value", clip(string(raw)), "err", err)
		return
	}
	c := judgeConfig(n.cfg, next, n.own)
	if len(c.restart) > 0 {
		why := fmt.Sprintf("restart needed: the network config at %s changed what this weftd applies only at start (%s); it runs on the previous config until restarted",
			key, strings.Join(c.restart, "; "))
		n.log.Error("network config changed; a restart is needed", "key", key, "changes", c.restart, "also", c.live)
		n.h.setBlocked("config", why)
		n.h.metrics.ConfigRestartRequired.Set(1)
		return
	}
	n.h.setBlocked("config", "")
	n.h.metrics.ConfigRestartRequired.Set(0)
	if len(c.live) == 0 {
		return // the same config, written again
	}
	if err := n.checkAgainstIface(next, n.ext); err != nil {
		n.log.Error("network config change not applied", "key", key, "err", err)
		n.h.setBlocked("config", "network config change not applied: "+err.Error())
		return
	}
	if c.network {
		if err := n.mgr.Update(ctx, lease.Update{Network: &next}); err != nil {
			n.log.Error("network config change not applied", "key", key, "err", err)
			return
		}
	}
	prev := n.cfg
	n.cfg = next
	if c.backend {
		start := time.Now()
		mtu, err := n.rebuild(ctx, next, n.ext)
		if err != nil && n.backend == nil {
			// Back to what worked: the old config on the same interface.
			n.log.Error("backend options not applied; rebuilding the previous dataplane", "key", key, "err", err)
			n.cfg = prev
			n.h.setBlocked("config", "network config change not applied: "+err.Error())
			if mtu, err = n.rebuild(ctx, prev, n.ext); err != nil {
				n.log.Error("rebuilding the previous dataplane failed; retrying at the next underlay check", "err", err)
				return
			}
		} else if err != nil {
			n.log.Error("rebuilt dataplane", "err", err)
		}
		n.log.Info("dataplane rebuilt for the new backend options", "took", time.Since(start).Round(time.Millisecond), "mtu", mtu)
		if mtu != n.env.MTU {
			n.env.MTU = mtu
			n.writeEnv("MTU changed")
		}
	}
	if c.network {
		n.env.Network = n.cfg.Network
		n.writeEnv("Network changed")
	}
	n.setRules(n.own)
	n.h.metrics.ConfigChangesApplied.Inc()
	n.log.Info("network config change applied without a restart", "key", key, "changes", c.live)
}

// initialEnv is the subnet.env of cfg, own and mtu.
func initialEnv(cfg netconf.Config, own lease.Lease, mtu int, ipMasq bool) subnetenv.Env {
	env := subnetenv.Env{Network: cfg.Network, Subnet: subnetenv.HostSubnet(own.Subnet), MTU: mtu, IPMasq: ipMasq}
	if cfg.EnableIPv6 {
		env.IPv6Network, env.IPv6Subnet = cfg.IPv6Network, subnetenv.HostSubnet(own.IPv6Subnet)
	}
	return env
}

// clip shortens a value from etcd for a log line.
func clip(s string) string {
	if len(s) > 512 {
		return s[:512] + "…"
	}
	return s
}
