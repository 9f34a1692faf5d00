package udpfwd

import (
	"fmt"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"
)

// TUNQueueLen is the transmit queue length the engine gives its TUN device.
// The kernel's TUN queue (a ring sized by txqueuelen, 500 by default, as
// flanneld leaves it) drops a packet when it is full, with no backpressure to
// the sender (the TUN driver orphans the packet from its socket). When the
// engine's reading goroutine waits for a CPU on a busy host, a 64-byte flood
// of ~90k packets/s fills 500 slots in ~5 ms: bench/udp -drops measured 17 % of
// the flood dropped there (flannel0 tx_dropped), and none with 4096 (45 ms of
// slack). A full ring holds at most this many packets; for TCP, whose
// super-packets are bigger, the flows' windows bound what is in flight.
const TUNQueueLen = 4096

// RaiseQueueLen sets the transmit queue length of dev to n unless it already
// is at least n (an operator's larger setting stays). It uses an ioctl on a
// socket of the calling thread's network namespace, which must be the
// device's.
func RaiseQueueLen(dev tun.Device, n int) error {
	name, err := dev.Name()
	if err != nil {
		return fmt.Errorf("udpfwd: raise TUN queue length: device name: %w", err)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("udpfwd: raise %s queue length: socket: %w", name, err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return fmt.Errorf("udpfwd: raise %s queue length: %w", name, err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFTXQLEN, ifr); err != nil {
		return fmt.Errorf("udpfwd: read %s queue length (SIOCGIFTXQLEN): %w", name, err)
	}
	if int(ifr.Uint32()) >= n {
		return nil
	}
	ifr.SetUint32(uint32(n))
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFTXQLEN, ifr); err != nil {
		return fmt.Errorf("udpfwd: set %s queue length %d (SIOCSIFTXQLEN): %w", name, n, err)
	}
	return nil
}
