package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/lab"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/testutil/netnstest"
)

// hostEtcd is where weftd finds etcd inside its host namespace, as in the
// ops note and the lab: a proxy run by this process forwards it to the
// embedded etcd on the root namespace's loopback.
const hostEtcd = "127.0.0.1:2379"

// cluster is one figure run's world: an etcd prefix of its own, an
// underlay namespace with a bridge, and host namespaces on it. Everything
// it creates carries a unique name and is removed by close.
type cluster struct {
	e      *env
	prefix string
	ul     *netnstest.NS
	hosts  []*host
}

// host is one simulated machine running the real weftd binary.
type host struct {
	c          *cluster
	ns         *netnstest.NS
	ip         netip.Addr // eth0, what weftd advertises (-iface=eth0)
	dir        string
	subnetFile string
	logFile    string
	proxy      *lab.Proxy
	proc       *proc
}

// hostIP is host k's underlay address; fake peers use 192.168.0-39.x, so
// hosts sit at 192.168.200.x of the same /16 (host-gw needs every peer on
// the host's L2 segment).
func hostIP(k int) netip.Addr { return netip.AddrFrom4([4]byte{192, 168, 200, byte(k + 1)}) }

// newCluster writes the network config under a fresh prefix and builds
// nhosts host namespaces (weftd not started).
func (e *env) newCluster(ctx context.Context, nhosts int, backend string) (c *cluster, err error) {
	e.seq++
	c = &cluster{e: e, prefix: fmt.Sprintf("/bench/run%d", e.seq)}
	defer func() {
		if err != nil {
			c.close()
			c = nil
		}
	}()
	// The host's own lease comes from 10.100.0.0/16, away from the fake
	// peers (10.1.0.0 … 10.40.255.0), so it never collides with one.
	cfg := fmt.Sprintf(`{"Network":"10.0.0.0/8","SubnetLen":24,"SubnetMin":"10.100.0.0","SubnetMax":"10.100.255.0","Backend":{"Type":%q}}`, backend)
	if _, err := e.cli.Put(ctx, lease.ConfigKey(c.prefix), cfg); err != nil {
		return nil, fmt.Errorf("write network config at %s/config: %w", c.prefix, err)
	}
	if c.ul, err = netnstest.Create(netnstest.UniqueName("wbou")); err != nil {
		return nil, err
	}
	if err := c.ul.Handle.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}); err != nil {
		return nil, fmt.Errorf("add bridge br0 in %s: %w", c.ul.Name, err)
	}
	br, err := c.ul.Handle.LinkByName("br0")
	if err != nil {
		return nil, fmt.Errorf("find br0 in %s: %w", c.ul.Name, err)
	}
	if err := c.ul.Handle.LinkSetUp(br); err != nil {
		return nil, fmt.Errorf("set br0 up in %s: %w", c.ul.Name, err)
	}
	for k := range nhosts {
		if err := c.addHost(k, br); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func (c *cluster) addHost(k int, br netlink.Link) error {
	ns, err := netnstest.Create(netnstest.UniqueName("wboh"))
	if err != nil {
		return err
	}
	h := &host{c: c, ns: ns, ip: hostIP(k)}
	c.hosts = append(c.hosts, h)
	h.dir = filepath.Join(c.e.tmp, ns.Name)
	h.subnetFile = filepath.Join(h.dir, "subnet.env")
	h.logFile = filepath.Join(h.dir, "weftd.log")
	if err := os.MkdirAll(h.dir, 0o755); err != nil {
		return fmt.Errorf("create state dir of %s: %w", ns.Name, err)
	}
	port := fmt.Sprintf("p%d", k)
	if err := netnstest.VethPair(ns, "eth0", c.ul, port); err != nil {
		return err
	}
	p, err := c.ul.Handle.LinkByName(port)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", port, c.ul.Name, err)
	}
	if err := c.ul.Handle.LinkSetMasterByIndex(p, br.Attrs().Index); err != nil {
		return fmt.Errorf("attach %s to br0 in %s: %w", port, c.ul.Name, err)
	}
	eth0, err := ns.Handle.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("find eth0 in %s: %w", ns.Name, err)
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: h.ip.AsSlice(), Mask: net.CIDRMask(16, 32)}}
	if err := ns.Handle.AddrAdd(eth0, a); err != nil {
		return fmt.Errorf("add %s/16 to eth0 in %s: %w", h.ip, ns.Name, err)
	}
	if err := ns.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644)
	}); err != nil {
		return fmt.Errorf("enable ip_forward in %s: %w", ns.Name, err)
	}
	if h.proxy, err = lab.StartProxy(ns, hostEtcd, c.e.etcd.Endpoint, c.e.log); err != nil {
		return err
	}
	return nil
}

// close stops every weftd (by PID), removes the namespaces and the
// cluster's keys. Errors are logged: cleanup goes on regardless.
func (c *cluster) close() {
	for _, h := range c.hosts {
		if h.proc != nil {
			if err := h.proc.stop(5 * time.Second); err != nil {
				c.e.log.Warn("stop weftd", "host", h.ns.Name, "err", err)
			}
			if d := c.e.opts.keepLogs; d != "" {
				if b, err := os.ReadFile(h.logFile); err == nil {
					os.MkdirAll(d, 0o755)
					os.WriteFile(filepath.Join(d, h.ns.Name+".log"), b, 0o644)
				}
			}
		}
		if h.proxy != nil {
			h.proxy.Close()
		}
		h.ns.Close()
	}
	if c.ul != nil {
		c.ul.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.e.cli.Delete(ctx, c.prefix+"/", clientv3.WithPrefix()); err != nil {
		c.e.log.Warn("delete cluster keys", "prefix", c.prefix, "err", err)
	}
	if _, err := c.e.cli.Delete(ctx, lease.ConfigKey(c.prefix)); err != nil {
		c.e.log.Warn("delete cluster config", "prefix", c.prefix, "err", err)
	}
}

// proc is one weftd process started by this program; only it is ever
// signalled, by its PID.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

func (p *proc) stop(grace time.Duration) error {
	if !p.running() {
		return p.err
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.err
	case <-time.After(grace):
		p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("weftd pid %d ignored SIGTERM for %s; killed", p.pid(), grace)
	}
}

// start execs weftd directly in the host namespace (fork from a thread
// switched into it), so the time measured is weftd's own, without the
// mount namespace work `ip netns exec` does first. It returns the time
// taken just before the fork.
func (h *host) start(extra ...string) (time.Time, error) {
	logf, err := os.OpenFile(h.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return time.Time{}, fmt.Errorf("open weftd log of %s: %w", h.ns.Name, err)
	}
	args := append([]string{
		"-etcd-endpoints=http://" + hostEtcd,
		"-etcd-prefix=" + h.c.prefix,
		"-iface=eth0",
		"-subnet-file=" + h.subnetFile,
	}, extra...)
	args = append(args, h.c.e.opts.weftdArgs...)
	cmd := exec.Command(h.c.e.weftd, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// A clean environment: no FLANNELD_* of the caller's leaks in.
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, h.c.e.opts.weftdEnv...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	var t0 time.Time
	err = h.ns.Do(func() error {
		t0 = time.Now()
		return cmd.Start()
	})
	logf.Close() // the child holds its own copy
	if err != nil {
		return time.Time{}, fmt.Errorf("start %s in %s: %w", h.c.e.weftd, h.ns.Name, err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	h.proc = p
	return t0, nil
}

func (h *host) logTail() string {
	b, _ := os.ReadFile(h.logFile)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 10 {
		lines = lines[len(lines)-10:]
	}
	return strings.Join(lines, "\n")
}

// fileWatch reports, via inotify on the directory, the moment a file is
// renamed into place or closed after writing: weftd writes subnet.env to a
// temporary file and renames it, and polling would add its period.
type fileWatch struct {
	f  *os.File
	ch chan time.Time
}

func watchFile(path string) (*fileWatch, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("inotify_init1: %w", err)
	}
	if _, err := unix.InotifyAddWatch(fd, filepath.Dir(path), unix.IN_MOVED_TO|unix.IN_CLOSE_WRITE); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("inotify watch on %s: %w", filepath.Dir(path), err)
	}
	w := &fileWatch{f: os.NewFile(uintptr(fd), "inotify"), ch: make(chan time.Time, 1)}
	base := filepath.Base(path)
	go func() {
		buf := make([]byte, 64*1024)
		for {
			n, err := w.f.Read(buf)
			if err != nil {
				return
			}
			now := time.Now()
			for off := 0; off+unix.SizeofInotifyEvent <= n; {
				ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
				name := strings.TrimRight(string(buf[off+unix.SizeofInotifyEvent:off+unix.SizeofInotifyEvent+int(ev.Len)]), "\x00")
				off += unix.SizeofInotifyEvent + int(ev.Len)
				if name == base {
					select {
					case w.ch <- now:
					default:
					}
				}
			}
		}
	}()
	return w, nil
}

func (w *fileWatch) close() { w.f.Close() }

// wait returns the first time the file appeared, or an error when the
// process exits first or the deadline passes.
func (w *fileWatch) wait(h *host, d time.Duration) (time.Time, error) {
	select {
	case t := <-w.ch:
		return t, nil
	case <-h.proc.done:
		return time.Time{}, fmt.Errorf("weftd in %s exited (%v) before writing %s; log:\n%s", h.ns.Name, h.proc.err, h.subnetFile, h.logTail())
	case <-time.After(d):
		return time.Time{}, fmt.Errorf("weftd in %s wrote no %s within %s; log:\n%s", h.ns.Name, h.subnetFile, d, h.logTail())
	}
}
