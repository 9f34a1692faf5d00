package main

import (
	"context"
	"fmt"
	"net"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/rtnl"
	"github.com/weft-net/weft/internal/testutil/netnstest"
)

// kwatch judges completion in the kernel: it listens to route and
// neighbour (which includes bridge FDB) notifications of a host namespace
// from before weftd starts, keeps the set of weft entries present, and fires
// when a target set is entirely present (or entirely gone). The keys are
//
//	"r <dst>"  a main-table route of protocol 87 (weft's)
//	"n <ip>"   a permanent IPv4 neighbour
//	"f <mac>"  a bridge FDB entry (the vxlan device's)
type kwatch struct {
	done      chan struct{}
	closeOnce sync.Once

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
	// IPv4 routes and neighbours (the latter carries bridge FDB too).
	fd, err := openMonitor(ns, unix.RTMGRP_IPV4_ROUTE|unix.RTMGRP_NEIGH)
	if err != nil {
		return nil, err
	}
	go w.read(fd)
	return w, nil
}

// read drains the socket, then sleeps pollInterval, instead of blocking in
// recv: a reader blocked in recv is woken by the kernel for every message,
// and on this 2-core VM those thousands of wakeups slowed the very kernel
// work being measured (iproute2's 5,000-peer batch took 2.1 s with a
// blocking subscriber listening, 0.73 s with none). The price is up to
// pollInterval of delay in the completion time.
func (w *kwatch) read(fd int) {
	defer unix.Close(fd)
	buf := make([]byte, 1<<20)
	for {
		select {
		case <-w.done:
			return
		default:
		}
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err == unix.EAGAIN || err == unix.EINTR {
			time.Sleep(pollInterval)
			continue
		}
		if err != nil {
			w.mu.Lock()
			if w.lost == nil {
				w.lost = fmt.Errorf("netlink notifications: %w (results void)", err)
			}
			w.mu.Unlock()
			return
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			continue
		}
		for i := range msgs {
			w.message(&msgs[i])
		}
	}
}

// pollInterval is how long read sleeps when the socket is empty (-poll).
var pollInterval = 200 * time.Microsecond

func (w *kwatch) message(m *syscall.NetlinkMessage) {
	switch m.Header.Type {
	case unix.RTM_NEWROUTE, unix.RTM_DELROUTE:
		if key, ok := weftRouteKey(m); ok {
			w.update(key, m.Header.Type == unix.RTM_NEWROUTE)
		}
	case unix.RTM_NEWNEIGH, unix.RTM_DELNEIGH:
		u, err := netlink.NeighDeserialize(m.Data)
		if err != nil {
			return
		}
		switch u.Family {
		case unix.AF_INET:
			// A deletion comes without lladdr (the entry is already
			// NUD_FAILED): key on the address only.
			if u.IP == nil {
				return
			}
			on := m.Header.Type == unix.RTM_NEWNEIGH && u.State&netlink.NUD_PERMANENT != 0
			w.update("n "+u.IP.String(), on)
		case unix.AF_BRIDGE:
			if len(u.HardwareAddr) != 6 || u.HardwareAddr[0] != fakeMACByte0 || u.HardwareAddr[1] != fakeMACByte1 {
				return
			}
			w.update("f "+u.HardwareAddr.String(), m.Header.Type == unix.RTM_NEWNEIGH)
		}
	}
}

// routeProto is the protocol of the routes the daemon under test installs
// (-route-proto): weft's 87, or 3 (boot, the kernel's default) to run the
// figures against flanneld, whose routes carry none.
var routeProto = rtnl.ProtWeft

// weftRouteKey is the key ("r <dst>") of a route notification when it is
// one of the daemon's: IPv4, protocol routeProto, main table.
func weftRouteKey(m *syscall.NetlinkMessage) (string, bool) {
	if len(m.Data) < unix.SizeofRtMsg {
		return "", false
	}
	rtm := (*unix.RtMsg)(unsafe.Pointer(&m.Data[0]))
	if rtm.Family != unix.AF_INET || netlink.RouteProtocol(rtm.Protocol) != routeProto {
		return "", false
	}
	table := uint32(rtm.Table)
	var dst net.IP
	attrs, err := syscall.ParseNetlinkRouteAttr(m)
	if err != nil {
		return "", false
	}
	for _, a := range attrs {
		switch a.Attr.Type {
		case unix.RTA_DST:
			dst = net.IP(a.Value)
		case unix.RTA_TABLE:
			if len(a.Value) == 4 {
				table = *(*uint32)(unsafe.Pointer(&a.Value[0]))
			}
		}
	}
	if dst == nil || table != unix.RT_TABLE_MAIN {
		return "", false
	}
	p := &net.IPNet{IP: dst, Mask: net.CIDRMask(int(rtm.Dst_len), 32)}
	return "r " + p.String(), true
}

// close stops reading; it may be called more than once.
func (w *kwatch) close() { w.closeOnce.Do(func() { close(w.done) }) }

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
	routes, err := hd.RouteListFiltered(unix.AF_INET, &netlink.Route{Protocol: routeProto, Table: unix.RT_TABLE_MAIN},
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

// openMonitor opens a raw rtnetlink socket inside ns, subscribed to the
// multicast groups: what the kernel announces there, not weftd's log, is
// what the figures time.
func openMonitor(ns *netnstest.NS, groups uint32) (int, error) {
	var fd int
	if err := ns.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_ROUTE)
		return err
	}); err != nil {
		return -1, fmt.Errorf("netlink socket in %s: %w", ns.Name, err)
	}
	// Thousands of entries arrive in one burst: a big buffer (forced, we
	// are root) keeps the kernel from dropping notifications.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 64<<20); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("netlink socket buffer in %s: %w", ns.Name, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: groups}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind netlink socket in %s: %w", ns.Name, err)
	}
	return fd, nil
}
