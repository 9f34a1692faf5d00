package wgengine

import (
	"fmt"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"
)

// OpenTUN creates the TUN device name (or attaches to the persistent one a
// previous run left) with the offloads wireguard-go uses (vnet headers,
// TSO/USO), in the calling thread's network namespace, and marks it
// persistent: when the daemon exits the device stays, with its address and
// routes, so overlay traffic is dropped there instead of leaving in clear
// by the default route; the next run attaches to it.
func OpenTUN(name string, mtu int) (tun.Device, error) {
	dev, err := tun.CreateTUN(name, mtu)
	if err != nil {
		return nil, fmt.Errorf("wgengine: open TUN device %s: %w", name, err)
	}
	if err := SetPersist(dev, name); err != nil {
		dev.Close()
		return nil, err
	}
	return dev, nil
}

// SetPersist keeps the TUN device when its file descriptor closes
// (TUNSETPERSIST). The ioctl goes through SyscallConn: os.File.Fd would
// switch the descriptor to blocking mode and stall poller-driven reads.
func SetPersist(dev tun.Device, name string) error {
	sc, err := dev.File().SyscallConn()
	if err != nil {
		return fmt.Errorf("wgengine: %s raw descriptor: %w", name, err)
	}
	var ierr error
	if err := sc.Control(func(fd uintptr) { ierr = unix.IoctlSetInt(int(fd), unix.TUNSETPERSIST, 1) }); err != nil {
		return fmt.Errorf("wgengine: %s raw descriptor: %w", name, err)
	}
	if ierr != nil {
		return fmt.Errorf("wgengine: make %s persistent (TUNSETPERSIST): %w", name, ierr)
	}
	return nil
}
