// Package netnstest gives tests their own network namespaces: created with
// unique names so parallel runs never collide, removed when the test ends,
// and entered only through Do, which never leaves an OS thread behind in a
// test namespace.
package netnstest

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

var seq atomic.Int64

// NS is a named network namespace (visible to `ip netns`).
type NS struct {
	Name   string
	Path   string // /run/netns/<Name>
	Handle *netlink.Handle
	fd     netns.NsHandle
}

// RequireRoot skips nothing: it fails the test with a clear message, because
// the kernel tests are the point and silently skipping them proves nothing.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test programs the kernel in network namespaces and must run as root (sudo go test ./...)")
	}
}

// UniqueName returns a short name unique to this process and call; interface
// names are limited to 15 bytes, so keep prefix ≤ 5.
func UniqueName(prefix string) string {
	return fmt.Sprintf("%s%d%d", prefix, os.Getpid()%100000, seq.Add(1))
}

// Create makes a named namespace with loopback up. The caller must Close it.
func Create(name string) (*NS, error) {
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

// New creates a namespace removed when the test ends.
func New(t testing.TB, prefix string) *NS {
	t.Helper()
	RequireRoot(t)
	n, err := Create(UniqueName(prefix))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	return n
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

// Do runs fn on a locked OS thread switched into the namespace, and switches
// back before unlocking; if switching back fails the thread is left locked so
// the runtime discards it instead of reusing a thread in the wrong namespace.
func (n *NS) Do(fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("get current netns: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(n.fd); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns %s: %w", n.Name, err)
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		return fmt.Errorf("return from netns %s: %w (thread discarded)", n.Name, err)
	}
	runtime.UnlockOSThread()
	return ferr
}

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

// MustRun is Run that fails the test on error.
func (n *NS) MustRun(t testing.TB, args ...string) string {
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
