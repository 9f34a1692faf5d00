package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
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
			// WeftUDPKernelDecap last: the in-kernel path attached (kernel ≥ 6.6).
			want := fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":null,"BackendType":"udp","WeftNodeName":"%s","WeftUDPKernelDecap":true}`, h.Eth0IP, h.Name)
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

// The udp backend's in-kernel path serves a peer only when its lease says
// it decapsulates in the kernel (WeftUDPKernelDecap): h3 runs with
// WEFT_UDP_BPF=off, so h1 and h2 send to it through their engines (a TSO
// super-packet would reach h3's engine unfinished and be dropped: TCP would
// not even connect), while h1 and h2 reach each other in the kernel only
// (flannel0's TX counter, packets handed to an engine, does not move).
func TestUDPKernelDecapMixed(t *testing.T) {
	wrapper := filepath.Join(t.TempDir(), "weftd")
	script := "#!/bin/sh\ncase \"$FLANNELD_NODE_NAME\" in *-h3) WEFT_UDP_BPF=off; export WEFT_UDP_BPF;; esac\nexec " + filepath.Join(binDir, "weftd") + " \"$@\"\n"
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	l := newLabWith(t, lab.Config{Hosts: 3, Backend: "udp", NetworkConfig: networkConfig("udp"), WeftdPath: wrapper})
	ctx := context.Background()
	for i, h := range l.Hosts {
		resp, err := l.Etcd.Get(ctx, lab.LeaseKey(l.Config().Prefix, h.Subnet))
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("%s: lease: %v", h.Name, err)
		}
		want := fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":null,"BackendType":"udp","WeftNodeName":"%s"`, h.Eth0IP, h.Name)
		if i < 2 {
			want += `,"WeftUDPKernelDecap":true`
		}
		if got := string(resp.Kvs[0].Value); got != want+"}" {
			t.Errorf("%s: lease value %s, want %s}", h.Name, got, want)
		}
	}
	if err := pings(l, allPairs(l), lab.PingOptions{Timeout: time.Second}); err != nil {
		t.Fatalf("pings between all hosts: %v", err)
	}
	for _, p := range []pair{{0, 2}, {2, 0}, {0, 1}, {1, 0}} {
		if err := tcpTransfer(l.Hosts[p.from], l.Hosts[p.to], 4<<20); err != nil {
			t.Errorf("TCP %s -> %s: %v", l.Hosts[p.from].Name, l.Hosts[p.to].Name, err)
		}
	}

	tx := func(h *lab.Host) int {
		out, err := h.NS.Run("cat", "/sys/class/net/flannel0/statistics/tx_packets")
		n, perr := strconv.Atoi(strings.TrimSpace(out))
		if err != nil || perr != nil {
			t.Fatalf("%s: flannel0 tx_packets: %q, %v", h.Name, out, err)
		}
		return n
	}
	before0, before1 := tx(l.Hosts[0]), tx(l.Hosts[1])
	if err := pings(l, []pair{{0, 1}, {1, 0}}, lab.PingOptions{Timeout: time.Second}); err != nil {
		t.Fatal(err)
	}
	if err := tcpTransfer(l.Hosts[0], l.Hosts[1], 1<<20); err != nil {
		t.Fatal(err)
	}
	if a, b := tx(l.Hosts[0]), tx(l.Hosts[1]); a != before0 || b != before1 {
		t.Errorf("h1 <-> h2 (both in the kernel): flannel0 TX %d -> %d and %d -> %d, want unchanged", before0, a, before1, b)
	}
	before0 = tx(l.Hosts[0])
	if err := pings(l, []pair{{0, 2}}, lab.PingOptions{Timeout: time.Second}); err != nil {
		t.Fatal(err)
	}
	if a := tx(l.Hosts[0]); a == before0 {
		t.Errorf("h1 -> h3 (engine alone on h3): flannel0 TX unchanged at %d, want h1's engine to send", a)
	}
}

// tcpTransfer sends n bytes over TCP from a container to another and checks
// they all arrive, within 20 s.
func tcpTransfer(from, to *lab.Host, n int) error {
	var ln net.Listener
	if err := to.ContainerNS.Do(func() (err error) {
		ln, err = net.Listen("tcp4", net.JoinHostPort(to.ContainerIP.String(), "0"))
		return err
	}); err != nil {
		return fmt.Errorf("listen in %s: %w", to.Name, err)
	}
	defer ln.Close()
	got := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		r, err := io.Copy(io.Discard, c)
		if err == nil && r != int64(n) {
			err = fmt.Errorf("received %d bytes of %d", r, n)
		}
		got <- err
	}()
	var c net.Conn
	if err := from.ContainerNS.Do(func() (err error) {
		d := net.Dialer{Timeout: 5 * time.Second}
		c, err = d.Dial("tcp4", ln.Addr().String())
		return err
	}); err != nil {
		return fmt.Errorf("connect from %s: %w", from.Name, err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	_, err := c.Write(make([]byte, n))
	if cerr := c.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("send: %w", err)
	}
	return <-got
}

// TestUDPUnderlayRecreated: the udp backend's in-kernel path follows the
// underlay (issue 16's rebuild recreates the backend): after host 2's NIC is
// deleted and recreated (a new ifindex), and after its address changes
// (the ingress program accepts only the local address), pings between the
// hosts are encapsulated and decapsulated in the kernel on host 2: its
// flannel0 TX (packets to the engine) does not move and its
// weft_udp_kernel_decapsulated_packets_total grows.
func TestUDPUnderlayRecreated(t *testing.T) {
	l := newLab(t, "udp", 2, "-healthz-port="+interopHealthPort)
	h := l.Hosts[1]
	tx := func() int {
		out, err := h.NS.Run("cat", "/sys/class/net/flannel0/statistics/tx_packets")
		n, perr := strconv.Atoi(strings.TrimSpace(out))
		if err != nil || perr != nil {
			t.Fatalf("%s: flannel0 tx_packets: %q, %v", h.Name, out, err)
		}
		return n
	}
	inKernel := func(what string) {
		t.Helper()
		d0, err := weftMetric(h, "weft_udp_kernel_decapsulated_packets_total")
		if err != nil {
			t.Fatal(err)
		}
		tx0 := tx()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, p := range []pair{{0, 1}, {1, 0}} {
			if r := l.Ping(ctx, p.from, p.to, lab.PingOptions{Count: 5, Interval: 20 * time.Millisecond}); r.Lost() != 0 {
				t.Fatalf("%s: pings %d -> %d: %v", what, p.from, p.to, r.Err)
			}
		}
		d1, err := weftMetric(h, "weft_udp_kernel_decapsulated_packets_total")
		if err != nil {
			t.Fatal(err)
		}
		if tx1 := tx(); tx1 != tx0 || d1-d0 < 10 {
			t.Errorf("%s: host 2's flannel0 TX %d -> %d (want unchanged), decapsulated in the kernel %.0f -> %.0f (want +10)", what, tx0, tx1, d0, d1)
		}
	}
	inKernel("before")

	recreateEth0(t, l, 1, h.Eth0IP)
	back := time.Now()
	waitFor(t, "NIC recreated: pings both ways", back, 3*time.Second, 20*time.Second, func() error {
		return pings(l, []pair{{0, 1}, {1, 0}}, lab.PingOptions{Timeout: 100 * time.Millisecond})
	})
	inKernel("NIC recreated")

	newAddr := netip.MustParseAddr("10.64.3.112")
	setEth0Addr(t, h, h.Eth0IP, newAddr)
	start := time.Now()
	waitFor(t, "address changed: lease PublicIP follows, pings both ways", start, 3*time.Second, 20*time.Second, func() error {
		if v, ok := readLease(t, l, h.Subnet); !ok || v.PublicIP != newAddr.String() {
			return fmt.Errorf("lease %+v", v)
		}
		return pings(l, []pair{{0, 1}, {1, 0}}, lab.PingOptions{Timeout: 100 * time.Millisecond})
	})
	resp, err := l.Etcd.Get(context.Background(), lab.LeaseKey(l.Config().Prefix, h.Subnet))
	if err != nil || len(resp.Kvs) != 1 || !strings.HasSuffix(string(resp.Kvs[0].Value), `,"WeftUDPKernelDecap":true}`) {
		t.Errorf("lease after the rebuilds: %v %v, want WeftUDPKernelDecap true", resp, err)
	}
	inKernel("address changed")
}

// TestFlanneldSwapUDPKernelDecap: a weftd host swapped for flanneld (the
// migration's rollback) must not keep advertising WeftUDPKernelDecap, or
// the weftd peers would send its user-space receiver what only the kernel
// path can receive. flanneld rewrites the lease value with its own fields
// when it reuses the lease (encoding/json drops the fields it does not know).
func TestFlanneldSwapUDPKernelDecap(t *testing.T) {
	m := newMixedLab(t, "udp", "weftd", "weftd")
	l := m.Lab
	h := l.Hosts[0]
	value := func() string {
		resp, err := l.Etcd.Get(context.Background(), lab.LeaseKey(l.Config().Prefix, h.Subnet))
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("%s: lease: %v", h.Name, err)
		}
		return string(resp.Kvs[0].Value)
	}
	if v := value(); !strings.Contains(v, `"WeftUDPKernelDecap":true`) {
		t.Fatalf("weftd's lease %s: want WeftUDPKernelDecap", v)
	}
	if err := l.StopWeftd(0); err != nil {
		t.Fatal(err)
	}
	m.setDaemon(t, 0, "flanneld")
	if err := l.StartWeftd(0); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	// Only the lease is checked: traffic after a udp swap weftd → flanneld
	// does not come back even with WEFT_UDP_BPF=off (pings lost for 15 s;
	// a separate problem, the live swap test covers vxlan and host-gw only).
	waitFor(t, "flanneld: lease without WeftUDPKernelDecap", start, 5*time.Second, 15*time.Second, func() error {
		if v := value(); strings.Contains(v, "WeftUDPKernelDecap") || !strings.Contains(v, `"PublicIP":"`+h.Eth0IP.String()+`"`) {
			return fmt.Errorf("lease %s under flanneld", v)
		}
		return nil
	})
}
