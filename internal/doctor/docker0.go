package doctor

import (
	"fmt"
	"net/netip"
	"path/filepath"

	"github.com/weft-net/weft/internal/subnetenv"
)

// defaultDockerOpts is where weftd.service's ExecStartPost (weftctl
// docker-opts) writes Docker's options, next to the default subnet.env.
const defaultDockerOpts = "/run/flannel/docker"

// dockerOptsFile is the options file of the host: next to its subnet.env,
// as weftd.service writes it (/run/flannel/docker beside
// /run/flannel/subnet.env).
func (s State) dockerOptsFile() string {
	if s.SubnetFile == "" {
		return defaultDockerOpts
	}
	return filepath.Join(filepath.Dir(s.SubnetFile), "docker")
}

// dockerBIP is the --bip docker-opts derives from the lease: FLANNEL_SUBNET
// itself (the bridge's address and length), or the lease's first address.
func (s State) dockerBIP(sub netip.Prefix) netip.Prefix {
	if s.EnvErr == nil && s.Env.Subnet.IsValid() && subnetenv.LeaseSubnet(s.Env) == sub {
		return s.Env.Subnet
	}
	return netip.PrefixFrom(sub.Addr().Next(), sub.Bits())
}

// docker0Cause says why docker0 sits outside the lease: dockerd read no
// --bip. Docker's unit reads /run/flannel/docker with EnvironmentFile=-,
// so when dockerd starts before weftd has written it, or the unit's
// ExecStart lacks $DOCKER_NETWORK_OPTIONS, dockerd picks a free private
// range (172.17.0.0/16, 192.168.x.x) — and keeps the bridge's address
// across restarts.
func docker0Cause() string {
	return ": dockerd got no --bip (it started before weftd wrote the Docker options, or its ExecStart lacks $DOCKER_NETWORK_OPTIONS) and picked its own range; containers on it are unreachable from other hosts"
}

// docker0Fix is the ops note's fix, spelled out for this host: the bridge
// must go, since dockerd keeps an existing docker0's address, and dockerd
// must start with the lease's --bip.
func docker0Fix(s State, sub netip.Prefix) string {
	opts := s.dockerOptsFile()
	return fmt.Sprintf("systemctl stop docker.socket docker; ip link del docker0; "+
		"make sure %s holds --bip=%s (weftctl docker-opts -k DOCKER_NETWORK_OPTIONS -d %s) and docker.service starts dockerd $DOCKER_NETWORK_OPTIONS "+
		"with EnvironmentFile=-%s (the drop-in docker.service.d/flannel.conf that make install puts in the systemd unit directory; then systemctl daemon-reload); "+
		"systemctl start docker: docker0 gets %s; then recreate the containers, which keep their old addresses",
		opts, s.dockerBIP(sub), opts, opts, s.dockerBIP(sub))
}
