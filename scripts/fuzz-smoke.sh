#!/usr/bin/env bash
# Runs every Fuzz… target for a short time each (default 5s): the seed
# corpora already run as ordinary tests; this explores beyond them.
set -euo pipefail
t=${1:-5s}
for pkg in $(go list ./...); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  for f in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
    echo "fuzz $pkg $f ($t)"
    if ! go test -run '^$' -fuzz "^$f\$" -fuzztime "$t" "$pkg" >/tmp/weft-fuzz.log 2>&1; then
      # Go's fuzzing engine sometimes fails a run with "context deadline
      # exceeded" when a worker is slow to stop at -fuzztime on a loaded
      # machine, with no failing input: that run found nothing, so it is
      # run once more. A found crasher ("Failing input written") never is.
      if grep -q 'context deadline exceeded' /tmp/weft-fuzz.log && ! grep -q 'Failing input written' /tmp/weft-fuzz.log; then
        echo "fuzz $pkg $f: the engine timed out stopping (no failing input); running it again"
        go test -run '^$' -fuzz "^$f\$" -fuzztime "$t" "$pkg" >/tmp/weft-fuzz.log 2>&1 || { cat /tmp/weft-fuzz.log; exit 1; }
      else
        cat /tmp/weft-fuzz.log
        exit 1
      fi
    fi
  done
done
