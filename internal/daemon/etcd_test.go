package daemon

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/testutil/etcdtest"
)

// A wrong etcd password does not stop weftd: it says why once, naming the
// endpoint, within 5 s, keeps retrying (without the password in the log)
// and stops cleanly on a signal.
func TestBadEtcdPasswordLoggedOnceAndRetried(t *testing.T) {
	srv := etcdtest.New(t)
	etcdtest.EnableAuth(t, etcdtest.NewClient(t, srv), "weft", "right", "/coreos.com/network/")
	logs := &syncBuf{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	start := time.Now()
	go func() {
		done <- Main(ctx, []string{"-etcd-endpoints", srv.Endpoint, "-etcd-username", "weft", "-etcd-password", "wrong-pw",
			"-subnet-file", t.TempDir() + "/subnet.env"}, io.Discard, logs, noEnv)
	}()
	waitUntil(t, 5*time.Second, "the cause in the log", func() bool { return strings.Contains(logs.String(), "authentication failed") })
	t.Logf("cause logged after %s", time.Since(start).Round(time.Millisecond))
	time.Sleep(2500 * time.Millisecond) // let it retry; the check below is on what the retries log
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("exit %d on cancel, want 0", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("weftd did not stop")
	}
	out := logs.String()
	if c := strings.Count(out, "cannot use etcd"); c != 1 {
		t.Errorf("cause logged %d times, want once:\n%s", c, out)
	}
	if !strings.Contains(out, srv.Endpoint) {
		t.Errorf("log does not name the endpoint %s:\n%s", srv.Endpoint, out)
	}
	if strings.Contains(out, "wrong-pw") {
		t.Errorf("password in the log:\n%s", out)
	}
}
