#!/usr/bin/env bash
# Builds the stock wireguard-go that weft's wireguard interop tests
# (e2e/wireguard_test.go) run as the non-weft host: the main package of
# golang.zx2c4.com/wireguard at the version weft's go.mod requires (the same
# protocol code, none of weft's), into a cache directory, once.
#
#   scripts/wireguard-go.sh      build if missing; print the binary's path
#
# Where: $WEFT_WIREGUARD_GO_DIR, else ${WEFT_CACHE:-/var/cache/weft}/wireguard-go-<version>.
# The tests look in the same place (or at $WEFT_WIREGUARD_GO, a binary's path).
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(go list -m -f '{{.Version}}' golang.zx2c4.com/wireguard)
dir=${WEFT_WIREGUARD_GO_DIR:-${WEFT_CACHE:-/var/cache/weft}/wireguard-go-$version}
bin=$dir/wireguard-go
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi
echo "wireguard-go.sh: building wireguard-go $version into $dir" >&2
mkdir -p "$dir"
# Built inside weft's module, so the version and go.sum are weft's.
CGO_ENABLED=0 GOFLAGS=-buildvcs=false go build -trimpath -o "$bin.tmp" golang.zx2c4.com/wireguard
mv "$bin.tmp" "$bin"
echo "$bin"
