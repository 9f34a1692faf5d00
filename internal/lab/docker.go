package lab

// Docker as the ops note runs it: weftd writes subnet.env, `weftctl
// docker-opts -k DOCKER_NETWORK_OPTIONS -d /run/flannel/docker` (the lab's
// writeDockerOpts, the same code) turns it into an environment file, and
// Docker's unit, with the drop-in dist/docker.service.d/flannel.conf,
// starts `dockerd $DOCKER_NETWORK_OPTIONS` with EnvironmentFile=-<that file>.
// The lab does exactly that per host and nothing more: the only network
// options dockerd gets are the file's; the rest of its command line only
// keeps one host's dockerd apart from another's (data and exec roots,
// pidfile, API socket, config file).
//
// dockerd is started with nsenter --net, not `ip netns exec`: the latter
// also remounts /sys in a private mount namespace, where dockerd finds no
// cgroups ("Devices cgroup isn't mounted"). So dockerd, its containerd and
// its mounts live in the root mount namespace, under the lab's state
// directory, and `lab down` finds them there.

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/weft-net/weft/internal/rtnl"
	"github.com/weft-net/weft/internal/subnetenv"
)

const (
	// DockerImage is the image every lab container runs: a static busybox
	// imported offline, so the lab needs no registry.
	DockerImage = "weft-busybox"
	// dockerContainer is the name of each host's container.
	dockerContainer = "c1"
	// dockerOptionsKey is the variable the drop-in puts on dockerd's
	// command line.
	dockerOptionsKey = "DOCKER_NETWORK_OPTIONS"
	busyboxPath      = "/bin/busybox"
	dockerdStart     = 30 * time.Second
	// dockerdStop bounds a dockerd's exit after SIGTERM; its containers are
	// removed first, so it has only itself and its containerd to stop.
	dockerdStop = 20 * time.Second
)

// dockerPaths are one host's dockerd files, all under the host's state
// directory so that nothing of one host's Docker is shared with another's.
type dockerPaths struct {
	dir      string // the host's state directory
	dataRoot string // --data-root: images, containers, containerd's root
	execRoot string // --exec-root: kept short, containerd's sockets go below it
	pidFile  string
	sock     string
	config   string // --config-file: an empty one, so /etc/docker/daemon.json never applies
	log      string
	optsFile string // the lab's /run/flannel/docker
	// cgroup is --cgroup-parent: the host's containers' cgroups go below
	// it instead of Docker's shared /docker, and it is removed with them.
	cgroup string
}

func dockerPathsIn(dir string) dockerPaths {
	return dockerPaths{
		dir:      dir,
		dataRoot: filepath.Join(dir, "docker-data"),
		execRoot: filepath.Join(dir, "dx"),
		pidFile:  filepath.Join(dir, "dockerd.pid"),
		sock:     filepath.Join(dir, "docker.sock"),
		config:   filepath.Join(dir, "daemon.json"),
		log:      filepath.Join(dir, "dockerd.log"),
		optsFile: filepath.Join(dir, "docker"),
		cgroup:   "/weft-lab-" + filepath.Base(dir),
	}
}

func (h *Host) docker() dockerPaths { return dockerPathsIn(filepath.Dir(h.SubnetFile)) }

// DockerAvailable reports why real Docker cannot run here, or nil: the
// binaries of Debian's docker.io, a static busybox for the image, nsenter,
// and the cgroups dockerd needs.
func DockerAvailable() error {
	var missing []string
	for _, tool := range []struct{ cmd, pkg string }{
		{"dockerd", "docker.io"}, {"containerd", "docker.io"}, {"runc", "docker.io"}, {"nsenter", "util-linux"},
	} {
		if _, err := exec.LookPath(tool.cmd); err != nil {
			missing = append(missing, fmt.Sprintf("%s (apt-get install %s)", tool.cmd, tool.pkg))
		}
	}
	if _, err := dockerCLI(); err != nil {
		missing = append(missing, "docker (apt-get install docker.io)")
	}
	if len(missing) > 0 {
		return fmt.Errorf("real Docker cannot run here: missing %s (scripts/install-deps.sh installs them)", strings.Join(missing, ", "))
	}
	if err := checkStatic(busyboxPath); err != nil {
		return fmt.Errorf("real Docker containers need a static busybox for their image: %w (apt-get install busybox-static)", err)
	}
	// cgroup v1 needs the devices controller mounted; v2 has it built in.
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err != nil {
		if _, err := os.Stat("/sys/fs/cgroup/devices"); err != nil {
			return errors.New("real Docker cannot run here: no cgroup v2 at /sys/fs/cgroup and no cgroup v1 devices controller at /sys/fs/cgroup/devices (dockerd: \"Devices cgroup isn't mounted\")")
		}
	}
	return nil
}

// dockerCLI is the docker client of the dockerd found: the one next to it
// first, since another client on PATH may be of a much newer API.
func dockerCLI() (string, error) {
	if d, err := exec.LookPath("dockerd"); err == nil {
		if c := filepath.Join(filepath.Dir(d), "docker"); isExecutable(c) {
			return c, nil
		}
	}
	return exec.LookPath("docker")
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// checkStatic refuses a dynamically linked binary: the image has no libc.
func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked", path)
		}
	}
	return nil
}

// addDockerContainer starts a real dockerd in h's namespace, configured
// only from the files the ops note uses, and runs one container on it.
func (l *Lab) addDockerContainer(ctx context.Context, h *Host) error {
	if l.cfg.IPv6 {
		return errors.New("containers docker: no IPv6 (docker-opts gives dockerd no IPv6 options); use --containers netns for a dual-stack lab")
	}
	if err := DockerAvailable(); err != nil {
		return err
	}
	h.cleanups = append(h.cleanups, func() error { return l.stopDockerd(context.Background(), h) })
	if err := l.startDockerd(ctx, h); err != nil {
		return err
	}
	return l.runDockerContainer(ctx, h)
}

// DockerNetworkOptions reads DOCKER_NETWORK_OPTIONS from an environment
// file as systemd's EnvironmentFile=-path does (a missing file is no
// variable) and splits it as the unquoted $DOCKER_NETWORK_OPTIONS on an
// ExecStart line is split: at whitespace.
func DockerNetworkOptions(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	vars, err := subnetenv.ParseVars(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var v string
	for _, x := range vars {
		if x.Name == dockerOptionsKey {
			v = x.Value // a later assignment wins
		}
	}
	return strings.Fields(v), nil
}

// StartDockerd starts host i's dockerd as the ops note's docker.service
// with the drop-in does: with $DOCKER_NETWORK_OPTIONS from the host's
// /run/flannel/docker, or none when that file does not exist yet (dockerd
// started before weftd). It returns once the API answers.
func (l *Lab) StartDockerd(ctx context.Context, i int) error {
	h, err := l.host(i)
	if err != nil {
		return err
	}
	if err := l.startDockerd(ctx, h); err != nil {
		return fmt.Errorf("host %s: %w", h.Name, err)
	}
	return nil
}

func (l *Lab) startDockerd(ctx context.Context, h *Host) error {
	p := h.docker()
	if pid := dockerdPID(p); pid > 0 {
		return fmt.Errorf("dockerd already running (pid %d)", pid)
	}
	opts, err := DockerNetworkOptions(p.optsFile)
	if err != nil {
		return fmt.Errorf("%s from %s: %w", dockerOptionsKey, p.optsFile, err)
	}
	if err := os.WriteFile(p.config, []byte("{}\n"), 0o644); err != nil {
		return fmt.Errorf("write dockerd config: %w", err)
	}
	logf, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open dockerd log: %w", err)
	}
	// nsenter execs dockerd in place, so the PID is dockerd's own.
	args := []string{"--net=" + h.NS.Path, "dockerd",
		"--data-root=" + p.dataRoot, "--exec-root=" + p.execRoot, "--pidfile=" + p.pidFile,
		"--host=unix://" + p.sock, "--config-file=" + p.config, "--cgroup-parent=" + p.cgroup}
	args = append(args, opts...)
	cmd := exec.Command("nsenter", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group (a Ctrl-C reaches the lab, which stops dockerd
	// in order), and gone with the lab process if that dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	fmt.Fprintf(logf, "--- %s lab: starting %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(cmd.Args, " "))
	start := time.Now()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start dockerd: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait(); logf.Close() }()
	deadline := time.Now().Add(dockerdStart)
	for {
		if _, err := l.docker(ctx, h, "version", "--format", "{{.Server.Version}}"); err == nil {
			break
		}
		select {
		case err := <-exited:
			return fmt.Errorf("dockerd exited at start (%v); its log %s ends:\n%s", err, p.log, logTail(p.log, 10))
		case <-ctx.Done():
			syscall.Kill(cmd.Process.Pid, syscall.SIGTERM)
			return fmt.Errorf("waiting for dockerd: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			syscall.Kill(cmd.Process.Pid, syscall.SIGTERM)
			return fmt.Errorf("dockerd did not answer on %s within %s; its log %s ends:\n%s", p.sock, dockerdStart, p.log, logTail(p.log, 10))
		}
	}
	l.log.Info("dockerd running", "host", h.Name, "pid", cmd.Process.Pid, "options", strings.Join(opts, " "), "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// Docker runs the docker client against host i's dockerd and returns its
// standard output.
func (l *Lab) Docker(ctx context.Context, i int, args ...string) (string, error) {
	h, err := l.host(i)
	if err != nil {
		return "", err
	}
	return l.docker(ctx, h, args...)
}

func (l *Lab) docker(ctx context.Context, h *Host, args ...string) (string, error) {
	return dockerAt(ctx, h.docker().sock, nil, args...)
}

func dockerAt(ctx context.Context, sock string, stdin []byte, args ...string) (string, error) {
	cli, err := dockerCLI()
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, cli, append([]string{"--host=unix://" + sock}, args...)...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("docker %s (%s): %w: %s", strings.Join(args, " "), sock, err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// RunDockerContainer runs host i's container (removing an earlier one) and
// names its namespace <host>-c1, as the lab's other containers are named;
// Host.ContainerNS and ContainerIP follow.
func (l *Lab) RunDockerContainer(ctx context.Context, i int) error {
	h, err := l.host(i)
	if err != nil {
		return err
	}
	if err := l.runDockerContainer(ctx, h); err != nil {
		return fmt.Errorf("host %s: %w", h.Name, err)
	}
	return l.saveState()
}

func (l *Lab) runDockerContainer(ctx context.Context, h *Host) error {
	if err := l.removeDockerContainer(ctx, h); err != nil {
		return err
	}
	images, err := l.docker(ctx, h, "images", "-q", DockerImage)
	if err != nil {
		return err
	}
	if strings.TrimSpace(images) == "" {
		img, err := busyboxImage()
		if err != nil {
			return err
		}
		if _, err := dockerAt(ctx, h.docker().sock, img, "import", "-", DockerImage); err != nil {
			return fmt.Errorf("import the busybox image: %w", err)
		}
	}
	if _, err := l.docker(ctx, h, "run", "-d", "--name", dockerContainer, DockerImage, "sleep", "1d"); err != nil {
		return err
	}
	out, err := l.docker(ctx, h, "inspect", "--type", "container", dockerContainer)
	if err != nil {
		return err
	}
	pid, ip, err := parseInspect([]byte(out))
	if err != nil {
		return fmt.Errorf("docker inspect %s: %w", dockerContainer, err)
	}
	name := h.Name + "-c1"
	if out, err := exec.CommandContext(ctx, "ip", "netns", "attach", name, strconv.Itoa(pid)).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns attach %s %d: %v: %s", name, pid, err, strings.TrimSpace(string(out)))
	}
	ns, err := rtnl.OpenNS(name)
	if err != nil {
		exec.Command("ip", "netns", "del", name).Run()
		return err
	}
	l.mu.Lock()
	h.ContainerNS, h.ContainerIP = ns, ip
	l.mu.Unlock()
	l.log.Info("docker container running", "host", h.Name, "container", dockerContainer, "pid", pid, "ip", ip)
	return nil
}

// parseInspect takes the container's PID and IPv4 address on the default
// bridge from `docker inspect` output, checking both.
func parseInspect(b []byte) (int, netip.Addr, error) {
	var cs []struct {
		State struct {
			Running bool
			Pid     int
		}
		NetworkSettings struct{ IPAddress string }
	}
	if err := json.Unmarshal(b, &cs); err != nil {
		return 0, netip.Addr{}, err
	}
	if len(cs) != 1 {
		return 0, netip.Addr{}, fmt.Errorf("%d containers in the answer, want 1", len(cs))
	}
	c := cs[0]
	if !c.State.Running || c.State.Pid <= 1 {
		return 0, netip.Addr{}, fmt.Errorf("not running (running %v, pid %d)", c.State.Running, c.State.Pid)
	}
	ip, err := netip.ParseAddr(c.NetworkSettings.IPAddress)
	if err != nil || !ip.Is4() {
		return 0, netip.Addr{}, fmt.Errorf("IPAddress %q: not an IPv4 address", c.NetworkSettings.IPAddress)
	}
	return c.State.Pid, ip, nil
}

// removeDockerContainer removes the host's namespace name of its container
// and, while dockerd runs, the container. It is removed by SIGKILL (`rm
// -f`): busybox's sleep as PID 1 ignores SIGTERM, and dockerd would wait
// its shutdown timeout for it.
func (l *Lab) removeDockerContainer(ctx context.Context, h *Host) error {
	l.mu.Lock()
	ns := h.ContainerNS
	h.ContainerNS, h.ContainerIP = nil, netip.Addr{}
	l.mu.Unlock()
	if ns != nil {
		ns.Close()
	}
	if dockerdPID(h.docker()) == 0 {
		return nil
	}
	if _, err := l.docker(ctx, h, "rm", "-f", dockerContainer); err != nil && !strings.Contains(err.Error(), "No such container") {
		return err
	}
	return nil
}

// StopDockerd removes host i's container and stops its dockerd, as
// `systemctl stop docker` would (docker0 stays).
func (l *Lab) StopDockerd(ctx context.Context, i int) error {
	h, err := l.host(i)
	if err != nil {
		return err
	}
	if err := l.stopDockerd(ctx, h); err != nil {
		return errors.Join(fmt.Errorf("host %s: %w", h.Name, err), l.saveState())
	}
	return l.saveState()
}

func (l *Lab) stopDockerd(ctx context.Context, h *Host) error {
	err := l.removeDockerContainer(ctx, h)
	return errors.Join(err, stopDockerdAt(ctx, h.docker(), l.log.With("host", h.Name)))
}

// ForgetDocker removes host i's Docker state (images, containers and the
// networks dockerd remembers, e.g. the bridge's last --bip), as on a host
// where Docker never ran. dockerd must be stopped.
func (l *Lab) ForgetDocker(i int) error {
	h, err := l.host(i)
	if err != nil {
		return err
	}
	p := h.docker()
	if pid := dockerdPID(p); pid > 0 {
		return fmt.Errorf("host %s: dockerd (pid %d) still running; StopDockerd first", h.Name, pid)
	}
	if m := mountsUnder(p.dataRoot); len(m) > 0 {
		return fmt.Errorf("host %s: %s still mounted under %s", h.Name, strings.Join(m, ", "), p.dataRoot)
	}
	if err := os.RemoveAll(p.dataRoot); err != nil {
		return fmt.Errorf("host %s: remove Docker's data: %w", h.Name, err)
	}
	return nil
}

// dockerdPID is the PID in p's pidfile if that process is the dockerd
// started with that pidfile (never a recycled PID), else 0.
func dockerdPID(p dockerPaths) int {
	b, err := os.ReadFile(p.pidFile)
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 || !processAlive(pid) {
		return 0
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !bytes.Contains(cmdline, []byte("\x00--pidfile="+p.pidFile+"\x00")) {
		return 0
	}
	return pid
}

// stopDockerdAt stops the dockerd of p by SIGTERM (SIGKILL after
// dockerdStop) and waits for it to exit; no dockerd is no error.
func stopDockerdAt(ctx context.Context, p dockerPaths, log *slog.Logger) error {
	pid := dockerdPID(p)
	if pid == 0 {
		return removeCgroups(p.cgroup)
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("stop dockerd %d: %w", pid, err)
	}
	if !waitGone(ctx, pid, dockerdStop) {
		log.Warn("dockerd did not exit after SIGTERM; killing it", "pid", pid, "waited", dockerdStop)
		syscall.Kill(pid, syscall.SIGKILL)
		if !waitGone(ctx, pid, 5*time.Second) {
			return fmt.Errorf("dockerd %d still running after SIGKILL", pid)
		}
	}
	return removeCgroups(p.cgroup)
}

// removeCgroups removes the (empty) cgroup parent of a host's containers
// from every cgroup hierarchy; rmdir refuses one still in use.
func removeCgroups(parent string) error {
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", parent))
	dirs = append(dirs, filepath.Join("/sys/fs/cgroup", parent))
	var errs []error
	for _, d := range dirs {
		if err := syscall.Rmdir(d); err != nil && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

// downDocker is `lab down`'s part for Docker: every dockerd the lab in
// stateDir left running is stopped (its containers first, while its API
// still answers) and whatever is still mounted under stateDir — a killed
// dockerd's overlays and namespace files — is unmounted, deepest first.
func downDocker(ctx context.Context, stateDir string, log *slog.Logger) error {
	var errs []error
	pidFiles, _ := filepath.Glob(filepath.Join(stateDir, "*", "dockerd.pid"))
	for _, pf := range pidFiles {
		p := dockerPathsIn(filepath.Dir(pf))
		pid := dockerdPID(p)
		if pid == 0 {
			errs = append(errs, removeCgroups(p.cgroup))
			continue
		}
		log.Info("stopping a leftover dockerd", "pid", pid, "pidfile", pf)
		if ids, err := dockerAt(ctx, p.sock, nil, "ps", "-aq"); err == nil && strings.TrimSpace(ids) != "" {
			if _, err := dockerAt(ctx, p.sock, nil, append([]string{"rm", "-f"}, strings.Fields(ids)...)...); err != nil {
				errs = append(errs, err)
			}
		}
		errs = append(errs, stopDockerdAt(ctx, p, log))
	}
	for _, m := range mountsUnder(stateDir) {
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", m, err))
			continue
		}
		log.Info("unmounted a leftover mount", "path", m)
	}
	return errors.Join(errs...)
}

// mountsUnder lists the mount points at or below dir, deepest first.
func mountsUnder(dir string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMount(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	sort.Slice(out, func(i, j int) bool { return strings.Count(out[i], "/") > strings.Count(out[j], "/") })
	return out
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space, …).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

var busybox struct {
	once sync.Once
	tar  []byte
	err  error
}

// busyboxImage is the root filesystem of DockerImage as a tar for `docker
// import`: the static busybox and the applets the lab uses as symlinks.
func busyboxImage() ([]byte, error) {
	busybox.once.Do(func() {
		if busybox.err = checkStatic(busyboxPath); busybox.err != nil {
			return
		}
		bin, err := os.ReadFile(busyboxPath)
		if err != nil {
			busybox.err = err
			return
		}
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		hdrs := []*tar.Header{{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755}}
		hdrs = append(hdrs, &tar.Header{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(bin))})
		for _, applet := range []string{"sh", "sleep", "ip", "ping", "cat"} {
			hdrs = append(hdrs, &tar.Header{Name: "bin/" + applet, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777})
		}
		for _, h := range hdrs {
			if err := tw.WriteHeader(h); err != nil {
				busybox.err = err
				return
			}
			if h.Name == "bin/busybox" {
				if _, err := tw.Write(bin); err != nil {
					busybox.err = err
					return
				}
			}
		}
		busybox.err = tw.Close()
		busybox.tar = buf.Bytes()
	})
	if busybox.err != nil {
		return nil, fmt.Errorf("build the %s image from %s: %w", DockerImage, busyboxPath, busybox.err)
	}
	return busybox.tar, nil
}
