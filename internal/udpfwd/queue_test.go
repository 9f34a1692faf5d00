package udpfwd

import (
	"net/netip"
	"testing"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/weft-net/weft/internal/testutil/netnstest"
)

// txQueueLen reads name's txqueuelen in ns.
func txQueueLen(t *testing.T, ns *netnstest.NS, name string) int {
	t.Helper()
	l, err := ns.Handle.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().TxQLen
}

// The engine raises its TUN's queue from the kernel's 500 to TUNQueueLen
// when it starts (so a 64-byte flood is not dropped at flannel0 while the
// engine waits for a CPU), and never lowers an operator's larger setting.
func TestEngineRaisesTUNQueue(t *testing.T) {
	netnstest.RequireRoot(t)
	ns := netnstest.New(t, "uq")
	const name = "wq0"
	var dev tun.Device
	if err := ns.Do(func() (err error) { dev, err = tun.CreateTUN(name, 1472); return err }); err != nil {
		t.Fatalf("create TUN %s: %v", name, err)
	}
	if got := txQueueLen(t, ns, name); got >= TUNQueueLen {
		t.Fatalf("new TUN already has txqueuelen %d; the test needs the kernel's default below %d", got, TUNQueueLen)
	}
	bind, err := NewBind(netip.MustParseAddr("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	eng, err := New(Config{TUN: dev, Bind: bind})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() })
	if err := ns.Do(func() error {
		if _, err := ns.Run("ip", "link", "set", "lo", "up"); err != nil {
			return err
		}
		return eng.Start()
	}); err != nil {
		t.Fatalf("start engine: %v", err)
	}
	if got := txQueueLen(t, ns, name); got != TUNQueueLen {
		t.Errorf("after Start: %s txqueuelen %d, want %d", name, got, TUNQueueLen)
	}

	ns.MustRun(t, "ip", "link", "set", name, "txqueuelen", "10000")
	if err := ns.Do(func() error { return RaiseQueueLen(dev, TUNQueueLen) }); err != nil {
		t.Fatal(err)
	}
	if got := txQueueLen(t, ns, name); got != 10000 {
		t.Errorf("an operator's txqueuelen 10000 became %d; must never be lowered", got)
	}
}
