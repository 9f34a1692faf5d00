package e2e

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/flannelcni"
	"github.com/weft-net/weft/internal/lab"
)

var buildFlannel = sync.OnceValue(func() error {
	cmd := exec.Command("go", "build", "-o", binDir+"/", "./cmd/flannel")
	cmd.Dir = ".."
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/flannel: %v\n%s", err, out)
	}
	return nil
})

// TestCNI runs two lab hosts with real weftd whose containers get their
// address from weft's flannel CNI plugin (driven through libcni, delegating
// to the reference bridge and host-local), over IPv4 and, dual-stack, IPv6:
// each container has the first host-local address of its host's lease, a
// route to the overlay via cni0 at FLANNEL_MTU, and every pair pings across
// hosts; closing the lab runs every container's CNI DEL without error.
func TestCNI(t *testing.T) {
	if _, err := flannelcni.DelegateDir(); err != nil {
		t.Skipf("skipped: %v", err)
	}
	if err := buildFlannel(); err != nil {
		t.Fatal(err)
	}
	for _, dual := range []bool{false, true} {
		name := "ipv4"
		cfg := lab.Config{Hosts: 2, Backend: "vxlan", NetworkConfig: networkConfig("vxlan"), Containers: lab.ContainersCNI}
		if dual {
			name = "dualstack"
			cfg.IPv6 = true
			cfg.NetworkConfig = `{"Network":"172.30.0.0/16","SubnetLen":24,"SubnetMax":"172.30.239.0","EnableIPv6":true,"IPv6Network":"fd30::/48","IPv6SubnetLen":64,"Backend":{"Type":"vxlan"}}`
		}
		t.Run(name, func(t *testing.T) {
			start := time.Now()
			l := newLabWith(t, cfg)
			t.Logf("MEASURED lab up with CNI containers (2 hosts): %s", time.Since(start).Round(time.Millisecond))
			for _, h := range l.Hosts {
				if want := h.Subnet.Addr().Next().Next(); h.ContainerIP != want {
					t.Errorf("%s: container IP %s, want host-local's first %s", h.Name, h.ContainerIP, want)
				}
				routes := h.ContainerNS.MustRun(t, "ip", "route")
				gw := h.Subnet.Addr().Next().String()
				if !strings.Contains(routes, "172.30.0.0/16 via "+gw+" dev eth0") {
					t.Errorf("%s: container routes lack 172.30.0.0/16 via %s:\n%s", h.Name, gw, routes)
				}
				link := h.ContainerNS.MustRun(t, "ip", "-o", "link", "show", "eth0")
				if !strings.Contains(link, fmt.Sprintf(" mtu %d ", h.MTU)) {
					t.Errorf("%s: container eth0 MTU is not FLANNEL_MTU %d:\n%s", h.Name, h.MTU, link)
				}
				if dual {
					if want := h.Subnet6.Addr().Next().Next(); h.ContainerIP6 != want {
						t.Errorf("%s: container IPv6 %s, want %s", h.Name, h.ContainerIP6, want)
					}
				}
				saved, _ := filepath.Glob(filepath.Join(filepath.Dir(h.SubnetFile), "cni", "flannel", "*"))
				if len(saved) != 1 {
					t.Errorf("%s: %d saved delegate configs, want 1: %v", h.Name, len(saved), saved)
				}
			}
			all := []pair{{0, 1}, {1, 0}}
			fams := []bool{false}
			if dual {
				fams = append(fams, true)
			}
			for _, six := range fams {
				waitFor(t, fmt.Sprintf("CNI containers ping across hosts (IPv6 %t)", six), time.Now(), 5*time.Second, 15*time.Second, func() error {
					return pings(l, all, lab.PingOptions{IPv6: six, Timeout: time.Second})
				})
			}
			// Close runs each container's CNI DEL before removing the
			// namespaces; a failed DEL is in its error.
			if err := l.Close(); err != nil {
				t.Errorf("lab close (CNI DEL included): %v", err)
			}
		})
	}
}
