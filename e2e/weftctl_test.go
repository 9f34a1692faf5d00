package e2e

import (
	"bufio"
	"context"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/lab"
)

// weftctl lab up in one process, status and down from others, as an
// operator uses them; down stops the up process, which removes everything.
func TestWeftctlLabUpStatusDown(t *testing.T) {
	name := uniqueName()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	up := exec.CommandContext(ctx, binDir+"/weftctl", "lab", "up", "--name", name, "--hosts", "2", "--backend", "host-gw")
	up.Stderr = testWriter{t}
	stdout, err := up.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := up.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Only if the test failed half-way: stop our own process, by PID.
		if up.ProcessState == nil {
			up.Process.Signal(syscall.SIGTERM)
			up.Wait()
		}
		lab.Down(context.Background(), name, nil)
	})
	isUp := make(chan struct{})
	var out strings.Builder
	go func() {
		sc := bufio.NewScanner(stdout)
		once := false
		for sc.Scan() {
			out.WriteString(sc.Text() + "\n")
			if !once && strings.Contains(sc.Text(), "is up") {
				once = true
				close(isUp)
			}
		}
		io.Copy(io.Discard, stdout)
	}()
	select {
	case <-isUp:
	case <-ctx.Done():
		t.Fatalf("weftctl lab up did not come up: %v", ctx.Err())
	}

	st, err := runCmd(ctx, binDir+"/weftctl", "lab", "status", "--name", name)
	t.Logf("weftctl lab status:\n%s", st)
	if err != nil {
		t.Errorf("weftctl lab status: %v", err)
	}
	if !strings.Contains(st, "all 2 pings passed") || !strings.Contains(st, name+"-h2") {
		t.Errorf("status output lacks the table or the passing matrix")
	}
	if out, err := runCmd(ctx, binDir+"/weftctl", "lab", "up", "--name", name); err == nil || !strings.Contains(out, "already running") {
		t.Errorf("a second lab up with the same name: %v: %s", err, out)
	}

	down, err := runCmd(ctx, binDir+"/weftctl", "lab", "down", "--name", name)
	if err != nil {
		t.Errorf("weftctl lab down: %v: %s", err, down)
	}
	werr := up.Wait()
	t.Logf("weftctl lab up output:\n%s", out.String())
	if werr != nil {
		t.Errorf("weftctl lab up after down: %v (want exit 0)", werr)
	}
	if _, err := os.Stat(lab.StateDirFor(name)); !os.IsNotExist(err) {
		t.Errorf("state dir left after down: %v", err)
	}
	if out, _ := runCmd(ctx, "ip", "netns", "list"); strings.Contains(out, name+"-") {
		t.Errorf("namespaces left after down:\n%s", out)
	}
	if out, err := runCmd(ctx, binDir+"/weftctl", "lab", "status", "--name", name); err == nil || !strings.Contains(out, "no lab named") {
		t.Errorf("status after down: %v: %s", err, out)
	}
}
