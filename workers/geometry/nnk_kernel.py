"""The exact NNK solve on a CPU, compiled with numba: one active-set QP per node, in parallel.

For node i with K = K[S_i, S_i] (k x k, unit diagonal, PSD) and b = K[S_i, i]:

    theta_i = argmin_{theta >= 0} 1/2 theta' K theta - b' theta          (DESIGN sec. 1)

Each node runs Lawson & Hanson's active set ("Solving Least Squares Problems", 1974,
ch. 23) in the NNK form, which is NNLS on a square-root factor of K. The Cholesky factor
L of K_FF (F the free set) is kept across active-set changes: a variable entering F
appends one row to L (a triangular solve), a variable leaving F deletes its row and
restores the triangle with Givens rotations on the columns. A node costs a few
O(k^2) steps instead of the O(k^3) refactorisation per change of a plain active set.

The semantics are those of :func:`workers.geometry.solver.nnk_weights` (the torch path,
kept for the GPU): candidates with b_j <= 0 are excluded; a candidate identical to an
earlier one is left out; a candidate identical to the query takes all the weight; the
caller's ``allowed`` mask; weights at or below ``RELATIVE_ZERO_WEIGHT`` of the node's
largest are cut; the same reconstruction error. A singular K_FF (embedding dimension
below k) cannot break the factor: a candidate whose new pivot vanishes is not let into
F. So F's columns stay linearly independent, and the weights are a basic optimum
(support no larger than the rank of K_S), the one the pivoting order reaches when the
optimum is not unique; such nodes are flagged (``rank_deficient``: a Cholesky pivot of
the whole K, in the order of the candidates, at or below 1e-13 of its diagonal; the
active set's factor covers F only, so this is a factorisation of its own, blocked by
panels of four rows, about a fifth of a node's time at k = 30). A column kept out
would take no weight at the optimum in exact arithmetic (its column of the
square-root factor lies in the span of F's, so its gradient is F's, zero); should its
gradient still be negative beyond 1e-9 at the end, or a node not settle, the node is
marked and :func:`solve_gram` / :func:`solve_vectors` solve it again with scipy's NNLS.

:func:`solve_vectors` also builds each node's K and b from the embeddings inside the
kernel (thread-local scratch, never an (n, k, k) array), with the formulas of
:mod:`workers.geometry.kernels`; its timings therefore include the kernel construction.

This module is the interface (numpy in, numpy out, the scipy fallback, threads); the
compiled code is all in :mod:`workers.geometry.nnk_compiled`.

Compilation and its cache
-------------------------
Every function is compiled with ``cache=True`` (fastmath off: the pivot and KKT tests
compare small differences, and NaN checks must survive; only the inner products of the
kernels reassociate, see :mod:`workers.geometry.nnk_compiled`). Nodes are handed to the
threads in chunks of 64, dynamically, so that a thread slowed by another process does
not hold up the block. numba writes its cache to the
directory named by the ``NUMBA_CACHE_DIR`` environment variable when it is set, else
beside the source, else in the user's cache directory. Site-packages is read-only in
the image, and a first compilation takes 10-40 s, so the image must set a writable
``NUMBA_CACHE_DIR`` and warm the cache at build time, with the same variables set::

    NUMBA_CACHE_DIR=/var/cache/numba python -m workers.geometry.nnk_kernel

A cache dir that outlives an upgrade is safe: numba recompiles when the source file
of a cached function changes.

The cache is specific to the CPU it was compiled on (numba targets the host CPU); an
image built on another CPU family recompiles on first use unless ``NUMBA_CPU_NAME`` is
set to ``generic`` both at build and at run time (portable, somewhat slower).
"""

from __future__ import annotations

import numpy as np
from numba import get_num_threads, set_num_threads, set_parallel_chunksize

from workers.geometry import nnk_compiled
from workers.geometry.nnk_common import (
    IDENTICAL_TOLERANCE,
    PIVOT_TOLERANCE,
    RELATIVE_ZERO_WEIGHT,
    scipy_nnls,
)

__all__ = ["kernel_scales", "max_threads", "solve_gram", "solve_vectors", "warm_up"]

# What the compiled code compares with, passed in (not compiled in: see nnk_compiled).
_TOLERANCES = (IDENTICAL_TOLERANCE, PIVOT_TOLERANCE, RELATIVE_ZERO_WEIGHT)
# Nodes a thread takes at a time from the shared queue (numba's dynamic schedule, one
# iteration of the compiled loop a block): small enough that a thread slowed by another
# process does not hold up the batch, large enough that taking a block and allocating
# its scratch cost nothing beside 64 solves.
_NODES_PER_CHUNK = 64


def _fallback(gram: np.ndarray, rhs: np.ndarray, allowed: np.ndarray) -> tuple[np.ndarray, float]:
    """One unsettled node by scipy's NNLS, with the same pre-processing and cut."""
    mask = allowed.copy()
    duplicate = nnk_compiled.prepare_node(gram, rhs, mask, IDENTICAL_TOLERANCE)
    weights = np.zeros_like(rhs)
    if duplicate >= 0:
        weights[duplicate] = 1.0
    else:
        weights[:] = scipy_nnls(gram, rhs, mask)
    support = np.empty(rhs.size, dtype=np.int64)
    error = nnk_compiled.finish_node(gram, rhs, weights, support, RELATIVE_ZERO_WEIGHT)
    return weights, float(error)


def max_threads() -> int:
    """The most threads numba's pool has (``NUMBA_NUM_THREADS``, default the cores)."""
    from numba import config

    return int(config.NUMBA_NUM_THREADS)


class _Threads:
    """Run numba's parallel loops on ``count`` threads (None: leave as is) for a while,
    their iterations (blocks of ``_NODES_PER_CHUNK`` nodes) handed out one at a time."""

    def __init__(self, count: int | None) -> None:
        self.count = count
        self.previous = 0
        self.previous_chunk = 0

    def __enter__(self) -> None:
        # Both settings are the calling thread's own in numba (not numba's
        # ``parallel_chunksize`` context manager: one object shared by every thread).
        self.previous = get_num_threads()
        if self.count is not None:
            set_num_threads(max(1, min(self.count, max_threads())))
        self.previous_chunk = set_parallel_chunksize(1)

    def __exit__(self, *exc: object) -> None:
        set_parallel_chunksize(self.previous_chunk)
        set_num_threads(self.previous)


def solve_gram(
    gram: np.ndarray,
    rhs: np.ndarray,
    allowed: np.ndarray | None = None,
    *,
    n_threads: int | None = None,
    rank_deficient: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The exact NNK weights of a batch of nodes from their kernel matrices.

    Parameters
    ----------
    gram : ndarray of shape (n, k, k), float64
        ``K[S_i, S_i]`` per node; symmetric PSD, unit diagonal.
    rhs : ndarray of shape (n, k), float64
        ``K[S_i, i]`` per node.
    allowed : bool ndarray of shape (n, k), optional
        Candidates that may take weight (default: all).
    n_threads : int, optional
        Threads for the parallel loop (default: numba's current setting).
    rank_deficient : bool ndarray of shape (n,), optional
        Written with whether each node's K is numerically singular (a Cholesky pivot at
        or below 1e-13 of its diagonal): its optimum may not be unique, and the weights
        are a basic optimum (linearly independent support).

    Returns
    -------
    weights : ndarray of shape (n, k)
    reconstruction_error : ndarray of shape (n,)
        As :func:`workers.geometry.solver.nnk_weights` returns them.
    """
    gram = np.ascontiguousarray(gram, dtype=np.float64)
    rhs = np.ascontiguousarray(rhs, dtype=np.float64)
    n_nodes, k = rhs.shape
    allowed = (
        np.ones((n_nodes, k), dtype=np.bool_)
        if allowed is None
        else np.ascontiguousarray(allowed, dtype=np.bool_)
    )
    weights = np.empty((n_nodes, k))
    error = np.empty(n_nodes)
    settled = np.empty(n_nodes, dtype=np.bool_)
    deficient = np.empty(n_nodes, dtype=np.bool_) if rank_deficient is None else rank_deficient
    with _Threads(n_threads):
        nnk_compiled.solve_gram_batch(
            gram, rhs, allowed, _TOLERANCES, _NODES_PER_CHUNK, weights, error, settled, deficient
        )
    for node in np.flatnonzero(~settled):
        weights[node], error[node] = _fallback(gram[node], rhs[node], allowed[node])
    return weights, error


def solve_vectors(
    embeddings: np.ndarray,
    query_indices: np.ndarray,
    candidate_indices: np.ndarray,
    *,
    kernel: str,
    sigma: float | None = None,
    ignore_identical: bool = False,
    scales: np.ndarray | None = None,
    n_threads: int | None = None,
    out: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    rank_deficient: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Kernels and exact NNK weights of a block of queries, straight from the embeddings.

    Parameters
    ----------
    embeddings : ndarray of shape (n_points, dim), float32, C-contiguous
        All points; rows are read in float64.
    query_indices : ndarray of shape (n,), int64
    candidate_indices : ndarray of shape (n, k), int64
    kernel : {"cosine", "gaussian"}
    sigma : float, optional
        Fixed gaussian bandwidth; default the per-query rule of
        :func:`workers.geometry.kernels.candidate_kernels`.
    ignore_identical : bool
        Candidates identical to their query (b = 1) may take no weight.
    scales : ndarray of shape (n_points,), float64, optional
        :func:`kernel_scales` of the embeddings; pass them to reuse across blocks.
    n_threads : int, optional
        Threads for the parallel loop (default: numba's current setting).
    out : (weights, query_kernel, reconstruction_error), optional
        C-contiguous float64 arrays of shapes (n, k), (n, k), (n,) to write into.
    rank_deficient : bool ndarray of shape (n,), optional
        Written as :func:`solve_gram` writes it.

    Returns
    -------
    weights, query_kernel, reconstruction_error
        ``out`` when given; else new arrays. As :func:`solve_gram` returns them for
        the kernels of :func:`workers.geometry.kernels.candidate_kernels`.
    """
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    queries = np.ascontiguousarray(query_indices, dtype=np.int64)
    candidates = np.ascontiguousarray(candidate_indices, dtype=np.int64)
    n_nodes, k = candidates.shape
    gaussian = kernel == "gaussian"
    if scales is None:
        scales = kernel_scales(embeddings, kernel=kernel)
    bandwidth = float(sigma) if sigma is not None else 0.0
    weights, rhs, error = out or (np.empty((n_nodes, k)), np.empty((n_nodes, k)), np.empty(n_nodes))
    settled = np.empty(n_nodes, dtype=np.bool_)
    deficient = np.empty(n_nodes, dtype=np.bool_) if rank_deficient is None else rank_deficient
    with _Threads(n_threads):
        nnk_compiled.solve_vectors_batch(
            embeddings,
            scales,
            queries,
            candidates,
            gaussian,
            bandwidth,
            ignore_identical,
            _TOLERANCES,
            _NODES_PER_CHUNK,
            weights,
            rhs,
            error,
            settled,
            deficient,
        )
    for node in np.flatnonzero(~settled):
        gram = np.empty((k, k))
        node_rhs = np.empty(k)
        nnk_compiled.node_kernels(
            embeddings,
            scales,
            queries[node],
            candidates[node],
            gaussian,
            bandwidth,
            np.zeros((nnk_compiled.padded(k + 1), embeddings.shape[1])),
            np.zeros((nnk_compiled.padded(k + 1), nnk_compiled.padded(k + 1))),
            gram,
            node_rhs,
        )
        allowed = (
            node_rhs < 1.0 - IDENTICAL_TOLERANCE if ignore_identical else np.ones(k, dtype=bool)
        )
        weights[node], error[node] = _fallback(gram, node_rhs, allowed)
        rhs[node] = node_rhs
    return weights, rhs, error


def kernel_scales(embeddings: np.ndarray, *, kernel: str) -> np.ndarray:
    """What the kernels multiply each row by: 1 / |x| (in float64) for cosine, else 1."""
    if kernel == "cosine":
        return nnk_compiled.inverse_norms(np.ascontiguousarray(embeddings, dtype=np.float32))
    return np.ones(embeddings.shape[0])


def warm_up() -> None:
    """Compile (or load from the cache) every function with the types the engine uses."""
    rng = np.random.default_rng(0)
    points = rng.standard_normal((40, 6)).astype(np.float32)
    candidates = np.stack([np.roll(np.arange(1, 9), i) for i in range(8)]).astype(np.int64)
    for kernel in ("cosine", "gaussian"):
        _, rhs, _ = solve_vectors(points, np.arange(8), candidates, kernel=kernel)
    gram = np.repeat(np.eye(8)[None], 8, axis=0)
    solve_gram(gram, rhs)
    _fallback(gram[0], rhs[0], np.ones(8, dtype=bool))


if __name__ == "__main__":
    # The one command that warms numba's cache (image build, worker start, README):
    # the solve, and the exact search's scans.
    from workers.geometry import gram_search

    warm_up()
    gram_search.warm_up()
