#!/bin/bash
# Join/leave latency of flanneld and weftd side by side (issue 12): 1,000
# peers, vxlan, ROUNDS rounds of 100 joins and leaves each, the two daemons
# alternating so drift of the machine hits both alike. Every sample goes to
# OUT/flanneld.csv and OUT/weftd.csv; the pooled p50/p99 are printed at the
# end. Run as root from the repository's root:
#   bench/overlay/side-by-side.sh [weftd binary] [flanneld binary]
# (flanneld: scripts/flanneld.sh builds it into /var/cache/weft).
set -euo pipefail
W=${1:-}
F=${2:-/var/cache/weft/flanneld-v0.28.10/flanneld}
ROUNDS=${ROUNDS:-5}
OUT=${OUT:-$(mktemp -d)}
go build -o "$OUT/overlay" ./bench/overlay
if [ -z "$W" ]; then
	CGO_ENABLED=0 go build -trimpath -o "$OUT/weftd" ./cmd/weftd
	W=$OUT/weftd
fi
rm -f "$OUT/flanneld.csv" "$OUT/weftd.csv"
for r in $(seq "$ROUNDS"); do
	echo "round $r: $(uptime)"
	"$OUT/overlay" -weftd "$F" -route-proto 3 -figure join -runs 1 -joins 100 -samples "$OUT/flanneld.csv" | grep -E '^\| (join|leave)'
	"$OUT/overlay" -weftd "$W" -figure join -runs 1 -joins 100 -samples "$OUT/weftd.csv" | grep -E '^\| (join|leave)'
done
for d in flanneld weftd; do
	for k in join leave; do
		awk -F, -v k="$k" '$1==k{print $NF}' "$OUT/$d.csv" | sort -g |
			awk -v d="$d" -v k="$k" '{a[NR]=$1} END{printf "%-8s %-5s n=%d p50=%.2f ms p99=%.2f ms\n", d, k, NR, a[int(NR*0.5+0.5)], a[int(NR*0.99+0.5)]}'
	done
done
echo "samples in $OUT"
