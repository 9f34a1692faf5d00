// Package e2e tests weft end to end: real weftd processes, built from this
// tree, in the lab's network namespaces (the ops note's topology), a real
// embedded etcd, the real kernel. Each test builds its own lab with a unique
// name and removes it. Measured figures are logged; bounds are asserted.
package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/lab"
)

var binDir string

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "e2e: these tests run weftd in network namespaces and must run as root (sudo go test ./e2e/)")
		os.Exit(1)
	}
	dir, err := os.MkdirTemp("", "weft-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	cmd := exec.Command("go", "build", "-o", dir+"/", "./cmd/weftd", "./cmd/weftctl")
	cmd.Dir = ".."
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: go build weftd and weftctl: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var seq atomic.Int64

func uniqueName() string { return fmt.Sprintf("e%d-%d", os.Getpid()%100000, seq.Add(1)) }

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// networkConfig is the seed's config with the leasable range ending at
// 172.30.239.0: the tests write their own peer and garbage leases at
// 172.30.240.0 and above, which must never be a lab host's subnet.
func networkConfig(backend string) string {
	return fmt.Sprintf(`{"Network":"172.30.0.0/16","SubnetLen":24,"SubnetMax":"172.30.239.0","Backend":{"Type":%q}}`, backend)
}

// newLab brings up a lab with real weftd; it is removed when the test ends.
func newLab(t *testing.T, backend string, hosts int, weftdArgs ...string) *lab.Lab {
	t.Helper()
	return newLabWith(t, lab.Config{Hosts: hosts, Backend: backend, NetworkConfig: networkConfig(backend), WeftdArgs: weftdArgs})
}

// newLabWith is newLab for any lab config; the name, weftd (unless the
// config names a daemon: the flanneld interop tests' shim) and log are the
// test's.
func newLabWith(t *testing.T, cfg lab.Config) *lab.Lab {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg.Name = uniqueName()
	if cfg.WeftdPath == "" {
		cfg.WeftdPath = filepath.Join(binDir, "weftd")
	}
	cfg.Log = slog.New(slog.NewTextHandler(testWriter{t}, nil))
	l, err := lab.Up(ctx, cfg)
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, h := range l.Hosts {
				if b, err := os.ReadFile(h.LogFile); err == nil {
					t.Logf("%s weftd log:\n%s", h.Name, b)
				}
			}
		}
		l.Close()
	})
	return l
}

// waitFor polls cond until it holds, failing at limit; it logs the time
// taken since start and reports an error when it exceeds bound.
func waitFor(t *testing.T, what string, start time.Time, bound, limit time.Duration, cond func() error) time.Duration {
	t.Helper()
	var err error
	for {
		if err = cond(); err == nil {
			break
		}
		if time.Since(start) > limit {
			t.Fatalf("%s: not within %s: %v", what, limit, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	took := time.Since(start)
	t.Logf("MEASURED %s: %s (bound %s)", what, took.Round(100*time.Microsecond), bound)
	if took > bound {
		t.Errorf("%s took %s, bound %s", what, took, bound)
	}
	return took
}

type pair struct{ from, to int }

// pings pings every pair concurrently with a short timeout.
func pings(l *lab.Lab, pairs []pair, o lab.PingOptions) error {
	if o.Timeout == 0 {
		o.Timeout = 200 * time.Millisecond
	}
	errs := make([]error, len(pairs))
	var wg sync.WaitGroup
	for k, p := range pairs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[k] = l.Ping(context.Background(), p.from, p.to, o).Err
		}()
	}
	wg.Wait()
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

// pairsWith is every pair between host i and the other hosts, both ways.
func pairsWith(l *lab.Lab, i int) []pair {
	var ps []pair
	for j := range l.Hosts {
		if j != i {
			ps = append(ps, pair{i, j}, pair{j, i})
		}
	}
	return ps
}

type leaseValue struct {
	PublicIP    string
	BackendType string
	BackendData struct {
		VNI     int
		VtepMAC string
	}
}

// leaseKV is a lease key's value and revision in etcd.
type leaseKV struct {
	value       string
	modRevision int64
}

func readLeaseKV(t *testing.T, l *lab.Lab, subnet netip.Prefix) (leaseKV, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	resp, err := l.Etcd.Get(ctx, lab.LeaseKey(l.Config().Prefix, subnet))
	if err != nil {
		t.Fatalf("read lease %s: %v", subnet, err)
	}
	if len(resp.Kvs) == 0 {
		return leaseKV{}, false
	}
	return leaseKV{string(resp.Kvs[0].Value), resp.Kvs[0].ModRevision}, true
}

func readLease(t *testing.T, l *lab.Lab, subnet netip.Prefix) (leaseValue, bool) {
	t.Helper()
	var v leaseValue
	kv, ok := readLeaseKV(t, l, subnet)
	if !ok {
		return v, false
	}
	if err := json.Unmarshal([]byte(kv.value), &v); err != nil {
		t.Fatalf("lease %s: %q: %v", subnet, kv.value, err)
	}
	return v, true
}

// hostHTTP GETs path from a server on port of host h's own loopback (the
// socket is created inside the host namespace): weftd's or flanneld's
// health server.
func hostHTTP(h *lab.Host, port, path string) (code int, body string, err error) {
	c := http.Client{
		Timeout: 2 * time.Second,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, network, addr string) (conn net.Conn, err error) {
				err = h.NS.Do(func() (err error) {
					conn, err = (&net.Dialer{}).DialContext(ctx, network, addr)
					return err
				})
				return conn, err
			},
		},
	}
	resp, err := c.Get("http://127.0.0.1:" + port + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// peerState is what host h's kernel holds for one peer.
type peerState struct{ route, neigh, fdb bool }

// vxlanPeerState inspects flannel.1's route, neighbour and FDB entry for
// a peer with the given subnet, VTEP MAC and public IP.
func vxlanPeerState(h *lab.Host, subnet netip.Prefix, mac string, publicIP netip.Addr) (peerState, error) {
	var ps peerState
	nl := h.NS.Handle
	dev, err := nl.LinkByName("flannel.1")
	if err != nil {
		return ps, fmt.Errorf("%s: flannel.1: %w", h.Name, err)
	}
	idx := dev.Attrs().Index
	gw := subnet.Masked().Addr()
	routes, err := nl.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: ipNet(subnet)}, netlink.RT_FILTER_DST)
	if err != nil {
		return ps, fmt.Errorf("%s: list routes: %w", h.Name, err)
	}
	for _, r := range routes {
		if r.LinkIndex == idx && r.Gw.Equal(gw.AsSlice()) && r.Flags&int(netlink.FLAG_ONLINK) != 0 {
			ps.route = true
		}
	}
	neighs, err := nl.NeighList(idx, netlink.FAMILY_V4)
	if err != nil {
		return ps, fmt.Errorf("%s: list neighbours: %w", h.Name, err)
	}
	for _, n := range neighs {
		if n.IP.Equal(gw.AsSlice()) && n.HardwareAddr.String() == mac && n.State&netlink.NUD_PERMANENT != 0 {
			ps.neigh = true
		}
	}
	fdbs, err := nl.NeighList(idx, unix.AF_BRIDGE)
	if err != nil {
		return ps, fmt.Errorf("%s: list fdb: %w", h.Name, err)
	}
	for _, n := range fdbs {
		if n.HardwareAddr.String() == mac && n.IP.Equal(publicIP.AsSlice()) {
			ps.fdb = true
		}
	}
	return ps, nil
}

// hostgwRoute reports whether h routes subnet via gw on eth0.
func hostgwRoute(h *lab.Host, subnet netip.Prefix, gw netip.Addr) (bool, error) {
	eth0, err := h.NS.Handle.LinkByName("eth0")
	if err != nil {
		return false, err
	}
	routes, err := h.NS.Handle.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: ipNet(subnet)}, netlink.RT_FILTER_DST)
	if err != nil {
		return false, err
	}
	for _, r := range routes {
		if r.LinkIndex == eth0.Attrs().Index && r.Gw.Equal(gw.AsSlice()) {
			return true, nil
		}
	}
	return false, nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	p = p.Masked()
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// peerInfo is what other hosts must program for host i.
type peerInfo struct {
	subnet   netip.Prefix
	mac      string
	publicIP netip.Addr
}

func peerOf(t *testing.T, l *lab.Lab, i int) peerInfo {
	t.Helper()
	h := l.Hosts[i]
	v, ok := readLease(t, l, h.Subnet)
	if !ok {
		t.Fatalf("no lease for %s (%s)", h.Name, h.Subnet)
	}
	return peerInfo{subnet: h.Subnet, mac: v.BackendData.VtepMAC, publicIP: h.Eth0IP}
}

// allVXLANPeersProgrammed checks every host holds route, neighbour and FDB
// entry for every other host.
func allVXLANPeersProgrammed(t *testing.T, l *lab.Lab) error {
	t.Helper()
	peers := make([]peerInfo, len(l.Hosts))
	for i := range l.Hosts {
		peers[i] = peerOf(t, l, i)
	}
	for i, h := range l.Hosts {
		for j, p := range peers {
			if i == j {
				continue
			}
			ps, err := vxlanPeerState(h, p.subnet, p.mac, p.publicIP)
			if err != nil {
				return err
			}
			if ps != (peerState{true, true, true}) {
				return fmt.Errorf("%s for peer %s: route/neigh/fdb = %v/%v/%v", h.Name, l.Hosts[j].Name, ps.route, ps.neigh, ps.fdb)
			}
		}
	}
	return nil
}

func runCmd(ctx context.Context, name string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}

// overlayMTUPings checks that every host's subnet.env announces the overlay
// MTU mtu and that every container pair pings, also with a packet of
// exactly that MTU and DF set (mtu - 28 bytes of ICMP payload).
func overlayMTUPings(ctx context.Context, t *testing.T, l *lab.Lab, mtu int) {
	t.Helper()
	for _, h := range l.Hosts {
		if b, _ := os.ReadFile(h.SubnetFile); !strings.Contains(string(b), fmt.Sprintf("FLANNEL_MTU=%d\n", mtu)) {
			t.Errorf("%s: subnet.env\n%s\nwant FLANNEL_MTU=%d", h.Name, b, mtu)
		}
	}
	if err := lab.MatrixErr(l.PingMatrix(ctx, lab.PingOptions{})); err != nil {
		t.Error(err)
	}
	if err := lab.MatrixErr(l.PingMatrix(ctx, lab.PingOptions{Size: mtu - 28, DF: true})); err != nil {
		t.Errorf("full-MTU ping with DF: %v", err)
	}
}

// tunDeviceState reports what is wrong with the userspace backend's TUN
// device name on host h (udp's flannel0, wireguard's flannel-wg), or nil:
// a TUN of MTU mtu holding only <lease>/32, with a route for the lab's
// Network (172.30.0.0/16) through it.
func tunDeviceState(h *lab.Host, name string, mtu int) error {
	l, err := h.NS.Handle.LinkByName(name)
	if err != nil {
		return fmt.Errorf("%s: %s: %v", h.Name, name, err)
	}
	if l.Type() != "tuntap" || l.Attrs().MTU != mtu {
		return fmt.Errorf("%s: %s is a %s with MTU %d, want a TUN with %d", h.Name, name, l.Type(), l.Attrs().MTU, mtu)
	}
	addrs, err := h.NS.Handle.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return err
	}
	if want := netip.PrefixFrom(h.Subnet.Addr(), 32).String(); len(addrs) != 1 || addrs[0].IPNet.String() != want {
		return fmt.Errorf("%s: %s addresses %v, want only %s", h.Name, name, addrs, want)
	}
	routes, err := h.NS.Handle.RouteList(l, netlink.FAMILY_V4)
	if err != nil {
		return err
	}
	for _, r := range routes {
		if r.Dst != nil && r.Dst.String() == "172.30.0.0/16" {
			return nil
		}
	}
	return fmt.Errorf("%s: no route for 172.30.0.0/16 via %s: %v", h.Name, name, routes)
}
