#!/usr/bin/env bash
# Runs every Fuzz… target for a short time each (default 5s): the seed
# corpora already run as ordinary tests; this explores beyond them.
set -euo pipefail
t=${1:-5s}
for pkg in $(go list ./...); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  for f in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
    echo "fuzz $pkg $f ($t)"
    go test -run '^$' -fuzz "^$f\$" -fuzztime "$t" "$pkg" >/tmp/weft-fuzz.log 2>&1 || { cat /tmp/weft-fuzz.log; exit 1; }
  done
done
