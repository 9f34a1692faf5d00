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

# Debian's etcd 3.4 (etcd-server), whose v2 store the tests of weftctl
# migrate-v2 need; they run their own on free loopback ports. Its package
# starts and enables a system etcd on 127.0.0.1:2379, the default endpoint
# of weft's tests and tools: service starts are denied (policy-rc.d) while it
# installs, and the unit is left disabled.
if [ ! -x /usr/bin/etcd ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-deps: need root to install: etcd-server" >&2
    exit 1
  fi
  echo "install-deps: installing etcd-server (its service is not started)" >&2
  export DEBIAN_FRONTEND=noninteractive
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# install-deps: no service starts while etcd-server installs\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq etcd-server >/dev/null
  if [ -d /run/systemd/system ]; then
    # The unit did not exist before this install: if a policy-rc.d that
    # allows starts let it run, it is the one this install started.
    systemctl disable --now --quiet etcd.service || true
  fi
fi

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
