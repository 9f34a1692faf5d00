package daemon

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/extiface"
	"github.com/weft-net/weft/internal/netconf"
	"github.com/weft-net/weft/internal/rtnl"
)

// underlayCheckInterval is how often the underlay interface is checked
// without a netlink event (a missed or overflowed subscription); tests
// shorten it.
var underlayCheckInterval = 5 * time.Second

// checkMTU refuses a configured vxlan MTU that does not fit the underlay:
// each encapsulated frame would be larger than the NIC's MTU and dropped
// (or fragmented) on the way. An MTU exactly equal to the NIC's minus the
// overhead is what weft picks by itself and is accepted without a warning.
// Only vxlan has an MTU option (the udp backend derives its own from the
// NIC; host-gw and alloc do not encapsulate).
func checkMTU(cfg netconf.Config, iface string, ifaceMTU int) error {
	if !strings.EqualFold(cfg.BackendType, netconf.BackendVXLAN) || ifaceMTU <= 0 {
		return nil
	}
	opts, err := cfg.VXLAN()
	if err != nil || opts.MTU == 0 {
		return nil // invalid options are netconf's to report; 0 follows the NIC
	}
	overhead := dataplane.Overhead(cfg) // flannel-v6 carries the same MTU over IPv6
	if limit := ifaceMTU - overhead; opts.MTU > limit {
		return fmt.Errorf("Backend.MTU %d does not fit interface %s: its MTU %d minus the %d bytes vxlan adds is %d, so encapsulated frames would be dropped; set Backend.MTU to at most %d (or 0: %s's MTU minus %d), or raise %s's MTU to at least %d",
			opts.MTU, iface, ifaceMTU, overhead, limit, limit, iface, overhead, iface, opts.MTU+overhead)
	}
	return nil
}

// checkAgainstIface is what a config must satisfy on the underlay ext.
func (n *engine) checkAgainstIface(cfg netconf.Config, ext extiface.ExtIface) error {
	if err := publicOutsideOverlay(cfg, ext); err != nil {
		return err
	}
	return checkMTU(cfg, ext.Name, ext.MTU)
}

// subscribeUnderlay pokes wake on every link and IPv4 address change of the
// namespace; the check it triggers decides whether the underlay changed.
// A subscription that fails is logged: the periodic check still runs.
func (n *engine) subscribeUnderlay(ctx context.Context, wake chan struct{}) {
	poke := func() {
		select {
		case wake <- struct{}{}:
		default:
		}
	}
	onErr := func(err error) {
		n.log.Warn("netlink subscription of the underlay failed; the periodic check goes on", "err", err)
	}
	links := make(chan netlink.LinkUpdate, 64)
	addrs := make(chan netlink.AddrUpdate, 64)
	if err := netlink.LinkSubscribeWithOptions(links, ctx.Done(), netlink.LinkSubscribeOptions{ErrorCallback: onErr}); err != nil {
		onErr(err)
	}
	if err := netlink.AddrSubscribeWithOptions(addrs, ctx.Done(), netlink.AddrSubscribeOptions{ErrorCallback: onErr}); err != nil {
		onErr(err)
	}
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case u, ok := <-links:
				if !ok {
					links = nil
					continue
				}
				// The overlay's own devices change with every rebuild.
				if !strings.HasPrefix(u.Attrs().Name, "flannel") {
					poke()
				}
			case u, ok := <-addrs:
				if !ok {
					addrs = nil
					continue
				}
				if u.LinkAddress.IP.To4() != nil {
					poke()
				}
			}
		}
	}()
}

// sameIface reports whether the underlay is unchanged for the dataplane.
func sameIface(a, b extiface.ExtIface) bool {
	return a.Name == b.Name && a.Index == b.Index && a.MTU == b.MTU && a.IfaceAddr == b.IfaceAddr &&
		a.PublicIP == b.PublicIP && a.IfaceAddr6 == b.IfaceAddr6
}

// checkUnderlay looks at the underlay interface again and, when it changed
// (recreated with a new index, a new address, a new MTU), rebuilds the
// dataplane on it and publishes the new PublicIP and VtepMAC. An interface
// that is gone (or has no address yet) leaves the running dataplane alone:
// weftd waits for it, says so once in the log, and is unready meanwhile.
func (n *engine) checkUnderlay(ctx context.Context) {
	ext, err := extiface.Select(n.nl, n.extOpts)
	if err == nil {
		err = n.checkAgainstIface(n.cfg, ext)
	}
	if err != nil {
		if err.Error() != n.ifaceErr {
			n.log.Error("underlay interface unusable; keeping the dataplane and waiting for it", "err", err)
			n.ifaceErr = err.Error()
		}
		n.h.setBlocked("underlay", "underlay interface unusable: "+err.Error())
		return
	}
	if sameIface(ext, n.ext) && n.backend != nil {
		if n.ifaceErr != "" {
			n.log.Info("underlay interface usable again, unchanged", "iface", ext.Name, "index", ext.Index)
			n.ifaceErr = ""
			n.h.setBlocked("underlay", "")
		}
		return
	}
	start := time.Now()
	n.log.Warn("underlay interface changed; rebuilding the dataplane",
		"iface", ext.Name, "index", fmt.Sprintf("%d -> %d", n.ext.Index, ext.Index),
		"iface-addr", fmt.Sprintf("%s -> %s", n.ext.IfaceAddr, ext.IfaceAddr),
		"public-ip", fmt.Sprintf("%s -> %s", n.ext.PublicIP, ext.PublicIP),
		"mtu", fmt.Sprintf("%d -> %d", n.ext.MTU, ext.MTU))
	mtu, err := n.rebuild(ctx, n.cfg, ext)
	if err != nil && n.backend == nil {
		if err.Error() != n.ifaceErr {
			n.log.Error("rebuilding the dataplane on the changed underlay failed; retrying", "err", err)
			n.ifaceErr = err.Error()
		}
		n.h.setBlocked("underlay", "dataplane rebuild on the changed underlay failed: "+err.Error())
		return
	}
	if err != nil {
		n.log.Error("rebuilt dataplane", "err", err) // the lease update; Run retries it
	}
	n.ext, n.ifaceErr = ext, ""
	n.h.setBlocked("underlay", "")
	n.h.metrics.UnderlayRebuilds.Inc()
	if mtu != n.env.MTU {
		n.env.MTU = mtu
		n.writeEnv("underlay MTU changed")
	}
	n.log.Info("dataplane rebuilt on the changed underlay", "iface", ext.Name, "index", ext.Index,
		"public-ip", ext.PublicIP, "mtu", mtu, "took", time.Since(start).Round(time.Millisecond))
}

// overlaps lists the addresses of other local interfaces that overlap the
// Network outside this host's lease own (docker0 or cni0 from an earlier
// lease, or configured by hand): the kernel's connected route for such an
// address captures traffic meant for the peer leasing that subnet. The
// overlay's own devices (flannel.<VNI>, flannel0) are weft's and skipped;
// so is any address inside own (docker0's gateway from subnet.env).
func overlaps(nl *netlink.Handle, network, own netip.Prefix) ([]string, error) {
	links, err := rtnl.RetryDump(func() ([]netlink.Link, error) { return nl.LinkList() })
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	names := make(map[int]string, len(links))
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	addrs, err := rtnl.RetryDump(func() ([]netlink.Addr, error) { return nl.AddrList(nil, unix.AF_INET) })
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	var out []string
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		if !ok {
			continue
		}
		bits, _ := a.Mask.Size()
		p := netip.PrefixFrom(ip, bits)
		name := names[a.LinkIndex]
		if strings.HasPrefix(name, "flannel") || !p.Masked().Overlaps(network) {
			continue
		}
		if own.Contains(ip) && bits >= own.Bits() {
			continue
		}
		out = append(out, fmt.Sprintf("%s has %s", name, p))
	}
	slices.Sort(out)
	return out, nil
}

// checkOverlap warns (log and /readyz) about overlapping addresses. It is
// a warning, not a refusal: the fix — Docker taking --bip from subnet.env —
// needs the subnet.env that weftd writes, and the rest of the overlay works.
func (n *engine) checkOverlap() {
	found, err := overlaps(n.nl, n.cfg.Network, n.own.Subnet)
	if err != nil {
		n.log.Debug("overlap check", "err", err)
		return
	}
	msg := ""
	if len(found) > 0 {
		msg = fmt.Sprintf("%s: inside the Network %s but outside this host's lease %s, so traffic to the host leasing it stays here; fix: make dockerd read /run/flannel/docker (ExecStart=/usr/bin/dockerd $DOCKER_NETWORK_OPTIONS in docker.service, systemctl daemon-reload), then ip link del docker0 && systemctl restart docker (cni0: ip link del cni0 and recreate the pods)",
			strings.Join(found, ", "), n.cfg.Network, n.own.Subnet)
	}
	if msg != n.overlap {
		if msg != "" {
			n.log.Error("another interface overlaps the overlay", "found", found, "network", n.cfg.Network, "lease", n.own.Subnet, "fix", "dockerd with $DOCKER_NETWORK_OPTIONS from /run/flannel/docker, then ip link del docker0 && systemctl restart docker")
		} else if n.overlap != "" {
			n.log.Info("no other interface overlaps the overlay any more")
		}
		n.overlap = msg
		n.h.setNote("overlap", msg)
	}
}
