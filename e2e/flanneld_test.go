package e2e

// weft against the real other side: flanneld v0.28.10 (scripts/flanneld.sh)
// and weftd hosts in one network, as an operator's cluster is for hours
// while it moves host by host.

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/lab"
)

func TestFlanneldMixedVXLAN(t *testing.T)  { mixedCluster(t, "vxlan") }
func TestFlanneldMixedHostGW(t *testing.T) { mixedCluster(t, "host-gw") }
func TestFlanneldMixedUDP(t *testing.T)    { mixedCluster(t, "udp") }

// livePairs is every ordered pair of the given hosts.
func livePairs(hosts ...int) []pair {
	var ps []pair
	for _, i := range hosts {
		for _, j := range hosts {
			if i != j {
				ps = append(ps, pair{i, j})
			}
		}
	}
	return ps
}

// peerProgrammed reports whether host h holds what it needs for peer p:
// vxlan its route, neighbour and FDB entry; host-gw its route. udp keeps its
// peer table in the daemon: weftd's weft_peers_programmed counts it, and
// flanneld logs "Subnet added/removed"; there, want is the number of peers
// weftd must have (flanneld's log is checked by the caller).
func peerProgrammed(backend string, h *lab.Host, p peerInfo) (bool, error) {
	switch backend {
	case "vxlan":
		ps, err := vxlanPeerState(h, p.subnet, p.mac, p.publicIP)
		if err != nil {
			return false, err
		}
		if ps != (peerState{true, true, true}) && ps != (peerState{}) {
			return false, fmt.Errorf("%s for peer %s: half programmed: route/neigh/fdb = %v/%v/%v", h.Name, p.subnet, ps.route, ps.neigh, ps.fdb)
		}
		return ps.route, nil
	case "host-gw":
		return hostgwRoute(h, p.subnet, p.publicIP)
	}
	return false, fmt.Errorf("backend %s has no per-peer kernel state", backend)
}

// mixedCluster: two weftd hosts and one flanneld host ping every pair; a
// flanneld host and a weftd host join and are picked up by both sides, then
// leave (daemon stopped, lease deleted) and are dropped by both sides;
// flanneld's leases show in weftctl leases list as they are in etcd; weft
// never writes a flanneld lease; flanneld logs no error or warning about
// any weft lease.
func mixedCluster(t *testing.T, backend string) {
	m := newMixedLab(t, backend, "weftd", "weftd", "flanneld")
	l := m.Lab
	ctx := context.Background()
	flannelHosts := map[int]bool{2: true}

	waitFor(t, backend+" 2 weftd + 1 flanneld: every container pair pings", time.Now(), 10*time.Second, 30*time.Second, func() error {
		return pings(l, livePairs(0, 1, 2), lab.PingOptions{Timeout: 300 * time.Millisecond})
	})

	// flanneld's lease, as flanneld wrote it, and as weftctl shows it.
	checkFlannelLease := func(i int) leaseKV {
		h := l.Hosts[i]
		kv, ok := readLeaseKV(t, l, h.Subnet)
		if !ok {
			t.Fatalf("%s (flanneld): no lease at %s", h.Name, lab.LeaseKey(l.Config().Prefix, h.Subnet))
		}
		t.Logf("flanneld %s lease %s = %s", flanneldVersion, h.Subnet, kv.value)
		v, _ := readLease(t, l, h.Subnet)
		wantType := backend
		if backend == "udp" {
			wantType = "" // flannel's udp backend writes no BackendType: what weft had to accept
		}
		if v.PublicIP != h.Eth0IP.String() || v.BackendType != wantType {
			t.Errorf("%s (flanneld): lease PublicIP %s BackendType %q, want %s %q", h.Name, v.PublicIP, v.BackendType, h.Eth0IP, wantType)
		}
		e, ok := weftctlLeases(t, l)[h.Subnet.String()]
		if !ok {
			t.Fatalf("weftctl leases list: no %s (flanneld's lease)", h.Subnet)
		}
		if bt, _ := e["backendType"].(string); e["publicIP"] != h.Eth0IP.String() || bt != wantType ||
			(backend == "vxlan" && e["vtepMAC"] != v.BackendData.VtepMAC) || e["reserved"] != false || e["expiresIn"] == "" {
			t.Errorf("weftctl leases list shows flanneld's lease %s as %v; etcd holds %s", h.Subnet, e, kv.value)
		}
		return kv
	}
	flannelKVs := map[int]leaseKV{2: checkFlannelLease(2)}

	// Joins: a flanneld host, then a weftd host.
	m.addHost(t, "flanneld")
	flannelHosts[3] = true
	flannelKVs[3] = checkFlannelLease(3)
	m.addHost(t, "weftd")
	waitFor(t, backend+" a flanneld host and a weftd host joined: every container pair pings", time.Now(), 10*time.Second, 30*time.Second, func() error {
		return pings(l, livePairs(0, 1, 2, 3, 4), lab.PingOptions{Timeout: 300 * time.Millisecond})
	})
	if backend == "udp" {
		// weftd's udp peer table: every other host.
		for _, i := range []int{0, 1, 4} {
			waitFor(t, fmt.Sprintf("udp: %s has 4 peers programmed", l.Hosts[i].Name), time.Now(), 5*time.Second, 15*time.Second, func() error {
				return wantMetric(l.Hosts[i], "weft_peers_programmed", 4)
			})
		}
	}

	// Leaves: the flanneld host 3, then the weftd host 4; each is dropped by
	// the remaining weftd and flanneld hosts.
	remaining := []int{0, 1, 2, 3, 4}
	for _, gone := range []int{3, 4} {
		g := peerOf(t, l, gone)
		if err := l.StopWeftd(gone); err != nil {
			t.Errorf("SIGTERM %s: %v (want exit status 0)", l.Hosts[gone].Name, err)
		}
		if flannelHosts[gone] {
			// flanneld's lease must be as flanneld left it: weft never wrote it.
			if kv, _ := readLeaseKV(t, l, g.subnet); kv != flannelKVs[gone] {
				t.Errorf("flanneld's lease %s was rewritten: %+v, flanneld wrote %+v", g.subnet, kv, flannelKVs[gone])
			}
			delete(flannelKVs, gone)
		}
		remaining = without(remaining, gone)
		start := time.Now()
		if _, err := l.Etcd.Delete(ctx, lab.LeaseKey(l.Config().Prefix, g.subnet)); err != nil {
			t.Fatal(err)
		}
		waitFor(t, fmt.Sprintf("%s %s left: dropped by every weftd and flanneld host", backend, l.Hosts[gone].Name), start, 2*time.Second, 15*time.Second, func() error {
			for _, i := range remaining {
				h := l.Hosts[i]
				if backend == "udp" {
					if flannelHosts[i] {
						if !logHas(t, h, "Subnet removed: "+g.subnet.String()) {
							return fmt.Errorf("%s (flanneld) did not log the removal of %s", h.Name, g.subnet)
						}
					} else if err := wantMetric(h, "weft_peers_programmed", float64(len(remaining)-1)); err != nil {
						return err
					}
					continue
				}
				has, err := peerProgrammed(backend, h, g)
				if err != nil {
					return err
				}
				if has {
					return fmt.Errorf("%s still programs %s (host %s left)", h.Name, g.subnet, l.Hosts[gone].Name)
				}
			}
			return nil
		})
		if err := pings(l, livePairs(remaining...), lab.PingOptions{Timeout: 300 * time.Millisecond}); err != nil {
			t.Errorf("after %s left: %v", l.Hosts[gone].Name, err)
		}
	}

	for i, want := range flannelKVs {
		if kv, _ := readLeaseKV(t, l, l.Hosts[i].Subnet); kv != want {
			t.Errorf("flanneld's lease %s was rewritten: %+v, flanneld wrote %+v", l.Hosts[i].Subnet, kv, want)
		}
	}
	for i := range flannelHosts {
		if bad := flanneldTrouble(t, l.Hosts[i]); len(bad) > 0 {
			t.Errorf("%s: flanneld logged %d errors or warnings next to weft hosts:\n%s", l.Hosts[i].Name, len(bad), strings.Join(bad, "\n"))
		}
	}
}

func without(xs []int, x int) []int {
	var out []int
	for _, y := range xs {
		if y != x {
			out = append(out, y)
		}
	}
	return out
}

// wantMetric checks one metric of host h's weftd.
func wantMetric(h *lab.Host, name string, want float64) error {
	got, err := weftMetric(h, name)
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("%s: %s = %v, want %v", h.Name, name, got, want)
	}
	return nil
}

// logHas reports whether host h's daemon log contains s.
func logHas(t *testing.T, h *lab.Host, s string) bool {
	t.Helper()
	b, err := os.ReadFile(h.LogFile)
	if err != nil {
		t.Fatalf("%s: %v", h.Name, err)
	}
	return strings.Contains(string(b), s)
}
