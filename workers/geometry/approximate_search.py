"""Approximate candidate search: a faiss IVF-Flat index tuned to a measured recall@k.

The index has about ``4 sqrt(N)`` lists, trained on a seeded subsample, and its nprobe
(lists searched per query) is the smallest whose recall@k, measured against exact
search on a seeded sample of queries, reaches the target: IVF-Flat beat HNSW at that
recall, build included (docs/BENCHMARKS_KNN.md). A job's shards share one index,
serialised once (:class:`ApproximateIndex`). The exact search, the tie rules and the
dispatch on ``knn`` are in :mod:`workers.geometry.candidates`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import faiss
import numpy as np

from workers.geometry.candidates import Candidates, Metric, _drop_self, neighbours_of

# Small enough that progress (and so a cooperative cancel) comes every second or so.
_QUERY_BLOCK = 4_096
_RECALL_SAMPLE = 1_000
_RECALL_TARGET = 0.95
# k-means points per IVF list. faiss advises 39; with nprobe tuned to the measured recall,
# 16 lost no recall in the benchmark and made training 4x cheaper (docs/BENCHMARKS_KNN.md).
_TRAIN_POINTS_PER_LIST = 16


def _faiss_search(
    index: faiss.Index,
    vectors: np.ndarray,
    k: int,
    *,
    rows: tuple[int, int],
    query_block: int,
    progress=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Search rows ``rows`` against an approximate index, the query itself left out."""
    first, last = rows
    indices = np.empty((last - first, k), dtype=np.int64)
    scores = np.empty((last - first, k), dtype=np.float32)
    # A shard whose rows start at a multiple of query_block runs the same shapes as
    # the whole set, and so finds the same neighbours.
    for start in range(first, last, query_block):
        stop = min(start + query_block, last)
        found_scores, found_indices = index.search(vectors[start:stop], k + 1)
        block_indices, block_scores = _drop_self(
            found_indices, found_scores, np.arange(start, stop), k
        )
        indices[start - first : stop - first] = block_indices
        scores[start - first : stop - first] = block_scores
        if progress is not None:
            progress((stop - first) / (last - first))
    return indices, scores


def _recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    hits = sum(np.intersect1d(a, e).size for a, e in zip(approx, exact, strict=True))
    return hits / exact.size


def ivf_list_count(n_points: int) -> int:
    """IVF lists for ``n_points`` points: ``4 sqrt(N)``, fewer for small sets.

    Small sets get at most ``N / 16`` lists, so that every list has points to train on.
    """
    return max(1, min(round(4 * np.sqrt(n_points)), n_points // _TRAIN_POINTS_PER_LIST))


@dataclass(frozen=True)
class ApproximateIndex:
    """A faiss IVF-Flat index tuned to a recall target, serialisable for other processes.

    Attributes
    ----------
    index_bytes : bytes
        ``faiss.serialize_index`` of the trained, filled index.
    nprobe : int
        Lists searched per query: the smallest that met the recall target.
    recall : float
        Recall@k measured with ``nprobe`` on ``recall_sample`` queries.
    recall_sample : int
        Number of sampled queries.
    """

    index_bytes: bytes
    nprobe: int
    recall: float
    recall_sample: int

    def load(self) -> faiss.Index:
        index = faiss.deserialize_index(np.frombuffer(self.index_bytes, dtype=np.uint8))
        index.nprobe = self.nprobe
        return index


def _smallest_nprobe(
    recall_at: Callable[[int], float], *, n_lists: int, recall_target: float
) -> int:
    # Recall cannot fall as nprobe grows (the probed lists only grow), so doubling and
    # then bisecting finds the smallest nprobe that meets the target in O(log n_lists)
    # measurements. nprobe = n_lists is exact search: the search always ends there.
    missed, met = 0, 1
    while recall_at(met) < recall_target and met < n_lists:
        missed, met = met, min(2 * met, n_lists)
    while met - missed > 1:
        middle = (missed + met) // 2
        if recall_at(middle) >= recall_target:
            met = middle
        else:
            missed = middle
    return met


def build_approximate_index(
    vectors: np.ndarray,
    k: int,
    *,
    metric: Metric,
    seed: int = 0,
    recall_target: float = _RECALL_TARGET,
) -> ApproximateIndex:
    """Build a faiss IVF-Flat index and tune its nprobe to a measured recall@k.

    Parameters
    ----------
    vectors : ndarray of shape (n_points, dim), float32
        From :func:`prepare_vectors`.
    k : int
        Neighbours per point (the query itself excluded).
    metric : {"cosine", "euclidean"}
    seed : int, optional
        Seeds the recall sample and the k-means training subsample.
    recall_target : float, optional
        The recall@k that nprobe must reach.

    Returns
    -------
    ApproximateIndex
        With the smallest nprobe whose recall@k, measured on a seeded sample of
        ``min(1000, N)`` queries against exact search of those queries, reaches
        ``recall_target``, and that recall: the one the graph is built with.

    Notes
    -----
    The index has :func:`ivf_list_count` lists (``4 sqrt(N)``), whose k-means centroids
    are trained on a seeded subsample of 16 points per list. Searching every list is
    exact, so the target is always met, at worst at the cost of a flat search.
    """
    index, recall, recall_sample = _tuned_ivf_index(
        vectors, k, metric=metric, seed=seed, recall_target=recall_target
    )
    return ApproximateIndex(
        index_bytes=faiss.serialize_index(index).tobytes(),
        nprobe=index.nprobe,
        recall=recall,
        recall_sample=recall_sample,
    )


def _tuned_ivf_index(
    vectors: np.ndarray, k: int, *, metric: Metric, seed: int, recall_target: float
) -> tuple[faiss.IndexIVFFlat, float, int]:
    n_points, dim = vectors.shape
    faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
    n_lists = ivf_list_count(n_points)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n_points, size=min(_RECALL_SAMPLE, n_points), replace=False))
    train_rows = np.sort(
        rng.choice(n_points, size=min(n_points, _TRAIN_POINTS_PER_LIST * n_lists), replace=False)
    )
    # Before the IVF index exists: the flat index of this search copies the vectors too.
    exact_sample = neighbours_of(vectors, sample, k, metric=metric)
    quantizer = faiss.IndexFlatIP(dim) if metric == "cosine" else faiss.IndexFlatL2(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, n_lists, faiss_metric)
    # Silences faiss's advice of 39 training points per list (see _TRAIN_POINTS_PER_LIST).
    index.cp.min_points_per_centroid = 1
    index.train(vectors[train_rows])
    index.add(vectors)

    recalls: dict[int, float] = {}

    def recall_at(nprobe: int) -> float:
        if nprobe not in recalls:
            index.nprobe = nprobe
            approx_sample, _ = _drop_self(*index.search(vectors[sample], k + 1)[::-1], sample, k)
            recalls[nprobe] = _recall_at_k(approx_sample, exact_sample)
        return recalls[nprobe]

    nprobe = _smallest_nprobe(recall_at, n_lists=n_lists, recall_target=recall_target)
    index.nprobe = nprobe
    return index, recalls[nprobe], int(sample.size)


def approximate_candidates(
    vectors: np.ndarray,
    k: int,
    *,
    metric: Metric,
    seed: int = 0,
    index: ApproximateIndex | None = None,
    rows: tuple[int, int] | None = None,
    query_block: int = _QUERY_BLOCK,
    progress=None,
) -> Candidates:
    """Approximate k nearest neighbours from an IVF-Flat index (built here unless given).

    ``index`` is one built by :func:`build_approximate_index` (shared by the shards of a
    job); without it the index is built and tuned here, and searched without a
    serialised copy.
    """
    if index is None:
        faiss_index, recall, recall_sample = _tuned_ivf_index(
            vectors, k, metric=metric, seed=seed, recall_target=_RECALL_TARGET
        )
    else:
        faiss_index, recall, recall_sample = index.load(), index.recall, index.recall_sample
    indices, scores = _faiss_search(
        faiss_index,
        vectors,
        k,
        rows=rows or (0, vectors.shape[0]),
        query_block=query_block,
        progress=progress,
    )
    return Candidates(indices=indices, scores=scores, recall=recall, recall_sample=recall_sample)
