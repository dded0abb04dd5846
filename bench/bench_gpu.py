"""GPU benchmark: the torch path at 1,000,000 x 256, k=32, cosine (issue 2's GPU target).

Run on a machine with a CUDA device:

    python bench/bench_gpu.py --n 1000000 --d 256 --k 32

Prints the candidate search and solve times (target: <= 5 s together on one
H100/H200), the peak GPU memory, and the largest weight difference against the CPU
path (faiss + the same solver on the CPU) on a sample of nodes, relative to each
node's largest weight.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api_schemas import AnalysisParams  # noqa: E402
from bench.bench_engine import clustered_embeddings  # noqa: E402
from workers.geometry.analysis import build_nnk_graph  # noqa: E402
from workers.geometry.candidates import exact_candidates, prepare_vectors  # noqa: E402
from workers.geometry.kernels import candidate_kernels, kernel_vectors  # noqa: E402
from workers.geometry.solver import nnk_weights  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--sample", type=int, default=2000)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark needs a GPU")
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    points, _ = clustered_embeddings(args.n, args.d)
    params = AnalysisParams(k=args.k, device="cuda")
    # Warm-up on a small slice: CUDA context, kernels, cuBLAS handles.
    build_nnk_graph(points[:20_000], params=params, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    graph = build_nnk_graph(points, params=params, device="cuda")
    torch.cuda.synchronize()
    total = time.perf_counter() - started
    print(
        f"{args.n} x {args.d}, k={args.k}: total {total:.2f} s = knn {graph.knn_s:.2f} s + "
        f"solve {graph.solve_s:.2f} s; peak GPU memory "
        f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB; mean degree "
        f"{(graph.weights > 0).sum(axis=1).mean():.2f}"
    )

    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(args.n, size=args.sample, replace=False))
    vectors = prepare_vectors(points, metric="cosine")
    cpu_candidates = exact_candidates(vectors, args.k, metric="cosine").indices[sample]
    same_candidates = np.sort(cpu_candidates, 1) == np.sort(graph.candidate_indices[sample], 1)
    print(f"candidate sets equal to faiss's on {same_candidates.all(1).mean():.4f} of the sample")
    gram, rhs = candidate_kernels(
        kernel_vectors(points, kernel="cosine"),
        sample,
        graph.candidate_indices[sample],
        kernel="cosine",
    )
    cpu_weights, _ = nnk_weights(gram, rhs)
    cpu_weights = cpu_weights.numpy()
    largest = cpu_weights.max(axis=1, keepdims=True)
    error = np.abs(cpu_weights - graph.weights[sample]) / largest
    print(f"max weight error vs the CPU solve (relative to each node's largest): {error.max():.2e}")


if __name__ == "__main__":
    main()
