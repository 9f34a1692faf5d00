package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/lab"
	"github.com/weft-net/weft/internal/rtnl"
	"github.com/weft-net/weft/internal/wgengine"
)

// wgLease is the part of a wireguard lease these tests read.
type wgLease struct {
	PublicIP    string
	BackendType string
	BackendData struct {
		PublicKey string
		Port      int
	}
}

func readWGLease(t *testing.T, l *lab.Lab, subnet netip.Prefix) wgLease {
	t.Helper()
	resp, err := l.Etcd.Get(context.Background(), lab.LeaseKey(l.Config().Prefix, subnet))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("lease %s: %v (%d keys)", subnet, err, len(resp.Kvs))
	}
	var v wgLease
	if err := json.Unmarshal(resp.Kvs[0].Value, &v); err != nil {
		t.Fatalf("lease %s: %s: %v", subnet, resp.Kvs[0].Value, err)
	}
	return v
}

// hostDir is the lab host's directory: its key file and UAPI socket.
func hostDir(h *lab.Host) string { return filepath.Dir(h.SubnetFile) }

// wgState reports what is wrong with a host's flannel-wg, or nil: a TUN
// holding <lease>/32, MTU underlay − 80 (flannel's), with the Network
// route through it.
func wgState(h *lab.Host) error { return tunDeviceState(h, "flannel-wg", 1420) }

// wgIn runs wg in host h's namespace with h's UAPI directory mounted where
// wg looks (/var/run/wireguard → /run/wireguard): `ip netns exec` gives the
// command a mount namespace of its own, so the mount is private to it.
func wgIn(h *lab.Host, args ...string) (string, error) {
	return h.NS.Run("sh", "-c", "mount --bind "+shQuote(hostDir(h))+" /run && exec wg "+strings.Join(args, " "))
}

func needWG(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("wg"); err != nil {
		t.Skip("wg (wireguard-tools) is not installed: run scripts/install-deps.sh")
	}
}

func allPing(l *lab.Lab) error {
	var all []pair
	for i := range l.Hosts {
		for j := range l.Hosts {
			if i != j {
				all = append(all, pair{i, j})
			}
		}
	}
	return pings(l, all, lab.PingOptions{Timeout: 300 * time.Millisecond})
}

// TestWireGuard: three weft hosts with the wireguard backend on real etcd:
// flannel's device, lease and key file; every pair pings (full MTU with DF
// too); the underlay carries only UDP to port 51820, no inner ICMP or
// payload in clear; `wg show` reads the UAPI socket; a restart keeps key and
// subnet; a rotated key (lease rewritten) heals; a garbage key in one lease
// harms no other peer; a host joins and leaves.
func TestWireGuard(t *testing.T) {
	l := newLab(t, "wireguard", 3)
	ctx := context.Background()

	t.Run("topology", func(t *testing.T) {
		for _, h := range l.Hosts {
			if err := wgState(h); err != nil {
				t.Error(err)
			}
			v := readWGLease(t, l, h.Subnet)
			key, err := wgengine.LoadOrCreateKey(filepath.Join(hostDir(h), "wgkey"), nil)
			if err != nil {
				t.Fatal(err)
			}
			if v.BackendType != "wireguard" || v.BackendData.PublicKey != key.PublicKey().String() || v.BackendData.Port != 51820 {
				t.Errorf("%s: lease %+v, want wireguard with the key file's public key %s and Port 51820", h.Name, v, key.PublicKey())
			}
			if st, err := os.Stat(filepath.Join(hostDir(h), "wgkey")); err != nil || st.Mode().Perm() != 0o600 {
				t.Errorf("%s: key file: %v %v, want mode 0600", h.Name, st.Mode(), err)
			}
		}
		overlayMTUPings(ctx, t, l, 1420)
	})

	t.Run("underlay carries only WireGuard", func(t *testing.T) {
		if _, err := exec.LookPath("tcpdump"); err != nil {
			t.Skip("tcpdump is not installed: run scripts/install-deps.sh")
		}
		h0, h1 := l.Hosts[0], l.Hosts[1]
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		cap := exec.CommandContext(cctx, "ip", "netns", "exec", h0.NS.Name, "tcpdump", "-i", "eth0", "-nn", "-l", "-x", "-c", "12", "ip and host "+h1.Eth0IP.String())
		var out strings.Builder
		cap.Stdout, cap.Stderr = &out, &out
		if err := cap.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond) // tcpdump attaches
		// Everything between the two hosts on the underlay (the underlay's
		// own chatter — the bridge's IGMP reports — is not theirs).
		// A TCP connection attempt and pings with a marker payload, both ways.
		h0.ContainerNS.Run("ping", "-c", "3", "-i", "0.2", "-p", "c0ffeec0ffee", h1.ContainerIP.String())
		h1.ContainerNS.Run("ping", "-c", "3", "-i", "0.2", "-p", "c0ffeec0ffee", h0.ContainerIP.String())
		cap.Wait()
		text := out.String()
		var pkts int
		for _, line := range strings.Split(text, "\n") {
			if !strings.Contains(line, " IP ") {
				continue
			}
			pkts++
			if !strings.Contains(line, "UDP") || !strings.Contains(line, ".51820") {
				t.Errorf("underlay packet that is not WireGuard UDP to port 51820: %s", line)
			}
		}
		if pkts == 0 {
			t.Fatalf("tcpdump on %s eth0 saw nothing:\n%s", h0.Name, text)
		}
		if strings.Contains(text, "ICMP") || strings.Contains(strings.ReplaceAll(text, " ", ""), "c0ffeec0ffee") {
			t.Errorf("inner ICMP or its payload in clear on the underlay:\n%s", text)
		}
		t.Logf("MEASURED %d underlay packets, all UDP to 51820, none in clear", pkts)
	})

	t.Run("wg show", func(t *testing.T) {
		needWG(t)
		out, err := wgIn(l.Hosts[0], "show", "flannel-wg")
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range l.Hosts[1:] {
			v := readWGLease(t, l, h.Subnet)
			for _, want := range []string{"peer: " + v.BackendData.PublicKey, "allowed ips: " + h.Subnet.String(), "endpoint: " + h.Eth0IP.String() + ":51820"} {
				if !strings.Contains(out, want) {
					t.Errorf("wg show flannel-wg on %s: no %q in\n%s", l.Hosts[0].Name, want, out)
				}
			}
		}
		if !strings.Contains(out, "listening port: 51820") {
			t.Errorf("wg show: no listening port 51820:\n%s", out)
		}
	})

	t.Run("garbage key harms no other peer", func(t *testing.T) {
		bad := netip.MustParsePrefix("172.30.240.0/24")
		key := lab.LeaseKey(l.Config().Prefix, bad)
		val := `{"PublicIP":"10.64.3.99","BackendType":"wireguard","BackendData":{"PublicKey":"not-a-key","Port":51820}}`
		if _, err := l.Etcd.Put(ctx, key, val); err != nil {
			t.Fatal(err)
		}
		defer l.Etcd.Delete(ctx, key)
		waitFor(t, "garbage-key lease logged as skipped", time.Now(), 5*time.Second, 10*time.Second, func() error {
			b, _ := os.ReadFile(l.Hosts[0].LogFile)
			if !strings.Contains(string(b), "172.30.240.0/24") || !strings.Contains(string(b), "not-a-key") {
				return fmt.Errorf("no skip line for %s in %s", bad, l.Hosts[0].LogFile)
			}
			return nil
		})
		if err := allPing(l); err != nil {
			t.Error(err)
		}
	})

	t.Run("restart keeps key and subnet", func(t *testing.T) {
		h := l.Hosts[1]
		before := readWGLease(t, l, h.Subnet)
		if err := l.StopWeftd(1); err != nil {
			t.Fatal(err)
		}
		since := time.Now()
		if err := l.StartWeftd(1); err != nil {
			t.Fatal(err)
		}
		env, err := l.WaitSubnetFile(ctx, 1, since)
		if err != nil {
			t.Fatal(err)
		}
		if env.Subnet.Masked() != h.Subnet {
			t.Errorf("subnet after restart %s, want %s", env.Subnet, h.Subnet)
		}
		if after := readWGLease(t, l, h.Subnet); after.BackendData.PublicKey != before.BackendData.PublicKey {
			t.Errorf("public key after restart %s, want %s", after.BackendData.PublicKey, before.BackendData.PublicKey)
		}
		waitFor(t, "every pair pings after a restart", since, wgHandshakeBound, 15*time.Second, func() error { return allPing(l) })
	})

	t.Run("rotated key heals", func(t *testing.T) {
		h := l.Hosts[2]
		before := readWGLease(t, l, h.Subnet)
		if err := l.StopWeftd(2); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(filepath.Join(hostDir(h), "wgkey")); err != nil {
			t.Fatal(err)
		}
		since := time.Now()
		if err := l.StartWeftd(2); err != nil {
			t.Fatal(err)
		}
		if _, err := l.WaitSubnetFile(ctx, 2, since); err != nil {
			t.Fatal(err)
		}
		if after := readWGLease(t, l, h.Subnet); after.BackendData.PublicKey == before.BackendData.PublicKey {
			t.Fatalf("lease still has the old key %s", before.BackendData.PublicKey)
		}
		waitFor(t, "every pair pings after a key rotation", since, wgHandshakeBound, 15*time.Second, func() error { return allPing(l) })
	})

	t.Run("host joins and leaves", func(t *testing.T) {
		start := time.Now()
		if _, err := l.AddHost(ctx); err != nil {
			t.Fatal(err)
		}
		n := len(l.Hosts) - 1
		waitFor(t, "a joining host pings every host both ways", start, wgHandshakeBound, 15*time.Second, func() error {
			if err := wgState(l.Hosts[n]); err != nil {
				return err
			}
			return pings(l, pairsWith(l, n), lab.PingOptions{Timeout: 300 * time.Millisecond})
		})
		gone := l.Hosts[n]
		if err := l.StopWeftd(n); err != nil {
			t.Errorf("SIGTERM: %v", err)
		}
		start = time.Now()
		if _, err := l.Etcd.Delete(ctx, lab.LeaseKey(l.Config().Prefix, gone.Subnet)); err != nil {
			t.Fatal(err)
		}
		if _, err := exec.LookPath("wg"); err != nil {
			t.Log("wg not installed: the leaving host's peer removal is not read back")
			return
		}
		waitFor(t, "a leaving host's peer removed from every other device", start, 2*time.Second, 10*time.Second, func() error {
			for _, h := range l.Hosts[:n] {
				out, err := wgIn(h, "show", "flannel-wg", "allowed-ips")
				if err != nil {
					return err
				}
				if strings.Contains(out, gone.Subnet.String()) {
					return fmt.Errorf("%s still has a peer for %s:\n%s", h.Name, gone.Subnet, out)
				}
			}
			return nil
		})
	})
}

// wireguardGoPath finds the stock wireguard-go scripts/wireguard-go.sh
// builds: $WEFT_WIREGUARD_GO, else the cache directory of the version this
// test binary links (weft's go.mod's).
func wireguardGoPath(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("WEFT_WIREGUARD_GO"); p != "" {
		return p
	}
	// The test runs in e2e/, inside weft's module: go.mod's version.
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Version}}", "golang.zx2c4.com/wireguard").Output()
	if err != nil {
		t.Fatalf("go list -m golang.zx2c4.com/wireguard: %v", err)
	}
	version := strings.TrimSpace(string(out))
	cache := os.Getenv("WEFT_CACHE")
	if cache == "" {
		cache = "/var/cache/weft"
	}
	p := filepath.Join(cache, "wireguard-go-"+version, "wireguard-go")
	if _, err := os.Stat(p); err != nil {
		t.Skipf("stock wireguard-go %s not built at %s: run scripts/wireguard-go.sh (or set WEFT_WIREGUARD_GO)", version, p)
	}
	return p
}

// stockWG runs shell commands in ns with runDir mounted on /run, where
// wireguard-go puts its UAPI socket and wg looks for it.
func stockWG(ns *rtnl.NS, runDir, script string) (string, error) {
	return ns.Run("sh", "-c", "mount --bind "+shQuote(runDir)+" /run && "+script)
}

// startStockWG starts a stock wireguard-go for device dev in ns, with
// runDir mounted on /run (its UAPI socket goes to runDir/wireguard), and
// waits for the socket; the process is killed (by PID) at the test's end.
func startStockWG(t *testing.T, wggo string, ns *rtnl.NS, runDir, dev string) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", ns.Name, "sh", "-c",
		"mount --bind "+shQuote(runDir)+" /run && exec "+shQuote(wggo)+" -f "+dev)
	logf, _ := os.Create(filepath.Join(runDir, "wireguard-go-"+dev+".log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill() // by PID: the one started here
		cmd.Wait()
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("wireguard-go %s log:\n%s", dev, b)
		}
	})
	sock := filepath.Join(runDir, "wireguard", dev+".sock")
	waitFor(t, "wireguard-go's UAPI socket "+dev, time.Now(), 5*time.Second, 10*time.Second, func() error {
		_, err := os.Stat(sock)
		return err
	})
}

// TestWireGuardInterop: two weft hosts and one host that is not weft — a
// stock wireguard-go configured with wg exactly as flannel's backend
// configures its device from the leases (its private key, listen-port
// 51820, one peer per lease: the lease's PublicKey, endpoint PublicIP:51820,
// allowed-ips its subnet, the network's PSK; the /32 address and the
// Network route) and publishing flannel's lease (BackendData with the
// PublicKey only) — talk both ways, with the PSK off and on.
func TestWireGuardInterop(t *testing.T) {
	needWG(t)
	wggo := wireguardGoPath(t)
	psk, _ := wgengine.GenerateKey()
	for _, tc := range []struct {
		name string
		psk  string
	}{{"psk off", ""}, {"psk on", psk.String()}} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := networkConfig("wireguard")
			if tc.psk != "" {
				cfg = strings.Replace(cfg, `"Type":"wireguard"`, `"Type":"wireguard","PSK":"`+tc.psk+`"`, 1)
			}
			l := newLabWith(t, lab.Config{Hosts: 3, Backend: "wireguard", NetworkConfig: cfg})
			ctx := context.Background()
			stock := l.Hosts[2]
			if err := l.StopWeftd(2); err != nil {
				t.Fatal(err)
			}
			// weft's persistent TUN stays after it exits; the stock
			// device takes its name.
			stock.NS.MustRun(t, "ip", "link", "del", "flannel-wg")

			runDir := t.TempDir()
			startStockWG(t, wggo, stock.NS, runDir, "flannel-wg")

			// flannel's key file and lease for the stock host.
			priv, _ := wgengine.GenerateKey()
			keyFile := filepath.Join(runDir, "wgkey")
			os.WriteFile(keyFile, []byte(priv.String()), 0o600)
			leaseKey := lab.LeaseKey(l.Config().Prefix, stock.Subnet)
			resp, err := l.Etcd.Get(ctx, leaseKey)
			if err != nil || len(resp.Kvs) != 1 {
				t.Fatalf("stock host's lease: %v", err)
			}
			val := fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":null,"BackendType":"wireguard","BackendData":{"PublicKey":"%s"}}`, stock.Eth0IP, priv.PublicKey())
			if _, err := l.Etcd.Put(ctx, leaseKey, val, clientv3.WithLease(clientv3.LeaseID(resp.Kvs[0].Lease))); err != nil {
				t.Fatal(err)
			}

			// The device as flannel's backend configures it.
			script := []string{"wg set flannel-wg private-key /run/wgkey listen-port 51820"}
			if tc.psk != "" {
				os.WriteFile(filepath.Join(runDir, "psk"), []byte(tc.psk), 0o600)
			}
			for _, h := range l.Hosts[:2] {
				v := readWGLease(t, l, h.Subnet)
				peer := fmt.Sprintf("wg set flannel-wg peer %s endpoint %s:51820 allowed-ips %s", v.BackendData.PublicKey, v.PublicIP, h.Subnet)
				if tc.psk != "" {
					peer += " preshared-key /run/psk"
				}
				script = append(script, peer)
			}
			script = append(script,
				"ip addr add "+stock.Subnet.Addr().String()+"/32 dev flannel-wg",
				"ip link set flannel-wg up",
				"ip route replace 172.30.0.0/16 dev flannel-wg")
			if out, err := stockWG(stock.NS, runDir, strings.Join(script, " && ")); err != nil {
				t.Fatalf("configure the stock device: %v\n%s", err, out)
			}

			start := time.Now()
			waitFor(t, "weft ↔ stock wireguard-go: every pair pings", start, wgHandshakeBound, 20*time.Second, func() error { return allPing(l) })
			out, err := stockWG(stock.NS, runDir, "wg show flannel-wg latest-handshakes")
			if err != nil {
				t.Fatal(err)
			}
			if n := strings.Count(out, "\n"); n != 2 || strings.Contains(out, "\t0\n") {
				t.Errorf("stock device handshakes:\n%s\nwant a recent handshake with each weft host", out)
			}
		})
	}
}

// TestWireGuardRestartOneWay: traffic that goes one way only (UDP from a
// container on host 0 to one on host 1 that never answers) resumes at once
// when host 1's weftd restarts. Host 0 still holds its session with the old
// device, whose keys the restarted one lacks; as long as host 1 sends
// nothing, WireGuard on host 0 would start a new handshake only after
// KEEPALIVE_TIMEOUT + REKEY_TIMEOUT (15 s). The restarted device greets its
// peers instead.
func TestWireGuardRestartOneWay(t *testing.T) {
	l := newLab(t, "wireguard", 2)
	ctx := context.Background()
	src, dst := l.Hosts[0], l.Hosts[1]
	to := &net.UDPAddr{IP: dst.ContainerIP.AsSlice(), Port: 9999}
	var rx, tx *net.UDPConn
	if err := dst.ContainerNS.Do(func() (err error) { rx, err = net.ListenUDP("udp4", to); return err }); err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	if err := src.ContainerNS.Do(func() (err error) { tx, err = net.DialUDP("udp4", nil, to); return err }); err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	var last atomic.Int64 // unix nanoseconds of the last datagram received
	go func() {
		buf := make([]byte, 64)
		for {
			if _, err := rx.Read(buf); err != nil {
				return
			}
			last.Store(time.Now().UnixNano())
		}
	}()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for tick := time.NewTicker(20 * time.Millisecond); ; {
			select {
			case <-stop:
				tick.Stop()
				return
			case <-tick.C:
				tx.Write([]byte("one way"))
			}
		}
	}()
	heardAfter := func(t0 time.Time) func() error {
		return func() error {
			if l := time.Unix(0, last.Load()); !l.After(t0) {
				return fmt.Errorf("nothing received on %s since %s", to, t0.Format(time.StampMilli))
			}
			return nil
		}
	}
	waitFor(t, "one-way datagrams arrive", time.Now(), 5*time.Second, 10*time.Second, heardAfter(time.Now()))

	if err := l.StopWeftd(1); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // datagrams meanwhile go to the stopped device's TUN
	since := time.Now()
	if err := l.StartWeftd(1); err != nil {
		t.Fatal(err)
	}
	if _, err := l.WaitSubnetFile(ctx, 1, since); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "one-way datagrams arrive again after the receiver's weftd restarted", since, 3*time.Second, 25*time.Second, heardAfter(since))
}

// wgHandshakeBound bounds the e2e waits for WireGuard sessions: a first
// handshake may be lost (the peer's underlay guard or device does not know
// us yet) or cross the peer's own, and wireguard-go retries only after
// REKEY_TIMEOUT (5 s) plus up to 333 ms of jitter; the host with the larger
// key greets a new peer 1 s late (wgengine's greetDelay). One retry must fit.
const wgHandshakeBound = 8 * time.Second
