package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// memberAt asks the etcd member behind addr inside host h's namespace for
// its member ID (the gRPC gateway's maintenance status).
func memberAt(h *Host, addr string) (string, error) {
	c := http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			var conn net.Conn
			err := h.NS.Do(func() error {
				var d net.Dialer
				var err error
				conn, err = d.DialContext(ctx, network, a)
				return err
			})
			return conn, err
		},
	}}
	resp, err := c.Post("http://"+addr+"/v3/maintenance/status", "application/json", strings.NewReader("{}"))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var st struct {
		Header struct {
			MemberID string `json:"member_id"`
		}
	}
	if err := json.Unmarshal(b, &st); err != nil || st.Header.MemberID == "" {
		return "", fmt.Errorf("status from %s in %s: %d %q: %v", addr, h.Name, resp.StatusCode, b, err)
	}
	return st.Header.MemberID, nil
}

// Three members: each host reaches each member at its own loopback port,
// weftd is given all three, and members stop, restart and compact.
func TestEtcdMembers(t *testing.T) {
	cfg := fakeConfig(t, 2)
	cfg.EtcdMembers = 3
	l := upLab(t, cfg)
	ctx := context.Background()
	if len(l.EtcdEndpoints) != 3 || l.EtcdEndpoint != l.EtcdEndpoints[0] {
		t.Fatalf("endpoints %q / %q", l.EtcdEndpoint, l.EtcdEndpoints)
	}
	for _, h := range l.Hosts {
		b, _ := os.ReadFile(h.LogFile)
		if want := "-etcd-endpoints=http://127.0.0.1:2379,http://127.0.0.1:22379,http://127.0.0.1:32379"; !strings.Contains(string(b), want) {
			t.Errorf("%s: weftd not started with %s:\n%s", h.Name, want, b)
		}
		ids := map[string]bool{}
		for _, a := range hostEtcdAddrs {
			id, err := memberAt(h, a)
			if err != nil {
				t.Fatal(err)
			}
			ids[id] = true
		}
		if len(ids) != 3 {
			t.Errorf("%s: the three loopback ports reach %d distinct members", h.Name, len(ids))
		}
	}

	leader, err := l.EtcdLeader()
	if err != nil {
		t.Fatal(err)
	}
	if err := l.StopEtcd(leader); err != nil {
		t.Fatal(err)
	}
	if err := l.StopEtcd(leader); err == nil || !strings.Contains(err.Error(), "already stopped") {
		t.Errorf("second StopEtcd(%d): %v", leader, err)
	}
	if _, err := memberAt(l.Hosts[0], hostEtcdAddrs[leader]); err == nil {
		t.Errorf("stopped member %d still answers in %s", leader, l.Hosts[0].Name)
	}
	next, err := l.EtcdLeader()
	if err != nil || next == leader {
		t.Fatalf("leader after stopping %d: %d, %v", leader, next, err)
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	put, err := l.Etcd.Put(cctx, "/lab-test/k", "v1")
	cancel()
	if err != nil {
		t.Fatalf("write with two of three members: %v", err)
	}
	if err := l.RestartEtcd(leader); err != nil {
		t.Fatal(err)
	}
	if _, err := memberAt(l.Hosts[1], hostEtcdAddrs[leader]); err != nil {
		t.Errorf("restarted member %d at the same address: %v", leader, err)
	}

	cctx, cancel = context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := l.Etcd.Put(cctx, "/lab-test/k", "v2"); err != nil {
		t.Fatal(err)
	}
	if err := l.CompactEtcd(cctx); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Etcd.Get(cctx, "/lab-test/k", clientv3.WithRev(put.Header.Revision)); !errors.Is(err, rpctypes.ErrCompacted) {
		t.Errorf("read at revision %d after CompactEtcd: %v, want %v", put.Header.Revision, err, rpctypes.ErrCompacted)
	}
	if err := l.StopEtcd(3); err == nil {
		t.Error("StopEtcd(3) of a 3-member lab: no error")
	}
}

// One member (the default): stop and restart on the same address and data.
func TestEtcdSingleMemberRestart(t *testing.T) {
	l := upLab(t, fakeConfig(t, 1))
	if leader, err := l.EtcdLeader(); err != nil || leader != 0 {
		t.Fatalf("leader of one member: %d, %v", leader, err)
	}
	if err := l.StopEtcd(0); err != nil {
		t.Fatal(err)
	}
	if err := l.RestartEtcd(0); err != nil {
		t.Fatal(err)
	}
	cli, err := l.NewEtcdClient()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, l.cfg.Prefix+"/config")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("network config after the restart (data kept): %v %v", resp, err)
	}
	if _, err := memberAt(l.Hosts[0], hostEtcdAddrs[0]); err != nil {
		t.Errorf("member at %s after the restart: %v", hostEtcdAddrs[0], err)
	}
}
