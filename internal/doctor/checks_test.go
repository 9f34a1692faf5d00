package doctor

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/lease"
)

// The note's host: default route on public eth2. The -iface advice depends
// only on which interface the device sits on, so it is tested on state.
func TestIfaceAdvice(t *testing.T) {
	pfx := netip.MustParsePrefix
	st := func(vtep int) State {
		return State{
			Etcd: EtcdState{Leases: []lease.Lease{{Subnet: pfx("172.30.19.0/24"),
				Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("120.92.8.114")}}}},
			Kernel: KernelState{Device: "flannel.1", Links: []Link{
				{Name: "lo", Index: 1, Type: "device", Up: true, Addrs: []netip.Prefix{pfx("127.0.0.1/8")}},
				{Name: "eth0", Index: 2, Type: "device", Up: true, Addrs: []netip.Prefix{pfx("10.64.3.7/26")}},
				{Name: "eth2", Index: 3, Type: "device", Up: true, Addrs: []netip.Prefix{pfx("120.92.8.114/28")}},
				{Name: "flannel.1", Index: 4, Type: "vxlan", Up: true, VtepDev: vtep},
			}},
		}
	}
	v := checkIface(st(3))
	if v.Status != Warn || !strings.Contains(v.What, "eth2 (120.92.8.114, public) although eth0 has private 10.64.3.7") ||
		!strings.Contains(v.Fix, `FLANNEL_OPTIONS="-iface=eth0"`) {
		t.Fatalf("device on public eth2: got %s", v)
	}
	s := st(2)
	s.Etcd.Leases[0].Attrs.PublicIP = netip.MustParseAddr("10.64.3.7")
	if v := checkIface(s); v.Status != Pass {
		t.Fatalf("device on private eth0: got %s", v)
	}
}

func TestReportFormats(t *testing.T) {
	r := NewReport([]Verdict{
		{Check: "ip-forward", Status: Pass, What: "net.ipv4.ip_forward = 1"},
		{Check: "iface", Status: Warn, What: "w", Fix: "f"},
	})
	if !r.Healthy {
		t.Fatal("a WARN must not make the host unhealthy")
	}
	var b bytes.Buffer
	r.WriteText(&b)
	want := "PASS ip-forward: net.ipv4.ip_forward = 1 — fix: nothing to do\nWARN iface: w — fix: f\n"
	if b.String() != want {
		t.Fatalf("text:\n%q\nwant\n%q", b.String(), want)
	}
	b.Reset()
	r.WriteJSON(&b)
	var back Report
	if err := json.Unmarshal(b.Bytes(), &back); err != nil || len(back.Checks) != 2 || back.Checks[1].Status != Warn {
		t.Fatalf("json round trip: %v %+v", err, back)
	}
	if NewReport(append(r.Checks, Verdict{Check: "x", Status: Fail})).Healthy {
		t.Fatal("a FAIL must make the host unhealthy")
	}
}
