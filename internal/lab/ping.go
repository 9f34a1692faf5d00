package lab

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// PingOptions tune one ping run; zero values give one 56-byte echo with a
// 1 s reply timeout.
type PingOptions struct {
	Count    int           // echo requests; default 1
	Size     int           // payload bytes (ping -s); 0 = ping's default 56
	DF       bool          // forbid fragmentation (ping -M do): a full-MTU probe
	Interval time.Duration // between requests (ping -i); 0 = ping's default 1 s
	Timeout  time.Duration // wait for each reply (ping -W); default 1 s
	IPv6     bool          // ping the containers' IPv6 addresses (dual-stack labs)
}

// PingResult is the outcome of one ping run.
type PingResult struct {
	Sent, Received int
	RTT            time.Duration // average round trip of the replies
	Err            error         // nil when every request was answered
}

// Lost is the number of unanswered requests.
func (r PingResult) Lost() int { return r.Sent - r.Received }

var (
	pingCountsRE = regexp.MustCompile(`(\d+) packets transmitted, (\d+) (?:packets )?received`)
	pingRTTRE    = regexp.MustCompile(`= [0-9.]+/([0-9.]+)/`)
)

// pingIn runs ping inside the namespace called fromNS. It needs only names,
// so `lab status` in another process can use it too.
func pingIn(ctx context.Context, fromNS string, to netip.Addr, o PingOptions) PingResult {
	if o.Count <= 0 {
		o.Count = 1
	}
	if o.Timeout <= 0 {
		o.Timeout = time.Second
	}
	args := []string{"netns", "exec", fromNS, "ping", "-n", "-q", "-c", strconv.Itoa(o.Count),
		"-W", strconv.FormatFloat(o.Timeout.Seconds(), 'f', 3, 64)}
	if o.Size > 0 {
		args = append(args, "-s", strconv.Itoa(o.Size))
	}
	if o.DF {
		args = append(args, "-M", "do")
	}
	if o.Interval > 0 {
		args = append(args, "-i", strconv.FormatFloat(o.Interval.Seconds(), 'f', 3, 64))
	}
	args = append(args, to.String())
	out, runErr := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	var r PingResult
	if m := pingCountsRE.FindSubmatch(out); m != nil {
		r.Sent, _ = strconv.Atoi(string(m[1]))
		r.Received, _ = strconv.Atoi(string(m[2]))
	}
	if m := pingRTTRE.FindSubmatch(out); m != nil {
		if ms, err := strconv.ParseFloat(string(m[1]), 64); err == nil {
			r.RTT = time.Duration(ms * float64(time.Millisecond))
		}
	}
	desc := fmt.Sprintf("ping %s from %s", to, fromNS)
	if o.Size > 0 || o.DF {
		desc += fmt.Sprintf(" (payload %d bytes, DF %v)", o.Size, o.DF)
	}
	switch {
	case r.Sent == 0:
		r.Err = fmt.Errorf("%s: %v: %s", desc, runErr, strings.TrimSpace(string(out)))
	case r.Received < r.Sent:
		r.Err = fmt.Errorf("%s: %d of %d lost", desc, r.Sent-r.Received, r.Sent)
	}
	return r
}

// Ping pings host to's container from host from's container (indexes into
// Hosts).
func (l *Lab) Ping(ctx context.Context, from, to int, o PingOptions) PingResult {
	hf, err := l.host(from)
	if err != nil {
		return PingResult{Err: err}
	}
	ht, err := l.host(to)
	if err != nil {
		return PingResult{Err: err}
	}
	dst := ht.ContainerIP
	if o.IPv6 {
		dst = ht.ContainerIP6
	}
	if hf.ContainerNS == nil || !dst.IsValid() {
		return PingResult{Err: fmt.Errorf("ping %s → %s: a container is not set up", hf.Name, ht.Name)}
	}
	return pingIn(ctx, hf.ContainerNS.Name, dst, o)
}

// PingMatrix pings every container from every other one, concurrently;
// m[i][j] is from i to j, and the diagonal is left zero.
func (l *Lab) PingMatrix(ctx context.Context, o PingOptions) [][]PingResult {
	st := l.State()
	return pingMatrix(ctx, st.Hosts, o)
}

func pingMatrix(ctx context.Context, hosts []HostState, o PingOptions) [][]PingResult {
	m := make([][]PingResult, len(hosts))
	var wg sync.WaitGroup
	// A few at a time: each ping is a process, and the machine is small.
	sem := make(chan struct{}, 8)
	for i := range hosts {
		m[i] = make([]PingResult, len(hosts))
		for j := range hosts {
			if i == j {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				to := hosts[j].ContainerIP
				if o.IPv6 {
					to = hosts[j].ContainerIP6
				}
				if hosts[i].ContainerNS == "" || !to.IsValid() {
					m[i][j] = PingResult{Err: fmt.Errorf("ping %s → %s: a container is not set up", hosts[i].Name, hosts[j].Name)}
					return
				}
				m[i][j] = pingIn(ctx, hosts[i].ContainerNS, to, o)
			}()
		}
	}
	wg.Wait()
	return m
}

// MatrixErr joins the failures of a ping matrix; nil when all passed.
func MatrixErr(m [][]PingResult) error {
	var errs []string
	for i := range m {
		for j := range m[i] {
			if i != j && m[i][j].Err != nil {
				errs = append(errs, m[i][j].Err.Error())
			}
		}
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("%d pings failed: %s", len(errs), strings.Join(errs, "; "))
}
