#!/usr/bin/env bash
# Tokens/s per GPU against batch, both KV modes, one panel per context, from the JSON lines of
# `python3 -m sparsekv.bench.decode --out FILE` (kind "step", mtp false, the ess trace):
#   bench/plot_decode.sh bench/results/decode_h100.jsonl bench/results/decode_h100.png
set -euo pipefail
in=${1:?usage: plot_decode.sh DECODE.jsonl OUT.png}; out=${2:?usage: plot_decode.sh DECODE.jsonl OUT.png}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
python3 - "$in" "$tmp" <<'PY'
import json, sys, collections
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
steps = [r for r in rows if r.get("kind") == "step" and not r.get("mtp") and r.get("trace") == "ess"]
if not steps:
    sys.exit("plot_decode: no step records (mtp false, trace ess) in " + sys.argv[1])
series = collections.defaultdict(dict)
for r in steps:
    series[(r["context"], r["mode"])][r["batch"]] = r["tokens_per_s"]
contexts = sorted({c for c, _ in series})
meta = steps[0]
with open(f"{sys.argv[2]}/plot.gp", "w") as g:
    g.write(f'set terminal pngcairo size {520 * len(contexts)},420 noenhanced\nset output "OUT"\n')
    g.write(f'set multiplot layout 1,{len(contexts)} title "DeepSeek-V3.2 decode, tokens/s per GPU ({meta["card"]}, commit {meta.get("commit") or "?"})"\n')
    g.write('set xlabel "batch (requests)"\nset ylabel "tokens/s"\nset key top left\nset grid\n')
    for c in contexts:
        plots = []
        for mode in ("hbm", "sparsekv"):
            pts = series.get((c, mode))
            if not pts:
                continue
            path = f"{sys.argv[2]}/{c}_{mode}.dat"
            with open(path, "w") as f:
                for b in sorted(pts):
                    f.write(f"{b} {pts[b]}\n")
            plots.append(f'"{path}" using 1:2 with linespoints lw 2 title "{mode}"')
        label = f"{c // 1024}K" if c % 1024 == 0 else f"{c} tokens"
        g.write(f'set title "context {label}"\nplot ' + ", ".join(plots) + "\n")
    g.write("unset multiplot\n")
PY
sed -i "s|\"OUT\"|\"$out\"|" "$tmp/plot.gp"
gnuplot "$tmp/plot.gp"
echo "plot_decode: wrote $out"
