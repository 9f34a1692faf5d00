package e2e

// Helpers of the ops-note scenario (opsnote_test.go): what systemd does with
// the installed files — read a unit, read an EnvironmentFile, expand an
// Exec line, listen for sd_notify — done here by hand, because the lab
// hosts are network namespaces, not machines running systemd.

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// unitFile is one parsed systemd unit (or drop-in): section → key → the
// assignments in order. An empty assignment of an Exec key resets the list,
// as systemd does (the drop-in's `ExecStart=` line).
type unitFile map[string]map[string][]string

// parseUnit reads the subset of the unit syntax our dist/ files use; any
// other construct (line continuations) is an error, so the test never
// judges a unit it misread.
func parseUnit(path string) (unitFile, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read unit: %w", err)
	}
	u := unitFile{}
	section := ""
	for n, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
			continue
		case strings.HasSuffix(line, "\\"):
			return nil, fmt.Errorf("%s:%d: line continuation: not understood by this test's unit reader", path, n+1)
		case line[0] == '[' && line[len(line)-1] == ']':
			section = line[1 : len(line)-1]
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || section == "" {
			return nil, fmt.Errorf("%s:%d: %q: want Key=Value inside a [Section]", path, n+1, line)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if v == "" && strings.HasPrefix(k, "Exec") {
			u[section][k] = nil
			continue
		}
		u[section][k] = append(u[section][k], v)
	}
	return u, nil
}

// one returns the single value of section.key, or an error naming what is
// missing or repeated.
func (u unitFile) one(section, key string) (string, error) {
	vs := u[section][key]
	if len(vs) != 1 {
		return "", fmt.Errorf("[%s] %s: %d values %q, want exactly one", section, key, len(vs), vs)
	}
	return vs[0], nil
}

// parseEnvFile reads an EnvironmentFile as systemd does: KEY=VALUE lines,
// # and ; comment lines, values in double quotes (with \ escapes), single
// quotes or bare (surrounding blanks dropped). Anything after a closing
// quote is refused: systemd's handling of it differs between versions.
func parseEnvFile(b []byte) (map[string]string, error) {
	env := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		k = strings.TrimSpace(k)
		if !ok || !envNameRE.MatchString(k) {
			return nil, fmt.Errorf("line %d %q: want NAME=VALUE", n, line)
		}
		v = strings.TrimSpace(v)
		if v != "" && (v[0] == '"' || v[0] == '\'') {
			q := v[0]
			var val strings.Builder
			i := 1
			for ; i < len(v) && v[i] != q; i++ {
				if q == '"' && v[i] == '\\' && i+1 < len(v) {
					i++
				}
				val.WriteByte(v[i])
			}
			if i >= len(v) {
				return nil, fmt.Errorf("line %d %q: unterminated quote", n, line)
			}
			if rest := strings.TrimSpace(v[i+1:]); rest != "" {
				return nil, fmt.Errorf("line %d %q: %q after the closing quote", n, line, rest)
			}
			v = val.String()
		}
		env[k] = v
	}
	return env, sc.Err()
}

var (
	envNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	bareVarRE = regexp.MustCompile(`^\$([A-Za-z_][A-Za-z0-9_]*)$`)
	bracedRE  = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)
)

// expandExec turns an Exec line into argv as systemd.service(5) says: a word
// that is exactly $VAR becomes the variable's value split on whitespace
// (zero words when empty); ${VAR} inside a word is replaced by the value as
// is; an unset variable is empty. Quoting is not used by our units, so a
// quote is an error rather than a guess.
func expandExec(line string, env map[string]string) ([]string, error) {
	if strings.ContainsAny(line, `"'\`) {
		return nil, fmt.Errorf("exec line %q: quoting/escapes not understood by this test's reader", line)
	}
	var argv []string
	for _, w := range strings.Fields(line) {
		if m := bareVarRE.FindStringSubmatch(w); m != nil {
			argv = append(argv, strings.Fields(env[m[1]])...)
			continue
		}
		argv = append(argv, bracedRE.ReplaceAllStringFunc(w, func(s string) string {
			return env[bracedRE.FindStringSubmatch(s)[1]]
		}))
	}
	if len(argv) == 0 {
		return nil, fmt.Errorf("exec line %q: empty after expansion", line)
	}
	return argv, nil
}

// serviceEnv is the environment systemd gives the unit's processes:
// Environment= assignments, then each EnvironmentFile= over them (a leading
// "-" means a missing file is fine). root maps the unit's absolute paths to
// the DESTDIR they were installed into.
func serviceEnv(u unitFile, root string) (map[string]string, error) {
	env := map[string]string{}
	for _, a := range u["Service"]["Environment"] {
		for _, kv := range strings.Fields(a) {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || strings.ContainsAny(v, `"'`) {
				return nil, fmt.Errorf("Environment=%s: not understood by this test's reader", a)
			}
			env[k] = v
		}
	}
	for _, f := range u["Service"]["EnvironmentFile"] {
		optional := strings.HasPrefix(f, "-")
		f = strings.TrimPrefix(f, "-")
		b, err := os.ReadFile(root + f)
		if errors.Is(err, os.ErrNotExist) && optional {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("EnvironmentFile=%s: %w", f, err)
		}
		fe, err := parseEnvFile(b)
		if err != nil {
			return nil, fmt.Errorf("EnvironmentFile=%s: %w", f, err)
		}
		for k, v := range fe {
			env[k] = v
		}
	}
	return env, nil
}

// systemdPath is the PATH systemd gives services (systemd.exec(5)).
const systemdPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// envList renders env as a clean environment (env -i …) with systemd's PATH.
func envList(env map[string]string, extra ...string) []string {
	out := []string{"PATH=" + systemdPath}
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	return append(out, extra...)
}

// shQuote quotes s for a POSIX shell.
func shQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// notifyMsg is one sd_notify datagram as systemd sees it.
type notifyMsg struct {
	At   time.Time
	PID  int    // sender, from SCM_CREDENTIALS (systemd's NotifyAccess=main compares it)
	Text string // e.g. "READY=1"
	// SubnetEnv is subnet.env as it was when READY=1 arrived (empty when
	// absent): the unit's promise is READY only after it is written.
	SubnetEnv string
}

// notifySocket is a host's $NOTIFY_SOCKET, read as systemd reads it.
type notifySocket struct {
	Path       string
	subnetFile string
	conn       *net.UnixConn
	mu         sync.Mutex
	msgs       []notifyMsg
}

func listenNotify(path, subnetFile string) (*notifySocket, error) {
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("listen on notify socket %s: %w", path, err)
	}
	rc, err := c.SyscallConn()
	if err != nil {
		c.Close()
		return nil, err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
	}); err != nil || serr != nil {
		c.Close()
		return nil, fmt.Errorf("SO_PASSCRED on %s: %w", path, errors.Join(err, serr))
	}
	s := &notifySocket{Path: path, subnetFile: subnetFile, conn: c}
	go s.serve()
	return s, nil
}

func (s *notifySocket) serve() {
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(unix.SizeofUcred))
	for {
		n, oobn, _, _, err := s.conn.ReadMsgUnix(buf, oob)
		if err != nil {
			return // closed
		}
		m := notifyMsg{At: time.Now(), Text: string(buf[:n])}
		if scms, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
			for _, scm := range scms {
				if cred, err := unix.ParseUnixCredentials(&scm); err == nil {
					m.PID = int(cred.Pid)
				}
			}
		}
		ready := false
		for _, l := range strings.Split(m.Text, "\n") {
			ready = ready || l == "READY=1"
		}
		if ready {
			if b, err := os.ReadFile(s.subnetFile); err == nil {
				m.SubnetEnv = string(b)
			}
		}
		s.mu.Lock()
		s.msgs = append(s.msgs, m)
		s.mu.Unlock()
	}
}

// readyAfter waits for a READY=1 datagram received at or after since
// (a restarted weftd sends a new one).
func (s *notifySocket) readyAfter(since time.Time, d time.Duration) (notifyMsg, error) {
	deadline := time.Now().Add(d)
	for {
		s.mu.Lock()
		for _, m := range s.msgs {
			if !m.At.Before(since) && strings.Contains("\n"+m.Text+"\n", "\nREADY=1\n") {
				s.mu.Unlock()
				return m, nil
			}
		}
		s.mu.Unlock()
		if time.Now().After(deadline) {
			return notifyMsg{}, fmt.Errorf("no READY=1 on %s within %s (got %q)", s.Path, d, s.texts())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (s *notifySocket) texts() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, m := range s.msgs {
		out = append(out, m.Text)
	}
	return out
}

func (s *notifySocket) Close() { s.conn.Close(); os.Remove(s.Path) }

// procCmdline is a process's argv from /proc, what `ps -o args` shows.
func procCmdline(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil, err
	}
	return strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00"), nil
}

// exitCode is a finished command's exit status (-1 when it did not run or
// died of a signal).
func exitCode(err error) int {
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.ExitCode()
	}
	return -1
}
