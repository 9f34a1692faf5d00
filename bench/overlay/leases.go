package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/lease"
)

// Every fake VTEP MAC starts 0e:57 (locally administered, unicast); the
// kernel watch counts only FDB entries with this prefix.
const (
	fakeMACByte0 = 0x0e
	fakeMACByte1 = 0x57
)

// fake is remote host i: a distinct subnet, PublicIP and VTEP MAC.
type fake struct {
	subnet netip.Prefix
	public netip.Addr
	mac    net.HardwareAddr
}

// maxFakes keeps subnets inside 10.1.0.0–10.98.255.0 and PublicIPs inside
// 192.168.0.1–192.168.99.250, clear of the host's own lease (10.100/16)
// and the hosts' addresses (192.168.200.x): room for the 20,000-peer
// figure, and for the joins of the 10,000-peer one.
const maxFakes = 100 * 250

func fakeHost(i int) fake {
	if i < 0 || i >= maxFakes {
		panic(fmt.Sprintf("fake host %d: must be in 0..%d", i, maxFakes-1))
	}
	return fake{
		subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(1 + i/256), byte(i % 256), 0}), 24),
		public: netip.AddrFrom4([4]byte{192, 168, byte(i / 250), byte(1 + i%250)}),
		mac:    net.HardwareAddr{fakeMACByte0, fakeMACByte1, 0, byte(i >> 16), byte(i >> 8), byte(i)},
	}
}

func (f fake) key(prefix string) string {
	return prefix + "/subnets/" + lease.FormatKey(f.subnet, netip.Prefix{})
}

func (f fake) value(backend string) string {
	if backend == "vxlan" {
		return fmt.Sprintf(`{"PublicIP":%q,"PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":%q}}`, f.public, f.mac)
	}
	return fmt.Sprintf(`{"PublicIP":%q,"PublicIPv6":null,"BackendType":%q}`, f.public, backend)
}

// kernelKeys are the kwatch keys weftd must program for this peer.
func (f fake) kernelKeys(backend string) []string {
	k := []string{"r " + f.subnet.String()}
	if backend == "vxlan" {
		k = append(k, "n "+f.subnet.Addr().String(), "f "+f.mac.String())
	}
	return k
}

func kernelKeys(backend string, from, to int) []string {
	var out []string
	for i := from; i < to; i++ {
		out = append(out, fakeHost(i).kernelKeys(backend)...)
	}
	return out
}

// putFakes writes fakes [from, to) in one transaction, all on one new etcd
// lease (as the method says), and returns that lease.
func (c *cluster) putFakes(ctx context.Context, backend string, from, to int) (clientv3.LeaseID, error) {
	g, err := c.e.cli.Grant(ctx, 3600)
	if err != nil {
		return 0, fmt.Errorf("grant an etcd lease for the fake peers: %w", err)
	}
	return g.ID, c.putFakesOn(ctx, backend, from, to, g.ID)
}

// putFakesOn writes fakes [from, to) in one transaction on etcd lease id.
func (c *cluster) putFakesOn(ctx context.Context, backend string, from, to int, id clientv3.LeaseID) error {
	ops := make([]clientv3.Op, 0, to-from)
	for i := from; i < to; i++ {
		f := fakeHost(i)
		ops = append(ops, clientv3.OpPut(f.key(c.prefix), f.value(backend), clientv3.WithLease(id)))
	}
	if _, err := c.e.cli.Txn(ctx).Then(ops...).Commit(); err != nil {
		return fmt.Errorf("write fake peers %d..%d in one transaction: %w", from, to-1, err)
	}
	return nil
}

// deleteFakes deletes fakes [from, to) in one transaction.
func (c *cluster) deleteFakes(ctx context.Context, from, to int) error {
	ops := make([]clientv3.Op, 0, to-from)
	for i := from; i < to; i++ {
		ops = append(ops, clientv3.OpDelete(fakeHost(i).key(c.prefix)))
	}
	if _, err := c.e.cli.Txn(ctx).Then(ops...).Commit(); err != nil {
		return fmt.Errorf("delete fake peers %d..%d in one transaction: %w", from, to-1, err)
	}
	return nil
}
