#!/usr/bin/env bash
# Run nnkgeo end to end on a demo, on a fresh Debian/Ubuntu machine with Python 3.11+:
#   - creates .venv and installs the project if needed,
#   - starts Redis if none answers on NNKGEO_REDIS_URL (installing redis-server as root),
#   - starts a Celery worker, a webhooks worker and the API with a demo configuration
#     (under var/demo),
#   - embeds scikit-learn's digits (standardised pixels, PCA to 32 dimensions),
#   - uploads them, submits a job, polls it, and prints the report's headline numbers,
#   - stops everything it started, on success, failure or Ctrl-C.
# Set NNKGEO_DEMO_KEEP_RUNNING=1 to keep the service up afterwards (Ctrl-C stops it).
set -euo pipefail
cd "$(dirname "$0")/.."

demo_dir=${NNKGEO_DEMO_DIR:-$PWD/var/demo}
mkdir -p "$demo_dir"
log() { printf '\033[1mdemo:\033[0m %s\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }
apt_install() {
  as_root apt-get update -qq >/dev/null &&
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

# --- Python environment -----------------------------------------------------------------
python=${PYTHON:-python3}
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
  die "Python 3.11 or newer is needed (found $("$python" --version 2>&1))"
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$python" -m venv .venv 2>/dev/null || { apt_install python3-venv && "$python" -m venv .venv; }
fi
# [server]: the API, the workers and their engine; scikit-learn (in it) embeds the demo's
# data. A .venv with the client alone (plain `pip install nnkgeo`) gets the extra too.
if ! .venv/bin/python -c 'import nnkgeo, fastapi, celery, torch, sklearn' >/dev/null 2>&1; then
  log "installing nnkgeo[server] into .venv (first run: torch and friends, a few minutes)"
  { .venv/bin/python -m pip install --upgrade pip && .venv/bin/python -m pip install -e '.[server]'; } \
    >"$demo_dir/pip.log" 2>&1 || { tail -n 30 "$demo_dir/pip.log"; die "pip install failed"; }
fi
command -v curl >/dev/null || apt_install curl || die "curl is needed"

# --- Demo configuration -----------------------------------------------------------------
export NNKGEO_REDIS_URL=${NNKGEO_REDIS_URL:-redis://127.0.0.1:6379/0}
export NNKGEO_DATA_DIR=${NNKGEO_DATA_DIR:-$demo_dir/data}
demo_key=${NNKGEO_DEMO_KEY:-demo-$(.venv/bin/python -c 'import secrets; print(secrets.token_hex(16))')}
export NNKGEO_API_KEYS="demo:$demo_key"
unset NNKGEO_API_KEYS_FILE NNKGEO_ALLOW_ANONYMOUS
port=${NNKGEO_DEMO_PORT:-8000}
if ! .venv/bin/python -c "import socket, sys; s = socket.socket(); s.bind(('127.0.0.1', $port))" 2>/dev/null; then
  port=$(.venv/bin/python -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
fi
base_url="http://127.0.0.1:$port"

started_pids=()
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [ "${#started_pids[@]}" -gt 0 ]; then
    log "stopping what the demo started"
    for pid in "${started_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${started_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- Redis --------------------------------------------------------------------------------
redis_answers() {
  .venv/bin/python -c "import redis, sys; redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1).ping()" \
    "$NNKGEO_REDIS_URL" 2>/dev/null
}
if redis_answers; then
  log "using the Redis at $NNKGEO_REDIS_URL"
else
  read -r redis_host redis_port < <(.venv/bin/python -c "
import sys; from urllib.parse import urlsplit
url = urlsplit(sys.argv[1]); print(url.hostname or '127.0.0.1', url.port or 6379)" "$NNKGEO_REDIS_URL")
  case "$redis_host" in
    127.*|localhost|::1) ;;
    *) die "no Redis answers at $NNKGEO_REDIS_URL, and it is not on this machine" ;;
  esac
  if ! command -v redis-server >/dev/null; then
    log "installing redis-server"
    apt_install redis-server || die "redis-server is missing; install it (apt-get install redis-server)"
  fi
  log "starting redis-server on port $redis_port"
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$demo_dir" >"$demo_dir/redis.log" 2>&1 &
  started_pids+=($!)
  for _ in $(seq 50); do redis_answers && break; sleep 0.2; done
  redis_answers || die "redis-server did not start; see $demo_dir/redis.log"
fi

# --- Worker and API -----------------------------------------------------------------------
log "starting a worker, a webhooks worker and the API on $base_url (logs in $demo_dir)"
.venv/bin/celery -A workers.celery_app worker -Q cpu,gpu --concurrency 1 --loglevel INFO \
  >"$demo_dir/worker.log" 2>&1 &
started_pids+=($!)
# Webhook deliveries have a queue of their own (NNKGEO_WEBHOOK_QUEUE), served apart from
# jobs as in docker-compose.yml: a slow receiver never holds the worker that runs jobs.
.venv/bin/celery -A workers.celery_app worker -Q webhooks --concurrency 1 --loglevel INFO \
  -n "webhooks@%h" >"$demo_dir/webhooks.log" 2>&1 &
started_pids+=($!)
.venv/bin/uvicorn service.main:app --http service.http_protocol:BoundedHttpToolsProtocol \
  --host 127.0.0.1 --port "$port" >"$demo_dir/api.log" 2>&1 &
started_pids+=($!)
for _ in $(seq 240); do
  curl -fsS "$base_url/readyz" >/dev/null 2>&1 && break
  for pid in "${started_pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || die "a process exited; see $demo_dir/*.log"
  done
  sleep 0.5
done
curl -fsS "$base_url/readyz" >/dev/null || die "the service is not ready; see $demo_dir/*.log"

# --- Demo data: digits, embedded -------------------------------------------------------
log "embedding scikit-learn's digits (1797 images, PCA to 32 dimensions)"
.venv/bin/python - "$demo_dir" <<'PY'
import sys
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

out = Path(sys.argv[1])
digits = load_digits()
pixels = StandardScaler().fit_transform(digits.data)
embeddings = PCA(n_components=32, random_state=0).fit_transform(pixels).astype(np.float32)
np.save(out / "digits_embeddings.npy", embeddings)
np.save(out / "digits_labels.npy", digits.target.astype(np.int64))
PY

auth=(-H "Authorization: Bearer $demo_key")
json_field() { .venv/bin/python -c "import json, sys; print(json.load(sys.stdin)$1)"; }
upload() {
  curl -fsS "${auth[@]}" -H "Content-Type: application/octet-stream" \
    --data-binary "@$1" "$base_url/v1/datasets?format=npy" | json_field "['id']"
}
embeddings_id=$(upload "$demo_dir/digits_embeddings.npy")
labels_id=$(upload "$demo_dir/digits_labels.npy")
log "uploaded datasets $embeddings_id (embeddings) and $labels_id (labels)"

job_id=$(curl -fsS "${auth[@]}" -H "Content-Type: application/json" "$base_url/v1/jobs" -d @- <<JSON | json_field "['id']"
{"sets": [{"name": "digits-pca32",
           "embeddings": {"dataset": "$embeddings_id"},
           "labels": {"dataset": "$labels_id"}}],
 "params": {"k": 30, "kernel": "cosine"}}
JSON
)
log "submitted job $job_id"

status=queued
for _ in $(seq 600); do
  job=$(curl -fsS "${auth[@]}" "$base_url/v1/jobs/$job_id")
  read -r status stage fraction < <(.venv/bin/python -c "
import json, sys; job = json.load(sys.stdin)
print(job['status'], job['progress']['stage'], job['progress']['fraction'])" <<<"$job")
  log "job $status ($stage, $fraction)"
  case "$status" in succeeded|failed|canceled) break ;; esac
  sleep 0.5
done
[ "$status" = succeeded ] || die "job ended $status: $job"

curl -fsS "${auth[@]}" "$base_url/v1/jobs/$job_id/report" -o "$demo_dir/report.json"
curl -fsS "${auth[@]}" "$base_url/v1/jobs/$job_id/report.html" -o "$demo_dir/report.html"
curl -fsS "${auth[@]}" "$base_url/v1/jobs/$job_id/graphs/digits-pca32?kind=symmetric" \
  -o "$demo_dir/graph-symmetric.npz"

.venv/bin/python - "$demo_dir" <<'PY'
import json
import sys
from pathlib import Path

import scipy.sparse as sp

out = Path(sys.argv[1])
report = json.loads((out / "report.json").read_text())
graph = sp.load_npz(out / "graph-symmetric.npz")
# What each regime says (docs/ALGORITHM.md, "Regime"), printed beside the verdict.
regime_means = {
    "homogeneous": "both NNK LOO errors <= 1 %: label-pure neighbourhoods",
    "weighted": "only the NNK-weighted LOO error is <= 1 %: the weights matter",
    "not_interpolating": "NNK-weighted LOO error above 1 %: labels not organised by neighbourhood",
}
for s in report["sets"]:
    print(f"\nset {s['name']}: {s['n_points']} points, {s['dim']} dims, {s['n_classes']} classes")
    print(f"  NNK graph: {s['graph']['n_edges_symmetric']} edges, mean degree "
          f"{s['nnk_degree']['mean']:.2f} (median {s['nnk_degree']['median']:g}, "
          f"max {s['nnk_degree']['max']:g}); downloaded graph {graph.shape}, {graph.nnz} entries")
    loo = s["loo_error"]
    print(f"  leave-one-out error: NNK weighted {loo['nnk_weighted']:.4f}, "
          f"kNN majority {loo['knn_unweighted']:.4f}")
    print(f"  NNK homogeneity {s['homogeneity']['nnk_mean']:.4f}, pure patches "
          f"{s['homogeneity']['pure_patch_fraction']:.4f}")
    twonn = s["intrinsic_dimension"]["twonn"]
    print(f"  intrinsic dimension (TwoNN) {twonn:.2f}")
    print(f"  regime: {s['regime']} ({regime_means.get(s['regime'], 'see docs/ALGORITHM.md')})")
print(f"\nreport: {out / 'report.json'} and {out / 'report.html'}")
print("every number is defined in docs/ALGORITHM.md")
PY

if [ "${NNKGEO_DEMO_KEEP_RUNNING:-0}" = 1 ]; then
  log "the service runs on $base_url with key $demo_key; Ctrl-C stops it"
  wait
fi
