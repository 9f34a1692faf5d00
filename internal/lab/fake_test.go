package lab

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// The lab's plumbing (namespaces, bridges, the etcd proxy, containers,
// process handling, state) is tested with a stand-in for weftd: this test
// binary, run with fakeWeftdEnv set. It speaks to etcd through the lab's
// proxy, takes a lease in flannel's format, writes subnet.env and keeps a
// host-gw route to every peer — enough for containers to ping. weftd itself
// is tested end to end in e2e/.
const (
	fakeWeftdEnv = "WEFT_LAB_FAKE_WEFTD"
	fakeHangEnv  = "WEFT_LAB_FAKE_HANG"
)

func TestMain(m *testing.M) {
	if os.Getenv(fakeWeftdEnv) == "1" {
		if err := fakeWeftd(os.Args[1:]); err != nil {
			fmt.Fprintln(os.Stderr, "fake weftd:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func fakeWeftd(args []string) error {
	fs := flag.NewFlagSet("fake-weftd", flag.ContinueOnError)
	endpoints := fs.String("etcd-endpoints", "", "")
	prefix := fs.String("etcd-prefix", "", "")
	iface := fs.String("iface", "", "")
	subnetFile := fs.String("subnet-file", "", "")
	fs.Int("healthz-port", 0, "")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if os.Getenv(fakeHangEnv) == "1" {
		// A weftd that never gets its lease (etcd unreachable, no config).
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
		defer stop()
		<-ctx.Done()
		return nil
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	cli, err := clientv3.New(clientv3.Config{Endpoints: strings.Split(*endpoints, ","), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer cli.Close()
	link, err := netlink.LinkByName(*iface)
	if err != nil {
		return err
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil || len(addrs) == 0 {
		return fmt.Errorf("no address on %s: %v", *iface, err)
	}
	me, _ := netip.AddrFromSlice(addrs[0].IP.To4())
	val, _ := json.Marshal(map[string]any{"PublicIP": me.String(), "BackendType": "host-gw"})

	var order []int
	if prev, err := ReadSubnetEnv(*subnetFile); err == nil {
		order = append(order, int(prev.Subnet.Addr().As4()[2]))
	}
	for k := 1; k < 255; k++ {
		order = append(order, k)
	}
	var own netip.Prefix
	for _, k := range order {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 30, byte(k), 0}), 24)
		key := LeaseKey(*prefix, p)
		resp, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, string(val))).Else(clientv3.OpGet(key)).Commit()
		if err != nil {
			return err
		}
		if resp.Succeeded {
			own = p
			break
		}
		var held struct{ PublicIP string }
		json.Unmarshal(resp.Responses[0].GetResponseRange().Kvs[0].Value, &held)
		if held.PublicIP == me.String() {
			own = p
			break
		}
	}
	env := fmt.Sprintf("FLANNEL_NETWORK=172.30.0.0/16\nFLANNEL_SUBNET=%s/24\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=false\n", own.Addr().Next())
	os.MkdirAll(filepath.Dir(*subnetFile), 0o755)
	if err := os.WriteFile(*subnetFile+".tmp", []byte(env), 0o644); err != nil {
		return err
	}
	if err := os.Rename(*subnetFile+".tmp", *subnetFile); err != nil {
		return err
	}
	for {
		resp, err := cli.Get(ctx, *prefix+"/subnets/", clientv3.WithPrefix())
		if err == nil {
			for _, kv := range resp.Kvs {
				var v struct{ PublicIP string }
				if json.Unmarshal(kv.Value, &v) != nil || v.PublicIP == me.String() {
					continue
				}
				var a, b, c, d, bits int
				if _, err := fmt.Sscanf(filepath.Base(string(kv.Key)), "%d.%d.%d.%d-%d", &a, &b, &c, &d, &bits); err != nil {
					continue
				}
				dst := &net.IPNet{IP: net.IPv4(byte(a), byte(b), byte(c), byte(d)).To4(), Mask: net.CIDRMask(bits, 32)}
				netlink.RouteReplace(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: dst, Gw: net.ParseIP(v.PublicIP)})
			}
		}
		select {
		case <-ctx.Done():
			if errors.Is(context.Cause(ctx), context.Canceled) {
				return nil
			}
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
