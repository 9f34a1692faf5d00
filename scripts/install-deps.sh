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
