package wgengine

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/device"
)

// uapiServer serves wireguard-go's configuration protocol on
// <dir>/<name>.sock, as wireguard-go's own main does, but in a directory of
// our choosing: in the lab several hosts share one filesystem, and
// ipc.UAPIOpen's directory is fixed.
type uapiServer struct {
	path string
	ln   *net.UnixListener
	wg   sync.WaitGroup

	mu    sync.Mutex
	conns map[*net.UnixConn]struct{} // open connections, closed by close
}

func listenUAPI(dir, name string, dev *device.Device, log *slog.Logger) (*uapiServer, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create UAPI socket directory: %w", err)
	}
	path := filepath.Join(dir, name+".sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if errors.Is(err, unix.EADDRINUSE) {
		// A socket left by a daemon that died: nobody answers it. One
		// that answers belongs to a running device of the same name.
		if c, derr := net.Dial("unix", path); derr == nil {
			c.Close()
			return nil, fmt.Errorf("UAPI socket %s is in use by another running device", path)
		}
		if rerr := os.Remove(path); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			return nil, fmt.Errorf("remove stale UAPI socket: %w", rerr)
		}
		ln, err = net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	}
	if err != nil {
		return nil, fmt.Errorf("listen on UAPI socket: %w", err)
	}
	// The socket hands out the private key: owner only. (A connection made
	// before the chmod is refused below by its credentials.)
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("restrict UAPI socket: %w", err)
	}
	s := &uapiServer{path: path, ln: ln, conns: make(map[*net.UnixConn]struct{})}
	s.wg.Go(func() {
		for {
			c, err := ln.AcceptUnix()
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					log.Warn("UAPI socket stopped accepting", "socket", path, "err", err)
				}
				return
			}
			if err := ownUser(c); err != nil {
				log.Warn("UAPI connection refused", "socket", path, "err", err)
				c.Close()
				continue
			}
			s.mu.Lock()
			s.conns[c] = struct{}{}
			s.mu.Unlock()
			s.wg.Go(func() {
				dev.IpcHandle(c) // returns when the client hangs up; closes c
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
			})
		}
	})
	return s, nil
}

// ownUser admits a peer process running as root or as our own user.
func ownUser(c *net.UnixConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil {
		return err
	}
	if cerr != nil {
		return fmt.Errorf("peer credentials: %w", cerr)
	}
	if cred.Uid != 0 && int(cred.Uid) != os.Geteuid() {
		return fmt.Errorf("peer pid %d uid %d is neither root nor uid %d", cred.Pid, cred.Uid, os.Geteuid())
	}
	return nil
}

// close stops accepting, hangs up on open connections (a client that
// never hangs up must not block the daemon's exit), and removes the socket
// file.
func (s *uapiServer) close() error {
	err := s.ln.Close() // unlinks the socket: it was made by Listen
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	if err != nil {
		return fmt.Errorf("close UAPI socket %s: %w", s.path, err)
	}
	return nil
}

// Device is a WireGuard device as its UAPI socket describes it.
type Device struct {
	PublicKey  Key // derived from the private key the socket reports
	ListenPort uint16
	Peers      []PeerStatus // sorted by public key
}

// Query reads the device behind the UAPI socket path with the "get"
// operation `wg show` uses: weftd's devices, a stock wireguard-go's, any
// userspace implementation's.
func Query(path string, timeout time.Duration) (Device, error) {
	c, err := net.DialTimeout("unix", path, timeout)
	if err != nil {
		return Device{}, fmt.Errorf("wgengine: query UAPI socket: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("get=1\n\n")); err != nil {
		return Device{}, fmt.Errorf("wgengine: query UAPI socket %s: %w", path, err)
	}
	var b strings.Builder
	sc := bufio.NewScanner(c)
	for sc.Scan() && sc.Text() != "" {
		b.WriteString(sc.Text())
		b.WriteByte('\n')
	}
	if err := sc.Err(); err != nil {
		return Device{}, fmt.Errorf("wgengine: read UAPI socket %s: %w", path, err)
	}
	d, err := parseDevice(b.String())
	if err != nil {
		return Device{}, fmt.Errorf("wgengine: UAPI socket %s: %w", path, err)
	}
	return d, nil
}

// parseDevice parses a whole UAPI "get" reply.
func parseDevice(s string) (Device, error) {
	var d Device
	errno := ""
device:
	for line := range strings.Lines(s) {
		key, val, _ := strings.Cut(strings.TrimSuffix(line, "\n"), "=")
		switch key {
		case "public_key":
			break device // device lines come first
		case "private_key":
			k, err := hexKey(val)
			if err != nil {
				return d, err
			}
			d.PublicKey = k.PublicKey()
		case "listen_port":
			p, err := strconv.ParseUint(val, 10, 16)
			if err != nil {
				return d, fmt.Errorf("UAPI line listen_port=%s: %w", val, err)
			}
			d.ListenPort = uint16(p)
		}
	}
	if i := strings.LastIndex(s, "errno="); i >= 0 {
		errno = strings.TrimSpace(s[i+len("errno="):])
	}
	if errno != "" && errno != "0" {
		return d, fmt.Errorf("the device answered errno=%s", errno)
	}
	have, err := parsePeers(s)
	if err != nil {
		return d, err
	}
	for _, k := range sortedKeys(have) {
		d.Peers = append(d.Peers, have[k])
	}
	return d, nil
}
