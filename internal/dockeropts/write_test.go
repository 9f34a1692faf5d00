package dockeropts

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const seedOut = `DOCKER_OPT_BIP="--bip=172.30.72.1/24"
DOCKER_OPT_IPMASQ="--ip-masq=true"
DOCKER_OPT_MTU="--mtu=1450"
DOCKER_OPTS=" --bip=172.30.72.1/24 --ip-masq=true --mtu=1450 "
`

// runTo runs the seed case with -d out.
func runTo(t *testing.T, out string) error {
	t.Helper()
	in := filepath.Join(t.TempDir(), "subnet.env")
	if err := os.WriteFile(in, []byte(seedEnv), 0o644); err != nil {
		t.Fatal(err)
	}
	o, err := ParseArgs([]string{"-f", in, "-d", out})
	if err != nil {
		t.Fatal(err)
	}
	return Run(o, noEnv)
}

// -d naming a symlink to a file keeps the link and writes its target (also
// a dangling link, whose target is created, and a longer file shortened).
func TestWriteThroughSymlink(t *testing.T) {
	for _, tc := range []struct {
		name string
		old  *string // nil: the target does not exist
	}{
		{"existing target", ptr(strings.Repeat("old content that is longer than the new one\n", 10))},
		{"dangling link", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			target := filepath.Join(dir, "real", "docker")
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				t.Fatal(err)
			}
			if tc.old != nil {
				if err := os.WriteFile(target, []byte(*tc.old), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			link := filepath.Join(dir, "docker")
			if err := os.Symlink(target, link); err != nil {
				t.Fatal(err)
			}
			if err := runTo(t, link); err != nil {
				t.Fatal(err)
			}
			if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
				t.Fatalf("%s is no longer a symlink: %v, %v", link, fi.Mode(), err)
			}
			if got, _ := os.Readlink(link); got != target {
				t.Errorf("link points at %q, want %q", got, target)
			}
			if got, _ := os.ReadFile(target); string(got) != seedOut {
				t.Errorf("target holds %q, want %q", got, seedOut)
			}
			if ents, _ := os.ReadDir(dir); len(ents) != 2 {
				t.Errorf("%s holds %d entries, want the link and real/ (temp file left?)", dir, len(ents))
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

// What `weftctl docker-opts -d /dev/stdout` meets: a symlink to a magic
// /proc/self/fd link to a pipe, and a symlink to a terminal (a character
// device). Each must be written in place and stay what it was.
func TestWriteToDevices(t *testing.T) {
	t.Run("pipe as /dev/stdout", func(t *testing.T) {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		fdPath := "/proc/self/fd/" + strconv.Itoa(int(w.Fd()))
		link := filepath.Join(t.TempDir(), "stdout")
		if err := os.Symlink(fdPath, link); err != nil {
			t.Fatal(err)
		}
		errc := make(chan error, 1)
		go func() { errc <- runTo(t, link); w.Close() }()
		got, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		if string(got) != seedOut {
			t.Errorf("read from the pipe %q, want %q", got, seedOut)
		}
		if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
			t.Errorf("%s is no longer a symlink: %v", link, err)
		}
	})
	t.Run("terminal", func(t *testing.T) {
		master, pts := openPTY(t)
		defer master.Close()
		for _, out := range []string{pts, symlinkTo(t, pts)} {
			if err := runTo(t, out); err != nil {
				t.Fatal(err)
			}
			got := readFor(t, master, len(seedOut))
			// The terminal's line discipline turns \n into \r\n.
			if g := string(bytes.ReplaceAll(got, []byte("\r\n"), []byte("\n"))); g != seedOut {
				t.Errorf("-d %s: read from the terminal %q, want %q", out, g, seedOut)
			}
			fi, err := os.Stat(pts)
			if err != nil || fi.Mode()&os.ModeCharDevice == 0 {
				t.Fatalf("%s is no longer a character device: %v, %v", pts, fi.Mode(), err)
			}
		}
	})
}

func symlinkTo(t *testing.T, target string) string {
	link := filepath.Join(t.TempDir(), "tty")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	return link
}

// openPTY opens a pseudo-terminal pair and returns the master and the
// slave's /dev/pts path.
func openPTY(t *testing.T) (*os.File, string) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here (open /dev/ptmx: %v)", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		m.Close()
		t.Fatalf("unlock pty: %v", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		m.Close()
		t.Fatalf("pty number: %v", err)
	}
	return m, "/dev/pts/" + strconv.Itoa(n)
}

// readFor reads at least n bytes (after \r\n folding they may be fewer) or
// what arrived within 2 s.
func readFor(t *testing.T, f *os.File, n int) []byte {
	t.Helper()
	var out []byte
	buf := make([]byte, 4096)
	deadline := time.Now().Add(2 * time.Second)
	for len(bytes.ReplaceAll(out, []byte("\r\n"), []byte("\n"))) < n && time.Now().Before(deadline) {
		f.SetReadDeadline(deadline)
		k, err := f.Read(buf)
		out = append(out, buf[:k]...)
		if err != nil {
			break
		}
	}
	return out
}
