#!/usr/bin/env bash
# Issue 13's engine targets on this machine, as whole processes run in turn with
# ../shared/tools/alternate (medians, ratios pair by pair, the load average before and
# after). Run it on a quiet machine: a target counts only when the load stayed under 0.5.
#
#   bench/engine_targets.sh [WORKDIR]        # prints everything; ~30 min on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/nnkgeo-engine-targets}
alternate=${ALTERNATE:-../shared/tools/alternate}
py=.venv/bin/python
nnkgeo=.venv/bin/nnkgeo
mkdir -p "$work"

echo "== machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; $(date -u)"
echo "== warm numba's cache (not timed)"
$py -m workers.geometry.nnk_kernel

echo "== CLI start-up: nnkgeo --help, 10 runs (seconds)"
for _ in $(seq 10); do /usr/bin/time -f %e $nnkgeo --help 2>&1 >/dev/null; done | sort -n | awk '{a[NR]=$1} END {print "median", (a[5]+a[6])/2, "min", a[1], "max", a[NR]}'

echo "== 50,000 x 64, k=30, exact: nnkgeo analyze vs bare faiss IndexFlatIP"
[ -f "$work/50k/embeddings.npy" ] || $py bench/make_embeddings.py "$work/50k" --n 50000 --d 64 --classes 100
$alternate -n 5 \
  -a "$nnkgeo analyze $work/50k/embeddings.npy --labels $work/50k/labels.npy --k 30 --knn exact --quiet --out $work/50k/report.json" \
  -b "$py bench/bare_faiss.py $work/50k/embeddings.npy --k 30"
$py -c "import json,sys; s=json.load(open('$work/50k/report.json'))['sets'][0]; t=s['timings']; print('timings', t, 'solve per node', 1e6*t['solve_s']/s['n_points'], 'us')"

echo "== NNK solve: compiled kernel vs per-node scipy reference, 50,000 x 64, k=30"
$py bench/bench_solve.py --n 50000 --d 64 --k 30

echo "== 1,000,000 x 128, k=30, 1,000 classes, approximate: nnkgeo analyze vs bare faiss IVF-Flat"
[ -f "$work/1m/embeddings.npy" ] || $py bench/make_embeddings.py "$work/1m" --n 1000000 --d 128 --classes 1000
$alternate -n 3 --warmup 0 \
  -a "$nnkgeo analyze $work/1m/embeddings.npy --labels $work/1m/labels.npy --k 30 --knn approximate --quiet --out $work/1m/report.json" \
  -b "$py bench/bare_faiss.py $work/1m/embeddings.npy --k 30 --index ivf"
$py -c "import json; s=json.load(open('$work/1m/report.json'))['sets'][0]; print('timings', s['timings'], 'recall', s['graph']['knn_recall'], 'on', s['graph']['knn_recall_sample'])"
echo "== done $(date -u); load $(cut -d' ' -f1-3 /proc/loadavg)"
