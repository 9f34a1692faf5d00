package dataplane

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync/atomic"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"
)

// tunDev is a persistent TUN device a userspace engine runs on (flannel0 of
// the udp backend, flannel-wg and flannel-wg-v6 of the wireguard backend):
// the device part of the driver's device interface, shared by both. The
// engine is its owner's; tunDev calls start to (re)start it on a freshly
// opened TUN whenever the device is missing, replaced or not yet attached.
type tunDev struct {
	name string
	mtu  int
	host Host
	h    *netlink.Handle
	log  *slog.Logger
	// running reports whether the owner's engine runs; start stops the
	// running one, if any, and starts one on dev, a TUN opened in the
	// host's namespace, where start runs too (its sockets belong there).
	// start owns dev: it closes it when it fails.
	running func() bool
	start   func(dev tun.Device) error

	// Only the loop goroutine (and Init before it) touches these.
	lnk      netlink.Link
	devIndex atomic.Int32 // read by the watcher's filters
	closed   atomic.Bool  // an apply after Close must not start a new engine
}

func (t *tunDev) index() int32 { return t.devIndex.Load() }

func (t *tunDev) link() netlink.Link { return t.lnk }

// ensure makes the device exist as a TUN attached to a running engine,
// with the right MTU and up. A device deleted by hand, or replaced by
// something else of that name (flanneld's kernel device left by a swap), is
// recreated with a new engine.
func (t *tunDev) ensure(Host) (created bool, err error) {
	if t.closed.Load() {
		return false, fmt.Errorf("dataplane: %s: backend is closed", t.name)
	}
	have, err := t.h.LinkByName(t.name)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
		have = nil
	case err != nil:
		return false, fmt.Errorf("dataplane: look up %s: %w", t.name, err)
	}
	if have != nil && have.Type() != "tuntap" {
		t.log.Warn("existing device is not a TUN device; recreating it", "type", have.Type())
		if err := t.h.LinkDel(have); err != nil && !isGone(err) {
			return false, fmt.Errorf("dataplane: delete %s of type %s: %w", t.name, have.Type(), err)
		}
		have = nil
	}
	if !t.running() || have == nil || int32(have.Attrs().Index) != t.devIndex.Load() {
		if t.running() {
			t.log.Warn("TUN device disappeared or changed; restarting its engine")
		}
		err := t.attach()
		if err != nil && have != nil {
			// A leftover device that cannot be attached to as weft's TUN
			// (a TAP, multi-queue, or still held by a running flanneld,
			// which then loses it): replace it.
			t.log.Warn("cannot attach to the existing TUN device; recreating it", "err", err)
			if derr := t.h.LinkDel(have); derr != nil && !isGone(derr) {
				return false, errors.Join(err, fmt.Errorf("dataplane: delete %s: %w", t.name, derr))
			}
			err = t.attach()
		}
		if err != nil {
			return false, err
		}
		if have, err = t.h.LinkByName(t.name); err != nil {
			return false, fmt.Errorf("dataplane: re-read %s after attaching: %w", t.name, err)
		}
	}
	attrs := have.Attrs()
	if attrs.MTU != t.mtu {
		if err := t.h.LinkSetMTU(have, t.mtu); err != nil {
			return false, fmt.Errorf("dataplane: set %s mtu %d: %w", t.name, t.mtu, err)
		}
	}
	if attrs.Flags&net.FlagUp == 0 {
		if err := t.h.LinkSetUp(have); err != nil {
			return false, fmt.Errorf("dataplane: set %s up: %w", t.name, err)
		}
	}
	created = int32(attrs.Index) != t.devIndex.Load()
	t.lnk = have
	t.devIndex.Store(int32(attrs.Index))
	return created, nil
}

// attach opens the TUN (creating it or attaching to the persistent one a
// previous run left) in the host's namespace and starts the engine on it.
func (t *tunDev) attach() error {
	return inNS(t.host.NetNS, func() error {
		dev, err := openPersistentTUN(t.name, t.mtu)
		if err != nil {
			return err
		}
		return t.start(dev)
	})
}

// openPersistentTUN creates the TUN device name (or attaches to the
// persistent one a previous run left) with the offloads wireguard-go's tun
// package sets up (vnet headers, TSO/USO), in the calling thread's
// namespace, and marks it persistent (TUNSETPERSIST): when weftd exits the
// device stays, with its address and routes, so overlay traffic is dropped
// there instead of leaving in clear by the default route, and the next run
// attaches to it.
func openPersistentTUN(name string, mtu int) (tun.Device, error) {
	dev, err := tun.CreateTUN(name, mtu)
	if err != nil {
		return nil, fmt.Errorf("dataplane: open TUN device %s: %w", name, err)
	}
	// The ioctl goes through SyscallConn: os.File.Fd would switch the
	// descriptor to blocking mode and stall poller-driven reads.
	sc, err := dev.File().SyscallConn()
	if err == nil {
		var ierr error
		if err = sc.Control(func(fd uintptr) { ierr = unix.IoctlSetInt(int(fd), unix.TUNSETPERSIST, 1) }); err == nil {
			err = ierr
		}
	}
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("dataplane: make %s persistent (TUNSETPERSIST): %w", name, err)
	}
	return dev, nil
}
