#!/usr/bin/env bash
# Builds the reference flanneld that weft's interop tests (e2e/flanneld_test.go)
# run as the other side: flannel v0.28.10 from the Go module proxy, with cgo
# (its udp backend is C), into a cache directory, once.
#
#   scripts/flanneld.sh          build if missing; print the binary's path
#
# Where: $WEFT_FLANNELD_DIR, else ${WEFT_CACHE:-/var/cache/weft}/flanneld-<version>.
# The tests look in the same place (or at $WEFT_FLANNELD, a binary's path).
#
# Why not `go install github.com/flannel-io/flannel@v0.28.10`: main.go blank-
# imports the tencentvpc backend, whose SDK dependency the proxy cannot serve,
# so the install fails. We build the module's own source with that one import
# removed (a backend weft does not have and the tests never use).
set -euo pipefail

version=${WEFT_FLANNELD_VERSION:-v0.28.10}
dir=${WEFT_FLANNELD_DIR:-${WEFT_CACHE:-/var/cache/weft}/flanneld-$version}
bin=$dir/flanneld

# Idempotent: a binary that answers --version with the wanted version is kept.
# (flanneld prints its version on stderr.)
if [ -x "$bin" ] && [ "$("$bin" --version 2>&1)" = "$version" ]; then
  echo "$bin"
  exit 0
fi

command -v go >/dev/null || { echo "flanneld.sh: go is not in PATH" >&2; exit 1; }
command -v gcc >/dev/null || { echo "flanneld.sh: gcc is needed (flannel's udp backend uses cgo): apt-get install gcc libc6-dev" >&2; exit 1; }

echo "flanneld.sh: building flanneld $version into $dir (a few minutes, once)" >&2
start=$(date +%s)
moddir=$(go mod download -json "github.com/flannel-io/flannel@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
if [ -z "$moddir" ] || [ ! -f "$moddir/main.go" ]; then
  echo "flanneld.sh: go mod download github.com/flannel-io/flannel@$version gave no module directory" >&2
  exit 1
fi

work=$(mktemp -d /tmp/weft-flanneld-src.XXXXXX)
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
# The module cache is read-only: build a writable copy.
cp -r "$moddir/." "$work/"
chmod -R u+w "$work"
tencent='"github.com/flannel-io/flannel/pkg/backend/tencentvpc"'
if ! grep -q "$tencent" "$work/main.go"; then
  echo "flanneld.sh: $moddir/main.go no longer imports $tencent; check the build by hand" >&2
  exit 1
fi
grep -v "$tencent" "$work/main.go" >"$work/main.go.new"
mv "$work/main.go.new" "$work/main.go"

mkdir -p "$dir"
# -mod=mod: the copy's go.sum still lists the removed backend's modules; let
# go resolve the module graph again instead of failing on vendoring checks.
# GOFLAGS is overridden so that a caller's -mod or -buildvcs does not leak in.
(
  cd "$work"
  CGO_ENABLED=1 GOFLAGS="-mod=mod -buildvcs=false" go build -trimpath \
    -ldflags "-X github.com/flannel-io/flannel/pkg/version.Version=$version" \
    -o "$bin.tmp" .
)
mv "$bin.tmp" "$bin"
got=$("$bin" --version 2>&1 || true)
if [ "$got" != "$version" ]; then
  echo "flanneld.sh: built $bin but --version says \"$got\", want \"$version\"" >&2
  exit 1
fi
echo "flanneld.sh: built $bin in $(( $(date +%s) - start ))s ($(du -m "$bin" | cut -f1) MB)" >&2
echo "$bin"
