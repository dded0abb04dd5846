"""Micro benchmark of the NNK solve alone: compiled CPU kernel vs the per-node scipy reference.

Candidates come from an exact faiss search. Ours is wall time per node of
:func:`workers.geometry.nnk_kernel.solve_vectors` on all cores, K_S and k_i construction
included (what ``timings.solve_s`` / N measures). The reference is single-threaded, one
node at a time: K_S and k_i with numpy, Cholesky, triangular solve, ``scipy.optimize.nnls``.
The load average is printed: figures taken above 0.5 are not a quiet-machine measure.
The target's ratio is the first (all threads, wall clock): ours and the reference are
timed in turn ``--repeats`` times, and the median of the per-turn ratios is quoted (on
a shared machine another process slows the two unevenly; taken in turn, each ratio
compares the two under the same load). Also printed: ours on one thread, and CPU
seconds per node of both on one thread, which another process on the machine distorts
least (a check on the per-core speed, not the target's measure).

    python bench/bench_solve.py --n 20000 --d 64 --k 30
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def clustered(n: int, d: int, *, seed: int = 0, clusters: int = 100) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d))
    return (centres[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, d))).astype(
        np.float32
    )


def reference_per_node(
    points: np.ndarray, candidates: np.ndarray, nodes: np.ndarray
) -> tuple[float, float]:
    """Wall and CPU seconds per node of the single-threaded scipy reference (K built per node)."""
    import scipy.linalg
    import scipy.optimize

    unit = points.astype(np.float64)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    started = time.perf_counter()
    started_cpu = time.process_time()
    for node in nodes:
        neighbours = unit[candidates[node]]
        gram = np.clip((1.0 + neighbours @ neighbours.T) / 2.0, 0.0, 1.0)
        np.fill_diagonal(gram, 1.0)
        rhs = np.clip((1.0 + neighbours @ unit[node]) / 2.0, 0.0, 1.0)
        upper = scipy.linalg.cholesky(gram)
        target = scipy.linalg.solve_triangular(upper, rhs, trans="T")
        scipy.optimize.nnls(upper, target)
    wall = (time.perf_counter() - started) / nodes.size
    return wall, (time.process_time() - started_cpu) / nodes.size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--k", type=int, default=30)
    parser.add_argument("--ref-sample", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from workers.geometry import nnk_kernel
    from workers.geometry.candidates import exact_candidates, prepare_vectors

    points = clustered(args.n, args.d)
    candidates = exact_candidates(prepare_vectors(points, metric="cosine"), args.k, metric="cosine")
    rows = np.arange(args.n)
    started = time.perf_counter()
    nnk_kernel.warm_up()
    print(f"numba load/compile: {time.perf_counter() - started:.2f} s")
    load_before = os.getloadavg()

    def per_node(n_threads: int | None, repeats: int = args.repeats) -> tuple[float, float]:
        """Median wall and CPU seconds per node of the whole compiled solve (scales and
        kernels included); CPU time counts every thread of the process."""
        walls, cpus = [], []
        for _ in range(repeats):
            started, started_cpu = time.perf_counter(), time.process_time()
            scales = nnk_kernel.kernel_scales(points, kernel="cosine")
            nnk_kernel.solve_vectors(
                points,
                rows,
                candidates.indices,
                kernel="cosine",
                scales=scales,
                n_threads=n_threads,
            )
            walls.append((time.perf_counter() - started) / args.n)
            cpus.append((time.process_time() - started_cpu) / args.n)
        return float(np.median(walls)), float(np.median(cpus))

    sample = np.random.default_rng(1).choice(args.n, size=min(args.ref_sample, args.n))
    turns = []
    for _ in range(args.repeats):
        ours_turn, ours_cpu_turn = per_node(None, repeats=1)
        reference_turn, reference_cpu = reference_per_node(points, candidates.indices, sample)
        turns.append((ours_turn, reference_turn, reference_cpu, ours_cpu_turn))
    ours, reference, reference_cpu, ours_cpu_all = (
        float(np.median(column)) for column in np.array(turns).T
    )
    ratio = float(np.median([turn[1] / turn[0] for turn in turns]))
    ours_one_thread, ours_cpu = per_node(1)
    print(f"N={args.n} d={args.d} k={args.k} threads={nnk_kernel.max_threads()}")
    print(f"compiled kernel: {ours * 1e6:.2f} us/node (all threads, median of {args.repeats})")
    print(f"compiled kernel: {ours_one_thread * 1e6:.2f} us/node (one thread)")
    # CPU seconds of all threads together against one thread's: above 1, the threads
    # slow each other down (shared cache lines, memory traffic), and the speed-up over
    # one thread falls short of the thread count by that factor.
    print(
        f"CPU time per node, all threads together: {ours_cpu_all * 1e6:.2f} us "
        f"({ours_cpu_all / ours_cpu:.2f}x one thread's)"
    )
    print(f"scipy reference: {reference * 1e6:.2f} us/node (single thread)")
    print(
        f"ratio: {ratio:.1f}x (all threads, median of {args.repeats} turns), "
        f"{reference / ours_one_thread:.1f}x (one)"
    )
    # CPU seconds, one thread each: what a busy machine distorts least (a check on the
    # wall-clock figures, not the target's measure).
    print(
        f"CPU time per node, one thread: {ours_cpu * 1e6:.2f} us vs scipy "
        f"{reference_cpu * 1e6:.2f} us = {reference_cpu / ours_cpu:.1f}x"
    )
    load_after = os.getloadavg()
    quiet = max(load_before[0], load_after[0]) < 0.5
    print(
        f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}: "
        + ("a quiet-machine figure" if quiet else "NOT a quiet-machine figure (load >= 0.5)")
    )


if __name__ == "__main__":
    main()
