package main

// Where the packets of a 64-byte flood are lost. iperf3 reports one loss
// figure, the sender's count minus the receiver's; this takes the kernel's
// counters in every namespace of a topology before and after a test, so a
// run says which queue overflowed: the sending container's socket, a veth
// backlog, the TUN ring (flannel0 TX dropped), the engines' sockets
// (UdpRcvbufErrors on a host), or the receiving iperf3's socket.

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/weft-net/weft/internal/testutil/netnstest"
)

// counterSet is a snapshot of one namespace: "udp.<field>" from the Udp line
// of /proc/net/snmp and "<link>.<rx|tx>_dropped" for every link.
type counterSet map[string]uint64

func readCounters(ns *netnstest.NS) (counterSet, error) {
	c := counterSet{}
	err := ns.Do(func() error {
		// /proc/self/net is the thread group leader's namespace; the
		// thread Do switched is the one whose counters are wanted.
		b, err := os.ReadFile("/proc/thread-self/net/snmp")
		if err != nil {
			return err
		}
		var names []string
		for line := range strings.Lines(string(b)) {
			f := strings.Fields(line)
			if len(f) == 0 || f[0] != "Udp:" {
				continue
			}
			if names == nil {
				names = f[1:]
				continue
			}
			for i, v := range f[1:] {
				if i < len(names) {
					n, _ := strconv.ParseUint(v, 10, 64)
					c["udp."+names[i]] = n
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read counters of %s: %w", ns.Name, err)
	}
	links, err := ns.Handle.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links of %s: %w", ns.Name, err)
	}
	for _, l := range links {
		a := l.Attrs()
		if a.Statistics == nil || a.Name == "lo" {
			continue
		}
		c[a.Name+".rx_packets"] = a.Statistics.RxPackets
		c[a.Name+".tx_packets"] = a.Statistics.TxPackets
		c[a.Name+".rx_dropped"] = a.Statistics.RxDropped
		c[a.Name+".tx_dropped"] = a.Statistics.TxDropped
	}
	return c, nil
}

// softnetDropped sums the backlog drops of every CPU (/proc/net/softnet_stat,
// second column; machine-wide, so other load shows up too).
func softnetDropped() uint64 {
	b, err := os.ReadFile("/proc/net/softnet_stat")
	if err != nil {
		return 0
	}
	var sum uint64
	for line := range strings.Lines(string(b)) {
		if f := strings.Fields(line); len(f) > 1 {
			v, _ := strconv.ParseUint(f[1], 16, 64)
			sum += v
		}
	}
	return sum
}

// places names a topology's namespaces in the order a packet crosses them.
func (t *topo) places() []struct {
	name string
	ns   *netnstest.NS
} {
	type p = struct {
		name string
		ns   *netnstest.NS
	}
	if t.mode == "raw" {
		return []p{{"hostA", t.a.ns}, {"hostB", t.b.ns}}
	}
	return []p{{"ctrA", t.a.ctr}, {"hostA", t.a.ns}, {"hostB", t.b.ns}, {"ctrB", t.b.ctr}}
}

type dropSnap struct {
	sets    []counterSet
	softnet uint64
}

func snapDrops(t *topo) (dropSnap, error) {
	var s dropSnap
	for _, p := range t.places() {
		c, err := readCounters(p.ns)
		if err != nil {
			return s, err
		}
		s.sets = append(s.sets, c)
	}
	s.softnet = softnetDropped()
	return s, nil
}

// dropReport lists, per namespace, the counters that moved and matter for
// loss (sent, received, every drop and error), e.g.
// "ctrA udp.OutDatagrams=812345 | hostA flannel0.tx_dropped=301234 | …".
func dropReport(t *topo, before, after dropSnap) string {
	var parts []string
	for i, p := range t.places() {
		var keys []string
		for k, v := range after.sets[i] {
			if v == before.sets[i][k] {
				continue
			}
			if strings.Contains(k, "Errors") || strings.Contains(k, "dropped") || k == "udp.InDatagrams" || k == "udp.OutDatagrams" {
				keys = append(keys, k)
			}
		}
		slices.Sort(keys)
		for _, k := range keys {
			parts = append(parts, fmt.Sprintf("%s %s=%d", p.name, k, after.sets[i][k]-before.sets[i][k]))
		}
	}
	parts = append(parts, fmt.Sprintf("softnet_dropped=%d", after.softnet-before.softnet))
	return strings.Join(parts, " | ")
}

// dropSplit divides the drops of a test between the path (every queue
// between the two iperf3 processes: links, TUN rings, the hosts' engine
// sockets, CPU backlogs) and the receiving iperf3's own socket, which
// overflows when the receiver reads slower than the sender writes,
// whatever carries the packets.
func dropSplit(t *topo, before, after dropSnap) (path, receiver uint64) {
	places := t.places()
	last := len(places) - 1
	for i := range places {
		for k, v := range after.sets[i] {
			d := v - before.sets[i][k]
			switch {
			case strings.HasSuffix(k, "_dropped"):
				path += d
			case k == "udp.RcvbufErrors" && i == last:
				receiver += d
			case (k == "udp.RcvbufErrors" || k == "udp.SndbufErrors") && i != 0 && i != last:
				path += d // the engines' sockets (vxlan's is the kernel's)
			}
		}
	}
	return path + (after.softnet - before.softnet), receiver
}
