package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/lab"
)

// udpState reports what is wrong with a host's flannel0, or nil: a TUN
// device holding <lease>/32, MTU underlay − 28, and a route for the whole
// Network through it.
func udpState(h *lab.Host) error { return tunDeviceState(h, "flannel0", 1472) }

// The udp backend with real weftd: flannel's wire format (no BackendData),
// every pair pings including a full-MTU packet with DF, a packet to a subnet
// nobody holds gets net-unreachable, a host joins and leaves.
func TestUDP(t *testing.T) {
	l := newLab(t, "udp", 3)
	ctx := context.Background()

	t.Run("topology", func(t *testing.T) {
		for _, h := range l.Hosts {
			if err := udpState(h); err != nil {
				t.Error(err)
			}
			resp, err := l.Etcd.Get(ctx, lab.LeaseKey(l.Config().Prefix, h.Subnet))
			if err != nil || len(resp.Kvs) != 1 {
				t.Fatalf("%s: lease: %v", h.Name, err)
			}
			// flannel's udp lease, and weft's identity after flannel's
			// fields (which flanneld ignores).
			want := fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":null,"BackendType":"udp","WeftNodeName":"%s"}`, h.Eth0IP, h.Name)
			if got := string(resp.Kvs[0].Value); got != want {
				t.Errorf("%s: lease value %s, want flannel's udp lease %s", h.Name, got, want)
			}
		}
		overlayMTUPings(ctx, t, l, 1472)
	})

	t.Run("unknown subnet is net-unreachable", func(t *testing.T) {
		out, _ := l.Hosts[0].ContainerNS.Run("ping", "-c", "1", "-W", "1", "172.30.250.2")
		if !strings.Contains(out, "Destination Net Unreachable") {
			t.Errorf("ping to a subnet nobody holds:\n%s\nwant Destination Net Unreachable", out)
		}
	})

	t.Run("host joins", func(t *testing.T) {
		// udp peers live in each engine's table, not in the kernel: "programmed"
		// is the new host's flannel0 plus every other engine forwarding to it.
		joinMeasured(t, l, func() error {
			n := len(l.Hosts) - 1
			if err := udpState(l.Hosts[n]); err != nil {
				return err
			}
			return pings(l, pairsWith(l, n), lab.PingOptions{Timeout: 100 * time.Millisecond})
		})
	})

	t.Run("host leaves", func(t *testing.T) {
		last := len(l.Hosts) - 1
		gone := l.Hosts[last]
		if err := l.StopWeftd(last); err != nil {
			t.Errorf("SIGTERM: %v", err)
		}
		start := time.Now()
		if _, err := l.Etcd.Delete(ctx, lab.LeaseKey(l.Config().Prefix, gone.Subnet)); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "udp lease deleted → its subnet net-unreachable from every other host", start, time.Second, 15*time.Second, func() error {
			for _, h := range l.Hosts[:last] {
				out, _ := h.ContainerNS.Run("ping", "-c", "1", "-W", "1", gone.ContainerIP.String())
				if !strings.Contains(out, "Destination Net Unreachable") {
					return fmt.Errorf("%s: ping to the gone host's container: %s", h.Name, out)
				}
			}
			return nil
		})
	})
}
