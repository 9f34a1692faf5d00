package daemon

import (
	"bufio"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// fakeLease and fakeLoop stand in for *lease.Manager and *dataplane.Loop:
// always ready, with the warnings given.
type fakeLease struct{ warnings []string }

func (fakeLease) Status() (bool, bool, string) { return true, true, "" }
func (f fakeLease) Warnings() []string         { return f.warnings }

type fakeLoop struct{ warnings []string }

func (fakeLoop) Status() (time.Time, error) { return time.Now(), nil }
func (f fakeLoop) Warnings() []string       { return f.warnings }

// serveFake serves a ready health with the limits given; it returns the
// address and the log.
func serveFake(t *testing.T, lim serverLimits, mgr leaseStatus, loop loopStatus) (*health, string, *syncBuf) {
	t.Helper()
	logs := &syncBuf{}
	h := newHealth()
	h.limits = lim
	h.attach(mgr, loop)
	addr, stop, err := h.serve("127.0.0.1", 0, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return h, addr, logs
}

// closedWithin reports whether the server closes c within d: a read
// returns EOF or a reset (after whatever the server sent), not a timeout.
func closedWithin(c net.Conn, d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	return !(errors.As(err, &ne) && ne.Timeout())
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Slow clients are cut by the timeouts: one that never finishes its
// headers, one that idles after a request, one that never reads its
// answers. Before the limits only the first was cut (after a fixed 5 s).
func TestHealthTimeoutsCutSlowClients(t *testing.T) {
	lim := serverLimits{readHeader: 300 * time.Millisecond, read: 500 * time.Millisecond,
		write: 500 * time.Millisecond, idle: 500 * time.Millisecond, maxHeaderBytes: 8 << 10, maxConns: 16}
	_, addr, _ := serveFake(t, lim, fakeLease{}, fakeLoop{})

	t.Run("headers never finished", func(t *testing.T) {
		c := dial(t, addr)
		io.WriteString(c, "GET /readyz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
		if !closedWithin(c, 2*time.Second) {
			t.Error("connection with unfinished headers still open after 2s")
		}
	})
	t.Run("idle after a request", func(t *testing.T) {
		c := dial(t, addr)
		io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /healthz: %v %v", resp, err)
		}
		if !closedWithin(c, 2*time.Second) {
			t.Error("idle keep-alive connection still open after 2s")
		}
	})
	t.Run("answers never read", func(t *testing.T) {
		c := dial(t, addr)
		c.(*net.TCPConn).SetReadBuffer(4096)
		// Pipelined scrapes whose answers (~12 KB each, 18 MB in all)
		// overflow the socket buffers (4 MB at most by default): the
		// server blocks in write.
		io.WriteString(c, strings.Repeat("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 1500))
		time.Sleep(1500 * time.Millisecond)
		if !closedWithin(c, 3*time.Second) {
			t.Error("connection that never reads still served after the write timeout")
		}
	})
}

// A header larger than MaxHeaderBytes is refused (431), not buffered.
func TestHealthRefusesHugeHeaders(t *testing.T) {
	_, addr, _ := serveFake(t, defaultLimits, fakeLease{}, fakeLoop{})
	c := dial(t, addr)
	go io.WriteString(c, "GET /readyz HTTP/1.1\r\nHost: x\r\nX-Big: "+strings.Repeat("a", 64<<10)+"\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("64 KiB header: status %d, want 431", resp.StatusCode)
	}
}

// More clients than the limit that never finish their headers neither hold
// a connection each (the oldest are closed, counted) nor starve a probe,
// which is answered at once, long before their header timeout.
func TestHealthConnectionLimit(t *testing.T) {
	lim := defaultLimits
	lim.maxConns = 4
	h, addr, logs := serveFake(t, lim, fakeLease{}, fakeLoop{})
	const slow = 40
	conns := make([]net.Conn, slow)
	for i := range conns {
		conns[i] = dial(t, addr)
		io.WriteString(conns[i], "GET /readyz HTTP/1.1\r\nHost: x\r\n")
	}
	start := time.Now()
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + addr + "/readyz")
	if err != nil {
		t.Fatalf("probe starved by %d slow connections: %v", slow, err)
	}
	resp.Body.Close()
	t.Logf("probe answered in %s past %d slow connections", time.Since(start).Round(time.Millisecond), slow)
	closed := 0
	for _, sc := range conns {
		if closedWithin(sc, 100*time.Millisecond) {
			closed++
		}
	}
	// All but the limit are closed (the probe took a slot too).
	if closed < slow-lim.maxConns+1 {
		t.Errorf("%d of %d slow connections closed, want at least %d (limit %d)", closed, slow, slow-lim.maxConns+1, lim.maxConns)
	}
	if v := testCounterValue(t, h, "weft_health_connections_evicted_total"); v < float64(slow-lim.maxConns) {
		t.Errorf("weft_health_connections_evicted_total = %v, want >= %d", v, slow-lim.maxConns)
	}
	if c := strings.Count(logs.String(), "connection limit reached"); c != 1 {
		t.Errorf("eviction logged %d times, want once:\n%s", c, logs)
	}
}

// testCounterValue reads a metric of h's registry.
func testCounterValue(t *testing.T, h *health, name string) float64 {
	t.Helper()
	fams, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() == name && len(f.GetMetric()) == 1 {
			m := f.GetMetric()[0]
			if m.Counter != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}

// Warnings of the lease manager and the loop are printed under "ok" with
// /readyz still 200, control characters escaped, and counted by
// weft_warnings.
func TestReadyzWarnings(t *testing.T) {
	h, addr, _ := serveFake(t, defaultLimits,
		fakeLease{warnings: []string{"lease /n/subnets/10.5.9.0-24 names our PublicIP 10.64.3.7", "forged\nok"}},
		fakeLoop{warnings: []string{"peer 10.5.7.0/24 not programmed: no route to 192.0.2.9"}})
	resp, err := http.Get("http://" + addr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	want := "ok\n" +
		"warning: lease /n/subnets/10.5.9.0-24 names our PublicIP 10.64.3.7\n" +
		"warning: forged\\nok\n" +
		"warning: peer 10.5.7.0/24 not programmed: no route to 192.0.2.9\n"
	if resp.StatusCode != http.StatusOK || string(b) != want {
		t.Errorf("/readyz %d\n%s\nwant 200\n%s", resp.StatusCode, b, want)
	}
	if v := testCounterValue(t, h, "weft_warnings"); v != 3 {
		t.Errorf("weft_warnings = %v, want 3", v)
	}

	// Sources without Warnings (the real types before they have it), and
	// an unbounded list, stay within bounds.
	many := make([]string, 100)
	for i := range many {
		many[i] = "w"
	}
	h, addr, _ = serveFake(t, defaultLimits, fakeLease{warnings: many}, noWarnLoop{})
	resp, err = http.Get("http://" + addr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if n := strings.Count(string(b), "warning: "); n != maxWarnings+1 || !strings.Contains(string(b), "80 more warnings not shown") {
		t.Errorf("/readyz with 100 warnings:\n%s", b)
	}
	if v := testCounterValue(t, h, "weft_warnings"); v != 100 {
		t.Errorf("weft_warnings = %v", v)
	}
}

type noWarnLoop struct{}

func (noWarnLoop) Status() (time.Time, error) { return time.Now(), nil }
