package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// State is what a running lab records in <StateDir>/state.json, so that
// `weftctl lab status` and `lab down` in another process can find it.
type State struct {
	Name         string
	PID          int    // the lab process
	PIDStart     string // its start time in clock ticks (/proc/<pid>/stat), against PID reuse
	Backend      string
	Prefix       string
	EtcdEndpoint string
	// EtcdEndpoints is every etcd member's URL (absent in older records).
	EtcdEndpoints []string `json:",omitempty"`
	UnderlayNS    string
	StateDir      string
	Hosts         []HostState
}

// HostState is one host in State.
type HostState struct {
	Name        string
	NS          string
	ContainerNS string
	Eth0IP      netip.Addr
	PublicIP    netip.Addr
	ContainerIP netip.Addr
	Subnet      netip.Prefix
	// The IPv6 side of a dual-stack lab (zero otherwise).
	Eth0IP6      netip.Addr   `json:",omitzero"`
	ContainerIP6 netip.Addr   `json:",omitzero"`
	Subnet6      netip.Prefix `json:",omitzero"`
	SubnetFile   string
	LogFile      string
	WeftdPID     int
}

const stateFile = "state.json"

// State returns the lab's current state record.
func (l *Lab) State() State {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := State{
		Name: l.Name, PID: os.Getpid(), PIDStart: procStart(os.Getpid()),
		Backend: l.cfg.Backend, Prefix: l.cfg.Prefix, EtcdEndpoint: l.EtcdEndpoint,
		EtcdEndpoints: append([]string(nil), l.EtcdEndpoints...),
		StateDir:      l.StateDir,
	}
	if l.Underlay != nil {
		st.UnderlayNS = l.Underlay.Name
	}
	for _, h := range l.Hosts {
		hs := HostState{
			Name: h.Name, Eth0IP: h.Eth0IP, PublicIP: h.PublicIP, ContainerIP: h.ContainerIP,
			Subnet: h.Subnet, SubnetFile: h.SubnetFile, LogFile: h.LogFile,
			Eth0IP6: h.Eth0IP6, ContainerIP6: h.ContainerIP6, Subnet6: h.Subnet6,
		}
		if h.NS != nil {
			hs.NS = h.NS.Name
		}
		if h.ContainerNS != nil {
			hs.ContainerNS = h.ContainerNS.Name
		}
		if p := h.proc.Load(); p != nil && p.running() {
			hs.WeftdPID = p.cmd.Process.Pid
		}
		st.Hosts = append(st.Hosts, hs)
	}
	return st
}

func (l *Lab) saveState() error {
	st := l.State()
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("encode lab state: %w", err)
	}
	path := filepath.Join(l.StateDir, stateFile)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write lab state: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write lab state: %w", err)
	}
	return nil
}

// ReadState reads a lab's state record.
func ReadState(stateDir string) (State, error) {
	var st State
	b, err := os.ReadFile(filepath.Join(stateDir, stateFile))
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("lab state %s: %w", filepath.Join(stateDir, stateFile), err)
	}
	return st, nil
}

// Running reports whether the process that recorded st still runs.
func (st State) Running() bool {
	return processAlive(st.PID) && (st.PIDStart == "" || procStart(st.PID) == st.PIDStart)
}

func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	if err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	// A zombie has exited; only its parent has yet to reap it.
	return procState(pid) != "Z"
}

// procState is field 3 of /proc/<pid>/stat (R, S, Z, …); "" when unknown.
func procState(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 {
		s = s[i+1:]
	}
	if f := strings.Fields(s); len(f) > 0 {
		return f[0]
	}
	return ""
}

// procStart is field 22 of /proc/<pid>/stat: the start time, which together
// with the PID identifies a process.
func procStart(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	// The command name (field 2) may hold spaces; fields after it don't.
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 {
		s = s[i+1:]
	}
	f := strings.Fields(s)
	if len(f) < 20 {
		return ""
	}
	return f[19]
}

// Down stops the lab called name: SIGTERM to the lab process (which removes
// everything it made), then removal of anything left behind — weftd
// processes named in the state, dockerds by their pidfiles and their mounts,
// the lab's namespaces, its state directory.
func Down(ctx context.Context, name string, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dir := StateDirFor(name)
	st, err := ReadState(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	found := err == nil
	if found && st.Running() && st.PID != os.Getpid() {
		log.Info("stopping the lab process", "pid", st.PID)
		if err := syscall.Kill(st.PID, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("signal lab process %d: %w", st.PID, err)
		}
		if !waitGone(ctx, st.PID, 30*time.Second) {
			log.Warn("lab process did not exit within 30s of SIGTERM; killing it", "pid", st.PID)
			syscall.Kill(st.PID, syscall.SIGKILL)
			waitGone(ctx, st.PID, 5*time.Second)
		}
	}
	var errs []error
	var nss []string
	for _, h := range st.Hosts {
		if h.WeftdPID > 0 && isWeftdOf(h.WeftdPID, h.SubnetFile) {
			log.Info("stopping a leftover weftd", "host", h.Name, "pid", h.WeftdPID)
			syscall.Kill(h.WeftdPID, syscall.SIGTERM)
			if !waitGone(ctx, h.WeftdPID, 10*time.Second) {
				syscall.Kill(h.WeftdPID, syscall.SIGKILL)
			}
		}
		nss = append(nss, h.ContainerNS, h.NS)
	}
	// Docker's containers hold the namespaces of their hosts; its mounts
	// would keep the state directory from going.
	if err := downDocker(ctx, dir, log); err != nil {
		errs = append(errs, err)
	}
	nss = append(nss, st.UnderlayNS)
	nss = append(nss, leftoverNamespaces(name)...)
	removed := 0
	for _, ns := range nss {
		if ns == "" {
			continue
		}
		if _, err := os.Stat(filepath.Join("/run/netns", ns)); err != nil {
			continue
		}
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("ip netns del %s: %v: %s", ns, err, strings.TrimSpace(string(out))))
			continue
		}
		removed++
		log.Info("removed a leftover namespace", "netns", ns)
	}
	if _, err := os.Stat(dir); err == nil {
		found = true
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", dir, err))
		}
	}
	if !found && removed == 0 {
		return fmt.Errorf("no lab named %q (no %s and no namespaces named %s-*)", name, dir, name)
	}
	return errors.Join(errs...)
}

// isWeftdOf checks that pid is the weftd writing subnetFile, so that a
// recycled PID is never signalled.
func isWeftdOf(pid int, subnetFile string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	return bytes.Contains(b, []byte("-subnet-file="+subnetFile+"\x00"))
}

func waitGone(ctx context.Context, pid int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if !processAlive(pid) {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return !processAlive(pid)
}
