package lab

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/weft-net/weft/internal/wgengine"
)

// FindWeftd resolves the weftd binary: an explicit path, else the weftd next
// to the running executable (bin/weftctl → bin/weftd), else weftd in PATH.
func FindWeftd(explicit string) (string, error) {
	const hint = "build it: go build -o bin/ ./cmd/..."
	if explicit != "" {
		st, err := os.Stat(explicit)
		if err != nil {
			return "", fmt.Errorf("weftd %q: %w; %s", explicit, err, hint)
		}
		if st.IsDir() || st.Mode()&0o111 == 0 {
			return "", fmt.Errorf("weftd %q: not an executable file; %s", explicit, hint)
		}
		return filepath.Abs(explicit)
	}
	var tried []string
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "weftd")
		tried = append(tried, p)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	if p, err := exec.LookPath("weftd"); err == nil {
		return filepath.Abs(p)
	}
	tried = append(tried, "$PATH")
	return "", fmt.Errorf("weftd not found (looked at %s); %s, or pass --weftd PATH", strings.Join(tried, ", "), hint)
}

// weftdProc is one run of weftd in a host namespace.
type weftdProc struct {
	cmd     *exec.Cmd
	logf    *os.File
	done    chan struct{}
	waitErr error // set before done is closed
}

func (p *weftdProc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM, waits up to grace, then SIGKILLs; it returns the exit
// error (nil for status 0).
func (p *weftdProc) stop(grace time.Duration) error {
	if p.running() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(grace):
			p.cmd.Process.Kill()
			<-p.done
			return fmt.Errorf("weftd pid %d did not exit within %s of SIGTERM; killed", p.cmd.Process.Pid, grace)
		}
	}
	return p.exitErr()
}

func (p *weftdProc) exitErr() error {
	if p.waitErr != nil {
		return fmt.Errorf("weftd pid %d: %w", p.cmd.Process.Pid, p.waitErr)
	}
	return nil
}

// weftdArgs is the command line of the ops note's flanneld, plus the lab's
// own subnet file.
func (l *Lab) weftdArgs(h *Host) []string {
	args := []string{
		"-etcd-endpoints=" + l.hostEndpoints(),
		"-etcd-prefix=" + l.cfg.Prefix,
		"-iface=eth0",
		"-subnet-file=" + h.SubnetFile,
		"-healthz-port=0",
	}
	return append(args, l.cfg.WeftdArgs...)
}

func (l *Lab) startWeftd(h *Host) error {
	if p := h.proc.Load(); p != nil && p.running() {
		return fmt.Errorf("host %s: weftd already running (pid %d)", h.Name, p.cmd.Process.Pid)
	}
	logf, err := os.OpenFile(h.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("host %s: open weftd log: %w", h.Name, err)
	}
	// `ip netns exec` execs weftd in place, so the PID is weftd's own.
	args := append([]string{"netns", "exec", h.NS.Name, l.cfg.WeftdPath}, l.weftdArgs(h)...)
	cmd := exec.Command("ip", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// The hosts share one filesystem: each keeps its own WireGuard key and
	// UAPI socket in its directory (`weftctl lab` prints how to run wg),
	// and they share /etc/machine-id, weftd's default identity, so each
	// is named after its host (the caller's WeftdEnv may override it).
	dir := filepath.Dir(h.SubnetFile)
	env := weftdEnv(append([]string{"FLANNELD_NODE_NAME=" + h.Name}, l.cfg.WeftdEnv...))
	cmd.Env = append(env, wgengine.KeyFileEnv+"="+filepath.Join(dir, "wgkey"),
		wgengine.SocketDirEnv+"="+filepath.Join(dir, "wireguard"))
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// Its own process group: a Ctrl-C at the terminal reaches the lab,
		// which then stops the daemons in order.
		Setpgid: true,
		// If the lab process dies, its daemons must not outlive it.
		Pdeathsig: syscall.SIGTERM,
	}
	fmt.Fprintf(logf, "--- %s lab: starting %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(cmd.Args, " "))
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("host %s: start weftd %s: %w", h.Name, l.cfg.WeftdPath, err)
	}
	p := &weftdProc{cmd: cmd, logf: logf, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	h.proc.Store(p)
	l.log.Debug("weftd started", "host", h.Name, "pid", cmd.Process.Pid)
	return nil
}

func weftdEnv(extra []string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "FLANNELD_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

func (l *Lab) host(i int) (*Host, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, errors.New("lab is closed")
	}
	if i < 0 || i >= len(l.Hosts) {
		return nil, fmt.Errorf("host index %d: the lab has hosts 0..%d", i, len(l.Hosts)-1)
	}
	return l.Hosts[i], nil
}

// StopWeftd sends SIGTERM to host i's weftd, waits for it to exit (10 s,
// then SIGKILL) and returns an error unless it exited with status 0.
func (l *Lab) StopWeftd(i int) error {
	h, err := l.host(i)
	if err != nil {
		return err
	}
	p := h.proc.Load()
	if p == nil {
		return fmt.Errorf("host %s: weftd was never started", h.Name)
	}
	err = p.stop(10 * time.Second)
	l.saveState()
	if err != nil {
		return fmt.Errorf("host %s: %w", h.Name, err)
	}
	return nil
}

// StartWeftd starts host i's weftd again (after StopWeftd or a crash). It
// does not wait: use WaitSubnetFile with a time taken before the call.
func (l *Lab) StartWeftd(i int) error {
	h, err := l.host(i)
	if err != nil {
		return err
	}
	if err := l.startWeftd(h); err != nil {
		return err
	}
	return l.saveState()
}

// WeftdPID is the PID of host i's weftd, 0 when it is not running.
func (l *Lab) WeftdPID(i int) int {
	h, err := l.host(i)
	if err != nil {
		return 0
	}
	p := h.proc.Load()
	if p == nil || !p.running() {
		return 0
	}
	return p.cmd.Process.Pid
}

// WeftdRunning reports whether host i's weftd is running, and if not, how
// it ended.
func (l *Lab) WeftdRunning(i int) (bool, error) {
	h, err := l.host(i)
	if err != nil {
		return false, err
	}
	p := h.proc.Load()
	if p == nil {
		return false, nil
	}
	if p.running() {
		return true, nil
	}
	return false, p.exitErr()
}

// WaitSubnetFile waits until host i's subnet.env has been written at or
// after `since` (weftd rewrites it every time it holds its lease) and
// returns its contents.
func (l *Lab) WaitSubnetFile(ctx context.Context, i int, since time.Time) (SubnetEnv, error) {
	h, err := l.host(i)
	if err != nil {
		return SubnetEnv{}, err
	}
	return l.waitSubnetFile(ctx, h, since)
}

func (l *Lab) waitSubnetFile(ctx context.Context, h *Host, since time.Time) (SubnetEnv, error) {
	ctx, cancel := context.WithTimeout(ctx, l.cfg.ReadyTimeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		st, err := os.Stat(h.SubnetFile)
		if err == nil && !st.ModTime().Before(since) {
			env, err := ReadSubnetEnv(h.SubnetFile)
			if err == nil {
				return env, nil
			}
			// A torn read is impossible (weftd renames into place), so a
			// parse error is weftd's bug: report it.
			return env, fmt.Errorf("host %s: %w", h.Name, err)
		} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return SubnetEnv{}, fmt.Errorf("host %s: %w", h.Name, err)
		}
		if p := h.proc.Load(); p != nil && !p.running() {
			return SubnetEnv{}, fmt.Errorf("host %s: weftd exited before writing %s (%v); its log %s ends with:\n%s",
				h.Name, h.SubnetFile, p.exitErr(), h.LogFile, logTail(h.LogFile, 15))
		}
		select {
		case <-ctx.Done():
			if ctx.Err() == context.DeadlineExceeded {
				return SubnetEnv{}, fmt.Errorf("host %s: weftd wrote no %s within %s; its log %s ends with:\n%s",
					h.Name, h.SubnetFile, l.cfg.ReadyTimeout, h.LogFile, logTail(h.LogFile, 15))
			}
			return SubnetEnv{}, fmt.Errorf("host %s: waiting for %s: %w", h.Name, h.SubnetFile, ctx.Err())
		case <-tick.C:
		}
	}
}

// logTail returns the last n lines of a file, indented, for error messages.
func logTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "  (" + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "  " + strings.Join(lines, "\n  ")
}
