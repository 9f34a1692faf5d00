package decommission

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// DefaultSubnetFile is weftd's (and flanneld's) -subnet-file default.
const DefaultSubnetFile = "/run/flannel/subnet.env"

// Weftd is a running weftd found by FindWeftd.
type Weftd struct {
	PID        int
	SubnetFile string
}

// FindWeftd scans /proc for weftd processes of this host: the executable
// is named weftd, it runs in this process's network namespace, and its
// subnet file (-subnet-file on its command line, else FLANNELD_SUBNET_FILE
// in its environment, else the default) is subnetFile. weftd keeps no
// pidfile, and the subnet file is what tells two weftd apart: it is per
// daemon by construction.
func FindWeftd(subnetFile string) ([]Weftd, error) {
	want, _ := filepath.Abs(subnetFile)
	self, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		return nil, fmt.Errorf("read this process's network namespace: %w", err)
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("scan /proc for weftd: %w", err)
	}
	var out []Weftd
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		dir := filepath.Join("/proc", e.Name())
		raw, err := os.ReadFile(filepath.Join(dir, "cmdline"))
		if err != nil || len(raw) == 0 {
			continue // gone, or a kernel thread
		}
		args := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
		exe, _ := os.Readlink(filepath.Join(dir, "exe"))
		exe = strings.TrimSuffix(exe, " (deleted)") // replaced binary, still running
		if filepath.Base(args[0]) != "weftd" && filepath.Base(exe) != "weftd" {
			continue
		}
		if ns, err := os.Readlink(filepath.Join(dir, "ns", "net")); err != nil || ns != self {
			continue
		}
		sf := subnetFileOf(args[1:], filepath.Join(dir, "environ"))
		if abs, _ := filepath.Abs(sf); abs == want {
			out = append(out, Weftd{PID: pid, SubnetFile: sf})
		}
	}
	return out, nil
}

// subnetFileOf reads -subnet-file as Go's flag package does (-x=v, -x v,
// --x=v, --x v), else FLANNELD_SUBNET_FILE from the process environment.
func subnetFileOf(args []string, environ string) string {
	for i, a := range args {
		if a == "--" {
			break
		}
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || name != "subnet-file" {
			continue
		}
		if hasVal {
			return val
		}
		if i+1 < len(args) {
			return args[i+1]
		}
	}
	if env, err := os.ReadFile(environ); err == nil {
		for _, kv := range bytes.Split(env, []byte{0}) {
			if v, ok := bytes.CutPrefix(kv, []byte("FLANNELD_SUBNET_FILE=")); ok && len(v) > 0 {
				return string(v)
			}
		}
	}
	return DefaultSubnetFile
}

// Stop sends SIGTERM to pid and waits up to timeout for it to exit (weftd
// stops within a second, leaving its state in place for the teardown).
func Stop(pid int, timeout time.Duration) error {
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		if errors.Is(err, syscall.ESRCH) {
			return nil
		}
		return fmt.Errorf("send SIGTERM to weftd pid %d: %w", pid, err)
	}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if !alive(pid) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("weftd pid %d still running %s after SIGTERM; nothing was removed", pid, timeout)
}

// alive reports whether pid still runs (a zombie, exited but not yet
// reaped by its parent, does not).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) {
		return b[i+2] != 'Z' && b[i+2] != 'X'
	}
	return true
}
