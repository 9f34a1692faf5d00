package lab

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// $DOCKER_NETWORK_OPTIONS as the drop-in's ExecStart gets it: a missing
// file (EnvironmentFile=-) is no options; the seed's file splits at spaces.
func TestDockerNetworkOptions(t *testing.T) {
	dir := t.TempDir()
	if got, err := DockerNetworkOptions(filepath.Join(dir, "none")); err != nil || got != nil {
		t.Fatalf("missing file: %q, %v; want none", got, err)
	}
	f := filepath.Join(dir, "docker")
	seed := "DOCKER_OPT_BIP=\"--bip=172.30.72.1/24\"\nDOCKER_NETWORK_OPTIONS=\" --bip=172.30.72.1/24 --ip-masq=true --mtu=1450 \"\n"
	if err := os.WriteFile(f, []byte(seed), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := DockerNetworkOptions(f)
	if want := []string{"--bip=172.30.72.1/24", "--ip-masq=true", "--mtu=1450"}; err != nil || !slices.Equal(got, want) {
		t.Fatalf("seed file: %q, %v; want %q", got, err, want)
	}
	if err := os.WriteFile(f, []byte("not an env file\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := DockerNetworkOptions(f); err == nil || !strings.Contains(err.Error(), f) {
		t.Fatalf("garbage: error %v, want one naming %s", err, f)
	}
}

// docker inspect's answer is checked, not trusted.
func TestParseInspect(t *testing.T) {
	pid, ip, err := parseInspect([]byte(`[{"State":{"Running":true,"Pid":4242},"NetworkSettings":{"IPAddress":"172.30.72.2"}}]`))
	if err != nil || pid != 4242 || ip.String() != "172.30.72.2" {
		t.Fatalf("good answer: %d %s %v", pid, ip, err)
	}
	for in, want := range map[string]string{
		`[]`: "0 containers",
		`[{"State":{"Running":false,"Pid":0},"NetworkSettings":{"IPAddress":"172.30.72.2"}}]`: "not running",
		`[{"State":{"Running":true,"Pid":1},"NetworkSettings":{"IPAddress":"172.30.72.2"}}]`:  "pid 1",
		`[{"State":{"Running":true,"Pid":9},"NetworkSettings":{"IPAddress":""}}]`:             `IPAddress "": not an IPv4 address`,
		`[{"State":{"Running":true,"Pid":9},"NetworkSettings":{"IPAddress":"fd00::2"}}]`:      "not an IPv4",
		`{`: "unexpected end",
	} {
		if _, _, err := parseInspect([]byte(in)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("parseInspect(%s): %v, want an error containing %q", in, err, want)
		}
	}
}
