"""Approximate kNN benchmark: faiss IVF-Flat against HNSW at a recall@k of 0.95, on the CPU.

Decides which index ``knn="approximate"`` uses (docs/BENCHMARKS_KNN.md). For each method
and N, one fresh process generates the data, builds the index, tunes its search breadth
upwards until the recall@k measured on 1,000 seeded sample queries (against exact search
of those queries) reaches the target, then searches every point, as the engine does.
It prints build, tune and search times (wall, and CPU seconds of all threads, which
other load on the machine distorts less), the recall, the index size and the process's
peak RSS above the data, and the load average before and after each run.

- IVF-Flat: ``nlist = round(4 * sqrt(N))`` k-means centroids trained on a seeded
  subsample of ``16 * nlist`` points; ``nprobe`` doubles from 1 until the target is met,
  then a bisection finds the smallest that meets it (recall cannot fall as nprobe grows:
  the probed lists only grow).
- HNSW: ``M = 32``, ``efConstruction = 80``; ``efSearch`` doubles from ``max(2k, 64)``
  (what the engine did before), then the same bisection.

The data are gaussian blobs around 1,000 random centres (d = 128, cosine metric, k = 30),
as in issue 13.

    python bench/bench_knn.py --n 200000
    python bench/bench_knn.py --n 1000000 --methods ivf hnsw
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np

RECALL_SAMPLE = 1_000
QUERY_BLOCK = 4_096


def clustered_embeddings(n: int, d: int, *, clusters: int, seed: int) -> np.ndarray:
    """Gaussian blobs (unit noise) around ``clusters`` random centres of scale 2."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d), dtype=np.float32) * 2.0
    labels = rng.integers(0, clusters, n)
    points = centres[labels]
    points += rng.standard_normal((n, d), dtype=np.float32)
    return points


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _search_without_self(index, queries: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    _, found = index.search(queries, k + 1)
    is_self = found == rows[:, None]
    is_self[~is_self.any(axis=1), -1] = True
    return found[~is_self].reshape(-1, k)


def _recall(approx: np.ndarray, exact: np.ndarray) -> float:
    hits = sum(np.intersect1d(a, e).size for a, e in zip(approx, exact, strict=True))
    return hits / exact.size


def _tune(
    set_breadth: Callable[[int], None],
    recall_at: Callable[[], float],
    *,
    start: int,
    limit: int,
    target: float,
) -> tuple[int, float, list[tuple[int, float]]]:
    """Smallest breadth (doubling, then bisection) whose measured recall meets the target."""
    tried: list[tuple[int, float]] = []

    def measure(breadth: int) -> float:
        set_breadth(breadth)
        recall = recall_at()
        tried.append((breadth, recall))
        return recall

    low, high = start // 2, start
    while measure(high) < target and high < limit:
        low, high = high, min(2 * high, limit)
    while high - low > 1 and low >= 1:
        middle = (low + high) // 2
        if measure(middle) >= target:
            high = middle
        else:
            low = middle
    best = high
    return best, dict(tried)[best], tried


def run_method(args: argparse.Namespace) -> dict:
    """One method at one N, in this process: build, tune, search every point."""
    import faiss

    points = clustered_embeddings(args.n, args.d, clusters=args.clusters, seed=args.seed)
    faiss.normalize_L2(points)
    rng = np.random.default_rng(args.seed)
    sample = np.sort(rng.choice(args.n, size=min(RECALL_SAMPLE, args.n), replace=False))
    flat = faiss.IndexFlatIP(args.d)
    flat.add(points)
    exact = _search_without_self(flat, points[sample], sample, args.k)
    del flat
    rss_data = _rss_mib()

    started, cpu_started = time.perf_counter(), time.process_time()
    if args.method == "ivf":
        nlist = round(4 * math.sqrt(args.n))
        quantizer = faiss.IndexFlatIP(args.d)
        index = faiss.IndexIVFFlat(quantizer, args.d, nlist, faiss.METRIC_INNER_PRODUCT)
        train_rows = np.sort(
            np.random.default_rng(args.seed).choice(
                args.n, size=min(args.n, args.train_per_list * nlist), replace=False
            )
        )
        # Fewer points per centroid than faiss advises: nprobe is tuned to the measured
        # recall anyway, and training dominated the build at 40 per centroid.
        index.cp.min_points_per_centroid = 1
        index.train(points[train_rows])
        index.add(points)
        settings = {"nlist": nlist, "train_points": int(train_rows.size)}

        def set_breadth(value: int) -> None:
            index.nprobe = value

        start, limit = 1, nlist
    else:
        index = faiss.IndexHNSWFlat(args.d, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.add(points)
        settings = {"M": 32, "efConstruction": 80}

        def set_breadth(value: int) -> None:
            index.hnsw.efSearch = value

        start, limit = max(2 * args.k, 64), 4_096
    build_s, build_cpu_s = time.perf_counter() - started, time.process_time() - cpu_started

    started, cpu_started = time.perf_counter(), time.process_time()
    breadth, sample_recall, tried = _tune(
        set_breadth,
        lambda: _recall(_search_without_self(index, points[sample], sample, args.k), exact),
        start=start,
        limit=limit,
        target=args.target,
    )
    set_breadth(breadth)
    tune_s, tune_cpu_s = time.perf_counter() - started, time.process_time() - cpu_started

    started, cpu_started = time.perf_counter(), time.process_time()
    found = np.empty((args.n, args.k), dtype=np.int64)
    for first in range(0, args.n, QUERY_BLOCK):
        last = min(first + QUERY_BLOCK, args.n)
        found[first:last] = _search_without_self(
            index, points[first:last], np.arange(first, last), args.k
        )
    search_s, search_cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
    return {
        "method": args.method,
        "n": args.n,
        **settings,
        "breadth": breadth,
        "tried": tried,
        "recall": sample_recall,
        # The full search, scored on the same sample: it must agree with the tuning.
        "recall_full_search": _recall(found[sample], exact),
        "build_s": build_s,
        "tune_s": tune_s,
        "search_s": search_s,
        "total_s": build_s + tune_s + search_s,
        # CPU seconds of all threads: less sensitive than wall time to other load.
        "build_cpu_s": build_cpu_s,
        "tune_cpu_s": tune_cpu_s,
        "search_cpu_s": search_cpu_s,
        "total_cpu_s": build_cpu_s + tune_cpu_s + search_cpu_s,
        "index_mib": faiss.serialize_index(index).nbytes / 2**20,
        "peak_rss_above_data_mib": _peak_rss_mib() - rss_data,
        "threads": faiss.omp_get_max_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[200_000])
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--k", type=int, default=30)
    parser.add_argument("--clusters", type=int, default=1_000)
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--train-per-list", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", choices=["ivf", "hnsw"], default=["ivf", "hnsw"])
    parser.add_argument("--method", choices=["ivf", "hnsw"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.method:
        args.n = args.n[0]
        print(json.dumps(run_method(args)))
        return

    for n in args.n:
        for method in args.methods:
            load_before = os.getloadavg()
            command = [sys.executable, __file__, "--method", method, "--n", str(n)]
            for name in ("d", "k", "clusters", "target", "train_per_list", "seed"):
                command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            result = json.loads(output.strip().splitlines()[-1])
            result["load_before"] = [round(x, 2) for x in load_before]
            result["load_after"] = [round(x, 2) for x in os.getloadavg()]
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
