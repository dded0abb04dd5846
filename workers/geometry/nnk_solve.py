"""The NNK solve of a run of rows, on the path that suits the device.

- CPU, exact solver, numba installed: the compiled kernel (:mod:`workers.geometry.nnk_kernel`)
  builds each node's K and b and solves it, nodes in parallel; torch is never imported.
- Otherwise (a CUDA device, the "authors" solver, or no numba): batched torch
  (:mod:`workers.geometry.kernels`, :mod:`workers.geometry.solver`), imported here only.

Both give the same weights (to rounding, ~1e-12, on full-rank problems), so a report
does not depend on the path.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from types import ModuleType

import numpy as np

from api_schemas import AnalysisParams
from workers.geometry.nnk_common import IDENTICAL_TOLERANCE

__all__ = ["compiled_kernel", "solve_rows"]

# Rows per call of the compiled solve. It needs no (rows, k, k) arrays, only a few k x k
# per thread, so the block sets only how often progress (and a cancel) comes.
COMPILED_SOLVE_BLOCK = 16_384

Solved = tuple[np.ndarray, np.ndarray, np.ndarray]


def compiled_kernel() -> ModuleType | None:
    """:mod:`workers.geometry.nnk_kernel` when numba is installed, else None."""
    if importlib.util.find_spec("numba") is None:
        return None
    try:
        from workers.geometry import nnk_kernel
    except ImportError:
        return None
    return nnk_kernel


def solve_rows(
    embeddings: np.ndarray,
    candidate_indices: np.ndarray,
    *,
    first: int,
    params: AnalysisParams,
    device: str,
    block: int,
    workers: int,
    progress: Callable[[float], None],
    rank_deficient: np.ndarray | None = None,
) -> Solved:
    """Weights, K[S_i, i] and reconstruction errors of rows ``first ..`` of a set.

    Parameters
    ----------
    embeddings : ndarray of shape (n_points, dim), float32, C-contiguous
        All points of the set.
    candidate_indices : ndarray of shape (n_rows, k)
        Candidates of rows ``first .. first + n_rows``.
    params : AnalysisParams
    device : {"cpu", "cuda"}
    block, workers : int
        Rows per torch batch and threads (the plan of the memory budget). The compiled
        path uses ``workers`` threads and its own block.
    progress : callable
        ``progress(fraction)`` after each block; may raise to stop.
    rank_deficient : bool ndarray of shape (n_rows,), optional
        Written with whether each row's K[S_i, S_i] is numerically singular (a Cholesky
        pivot at or below ``SINGULAR_PIVOT`` of its diagonal), on either path: its NNK
        optimum may not be unique, and its weights are a basic optimum.

    Returns
    -------
    weights, query_kernel, reconstruction_error : ndarrays of shapes (n, k), (n, k), (n,)
    """
    kernel = compiled_kernel() if device != "cuda" and params.solver == "exact" else None
    if kernel is not None:
        return _solve_compiled(
            kernel,
            embeddings,
            candidate_indices,
            first=first,
            params=params,
            workers=workers,
            progress=progress,
            rank_deficient=rank_deficient,
        )
    return _solve_torch(
        embeddings,
        candidate_indices,
        first=first,
        params=params,
        device=device,
        block=block,
        workers=workers,
        progress=progress,
        rank_deficient=rank_deficient,
    )


def _solve_compiled(
    kernel: ModuleType,
    embeddings: np.ndarray,
    candidate_indices: np.ndarray,
    *,
    first: int,
    params: AnalysisParams,
    workers: int,
    progress: Callable[[float], None],
    rank_deficient: np.ndarray | None = None,
) -> Solved:
    n_rows, k = candidate_indices.shape
    weights = np.empty((n_rows, k))
    query_kernel = np.empty((n_rows, k))
    reconstruction_error = np.empty(n_rows)
    scales = kernel.kernel_scales(embeddings, kernel=params.kernel)
    progress(0.0)
    for start in range(0, n_rows, COMPILED_SOLVE_BLOCK):
        stop = min(start + COMPILED_SOLVE_BLOCK, n_rows)
        kernel.solve_vectors(
            embeddings,
            np.arange(first + start, first + stop),
            candidate_indices[start:stop],
            kernel=params.kernel,
            sigma=params.sigma,
            ignore_identical=params.ignore_identical,
            scales=scales,
            n_threads=workers,
            out=(weights[start:stop], query_kernel[start:stop], reconstruction_error[start:stop]),
            rank_deficient=None if rank_deficient is None else rank_deficient[start:stop],
        )
        progress(stop / max(n_rows, 1))
    return weights, query_kernel, reconstruction_error


@contextmanager
def _single_threaded_torch() -> Iterator[None]:
    # Blocks are solved by one Python thread per core; torch's own intra-op threads
    # would then oversubscribe the cores.
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _solve_torch(
    embeddings: np.ndarray,
    candidate_indices: np.ndarray,
    *,
    first: int,
    params: AnalysisParams,
    device: str,
    block: int,
    workers: int,
    progress: Callable[[float], None],
    rank_deficient: np.ndarray | None = None,
) -> Solved:
    from workers.geometry.kernels import candidate_kernels, kernel_vectors
    from workers.geometry.solver import nnk_weights
    from workers.geometry.solver import rank_deficient as singular_gram

    vectors = kernel_vectors(embeddings, kernel=params.kernel, device=device)
    n_rows, k = candidate_indices.shape
    weights = np.empty((n_rows, k))
    query_kernel = np.empty((n_rows, k))
    reconstruction_error = np.empty(n_rows)

    def solve_block(start: int) -> int:
        stop = min(start + block, n_rows)
        gram, rhs = candidate_kernels(
            vectors,
            np.arange(first + start, first + stop),
            candidate_indices[start:stop],
            kernel=params.kernel,
            sigma=params.sigma,
        )
        allowed = rhs < 1.0 - IDENTICAL_TOLERANCE if params.ignore_identical else None
        block_weights, block_error = nnk_weights(gram, rhs, solver=params.solver, allowed=allowed)
        weights[start:stop] = block_weights.cpu().numpy()
        query_kernel[start:stop] = rhs.cpu().numpy()
        reconstruction_error[start:stop] = block_error.cpu().numpy()
        if rank_deficient is not None:
            rank_deficient[start:stop] = singular_gram(gram).cpu().numpy()
        return stop - start

    progress(0.0)
    done = 0
    with _single_threaded_torch(), ThreadPoolExecutor(max_workers=workers) as pool:
        pending = [pool.submit(solve_block, start) for start in range(0, n_rows, block)]
        try:
            for future in pending:
                done += future.result()
                progress(done / max(n_rows, 1))
        finally:
            for future in pending:
                future.cancel()
    return weights, query_kernel, reconstruction_error
