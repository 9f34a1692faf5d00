package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/rules"
	"github.com/weft-net/weft/internal/testutil/netnstest"
)

// guardPeers4 is the IPv4 peer set of a host's underlay guard.
func guardPeers4(ns *netnstest.NS) ([]string, error) {
	out, err := ns.Run("nft", "-j", "list", "set", "inet", rules.GuardTable, "peers4")
	if err != nil {
		return nil, err
	}
	var doc struct {
		Nftables []struct {
			Set *struct {
				Elem []string `json:"elem"`
			} `json:"set"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		return nil, fmt.Errorf("parse %s: %w", out, err)
	}
	for _, o := range doc.Nftables {
		if o.Set != nil {
			slices.Sort(o.Set.Elem)
			return o.Set.Elem, nil
		}
	}
	return nil, fmt.Errorf("no set in %s", out)
}

// guardDropped reads the packet count of the guard's drop counter in ns.
func guardDropped(t *testing.T, ns *netnstest.NS) int {
	t.Helper()
	out := ns.MustRun(t, "nft", "list", "counter", "inet", rules.GuardTable, rules.GuardCounter)
	_, after, ok := strings.Cut(out, "packets ")
	n, err := strconv.Atoi(strings.Fields(after + " x")[0])
	if !ok || err != nil {
		t.Fatalf("no packet count in the guard counter:\n%s", out)
	}
	return n
}

// Finding 5 of issue 11, end to end: a machine on the hosts' internal
// network that holds no lease builds its own vxlan device (VNI 1, port
// 8472), points it at host 1 with host 1's flannel.1 MAC and sends a
// datagram "from" host 2's subnet to host 1's container. weftd's guard
// drops it (the container sees nothing), counts it and logs it; the same
// traffic from host 2 itself still flows.
func TestUnderlayGuardVXLAN(t *testing.T) {
	l := newLab(t, "vxlan", 2)
	h1, h2 := l.Hosts[0], l.Hosts[1]
	waitFor(t, "host 2 in host 1's guard", time.Now(), 5*time.Second, 10*time.Second, func() error {
		got, err := guardPeers4(h1.NS)
		if err != nil {
			return err
		}
		if !slices.Equal(got, []string{h2.Eth0IP.String()}) {
			return fmt.Errorf("peers4 = %v, want [%s]", got, h2.Eth0IP)
		}
		return nil
	})

	// The stranger: on the internal bridge, an address no lease names.
	stranger := netnstest.New(t, "gst")
	port := netnstest.UniqueName("gs")
	if err := netnstest.VethPair(stranger, "eth0", l.Underlay, port); err != nil {
		t.Fatal(err)
	}
	l.Underlay.MustRun(t, "ip", "link", "set", port, "master", "br-int")
	t.Cleanup(func() { l.Underlay.Run("ip", "link", "del", port) })
	stranger.MustRun(t, "ip", "addr", "add", "10.64.3.9/24", "dev", "eth0")
	fl, err := h1.NS.Handle.LinkByName("flannel.1")
	if err != nil {
		t.Fatal(err)
	}
	spoofed := h2.Subnet.Addr().Next().Next().Next() // an address of host 2's containers
	gw1 := h1.Subnet.Masked().Addr()                 // host 1's flannel.1 address
	stranger.MustRun(t, "ip", "link", "add", "vx", "type", "vxlan", "id", "1", "dstport", "8472",
		"local", "10.64.3.9", "dev", "eth0", "nolearning")
	stranger.MustRun(t, "ip", "addr", "add", spoofed.String()+"/32", "dev", "vx")
	stranger.MustRun(t, "ip", "link", "set", "vx", "up")
	stranger.MustRun(t, "bridge", "fdb", "append", fl.Attrs().HardwareAddr.String(), "dev", "vx", "dst", h1.Eth0IP.String())
	stranger.MustRun(t, "ip", "neigh", "add", gw1.String(), "lladdr", fl.Attrs().HardwareAddr.String(), "dev", "vx", "nud", "permanent")
	stranger.MustRun(t, "ip", "route", "add", h1.Subnet.String(), "via", gw1.String(), "dev", "vx", "onlink")

	var ln *net.UDPConn
	if err := h1.ContainerNS.Do(func() (err error) {
		ln, err = net.ListenUDP("udp4", &net.UDPAddr{IP: h1.ContainerIP.AsSlice(), Port: 9999})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	received := func(within time.Duration) (string, netip.Addr) {
		ln.SetReadDeadline(time.Now().Add(within))
		buf := make([]byte, 100)
		n, from, err := ln.ReadFromUDPAddrPort(buf)
		if err != nil {
			return "", netip.Addr{}
		}
		return string(buf[:n]), from.Addr()
	}
	send := func(ns *netnstest.NS, from netip.Addr, msg string) {
		t.Helper()
		if err := ns.Do(func() error {
			c, err := net.DialUDP("udp4", &net.UDPAddr{IP: from.AsSlice()}, &net.UDPAddr{IP: h1.ContainerIP.AsSlice(), Port: 9999})
			if err != nil {
				return err
			}
			defer c.Close()
			for range 3 {
				if _, err := c.Write([]byte(msg)); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}

	// Host 2's first packets may have been dropped too, in the moment
	// between its join and host 1's guard learning it: count from here.
	before := guardDropped(t, h1.NS)
	send(stranger, spoofed, "injected")
	if msg, from := received(time.Second); msg != "" {
		t.Fatalf("host 1's container received %q from %s, sent through a vxlan device of 10.64.3.9, which holds no lease", msg, from)
	}
	if n := guardDropped(t, h1.NS) - before; n != 3 {
		t.Errorf("guard counter on host 1 grew by %d packets, want 3", n)
	}
	waitFor(t, "host 1's weftd logs the drop", time.Now(), 8*time.Second, 15*time.Second, func() error {
		b, err := os.ReadFile(h1.LogFile)
		if err != nil {
			return err
		}
		if !strings.Contains(string(b), "underlay guard dropped encapsulated packets") {
			return fmt.Errorf("not in %s yet", h1.LogFile)
		}
		return nil
	})

	// Host 2's container, through host 2's real dataplane: delivered.
	send(h2.ContainerNS, h2.ContainerIP, "from host 2")
	if msg, from := received(5 * time.Second); msg != "from host 2" || from != h2.ContainerIP {
		t.Fatalf("host 1's container received %q from %s, want %q from %s", msg, from, "from host 2", h2.ContainerIP)
	}
}
