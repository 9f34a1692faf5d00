package rtnl

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Do runs fn on a locked OS thread switched into ns: a socket, a TUN device
// or a child process belongs to the namespace of the thread that creates it,
// and a netlink handle alone cannot choose that. The thread is switched back
// before it is unlocked; if switching back fails it stays locked, so that the
// runtime discards it when the goroutine ends instead of reusing a thread in
// the wrong namespace.
func Do(ns netns.NsHandle, fn func() error) error {
	return do(ns, fmt.Sprintf("fd %d", int(ns)), fn)
}

// do is Do with the namespace named by what in errors.
func do(ns netns.NsHandle, what string, fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("get the current network namespace: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter network namespace %s: %w", what, err)
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		return errors.Join(ferr, fmt.Errorf("return from network namespace %s: %w (thread discarded)", what, err))
	}
	runtime.UnlockOSThread()
	return ferr
}

var seq atomic.Int64

// NS is a named network namespace (visible to `ip netns`) with a netlink
// handle bound to it: the lab's hosts and containers, and the tests'.
type NS struct {
	Name   string
	Path   string // /run/netns/<Name>
	Handle *netlink.Handle
	fd     netns.NsHandle
}

// UniqueName returns a short name unique to this process and call; interface
// names are limited to 15 bytes, so keep prefix ≤ 5.
func UniqueName(prefix string) string {
	return fmt.Sprintf("%s%d%d", prefix, os.Getpid()%100000, seq.Add(1))
}

// CreateNS makes a named namespace with loopback up. The caller must Close it.
func CreateNS(name string) (*NS, error) {
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add %s: %v: %s", name, err, strings.TrimSpace(string(out)))
	}
	n := &NS{Name: name, Path: "/run/netns/" + name}
	fd, err := netns.GetFromPath(n.Path)
	if err != nil {
		n.Close()
		return nil, fmt.Errorf("open netns %s: %w", n.Path, err)
	}
	n.fd = fd
	h, err := netlink.NewHandleAt(fd)
	if err != nil {
		n.Close()
		return nil, fmt.Errorf("netlink handle in netns %s: %w", name, err)
	}
	n.Handle = h
	lo, err := h.LinkByName("lo")
	if err == nil {
		err = h.LinkSetUp(lo)
	}
	if err != nil {
		n.Close()
		return nil, fmt.Errorf("bring up lo in netns %s: %w", name, err)
	}
	return n, nil
}

// OpenNS opens a named namespace something else made, e.g. a container's
// that `ip netns attach` named. Close then removes only the name: the
// namespace lives on as long as its processes.
func OpenNS(name string) (*NS, error) {
	n := &NS{Name: name, Path: "/run/netns/" + name, fd: -1}
	fd, err := netns.GetFromPath(n.Path)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", n.Path, err)
	}
	n.fd = fd
	if n.Handle, err = netlink.NewHandleAt(fd); err != nil {
		fd.Close()
		return nil, fmt.Errorf("netlink handle in netns %s: %w", name, err)
	}
	return n, nil
}

// Close removes the namespace; links inside it go with it.
func (n *NS) Close() {
	if n.Handle != nil {
		n.Handle.Close()
		n.Handle = nil
	}
	if n.fd.IsOpen() {
		n.fd.Close()
	}
	exec.Command("ip", "netns", "del", n.Name).Run()
}

// Fd returns the namespace file handle (for netlink.NewHandleAt and LinkSetNsFd).
func (n *NS) Fd() netns.NsHandle { return n.fd }

// Do runs fn on a thread switched into the namespace (see the function Do).
func (n *NS) Do(fn func() error) error { return do(n.fd, n.Name, fn) }

// Run runs a command inside the namespace with `ip netns exec` and returns its
// combined output.
func (n *NS) Run(args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.Name}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("in netns %s: %s: %w: %s", n.Name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Fataler is the part of testing.TB that MustRun uses, named here so that
// this package, which weftd and weftctl link, does not import "testing".
type Fataler interface {
	Helper()
	Fatal(args ...any)
}

// MustRun is Run that fails the test on error.
func (n *NS) MustRun(t Fataler, args ...string) string {
	t.Helper()
	out, err := n.Run(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// VethPair creates a veth pair with one end in a and the other in b, both up.
func VethPair(a *NS, aName string, b *NS, bName string) error {
	la := netlink.NewLinkAttrs()
	la.Name = aName
	veth := &netlink.Veth{LinkAttrs: la, PeerName: bName, PeerNamespace: netlink.NsFd(int(b.fd))}
	if err := a.Handle.LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth %s(%s)-%s(%s): %w", aName, a.Name, bName, b.Name, err)
	}
	for _, x := range []struct {
		ns   *NS
		name string
	}{{a, aName}, {b, bName}} {
		l, err := x.ns.Handle.LinkByName(x.name)
		if err != nil {
			return fmt.Errorf("find %s in %s: %w", x.name, x.ns.Name, err)
		}
		if err := x.ns.Handle.LinkSetUp(l); err != nil {
			return fmt.Errorf("set %s up in %s: %w", x.name, x.ns.Name, err)
		}
	}
	return nil
}
