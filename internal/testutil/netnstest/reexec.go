package netnstest

import (
	"os"
	"os/exec"
	"regexp"
	"testing"
)

const inNetnsEnv = "WEFT_TEST_IN_NETNS"

// InNewNetns runs the calling test again, alone, in a child test process
// inside a fresh network namespace (via `ip netns exec`), so that code which
// works on "the current namespace" — a whole daemon, iptables, an embedded
// etcd on 127.0.0.1 — runs for real without touching this machine's network.
//
// Use it as the first line of a test:
//
//	if netnstest.InNewNetns(t) { return }
//
// In the parent it returns true after the child finished (the test fails if
// the child failed); in the child it returns false and the test body runs.
func InNewNetns(t *testing.T) bool {
	t.Helper()
	if os.Getenv(inNetnsEnv) == t.Name() {
		return false
	}
	RequireRoot(t)
	ns := New(t, "wtx")
	args := []string{"netns", "exec", ns.Name, os.Args[0],
		"-test.run", "^" + regexp.QuoteMeta(t.Name()) + "$", "-test.count=1"}
	if testing.Verbose() {
		args = append(args, "-test.v")
	}
	cmd := exec.Command("ip", args...)
	cmd.Env = append(os.Environ(), inNetnsEnv+"="+t.Name())
	out, err := cmd.CombinedOutput()
	t.Logf("child in netns %s:\n%s", ns.Name, out)
	if err != nil {
		t.Fatalf("test in netns %s failed: %v", ns.Name, err)
	}
	return true
}
