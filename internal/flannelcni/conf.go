// Package flannelcni is weft's CNI plugin for `"type": "flannel"`, a drop-in
// for flannel's own (flannel-io/cni-plugin): a meta-plugin that reads the
// host's subnet.env (written by weftd or flanneld), turns it into a config
// for a delegate plugin (bridge, with host-local IPAM over the host's
// lease) and runs that delegate. The delegate config of each container is
// saved in dataDir/<containerID> on ADD, as flannel does, so that DEL and
// CHECK work on what ADD did even when subnet.env changed or is gone.
//
// Errors are CNI errors (types.Error) with the spec's codes:
//   - 11 (try again later): subnet.env is missing or lacks a key — weftd is
//     not up yet or the file was written by hand and is incomplete;
//   - 6 (decoding failure): the network config or subnet.env is not what it
//     must be (a value that does not parse);
//   - 7 (invalid network config): a field breaks a rule (delegate with its
//     own name or ipam, relative paths, bad ipam routes);
//   - 5 (I/O failure): dataDir cannot be written or read;
//   - 3 (unknown container): CHECK of a container ADD never saw;
//   - 50 (plugin not available): STATUS without a usable subnet.env.
//
// Delegate errors keep the delegate's code, with the delegate named.
package flannelcni

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/weft-net/weft/internal/subnetenv"
)

// The defaults of flannel's plugin.
const (
	DefaultSubnetFile = "/run/flannel/subnet.env"
	DefaultDataDir    = "/var/lib/cni/flannel"
)

// ErrPluginNotAvailable is the CNI 1.1 code for STATUS: the plugin cannot
// serve ADD now (types has no constant for it).
const ErrPluginNotAvailable uint = 50

// NetConf is flannel's CNI network config.
type NetConf struct {
	types.PluginConf

	// IPAM replaces PluginConf's, which keeps only the type: every field
	// given is passed on to the delegate's ipam.
	IPAM          map[string]any `json:"ipam,omitempty"`
	SubnetFile    string         `json:"subnetFile"`
	DataDir       string         `json:"dataDir"`
	Delegate      map[string]any `json:"delegate"`
	RuntimeConfig map[string]any `json:"runtimeConfig,omitempty"`
}

// ParseConf reads the network config given on stdin, applies flannel's
// defaults and checks what flannel checks, plus the paths (absolute: a
// relative one would depend on the runtime's working directory) and the
// ipam routes (they are merged with the overlay's).
func ParseConf(data []byte) (*NetConf, error) {
	n := &NetConf{}
	if err := json.Unmarshal(data, n); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("flannel: network config: %v", err), "")
	}
	if n.SubnetFile == "" {
		n.SubnetFile = DefaultSubnetFile
	}
	if n.DataDir == "" {
		n.DataDir = DefaultDataDir
	}
	for _, p := range []struct{ field, path string }{{"subnetFile", n.SubnetFile}, {"dataDir", n.DataDir}} {
		if !filepath.IsAbs(p.path) {
			return nil, invalidConf("%s %q: must be an absolute path", p.field, p.path)
		}
	}
	if t, ok := n.Delegate["type"]; ok {
		if s, ok := t.(string); !ok || s == "" {
			return nil, invalidConf("delegate type %v: must be a plugin name (a non-empty string)", t)
		}
	}
	for _, k := range []string{"name", "ipam"} {
		if _, ok := n.Delegate[k]; ok {
			return nil, invalidConf("delegate must not have field %q: the plugin sets it", k)
		}
	}
	if _, err := ipamRoutes(n.IPAM); err != nil {
		return nil, err
	}
	return n, nil
}

func invalidConf(format string, args ...any) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig, "flannel: network config: "+fmt.Sprintf(format, args...), "")
}

// ipamRoutes decodes ipam.routes as the CNI spec's routes.
func ipamRoutes(ipam map[string]any) ([]types.Route, error) {
	raw, ok := ipam["routes"]
	if !ok {
		return nil, nil
	}
	b, err := json.Marshal(raw)
	if err != nil {
		return nil, invalidConf("ipam routes: %v", err)
	}
	var rs []types.Route
	if err := json.Unmarshal(b, &rs); err != nil {
		return nil, invalidConf("ipam routes %s: must be a list of {\"dst\": CIDR, \"gw\": address}: %v", clip(string(b)), err)
	}
	return rs, nil
}

// Delegate builds the delegate's config from n and the host's subnet.env as
// flannel does: n.Delegate plus name, type (bridge), ipMasq (the opposite of
// FLANNEL_IPMASQ: when the overlay does not masquerade, the bridge does),
// mtu, isGateway (bridge), cniVersion and ipam: n.IPAM with type host-local,
// one range per leased subnet and a route to each overlay network after the
// routes given. n is not changed.
func Delegate(n *NetConf, env subnetenv.Env) (map[string]any, error) {
	d := make(map[string]any, len(n.Delegate)+8)
	for k, v := range n.Delegate {
		d[k] = v
	}
	if n.RuntimeConfig != nil {
		d["runtimeConfig"] = n.RuntimeConfig
	}
	d["name"] = n.Name
	if _, ok := d["type"]; !ok {
		d["type"] = "bridge"
	}
	if _, ok := d["ipMasq"]; !ok {
		d["ipMasq"] = !env.IPMasq
	}
	if _, ok := d["mtu"]; !ok {
		d["mtu"] = env.MTU
	}
	if d["type"] == "bridge" {
		if _, ok := d["isGateway"]; !ok {
			d["isGateway"] = true
		}
	}
	if n.CNIVersion != "" {
		d["cniVersion"] = n.CNIVersion
	}

	ipam := make(map[string]any, len(n.IPAM)+3)
	for k, v := range n.IPAM {
		ipam[k] = v
	}
	if _, ok := ipam["type"]; !ok {
		ipam["type"] = "host-local"
	}
	var ranges [][]map[string]string
	for _, sn := range []netip.Prefix{env.Subnet, env.IPv6Subnet} {
		if sn.IsValid() {
			// The lease, not FLANNEL_SUBNET's host address: host-local
			// gives the bridge its first address and containers the rest.
			ranges = append(ranges, []map[string]string{{"subnet": sn.Masked().String()}})
		}
	}
	ipam["ranges"] = ranges
	routes, err := ipamRoutes(n.IPAM)
	if err != nil {
		return nil, err
	}
	// The given routes pass on as they are (with fields this plugin does
	// not know), the overlay's after them.
	out := make([]any, 0, len(routes)+2)
	if given, ok := n.IPAM["routes"].([]any); ok {
		out = append(out, given...)
	}
	for _, nw := range []netip.Prefix{env.Network, env.IPv6Network} {
		if nw.IsValid() {
			out = append(out, map[string]any{"dst": nw.String()})
		}
	}
	ipam["routes"] = out
	d["ipam"] = ipam
	return d, nil
}

func clip(s string) string {
	if len(s) > 120 {
		return s[:117] + "..."
	}
	return s
}
