"""Intrinsic dimension of the raw embeddings, with Euclidean distances, whatever the kernel.

- TwoNN (Facco, d'Errico, Rodriguez & Laio, Sci. Rep. 2017), maximum-likelihood form:
  d = n / sum_i log(r2_i / r1_i), over the points with r1 > 0.
- MLE (Levina & Bickel, NIPS 2004) with k = 20 neighbours, per-point inverse estimates
  averaged as MacKay & Ghahramani (2005) propose:
  1 / d = mean_i [ 1/(k-1) sum_{j<k} log(T_k(x_i) / T_j(x_i)) ].

Both use the neighbours of a sample of query points among all points, so the cost is
(sample / N) of a full search.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from jobstate.memory_budget import DISTANCE_BLOCK_BYTES

MLE_NEIGHBOURS = 20


@dataclass(frozen=True)
class IntrinsicDimensionEstimate:
    twonn: float | None
    mle: float | None
    mle_k: int
    n_used: int
    seed: int


def twonn_from_distances(nearest: np.ndarray) -> float | None:
    """TwoNN ML estimate from each point's two nearest distances, shape (n, >= 2)."""
    r1, r2 = nearest[:, 0], nearest[:, 1]
    kept = r1 > 0
    log_ratio = np.log(r2[kept] / r1[kept])
    total = log_ratio.sum()
    return float(kept.sum() / total) if total > 0 else None


def mle_from_distances(nearest: np.ndarray, k: int = MLE_NEIGHBOURS) -> float | None:
    """Levina-Bickel MLE (MacKay-Ghahramani averaging) from sorted distances, shape (n, >= k)."""
    distances = nearest[:, :k]
    kept = distances[:, 0] > 0
    if not kept.any():
        return None
    distances = distances[kept]
    inverse = np.log(distances[:, -1:] / distances[:, :-1]).sum(axis=1) / (k - 1)
    mean_inverse = inverse.mean()
    return float(1.0 / mean_inverse) if mean_inverse > 0 else None


def _sample_neighbours(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact Euclidean k nearest neighbours of the query rows among all rows, never the
    row itself (among duplicates it may sit anywhere, or be crowded out: then the
    (k+1)-th is dropped).

    ``faiss.knn`` searches the vectors where they lie, with the brute-force kernel of a
    flat index: an index would first copy all N x d of them (512 MiB at 1M x 128) for a
    sample of 2,000 queries.
    """
    _, found = faiss.knn(vectors[queries], vectors, k + 1, metric=faiss.METRIC_L2)
    is_self = found == queries[:, None]
    is_self[~is_self.any(axis=1), -1] = True
    return found[~is_self].reshape(-1, k)


def _exact_distances(
    vectors: np.ndarray, queries: np.ndarray, neighbours: np.ndarray
) -> np.ndarray:
    """Distances from each query to its neighbours, in float64 from the vectors.

    faiss's float32 expansion |a|^2 - 2ab + |b|^2 loses the small r1 of close pairs to
    cancellation. Computed one neighbour column and a block of queries at a time, within
    :data:`~jobstate.memory_budget.DISTANCE_BLOCK_BYTES`: 2,000 queries x 20 neighbours x
    2,000,000 dimensions would otherwise be 640 GB of differences.
    """
    n_queries, k = neighbours.shape
    dim = vectors.shape[1]
    block = max(1, DISTANCE_BLOCK_BYTES // (8 * max(dim, 1)))
    distances = np.empty((n_queries, k))
    for start in range(0, n_queries, block):
        stop = min(start + block, n_queries)
        points = vectors[queries[start:stop]].astype(np.float64)
        for column in range(k):
            neighbour = vectors[neighbours[start:stop, column]].astype(np.float64)
            distances[start:stop, column] = np.linalg.norm(neighbour - points, axis=1)
    return distances


def estimate_intrinsic_dimension(
    embeddings: np.ndarray, *, sample: int, seed: int = 0, k: int = MLE_NEIGHBOURS
) -> IntrinsicDimensionEstimate:
    """TwoNN and MLE estimates from up to ``sample`` query points searched against all.

    Parameters
    ----------
    embeddings : ndarray of shape (n_points, dim)
    sample : int
        Largest number of query points; all points are used when there are fewer.
    seed : int
        Seed of the query sample: ``np.sort(default_rng(seed).choice(n_points, sample,
        replace=False))`` when ``sample < n_points``. It is returned with the estimate
        (and so reported), so that the sample can be drawn again.
    k : int
        Neighbours of the MLE (reduced to n_points - 1 on tiny sets).
    """
    vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
    n_points = vectors.shape[0]
    k = min(k, n_points - 1)
    if n_points <= sample:
        queries = np.arange(n_points)
    else:
        queries = np.sort(np.random.default_rng(seed).choice(n_points, sample, replace=False))
    neighbours = _sample_neighbours(vectors, queries, k)
    distances = _exact_distances(vectors, queries, neighbours)
    distances.sort(axis=1)
    return IntrinsicDimensionEstimate(
        twonn=twonn_from_distances(distances) if k >= 2 else None,
        mle=mle_from_distances(distances, k) if k >= 2 else None,
        mle_k=k,
        n_used=int(queries.size),
        seed=seed,
    )
