#!/usr/bin/env bash
# Installs what weft's lab and tests need on Debian, if it is missing.
# Idempotent and quick when everything is present.
set -euo pipefail
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v iptables >/dev/null || need+=(iptables)
command -v nft >/dev/null || need+=(nftables)
command -v ping >/dev/null || need+=(iputils-ping)
command -v etcdctl >/dev/null || need+=(etcd-client)
command -v iperf3 >/dev/null || need+=(iperf3)
command -v gcc >/dev/null || need+=(gcc libc6-dev) # go test -race needs cgo
command -v systemd-analyze >/dev/null || need+=(systemd) # dist tests: systemd-analyze verify
command -v tcpdump >/dev/null || need+=(tcpdump) # wireguard tests: the underlay carries no clear text
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-deps: need root to install: ${need[*]}" >&2
    exit 1
  fi
  echo "install-deps: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
# wg (wireguard-tools) configures the stock wireguard-go of the wireguard
# interop tests and reads weft's UAPI socket. Without recommends: they would
# pull a kernel image (for the WireGuard module weft does not use).
if ! command -v wg >/dev/null; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-deps: need root to install: wireguard-tools" >&2
    exit 1
  fi
  echo "install-deps: installing wireguard-tools" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends wireguard-tools >/dev/null
fi

# install_no_start PKG UNIT... installs a package whose maintainer scripts
# would start and enable system services, with service starts denied
# (policy-rc.d) while it installs, and leaves UNITs disabled and stopped.
install_no_start() {
  local pkg=$1
  shift
  if [ "$(id -u)" != 0 ]; then
    echo "install-deps: need root to install: $pkg" >&2
    exit 1
  fi
  echo "install-deps: installing $pkg (its services are not started)" >&2
  export DEBIAN_FRONTEND=noninteractive
  local policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# install-deps: no service starts while packages install\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq "$pkg" >/dev/null
  if [ -d /run/systemd/system ]; then
    # The units did not exist before this install: if a policy-rc.d that
    # allows starts let them run, they are the ones this install started.
    local u
    for u in "$@"; do systemctl disable --now --quiet "$u" || true; done
  fi
}

# Debian's etcd 3.4 (etcd-server), whose v2 store the tests of weftctl
# migrate-v2 need; they run their own on free loopback ports. Its package
# starts and enables a system etcd on 127.0.0.1:2379, the default endpoint
# of weft's tests and tools.
[ -x /usr/bin/etcd ] || install_no_start etcd-server etcd.service

# Debian's docker.io (dockerd 20.10, containerd, runc) and busybox-static, for
# `weftctl lab --containers docker` and e2e/docker_test.go, which start one
# dockerd per lab host inside its namespace. A system dockerd would take
# docker0 and iptables in the root namespace: it is not started.
[ -x /usr/sbin/dockerd ] || install_no_start docker.io docker.socket docker.service containerd.service
# The lab's image is a static busybox imported offline (no registry).
dpkg -s busybox-static >/dev/null 2>&1 || install_no_start busybox-static

# The reference flanneld of the interop tests (e2e/flanneld*_test.go) exits at
# start ("Failed to check br_netfilter") unless br_netfilter's sysctls exist:
# load the module where the kernel does not have it built in or loaded. Like
# on any flannel or Kubernetes node, bridged traffic then passes iptables.
if [ ! -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-deps: need root to load br_netfilter" >&2
    exit 1
  fi
  if ! command -v modprobe >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kmod >/dev/null
  fi
  modprobe br_netfilter
fi

# CNI (internal/flannelcni's tests, `weftctl lab --containers cni`): Debian's
# reference plugins (bridge, host-local, loopback in /usr/lib/cni; 1.1.1,
# which speaks CNI up to 1.0.0), and for CNI 1.1.0 (STATUS, GC) the same
# plugins at v1.9.1, the release flannel's own CNI plugin pins, with the
# spec's cnitool, built once from the Go module proxy into the cache where
# the tests look (internal/flannelcni: DelegateDirs).
if [ ! -x /usr/lib/cni/bridge ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-deps: need root to install: containernetworking-plugins" >&2
    exit 1
  fi
  echo "install-deps: installing containernetworking-plugins" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq containernetworking-plugins >/dev/null
fi
cni_cache=${WEFT_CACHE:-/var/cache/weft}
cni_plugins=v1.9.1
cnitool=v1.3.0
cni_install() { # GOBIN, then module@version package paths
  local bin=$1
  shift
  command -v go >/dev/null || { echo "install-deps: go is not in PATH (needed to build $*)" >&2; exit 1; }
  echo "install-deps: building $* into $bin" >&2
  mkdir -p "$bin"
  # -mod=mod: a caller's GOFLAGS=-mod=vendor/readonly must not apply to a
  # module built outside this one.
  GOBIN=$bin GOFLAGS=-mod=mod CGO_ENABLED=0 go install "$@"
}
if [ ! -x "$cni_cache/cni-plugins-$cni_plugins/bridge" ] || [ ! -x "$cni_cache/cni-plugins-$cni_plugins/host-local" ] || [ ! -x "$cni_cache/cni-plugins-$cni_plugins/loopback" ]; then
  p=github.com/containernetworking/plugins/plugins
  cni_install "$cni_cache/cni-plugins-$cni_plugins" "$p/main/bridge@$cni_plugins" "$p/ipam/host-local@$cni_plugins" "$p/main/loopback@$cni_plugins"
fi
if [ ! -x "$cni_cache/cnitool-$cnitool/cnitool" ]; then
  cni_install "$cni_cache/cnitool-$cnitool" "github.com/containernetworking/cni/cnitool@$cnitool"
fi
