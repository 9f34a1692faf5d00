package rtnl_test

import (
	"errors"
	"runtime"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/weft-net/weft/internal/rtnl"
	"github.com/weft-net/weft/internal/testutil/netnstest"
)

// TestDoEntersAndLeaves: fn runs in the namespace (it sees that namespace's
// inode), its error comes back, and the caller's thread is in its own
// namespace afterwards, also when fn failed.
func TestDoEntersAndLeaves(t *testing.T) {
	ns := netnstest.New(t, "wrd")
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	self, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer self.Close()
	boom := errors.New("boom")
	var inside netns.NsHandle
	err = rtnl.Do(ns.Fd(), func() error {
		var err error
		inside, err = netns.Get()
		if err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Do returned %v, want fn's error %v", err, boom)
	}
	defer inside.Close()
	if !inside.Equal(ns.Fd()) || inside.Equal(self) {
		t.Errorf("fn ran in %s, want the namespace %s (%s), not the caller's %s", inside, ns.Name, ns.Fd(), self)
	}
	after, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer after.Close()
	if !after.Equal(self) {
		t.Errorf("after Do the thread is in %s, want its own namespace %s", after, self)
	}
}
