package flannelcni

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"strings"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/weft-net/weft/internal/subnetenv"
)

// ReadEnv reads the host's subnet.env for a container: the file must exist
// and have what flannel's plugin requires (FLANNEL_MTU, FLANNEL_IPMASQ and,
// for each leased family, the subnet and its network), every value well
// formed. The error is a CNI error naming the file and the missing or bad
// key.
func ReadEnv(path string) (subnetenv.Env, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return subnetenv.Env{}, types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("flannel: subnet file %s does not exist: is weftd (or flanneld) running on this host?", path), "")
	}
	if err != nil {
		return subnetenv.Env{}, types.NewError(types.ErrIOFailure, fmt.Sprintf("flannel: read subnet file: %v", err), "")
	}
	return ParseEnv(path, data)
}

// ParseEnv is ReadEnv on the content of the file at path (named in errors).
func ParseEnv(path string, data []byte) (subnetenv.Env, error) {
	vars, err := subnetenv.ParseVars(data)
	if err != nil {
		return subnetenv.Env{}, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("flannel: subnet file %s: %v", path, err), "")
	}
	has := map[string]bool{}
	for _, v := range vars {
		has[v.Name] = true
	}
	var missing []string
	if !has["FLANNEL_SUBNET"] && !has["FLANNEL_IPV6_SUBNET"] {
		missing = append(missing, "FLANNEL_SUBNET (or FLANNEL_IPV6_SUBNET)")
	}
	if has["FLANNEL_SUBNET"] && !has["FLANNEL_NETWORK"] {
		missing = append(missing, "FLANNEL_NETWORK")
	}
	if has["FLANNEL_IPV6_SUBNET"] && !has["FLANNEL_IPV6_NETWORK"] {
		missing = append(missing, "FLANNEL_IPV6_NETWORK")
	}
	for _, k := range []string{"FLANNEL_MTU", "FLANNEL_IPMASQ"} {
		if !has[k] {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		// Transient as far as the plugin can tell: weftd rewrites the
		// whole file on start and on every lease change.
		return subnetenv.Env{}, types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("flannel: subnet file %s is missing %s", path, strings.Join(missing, ", ")), "")
	}
	e, err := subnetenv.Parse(data)
	if err != nil {
		return subnetenv.Env{}, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("flannel: subnet file %s: %v", path, err), "")
	}
	// The bridge and every veth get this MTU; the kernel refuses less than
	// IPv4's minimum, and IPv6 needs 1280.
	minMTU := 68
	if e.IPv6Subnet.IsValid() {
		minMTU = 1280
	}
	if e.MTU < minMTU {
		return subnetenv.Env{}, types.NewError(types.ErrDecodingFailure,
			fmt.Sprintf("flannel: subnet file %s: FLANNEL_MTU %d: must be at least %d", path, e.MTU, minMTU), "")
	}
	// A container range outside the overlay would not be routed by peers.
	for _, f := range []struct {
		subName, netName string
		sub, network     netip.Prefix
	}{
		{"FLANNEL_SUBNET", "FLANNEL_NETWORK", e.Subnet, e.Network},
		{"FLANNEL_IPV6_SUBNET", "FLANNEL_IPV6_NETWORK", e.IPv6Subnet, e.IPv6Network},
	} {
		if f.sub.IsValid() && (!f.network.Contains(f.sub.Addr()) || f.sub.Bits() < f.network.Bits()) {
			return subnetenv.Env{}, types.NewError(types.ErrDecodingFailure,
				fmt.Sprintf("flannel: subnet file %s: %s %s: must be inside %s %s", path, f.subName, f.sub, f.netName, f.network), "")
		}
	}
	return e, nil
}
