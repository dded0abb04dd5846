"""Engine benchmark: NNK graph + report vs a bare faiss search, and vs per-node scipy.

Prints, from one run: total, kNN, solve and metrics times, peak RSS, and the ratios

  (a) total / bare faiss IndexFlat search of the same data (target <= 1.3)
  (b) per-node scipy reference solve time (sampled, scaled to N) / our solve time
      (target >= 20; our solve time includes building the kernel matrices)

Each measurement runs in its own process so that peak RSS is the run's own.

    python bench/bench_engine.py --n 50000 --d 64 --k 30
    python bench/bench_engine.py --n 100000 --d 128 --k 30 --knn approximate
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def clustered_embeddings(n: int, d: int, *, clusters: int = 100, seed: int = 0):
    """Random-cluster embeddings: gaussian blobs around random centres, with labels."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)).astype(np.float32) * 2.0
    labels = rng.integers(0, clusters, n)
    points = centres[labels] + rng.standard_normal((n, d)).astype(np.float32)
    return points, labels % 10


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def phase_faiss(args) -> dict:
    import faiss

    points, _ = clustered_embeddings(args.n, args.d, seed=args.seed)
    faiss.normalize_L2(points)
    started = time.perf_counter()
    index = faiss.IndexFlatIP(args.d)
    index.add(points)
    for start in range(0, args.n, 16_384):
        index.search(points[start : start + 16_384], args.k + 1)
    return {"faiss_s": time.perf_counter() - started, "peak_rss_mib": _peak_rss_mib()}


def phase_ours(args) -> dict:
    from api_schemas import AnalysisParams
    from workers.geometry import EmbeddingSet, analyze_set

    points, labels = clustered_embeddings(args.n, args.d, seed=args.seed)
    baseline = _peak_rss_mib()
    params = AnalysisParams(k=args.k, knn=args.knn, device="cpu")
    started = time.perf_counter()
    result = analyze_set(EmbeddingSet("bench", points, labels), params=params)
    total = time.perf_counter() - started
    timings = result.report.timings
    return {
        "total_s": total,
        "knn_s": timings.knn_s,
        "solve_s": timings.solve_s,
        "metrics_s": timings.metrics_s,
        "peak_rss_mib": _peak_rss_mib(),
        "rss_before_mib": baseline,
        "knn_recall": result.report.graph.knn_recall,
        "mean_degree": result.report.nnk_degree.mean,
    }


def phase_reference(args) -> dict:
    """Per-node scipy: Cholesky of K_S, triangular solve, NNLS, on a sample of nodes."""
    import scipy.linalg
    import scipy.optimize

    from workers.geometry.candidates import neighbours_of, prepare_vectors
    from workers.geometry.kernels import candidate_kernels, kernel_vectors

    points, _ = clustered_embeddings(args.n, args.d, seed=args.seed)
    rng = np.random.default_rng(1)
    sample = np.sort(rng.choice(args.n, size=min(args.ref_sample, args.n), replace=False))
    vectors = prepare_vectors(points, metric="cosine")
    candidates = neighbours_of(vectors, sample, args.k, metric="cosine")
    gram, rhs = candidate_kernels(
        kernel_vectors(points, kernel="cosine"), sample, candidates, kernel="cosine"
    )
    gram, rhs = gram.numpy(), rhs.numpy()
    started = time.perf_counter()
    for node in range(sample.size):
        upper = scipy.linalg.cholesky(gram[node])
        target = scipy.linalg.solve_triangular(upper, rhs[node], trans="T")
        scipy.optimize.nnls(upper, target)
    per_node = (time.perf_counter() - started) / sample.size
    return {"reference_per_node_s": per_node, "reference_scaled_s": per_node * args.n}


def _run_phase(phase: str, args) -> dict:
    command = [
        sys.executable,
        __file__,
        "--phase",
        phase,
        "--n",
        str(args.n),
        "--d",
        str(args.d),
        "--k",
        str(args.k),
        "--knn",
        args.knn,
        "--seed",
        str(args.seed),
        "--ref-sample",
        str(args.ref_sample),
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--k", type=int, default=30)
    parser.add_argument("--knn", choices=["exact", "approximate"], default="exact")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ref-sample", type=int, default=1000)
    parser.add_argument("--phase", choices=["faiss", "ours", "reference"])
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(globals()[f"phase_{args.phase}"](args)))
        return

    faiss_run = _run_phase("faiss", args)
    ours = _run_phase("ours", args)
    reference = _run_phase("reference", args)
    print(f"machine: {_machine()}; load average {os.getloadavg()[0]:.2f} after the runs")
    print(f"data: {args.n} x {args.d} random clusters, k={args.k}, cosine, knn={args.knn}")
    print(f"bare faiss IndexFlatIP search: {faiss_run['faiss_s']:.2f} s")
    print(
        f"ours: total {ours['total_s']:.2f} s = knn {ours['knn_s']:.2f} + solve "
        f"{ours['solve_s']:.2f} + metrics {ours['metrics_s']:.2f} s; peak RSS "
        f"{ours['peak_rss_mib']:.0f} MiB; mean NNK degree {ours['mean_degree']:.2f}"
        + (f"; recall@k {ours['knn_recall']:.4f}" if ours["knn_recall"] is not None else "")
    )
    print(
        f"per-node scipy reference: {reference['reference_per_node_s'] * 1e6:.1f} us/node, "
        f"{reference['reference_scaled_s']:.2f} s scaled to N"
    )
    print(f"ratio (a) total / bare faiss: {ours['total_s'] / faiss_run['faiss_s']:.3f}")
    print(
        f"ratio (b) scipy reference / our solve: "
        f"{reference['reference_scaled_s'] / ours['solve_s']:.1f}x"
    )


if __name__ == "__main__":
    main()
