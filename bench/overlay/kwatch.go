package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/testutil/netnstest"
)

// kwatch judges completion in the kernel: it subscribes to route and
// neighbour (which includes bridge FDB) notifications of a host namespace
// before weftd starts, keeps the set of weft entries present, and fires
// when a target set is entirely present (or entirely gone). The keys are
//
//	"r <dst>"  a main-table route of protocol 87 (weft's)
//	"n <ip>"   a permanent IPv4 neighbour
//	"f <mac>"  a bridge FDB entry (the vxlan device's)
type kwatch struct {
	done chan struct{}

	mu      sync.Mutex
	present map[string]bool
	target  map[string]bool
	wantOn  bool // target met when all present (true) or all absent (false)
	met     int
	fire    chan time.Time
	lost    error // a subscription died (e.g. ENOBUFS): results are void
	events  int
}

func newKwatch(ns *netnstest.NS) (*kwatch, error) {
	w := &kwatch{done: make(chan struct{}), present: map[string]bool{}}
	nsh, err := netns.GetFromPath(ns.Path)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", ns.Path, err)
	}
	defer nsh.Close() // the subscriptions hold their own sockets
	// Thousands of entries arrive in one burst: a big socket buffer (forced,
	// we are root) keeps the kernel from dropping notifications.
	const rcvbuf = 64 << 20
	routes := make(chan netlink.RouteUpdate, 1<<14)
	neighs := make(chan netlink.NeighUpdate, 1<<14)
	onErr := func(err error) {
		w.mu.Lock()
		if w.lost == nil {
			w.lost = fmt.Errorf("netlink subscription in %s: %w", ns.Name, err)
		}
		w.mu.Unlock()
	}
	if err := netlink.RouteSubscribeWithOptions(routes, w.done, netlink.RouteSubscribeOptions{
		Namespace: &nsh, ErrorCallback: onErr, ReceiveBufferSize: rcvbuf, ReceiveBufferForceSize: true,
	}); err != nil {
		return nil, fmt.Errorf("subscribe to routes in %s: %w", ns.Name, err)
	}
	if err := netlink.NeighSubscribeWithOptions(neighs, w.done, netlink.NeighSubscribeOptions{
		Namespace: &nsh, ErrorCallback: onErr, ReceiveBufferSize: rcvbuf, ReceiveBufferForceSize: true,
	}); err != nil {
		close(w.done)
		return nil, fmt.Errorf("subscribe to neighbours in %s: %w", ns.Name, err)
	}
	go func() {
		for u := range routes {
			if u.Protocol != dataplane.RTProtWeft || u.Dst == nil || (u.Table != 0 && u.Table != unix.RT_TABLE_MAIN) {
				continue
			}
			w.update("r "+u.Dst.String(), u.Type == unix.RTM_NEWROUTE)
		}
	}()
	go func() {
		for u := range neighs {
			switch u.Family {
			case unix.AF_INET:
				// A deletion comes without lladdr (the entry is already
				// NUD_FAILED): key on the address only.
				if u.IP == nil {
					continue
				}
				on := u.Type == unix.RTM_NEWNEIGH && u.State&netlink.NUD_PERMANENT != 0
				w.update("n "+u.IP.String(), on)
			case unix.AF_BRIDGE:
				if len(u.HardwareAddr) != 6 || u.HardwareAddr[0] != fakeMACByte0 || u.HardwareAddr[1] != fakeMACByte1 {
					continue
				}
				w.update("f "+u.HardwareAddr.String(), u.Type == unix.RTM_NEWNEIGH)
			}
		}
	}()
	return w, nil
}

func (w *kwatch) close() { close(w.done) }

func (w *kwatch) update(key string, on bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.events++
	was := w.present[key]
	if was == on {
		return
	}
	if on {
		w.present[key] = true
	} else {
		delete(w.present, key)
	}
	if w.target == nil || !w.target[key] {
		return
	}
	if on == w.wantOn {
		w.met++
	} else {
		w.met--
	}
	if w.met == len(w.target) && w.fire != nil {
		w.fire <- time.Now()
		w.fire = nil
	}
}

// expect arms the watch for keys becoming all present (on) or all absent,
// and returns the channel that receives the time it happened. Arm it before
// causing the change.
func (w *kwatch) expect(keys []string, on bool) <-chan time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.target = make(map[string]bool, len(keys))
	w.wantOn = on
	w.met = 0
	for _, k := range keys {
		w.target[k] = true
		if w.present[k] == on {
			w.met++
		}
	}
	ch := make(chan time.Time, 1)
	w.fire = ch
	if w.met == len(w.target) {
		ch <- time.Now()
		w.fire = nil
	}
	return ch
}

// wait waits for an armed expectation, failing when weftd exits, a
// subscription is lost, or d passes.
func (w *kwatch) wait(ctx context.Context, ch <-chan time.Time, h *host, d time.Duration) (time.Time, error) {
	t := time.NewTimer(d)
	defer t.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case at := <-ch:
			return at, w.err()
		case <-h.proc.done:
			return time.Time{}, fmt.Errorf("weftd in %s exited (%v); log:\n%s", h.ns.Name, h.proc.err, h.logTail())
		case <-t.C:
			w.mu.Lock()
			met, n := w.met, len(w.target)
			var pending []string
			for k := range w.target {
				if w.present[k] != w.wantOn && len(pending) < 5 {
					pending = append(pending, k)
				}
			}
			w.mu.Unlock()
			return time.Time{}, fmt.Errorf("kernel in %s: %d of %d entries reached the expected state (present=%t) within %s (e.g. not: %q); weftd log:\n%s",
				h.ns.Name, met, n, w.wantOn, d, pending, h.logTail())
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-tick.C:
			if err := w.err(); err != nil {
				return time.Time{}, err
			}
		}
	}
}

func (w *kwatch) err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lost
}

// count returns how many keys with the given prefix ("r ", "n ", "f ") are present.
func (w *kwatch) count(prefix string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for k := range w.present {
		if k[:2] == prefix {
			n++
		}
	}
	return n
}

// verify checks by a dump, outside any timed region, that the kernel holds
// what the notifications said: n weft routes and, for vxlan, n permanent
// neighbours and n FDB entries on flannel.1.
func verify(h *host, n int, vxlan bool) error {
	hd := h.ns.Handle
	routes, err := hd.RouteListFiltered(unix.AF_INET, &netlink.Route{Protocol: dataplane.RTProtWeft, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil {
		return fmt.Errorf("dump routes in %s: %w", h.ns.Name, err)
	}
	if len(routes) != n {
		return fmt.Errorf("kernel in %s holds %d weft routes, want %d", h.ns.Name, len(routes), n)
	}
	if !vxlan {
		return nil
	}
	dev, err := hd.LinkByName("flannel.1")
	if err != nil {
		return fmt.Errorf("find flannel.1 in %s: %w", h.ns.Name, err)
	}
	neighs, err := hd.NeighList(dev.Attrs().Index, unix.AF_INET)
	if err != nil {
		return fmt.Errorf("dump neighbours in %s: %w", h.ns.Name, err)
	}
	perm := 0
	for _, nb := range neighs {
		if nb.State&netlink.NUD_PERMANENT != 0 {
			perm++
		}
	}
	fdb, err := hd.NeighList(dev.Attrs().Index, unix.AF_BRIDGE)
	if err != nil {
		return fmt.Errorf("dump FDB in %s: %w", h.ns.Name, err)
	}
	fake := 0
	for _, f := range fdb {
		if len(f.HardwareAddr) == 6 && f.HardwareAddr[0] == fakeMACByte0 && f.HardwareAddr[1] == fakeMACByte1 {
			fake++
		}
	}
	if perm != n || fake != n {
		return fmt.Errorf("kernel in %s holds %d permanent neighbours and %d FDB entries on flannel.1, want %d each", h.ns.Name, perm, fake, n)
	}
	return nil
}
