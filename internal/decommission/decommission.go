// Package decommission retires a host from the overlay (`weftctl
// decommission`): it releases the host's lease in etcd and removes what
// weft created on the host — overlay devices, weft's routes and nexthop
// objects, traffic rules, subnet.env and the Docker options file — so that
// the host is as it was before weftd first ran, and peers drop it within
// their watch latency.
//
// Every step is idempotent: what is already gone is skipped, so a second
// run (or a run after a half-finished one) removes nothing and succeeds.
// It does not import internal/dataplane: it knows weft's objects by name,
// kind and route/nexthop protocol (rtnl.ProtWeft), not by the backends'
// internals.
package decommission

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"regexp"

	"github.com/vishvananda/netlink"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/rtnl"
	"github.com/weft-net/weft/internal/rules"
)

// devices are weft's (and flannel's) overlay device names, each with the
// link kind it must have: a device of that name and another kind is not
// weft's and is left alone.
var devices = []struct {
	name *regexp.Regexp
	kind string
}{
	{regexp.MustCompile(`^flannel\.[0-9]+$`), "vxlan"},
	{regexp.MustCompile(`^flannel-v6\.[0-9]+$`), "vxlan"},
	{regexp.MustCompile(`^flannel0$`), "tuntap"},
	{regexp.MustCompile(`^flannel-wg$`), "wireguard"},
	{regexp.MustCompile(`^flannel-wg-v6$`), "wireguard"},
}

// Local removes weft's kernel state in the current network namespace and
// the given files; it returns what it removed, in order. A file path that
// is empty is skipped.
func Local(log *slog.Logger, files ...string) (removed []string, err error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h, err := netlink.NewHandle()
	if err != nil {
		return nil, fmt.Errorf("open netlink socket: %w", err)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	for _, l := range links {
		name := l.Attrs().Name
		for _, d := range devices {
			if !d.name.MatchString(name) {
				continue
			}
			if l.Type() != d.kind {
				log.Warn("not removing a device with weft's name but another kind", "device", name, "kind", l.Type(), "want", d.kind)
				continue
			}
			// Its routes, neighbours and FDB entries go with it.
			if err := h.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
				return removed, fmt.Errorf("delete device %s (%s): %w", name, d.kind, err)
			}
			removed = append(removed, "device "+name)
		}
	}

	c, err := rtnl.Open(nil)
	if err != nil {
		return removed, err
	}
	defer c.Close()
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		var ours []rtnl.Route
		if _, err := rtnl.RetryDump(func() (struct{}, error) {
			ours = ours[:0]
			return struct{}{}, c.DumpRoutes(family, func(r rtnl.Route) {
				if r.Protocol == uint8(rtnl.ProtWeft) {
					ours = append(ours, r)
				}
			})
		}); err != nil {
			return removed, fmt.Errorf("dump routes (family %d): %w", family, err)
		}
		var failed []error
		b := rtnl.NewBatch(c, func(r rtnl.Route, err error) bool {
			if errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENOENT) {
				return false // gone meanwhile
			}
			failed = append(failed, fmt.Errorf("delete route %s: %w", r, err))
			return true
		})
		for _, r := range ours {
			b.DeleteRoute(r, family, r)
			removed = append(removed, "route "+r.String())
		}
		b.Flush()
		if len(failed) > 0 {
			return removed, errors.Join(failed...)
		}
	}
	nhs, err := removeNexthops(c)
	removed = append(removed, nhs...)
	if err != nil {
		return removed, err
	}

	rm := rules.New(log)
	defer rm.Close()
	gone, err := rm.Teardown()
	removed = append(removed, gone...)
	if err != nil {
		return removed, err
	}

	for _, f := range files {
		if f == "" {
			continue
		}
		switch err := os.Remove(f); {
		case err == nil:
			removed = append(removed, "file "+f)
		case errors.Is(err, fs.ErrNotExist):
		default:
			return removed, fmt.Errorf("remove %s: %w", f, err)
		}
	}
	return removed, nil
}

// removeNexthops deletes weft's nexthop objects (proto 87) left after the
// devices and routes: those on an overlay device went with it, but one on
// another device, or a probe's blackhole left by a killed weftd, would stay.
// Deleting one takes the routes through it along, so it runs after the
// route sweep, which names what it removed.
func removeNexthops(c *rtnl.Conn) (removed []string, err error) {
	var ours []rtnl.Nexthop
	if _, err := rtnl.RetryDump(func() (struct{}, error) {
		ours = ours[:0]
		return struct{}{}, c.DumpNexthops(func(n rtnl.Nexthop) {
			if n.Protocol == uint8(rtnl.ProtWeft) {
				ours = append(ours, n)
			}
		})
	}); err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) {
			return nil, nil // a kernel without nexthop objects (< 5.3) holds none
		}
		return nil, fmt.Errorf("dump nexthop objects: %w", err)
	}
	var failed []error
	b := rtnl.NewBatch(c, func(n rtnl.Nexthop, err error) bool {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) {
			return false // gone meanwhile
		}
		failed = append(failed, fmt.Errorf("delete nexthop %s: %w", n, err))
		return true
	})
	for _, n := range ours {
		b.DeleteNexthop(n, n.ID)
		removed = append(removed, "nexthop "+n.String())
	}
	b.Flush()
	return removed, errors.Join(failed...)
}

// Released is one lease key deleted (or kept) by ReleaseLease.
type Released struct {
	Key    string
	Subnet netip.Prefix
	Kept   string // why it was not deleted; "" when it was
}

// ReleaseLease deletes this host's leases: the keys naming publicIP and
// nodeName or no identity (flanneld's) — the leases weftd itself would
// take as its own. Each is deleted by a transaction on the ModRevision it
// was read at, so a concurrent rewrite (another host taking the subnet) is
// never deleted. A reservation is kept and reported: it is an operator's
// decision, undone with `weftctl leases unreserve`. A lease naming
// publicIP and another identity is another host's and is reported kept.
func ReleaseLease(ctx context.Context, cli *clientv3.Client, store *lease.Store, publicIP netip.Addr, nodeName string) ([]Released, error) {
	leases, _, err := store.List(ctx)
	if err != nil {
		return nil, err
	}
	var out []Released
	for _, l := range leases {
		if l.Attrs.PublicIP != publicIP {
			continue
		}
		key := store.Key(l.Subnet, l.IPv6Subnet)
		r := Released{Key: key, Subnet: l.Subnet}
		switch {
		case l.Attrs.NodeName != "" && l.Attrs.NodeName != nodeName:
			r.Kept = fmt.Sprintf("names node %q, not this host's %q: another host's", l.Attrs.NodeName, nodeName)
		case l.Reserved():
			r.Kept = "a reservation: remove it with `weftctl leases unreserve " + l.Subnet.String() + "`"
		default:
			resp, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", l.ModRevision)).
				Then(clientv3.OpDelete(key)).Commit()
			if err != nil {
				return out, fmt.Errorf("delete lease %s at revision %d: %w", key, l.ModRevision, err)
			}
			if !resp.Succeeded {
				r.Kept = fmt.Sprintf("rewritten since revision %d (by another host?): not deleted; run again to look at it anew", l.ModRevision)
			} else if l.EtcdLease != 0 {
				// The key is gone; its etcd lease holds nothing now.
				_, _ = cli.Revoke(ctx, clientv3.LeaseID(l.EtcdLease))
			}
		}
		out = append(out, r)
	}
	return out, nil
}
