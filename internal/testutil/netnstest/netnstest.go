// Package netnstest gives tests their own network namespaces: created with
// unique names so parallel runs never collide, removed when the test ends,
// and entered only through Do, which never leaves an OS thread behind in a
// test namespace. The namespaces themselves are rtnl's (shared with the lab
// that weftctl ships); this package adds what only tests need: t.Cleanup,
// t.Fatal and re-running a test inside a namespace.
package netnstest

import (
	"os"
	"testing"

	"github.com/weft-net/weft/internal/rtnl"
)

// NS is a named network namespace (visible to `ip netns`).
type NS = rtnl.NS

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
func UniqueName(prefix string) string { return rtnl.UniqueName(prefix) }

// Create makes a named namespace with loopback up. The caller must Close it.
func Create(name string) (*NS, error) { return rtnl.CreateNS(name) }

// New creates a namespace removed when the test ends.
func New(t testing.TB, prefix string) *NS {
	t.Helper()
	RequireRoot(t)
	n, err := rtnl.CreateNS(rtnl.UniqueName(prefix))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	return n
}

// VethPair creates a veth pair with one end in a and the other in b, both up.
func VethPair(a *NS, aName string, b *NS, bName string) error {
	return rtnl.VethPair(a, aName, b, bName)
}
