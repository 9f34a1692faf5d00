package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/containernetworking/cni/libcni"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/weft-net/weft/internal/flannelcni"
)

// cniVersion is what the lab speaks to the plugins: the newest that
// Debian's reference plugins (1.1.1) speak too.
const cniVersion = "1.0.0"

// addCNIContainer gives h's container its address through weft's flannel
// CNI plugin (the flannel binary next to weftd), as a CNI runtime on a
// flannel host does: libcni runs the plugin in h's namespace, where it
// reads h's subnet.env and delegates to the reference bridge and host-local,
// which make cni0 and the container's eth0. Every host keeps its plugin
// and host-local state in its own directory of the lab's state dir (they
// share one filesystem), so `lab down` removes it with the rest.
func (l *Lab) addCNIContainer(ctx context.Context, h *Host) error {
	plugin := filepath.Join(filepath.Dir(l.cfg.WeftdPath), "flannel")
	if st, err := os.Stat(plugin); err != nil || !st.Mode().IsRegular() || st.Mode()&0o111 == 0 {
		return fmt.Errorf("containers cni: the flannel CNI plugin %s is missing or not executable: build it next to weftd (make build, or go build -o %s/ ./cmd/flannel)",
			plugin, filepath.Dir(plugin))
	}
	delegates, err := flannelcni.DelegateDir()
	if err != nil {
		return fmt.Errorf("containers cni: %w", err)
	}
	dir := filepath.Join(filepath.Dir(h.SubnetFile), "cni")
	conf, err := json.Marshal(map[string]any{
		"cniVersion": cniVersion,
		"name":       l.Name,
		"type":       "flannel",
		"subnetFile": h.SubnetFile,
		"dataDir":    filepath.Join(dir, "flannel"),
		// kube-flannel's stock delegate options.
		"delegate": map[string]any{"hairpinMode": true, "isDefaultGateway": true},
		"ipam":     map[string]any{"dataDir": filepath.Join(dir, "host-local")},
	})
	if err != nil {
		return fmt.Errorf("containers cni: encode the network config: %w", err)
	}
	netconf, err := libcni.ConfFromBytes(conf)
	if err != nil {
		return fmt.Errorf("containers cni: network config: %w", err)
	}

	cns, err := h.newContainerNS()
	if err != nil {
		return err
	}
	cni := libcni.NewCNIConfigWithCacheDir([]string{filepath.Dir(plugin), delegates}, filepath.Join(dir, "cache"), nil)
	rt := &libcni.RuntimeConf{ContainerID: cns.Name, NetNS: cns.Path, IfName: "eth0"}
	// Registered before ADD: DEL is idempotent and undoes a half-done ADD.
	h.cleanups = append(h.cleanups, func() error {
		return h.NS.Do(func() error {
			if err := cni.DelNetwork(context.Background(), netconf, rt); err != nil {
				return fmt.Errorf("CNI DEL of %s: %w", cns.Name, err)
			}
			return nil
		})
	})

	start := time.Now()
	var res *types100.Result
	// The plugin and its delegates run in h's namespace: a child process
	// starts in the namespace of the thread that forks it.
	err = h.NS.Do(func() error {
		r, err := cni.AddNetwork(ctx, netconf, rt)
		if err != nil {
			return err
		}
		res, err = types100.NewResultFromResult(r)
		return err
	})
	if err != nil {
		return fmt.Errorf("CNI ADD of %s (plugin %s, delegates in %s): %w", cns.Name, plugin, delegates, err)
	}
	took := time.Since(start)
	for _, ip := range res.IPs {
		a, ok := netip.AddrFromSlice(ip.Address.IP)
		if !ok {
			continue
		}
		a = a.Unmap()
		switch {
		case a.Is4() && h.Subnet.Contains(a):
			h.ContainerIP = a
		case a.Is6() && h.Subnet6.IsValid() && h.Subnet6.Contains(a):
			h.ContainerIP6 = a
		}
	}
	if !h.ContainerIP.IsValid() {
		return fmt.Errorf("CNI ADD of %s gave no address in the host's subnet %s: %v", cns.Name, h.Subnet, res.IPs)
	}
	if h.Subnet6.IsValid() && !h.ContainerIP6.IsValid() {
		return fmt.Errorf("CNI ADD of %s gave no address in the host's IPv6 subnet %s: %v", cns.Name, h.Subnet6, res.IPs)
	}
	l.log.Info("CNI ADD", "host", h.Name, "container", cns.Name, "ip", h.ContainerIP, "took", took.Round(time.Millisecond))
	return nil
}
