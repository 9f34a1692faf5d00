// Package dist_test checks the files an operator installs: `make install`
// puts binaries, units and samples where PREFIX/DESTDIR say, and the units
// pass `systemd-analyze verify`.
package dist_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func makeInstall(t *testing.T, args ...string) {
	t.Helper()
	cmd := exec.Command("make", append([]string{"-s", "-C", repoRoot(t), "install", "BIN=" + filepath.Join(t.TempDir(), "bin")}, args...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make install %v: %v\n%s", args, err, out)
	}
}

func read(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// DESTDIR only moves where files land; the unit names the final paths.
func TestInstallDestdir(t *testing.T) {
	dest := t.TempDir()
	makeInstall(t, "DESTDIR="+dest, "PREFIX=/usr")
	for _, f := range []struct {
		path string
		mode os.FileMode
	}{
		{"usr/bin/weftd", 0o755}, {"usr/bin/weftctl", 0o755},
		{"usr/libexec/flannel/mk-docker-opts.sh", 0o755},
		{"usr/lib/systemd/system/weftd.service", 0o644},
		{"usr/lib/systemd/system/docker.service.d/flannel.conf", 0o644},
		{"etc/sysconfig/flanneld", 0o644},
	} {
		fi, err := os.Stat(filepath.Join(dest, f.path))
		if err != nil {
			t.Errorf("not installed: %v", err)
			continue
		}
		if fi.Mode().Perm() != f.mode {
			t.Errorf("%s: mode %v, want %v", f.path, fi.Mode().Perm(), f.mode)
		}
	}
	unit := read(t, filepath.Join(dest, "usr/lib/systemd/system/weftd.service"))
	for _, want := range []string{
		"Type=notify", "EnvironmentFile=-/etc/sysconfig/flanneld", "Restart=always",
		"ExecStart=/usr/bin/weftd -etcd-endpoints=${FLANNEL_ETCD_ENDPOINTS} -etcd-prefix=${FLANNEL_ETCD_PREFIX} $FLANNEL_OPTIONS",
		"ExecStartPost=/usr/bin/weftctl docker-opts -k DOCKER_NETWORK_OPTIONS -d /run/flannel/docker",
	} {
		if !strings.Contains(unit, want) {
			t.Errorf("weftd.service lacks %q", want)
		}
	}
	if strings.Contains(unit, dest) {
		t.Error("DESTDIR leaked into the unit")
	}
	// No secret on the command line: ExecStart carries no password, and
	// the sample sysconfig sends operators to the password file.
	for _, l := range strings.Split(unit, "\n") {
		if strings.HasPrefix(l, "ExecStart") && strings.Contains(strings.ToLower(l), "password") {
			t.Errorf("weftd.service puts a password on the command line: %s", l)
		}
	}
	sample := read(t, filepath.Join(dest, "etc/sysconfig/flanneld"))
	for _, want := range []string{"#FLANNELD_ETCD_PASSWORD_FILE=", "#FLANNELD_ETCD_PASSWORD=", "Never put -etcd-password in FLANNEL_OPTIONS"} {
		if !strings.Contains(sample, want) {
			t.Errorf("sysconfig sample lacks %q", want)
		}
	}

	// An operator's edited sysconfig survives a reinstall.
	sc := filepath.Join(dest, "etc/sysconfig/flanneld")
	os.WriteFile(sc, []byte("FLANNEL_OPTIONS=-iface=eth0\n"), 0o644)
	makeInstall(t, "DESTDIR="+dest, "PREFIX=/usr")
	if got := read(t, sc); got != "FLANNEL_OPTIONS=-iface=eth0\n" {
		t.Errorf("reinstall overwrote /etc/sysconfig/flanneld: %q", got)
	}
}

// The installed units pass `systemd-analyze verify`, which checks every
// directive and that each Exec path is an executable. Installing under a
// PREFIX inside the test directory makes weftd's paths real; dockerd is not
// part of weft, so the drop-in's dockerd path is pointed at a stub, and a
// stub docker.service stands in for Docker's own.
func TestUnitsVerify(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatal("systemd-analyze not found: run scripts/install-deps.sh (it installs the systemd package)")
	}
	root := t.TempDir()
	prefix := filepath.Join(root, "usr")
	makeInstall(t, "PREFIX="+prefix, "SYSCONFDIR="+filepath.Join(root, "etc"))
	units := filepath.Join(prefix, "lib/systemd/system")
	stub := filepath.Join(root, "dockerd")
	os.WriteFile(stub, []byte("#!/bin/sh\n"), 0o755)
	dropin := filepath.Join(units, "docker.service.d/flannel.conf")
	os.WriteFile(dropin, []byte(strings.ReplaceAll(read(t, dropin), "/usr/bin/dockerd", stub)), 0o644)
	os.WriteFile(filepath.Join(units, "docker.service"), []byte("[Unit]\nDescription=Docker stub\n[Service]\nExecStart="+stub+"\n"), 0o644)

	verify := func(files ...string) (string, error) {
		cmd := exec.Command(sa, append([]string{"verify"}, files...)...)
		// Only our directory is searched, so the drop-in applies and the
		// host's units play no part.
		cmd.Env = append(os.Environ(), "SYSTEMD_UNIT_PATH="+units+":", "SYSTEMD_LOG_LEVEL=notice")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	// The check must be able to fail: a unit with a bad directive and a
	// missing binary is refused.
	bad := filepath.Join(units, "bad.service")
	os.WriteFile(bad, []byte("[Service]\nType=notfy\nExecStart=/nonexistent/weftd\n"), 0o644)
	out, err := verify(bad)
	if err == nil && !strings.Contains(out, "bad.service") {
		t.Skipf("systemd-analyze verify cannot judge units in this container (a broken unit passed): %s", out)
	}
	os.Remove(bad)

	out, err = verify(filepath.Join(units, "weftd.service"), filepath.Join(units, "docker.service"))
	if err != nil || strings.Contains(out, "weftd.service") || strings.Contains(out, "flannel.conf") {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	t.Logf("systemd-analyze verify: clean\n%s", out)
}
