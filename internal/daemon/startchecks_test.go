package daemon

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/testutil/etcdtest"
	"github.com/weft-net/weft/internal/testutil/netnstest"
)

// runMain runs weftd in-process with the environment given; the returned
// channel receives its exit status.
func runMain(ctx context.Context, env map[string]string, log io.Writer, args ...string) chan int {
	done := make(chan int, 1)
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	go func() { done <- Main(ctx, args, io.Discard, log, lookup) }()
	return done
}

func exitWithin(t *testing.T, done chan int, d time.Duration, logs fmt.Stringer) int {
	t.Helper()
	select {
	case code := <-done:
		return code
	case <-time.After(d):
		t.Fatalf("weftd still running after %s; log:\n%s", d, logs)
		return 0
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// /readyz may be read by anyone who can reach it: in no waiting state does
// it name the etcd user or an endpoint (the log does). The user's password
// is wrong at first (cause: authentication failed), then fixed in etcd,
// after which weftd waits for its network config.
func TestReadyzNamesNoEtcdUserOrEndpoint(t *testing.T) {
	srv := etcdtest.New(t)
	etcdtest.EnableAuth(t, etcdtest.NewClient(t, srv), "opsuser7", "right", "/coreos.com/network/")
	port := freePort(t)
	logs := &syncBuf{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := runMain(ctx, nil, logs, "-etcd-endpoints", srv.Endpoint, "-etcd-username", "opsuser7",
		"-etcd-password", "wrong", "-healthz-port", fmt.Sprint(port), "-subnet-file", t.TempDir()+"/subnet.env")

	seen := map[string]bool{}
	poll := func(what string, until func(body string) bool) {
		t.Helper()
		waitUntil(t, 15*time.Second, what, func() bool {
			resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", port))
			if err != nil {
				return false
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			seen[string(b)] = true
			return until(string(b))
		})
	}
	poll("the etcd failure on /readyz", func(b string) bool { return strings.Contains(b, "connecting to etcd:") })
	// Fix the password as root: weftd connects on its next try.
	root, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Endpoint}, Username: "root", Password: "root-right", DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	if _, err := root.UserChangePassword(ctx, "opsuser7", "wrong"); err != nil {
		t.Fatal(err)
	}
	poll("waiting for the config on /readyz", func(b string) bool { return strings.Contains(b, "network config") })
	cancel()
	exitWithin(t, done, 5*time.Second, logs)

	host := strings.TrimPrefix(srv.Endpoint, "http://")
	for body := range seen {
		t.Logf("/readyz: %q", body)
		for _, secret := range []string{"opsuser7", host, srv.Endpoint} {
			if strings.Contains(body, secret) {
				t.Errorf("/readyz %q names %q", body, secret)
			}
		}
	}
	if !strings.Contains(logs.String(), "opsuser7") || !strings.Contains(logs.String(), host) {
		t.Errorf("the log does not give the cause with the user and endpoint:\n%s", logs)
	}
}

// The etcd password from a file or the environment works and leaves the
// command line clean; from the command line it works with a warning; over
// http:// it warns once; a file others can read, or both a password and a
// file, stop weftd with exit 2 and the rule.
func TestEtcdPasswordSources(t *testing.T) {
	srv := etcdtest.New(t)
	etcdtest.EnableAuth(t, etcdtest.NewClient(t, srv), "weft", "s3cret-pw", "/coreos.com/network/")
	dir := t.TempDir()
	pwFile := filepath.Join(dir, "etcd-password")
	if err := os.WriteFile(pwFile, []byte("s3cret-pw\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	open := filepath.Join(dir, "open")
	os.WriteFile(open, []byte("s3cret-pw\n"), 0o644)
	os.Chmod(open, 0o644)
	const cmdlineWarning = "the etcd password was given on the command line"
	const plainWarning = "the etcd password is sent without TLS"

	for _, c := range []struct {
		name    string
		env     map[string]string
		args    []string
		cmdline bool // warned about the command line
	}{
		{"file from env", map[string]string{"FLANNELD_ETCD_PASSWORD_FILE": pwFile}, nil, false},
		{"file flag", nil, []string{"-etcd-password-file", pwFile}, false},
		{"password from env", map[string]string{"FLANNELD_ETCD_PASSWORD": "s3cret-pw"}, nil, false},
		{"password flag", nil, []string{"-etcd-password=s3cret-pw"}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			logs := &syncBuf{}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			args := append([]string{"-etcd-endpoints", srv.Endpoint, "-etcd-username", "weft", "-subnet-file", dir + "/subnet.env"}, c.args...)
			done := runMain(ctx, c.env, logs, args...)
			waitUntil(t, 10*time.Second, "weftd to connect and wait for its config", func() bool {
				return strings.Contains(logs.String(), "/coreos.com/network/config")
			})
			cancel()
			if code := exitWithin(t, done, 5*time.Second, logs); code != 0 {
				t.Errorf("exit %d", code)
			}
			out := logs.String()
			if got := strings.Contains(out, cmdlineWarning); got != c.cmdline {
				t.Errorf("warned about the command line: %v, want %v:\n%s", got, c.cmdline, out)
			}
			if n := strings.Count(out, plainWarning); n != 1 {
				t.Errorf("warned %d times about http://, want once:\n%s", n, out)
			}
			if strings.Contains(out, "s3cret-pw") || strings.Contains(out, "authentication failed") {
				t.Errorf("password in the log, or refused:\n%s", out)
			}
		})
	}

	for _, c := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"file readable by others", nil, []string{"-etcd-password-file", open},
			`-etcd-password-file "` + open + `": mode 0644 lets group or others access the password`},
		{"password and file", map[string]string{"FLANNELD_ETCD_PASSWORD_FILE": pwFile}, []string{"-etcd-password=x"},
			`-etcd-password and -etcd-password-file "` + pwFile + `": give one or the other`},
	} {
		t.Run(c.name, func(t *testing.T) {
			logs := &syncBuf{}
			done := runMain(context.Background(), c.env, logs, append([]string{"-etcd-endpoints", srv.Endpoint}, c.args...)...)
			if code := exitWithin(t, done, 5*time.Second, logs); code != 2 || !strings.Contains(logs.String(), c.want) {
				t.Errorf("exit %d, log %q; want 2 and %q", code, logs, c.want)
			}
		})
	}
}

// weftd refuses to start, before taking a lease, when the address it would
// advertise lies inside the overlay: the interface's own, or -public-ip.
func TestDaemonRefusesPublicIPInsideNetwork(t *testing.T) {
	if netnstest.InNewNetns(t) {
		return
	}
	hostUnderlay(t) // eth0 10.64.3.7/26
	srv := etcdtest.New(t)
	cli := etcdtest.NewClient(t, srv)
	ctx := context.Background()
	for _, c := range []struct {
		network string
		args    []string
		want    string
	}{
		{"10.64.0.0/16", nil, "public address 10.64.3.7 (address of interface eth0) lies inside the overlay's Network 10.64.0.0/16"},
		{"172.30.0.0/16", []string{"-public-ip=172.30.9.9"}, "public address 172.30.9.9 (-public-ip) lies inside the overlay's Network 172.30.0.0/16"},
	} {
		if _, err := cli.Put(ctx, "/coreos.com/network/config", `{"Network":"`+c.network+`","Backend":{"Type":"alloc"}}`); err != nil {
			t.Fatal(err)
		}
		logs := &syncBuf{}
		args := append([]string{"-etcd-endpoints", srv.Endpoint, "-iface=eth0", "-subnet-file", t.TempDir() + "/subnet.env"}, c.args...)
		done := runMain(ctx, nil, logs, args...)
		if code := exitWithin(t, done, 10*time.Second, logs); code != 1 || !strings.Contains(logs.String(), c.want) {
			t.Errorf("Network %s %v: exit %d, log:\n%s\nwant 1 and %q", c.network, c.args, code, logs, c.want)
		}
		resp, err := cli.Get(ctx, "/coreos.com/network/subnets/", clientv3.WithPrefix())
		if err != nil || len(resp.Kvs) != 0 {
			t.Errorf("Network %s: a lease was taken: %v (err %v)", c.network, resp.Kvs, err)
		}
	}
}

// An unsafe network config is refused with its rule in the log, counted in
// weft_config_rejected_total, and weftd keeps waiting for a valid one.
func TestUnsafeConfigRefusedAndCounted(t *testing.T) {
	srv := etcdtest.New(t)
	cli := etcdtest.NewClient(t, srv)
	if _, err := cli.Put(context.Background(), "/coreos.com/network/config", `{"Network":"0.0.0.0/0"}`); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	logs := &syncBuf{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := runMain(ctx, nil, logs, "-etcd-endpoints", srv.Endpoint, "-healthz-port", fmt.Sprint(port), "-subnet-file", t.TempDir()+"/subnet.env")
	waitUntil(t, 10*time.Second, "the refusal in the log", func() bool {
		return strings.Contains(logs.String(), "Network 0.0.0.0/0: too wide")
	})
	n := &node{base: fmt.Sprintf("http://127.0.0.1:%d", port)}
	if v := value(t, n.scrape(t), "weft_config_rejected_total"); v != 1 {
		t.Errorf("weft_config_rejected_total = %v, want 1", v)
	}
	if c, body := n.get(t, "/readyz"); c != http.StatusServiceUnavailable || !strings.Contains(body, "waiting for the network config") {
		t.Errorf("/readyz %d %q", c, body)
	}
	cancel()
	if code := exitWithin(t, done, 5*time.Second, logs); code != 0 {
		t.Errorf("exit %d", code)
	}
}
