package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/latest"
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
				latest.Send(out, ev.Kv.Value)
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
			latest.Send(out, resp.Kvs[0].Value)
		}
	}
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
	c := netconf.CompareConfigs(n.cfg, next, n.own.Subnet)
	if len(c.Restart) > 0 {
		why := fmt.Sprintf("restart needed: the network config at %s changed what this weftd applies only at start (%s); it runs on the previous config until restarted",
			key, strings.Join(c.Restart, "; "))
		n.log.Error("network config changed; a restart is needed", "key", key, "changes", c.Restart, "also", c.Live)
		n.h.setBlocked("config", why)
		n.h.metrics.ConfigRestartRequired.Set(1)
		return
	}
	n.h.setBlocked("config", "")
	n.h.metrics.ConfigRestartRequired.Set(0)
	if len(c.Live) == 0 {
		return // the same config, written again
	}
	if err := n.checkAgainstIface(next, n.ext); err != nil {
		n.log.Error("network config change not applied", "key", key, "err", err)
		n.h.setBlocked("config", "network config change not applied: "+err.Error())
		return
	}
	if c.Network {
		if err := n.mgr.Update(ctx, lease.Update{Network: &next}); err != nil {
			n.log.Error("network config change not applied", "key", key, "err", err)
			return
		}
	}
	prev := n.cfg
	n.cfg = next
	if c.Backend {
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
	if c.Network {
		n.env.Network = n.cfg.Network
		n.writeEnv("Network changed")
	}
	n.setRules(n.own)
	n.h.metrics.ConfigChangesApplied.Inc()
	n.log.Info("network config change applied without a restart", "key", key, "changes", c.Live)
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
