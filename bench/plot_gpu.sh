#!/usr/bin/env bash
# Plots sparsekv-gpu-bench's random-working-set figures: GB/s against working-set size for the
# cold gather, the trivial flat kernel and the warp-per-entry kernel, with the same run's bulk
# pinned H2D as the limit; optionally the cold gather of a second run (e.g. a hugetlb pool).
#   bench/plot_gpu.sh RESULTS.jsonl OUT.png [HUGETLB_RESULTS.jsonl]
set -euo pipefail
in="${1:?usage: plot_gpu.sh RESULTS.jsonl OUT.png}"; out="${2:?usage: plot_gpu.sh RESULTS.jsonl OUT.png}"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
second="${3:-}"
python3 - "$in" "$tmp" "$second" <<'PY'
import json, sys
rows, card, bulk = {}, "", None
extra = {}
if sys.argv[3]:
    for line in open(sys.argv[3]):
        if not line.startswith("{"): continue
        d = json.loads(line)
        if d["workload"].startswith("random_ws_") and d["metric"] == "cold_gather":
            size = d["workload"][len("random_ws_"):]
            extra[float(size[:-3]) * (1024 if size.endswith("GiB") else 1)] = d["value"]
for line in open(sys.argv[1]):
    if not line.startswith("{"): continue
    d = json.loads(line)
    card = d.get("card", card)
    if d["metric"] == "bulk_pinned_h2d": bulk = d["value"]
    w = d["workload"]
    if w.startswith("random_ws_") and d["unit"] == "GB/s":
        size = w[len("random_ws_"):]
        mib = float(size[:-3]) * (1024 if size.endswith("GiB") else 1)
        rows.setdefault(mib, {})[d["metric"]] = d["value"]
with open(sys.argv[2] + "/data", "w") as f:
    for mib in sorted(rows):
        r = rows[mib]
        f.write(f"{mib} {r.get('cold_gather', 0)} {r.get('trivial_flat_kernel', 0)} {r.get('warp_per_entry_kernel', 0)} {bulk} "
                f"{extra.get(mib, 'NaN')}\n")
open(sys.argv[2] + "/card", "w").write(card)
PY
gnuplot <<GP
set terminal pngcairo size 900,520 noenhanced
set output "$out"
set title "random top-2048 gather of 656 B entries, 32 rows, on $(cat "$tmp/card")"
set xlabel "working set (MiB, log scale)"
set ylabel "GB/s"
set logscale x 2
set yrange [0:60]
set key bottom right
set grid
plot "$tmp/data" using 1:5 with lines dt 2 lw 2 title "bulk pinned H2D (limit)", \
     "" using 1:2 with linespoints lw 2 pt 7 title "sparsekv DeviceBatch::Gather (device-side resolution)", \
     "" using 1:3 with linespoints pt 5 title "trivial flat kernel (host-resolved addresses)", \
     "" using 1:4 with linespoints pt 9 title "warp-per-entry kernel (host-resolved, HiSparse-style)"$( [ -n "$second" ] && echo ', \
     "" using 1:6 with linespoints lw 2 pt 13 title "sparsekv gather, pool in 2 MiB pages (memfd-hugetlb)"')
GP
echo "plot: $out"
