package weftctl

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const dockerSeedEnv = "FLANNEL_NETWORK=172.30.0.0/16\nFLANNEL_SUBNET=172.30.72.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"

const dockerSeedOut = `DOCKER_OPT_BIP="--bip=172.30.72.1/24"
DOCKER_OPT_IPMASQ="--ip-masq=true"
DOCKER_OPT_MTU="--mtu=1450"
DOCKER_NETWORK_OPTIONS=" --bip=172.30.72.1/24 --ip-masq=true --mtu=1450 "
`

func TestDockerOpts(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "subnet.env")
	out := filepath.Join(dir, "docker")
	if err := os.WriteFile(in, []byte(dockerSeedEnv), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := cfgRun(t, nil, "", "docker-opts", "-f", in, "-k", "DOCKER_NETWORK_OPTIONS", "-d", out)
	if code != 0 {
		t.Fatalf("code %d, stderr %q", code, stderr)
	}
	if b, _ := os.ReadFile(out); string(b) != dockerSeedOut {
		t.Errorf("output\n got %q\nwant %q", b, dockerSeedOut)
	}

	// The inherited value comes from the environment (Env.LookupEnv).
	code, _, stderr = cfgRun(t, map[string]string{"DOCKER_OPTS": "--selinux-enabled"}, "", "docker-opts", "-c", "-m", "-f", in, "-d", out)
	if code != 0 {
		t.Fatalf("code %d, stderr %q", code, stderr)
	}
	if b, _ := os.ReadFile(out); string(b) != "DOCKER_OPTS=\"--selinux-enabled --bip=172.30.72.1/24 --mtu=1450 \"\n" {
		t.Errorf("-c -m with inherited DOCKER_OPTS: %q", b)
	}

	// Broken input: exit 1, a message naming the problem, output untouched.
	if err := os.WriteFile(in, []byte(strings.Replace(dockerSeedEnv, "false", "maybe", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, stderr = cfgRun(t, nil, "", "docker-opts", "-c", "-m", "-f", in, "-d", out)
	if code != 1 || !strings.Contains(stderr, `FLANNEL_IPMASQ "maybe": must be true or false`) {
		t.Errorf("bad FLANNEL_IPMASQ: code %d, stderr %q", code, stderr)
	}
	code, _, stderr = cfgRun(t, nil, "", "docker-opts", "-f", filepath.Join(dir, "missing.env"), "-d", out)
	if code != 1 || !strings.Contains(stderr, "missing.env: no such file") {
		t.Errorf("missing subnet.env: code %d, stderr %q", code, stderr)
	}
	if b, _ := os.ReadFile(out); !strings.Contains(string(b), "--selinux-enabled") {
		t.Errorf("a failed run changed the output: %q", b)
	}

	// Usage errors exit 2.
	code, _, stderr = cfgRun(t, nil, "", "docker-opts", "-x")
	if code != 2 || !strings.Contains(stderr, "unknown option -x") || !strings.Contains(stderr, "-k\tSet the combined") {
		t.Errorf("-x: code %d, stderr %q", code, stderr)
	}
}

// TestDistScript runs dist/mk-docker-opts.sh with POSIX sh against a weftctl
// built from this tree and placed next to it, as a release unpacks them.
func TestDistScript(t *testing.T) {
	if testing.Short() {
		t.Skip("builds weftctl")
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go tool not on PATH")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "weftctl")
	build := exec.Command(gobin, "build", "-o", bin, "github.com/weft-net/weft/cmd/weftctl")
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build weftctl: %v\n%s", err, b)
	}
	src, err := os.ReadFile(filepath.Join("..", "..", "dist", "mk-docker-opts.sh"))
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(dir, "mk-docker-opts.sh")
	if err := os.WriteFile(script, src, 0o755); err != nil {
		t.Fatal(err)
	}
	in := filepath.Join(dir, "subnet.env")
	out := filepath.Join(dir, "run", "flannel", "docker")
	if err := os.WriteFile(in, []byte(dockerSeedEnv), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", script, "-f", in, "-k", "DOCKER_NETWORK_OPTIONS", "-d", out)
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mk-docker-opts.sh: %v\n%s", err, b)
	}
	if b, _ := os.ReadFile(out); string(b) != dockerSeedOut {
		t.Errorf("output\n got %q\nwant %q", b, dockerSeedOut)
	}

	// The exit status is passed through.
	cmd = exec.Command("sh", script, "-f", filepath.Join(dir, "missing.env"), "-d", out)
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	if b, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(b), "no such file") {
		t.Errorf("missing subnet.env through the script: err %v, output %q", err, b)
	}

	// Not next to it: weftctl is found on PATH.
	lone := filepath.Join(t.TempDir(), "mk-docker-opts.sh")
	if err := os.WriteFile(lone, src, 0o755); err != nil {
		t.Fatal(err)
	}
	out2 := filepath.Join(dir, "docker2")
	cmd = exec.Command("sh", lone, "-c", "-f", in, "-d", out2)
	cmd.Env = []string{"PATH=" + dir + ":/usr/bin:/bin"}
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mk-docker-opts.sh with weftctl on PATH: %v\n%s", err, b)
	}
	if b, _ := os.ReadFile(out2); string(b) != "DOCKER_OPTS=\" --bip=172.30.72.1/24 --ip-masq=true --mtu=1450 \"\n" {
		t.Errorf("output via PATH: %q", b)
	}

	// No weftctl next to it nor on PATH: a clear message, status 127.
	cmd = exec.Command("sh", lone)
	cmd.Env = []string{"PATH=" + t.TempDir()}
	b, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 127 || !strings.Contains(string(b), "weftctl not found") {
		t.Errorf("without weftctl: err %v, output %q", err, b)
	}
}
