"""Candidate search: the k points with the largest kernel value to each point.

For both kernels these are the k nearest neighbours (by cosine similarity, or by
Euclidean distance), so the search needs no kernel evaluation. Exact search uses a
faiss flat index on the CPU, or blocked matrix products with a running top-k in
torch (the path for a CUDA device); approximate search uses a faiss HNSW index and
measures its recall@k against exact search on a sample of queries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np
import torch

Metric = Literal["cosine", "euclidean"]

# Small enough that progress (and so a cooperative cancel) comes every second or so.
_QUERY_BLOCK = 4_096
_RECALL_SAMPLE = 1_000
_RECALL_TARGET = 0.95


@dataclass(frozen=True)
class Candidates:
    """The candidate neighbourhoods of every point.

    Attributes
    ----------
    indices : ndarray of shape (n_points, k), int64
        ``indices[i]`` are the k candidates of point i, nearest first; never i itself.
    scores : ndarray of shape (n_points, k), float32
        Cosine similarity (metric ``"cosine"``) or squared Euclidean distance
        (``"euclidean"``) of each candidate.
    recall : float or None
        Measured recall@k of an approximate search, None for an exact one.
    recall_sample : int or None
        Number of queries the recall was measured on.
    """

    indices: np.ndarray
    scores: np.ndarray
    recall: float | None = None
    recall_sample: int | None = None


def prepare_vectors(embeddings: np.ndarray, *, metric: Metric) -> np.ndarray:
    """Float32, C-contiguous, unit-normalised under the cosine metric (faiss's layout)."""
    vectors = np.array(embeddings, dtype=np.float32, order="C", copy=True)
    if metric == "cosine":
        faiss.normalize_L2(vectors)
    return vectors


def _drop_self(
    indices: np.ndarray, scores: np.ndarray, rows: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    # Each query asked for k + 1 results. Its own index is usually first but, among
    # duplicates, may sit anywhere or be crowded out by ties: remove it wherever it is,
    # else drop the last (k+1-th) result.
    is_self = indices == rows[:, None]
    is_self[~is_self.any(axis=1), -1] = True
    keep = ~is_self
    return indices[keep].reshape(-1, k), scores[keep].reshape(-1, k)


def _faiss_search(
    index: faiss.Index,
    vectors: np.ndarray,
    k: int,
    *,
    rows: tuple[int, int],
    query_block: int,
    progress=None,
) -> tuple[np.ndarray, np.ndarray]:
    first, last = rows
    indices = np.empty((last - first, k), dtype=np.int64)
    scores = np.empty((last - first, k), dtype=np.float32)
    # A shard whose rows start at a multiple of query_block runs the same BLAS shapes
    # as the whole set, and so finds bit-identical neighbours.
    for start in range(first, last, query_block):
        stop = min(start + query_block, last)
        block_scores, block_indices = index.search(vectors[start:stop], k + 1)
        indices[start - first : stop - first], scores[start - first : stop - first] = _drop_self(
            block_indices, block_scores, np.arange(start, stop), k
        )
        if progress is not None:
            progress((stop - first) / (last - first))
    return indices, scores


def _flat_index(vectors: np.ndarray, metric: Metric) -> faiss.Index:
    dim = vectors.shape[1]
    index = faiss.IndexFlatIP(dim) if metric == "cosine" else faiss.IndexFlatL2(dim)
    index.add(vectors)
    return index


def exact_candidates(
    vectors: np.ndarray,
    k: int,
    *,
    metric: Metric,
    rows: tuple[int, int] | None = None,
    query_block: int = _QUERY_BLOCK,
    progress=None,
) -> Candidates:
    """Exact k nearest neighbours with a faiss flat index.

    Memory stays O(N * (d + k)): the index holds the vectors once, and queries run
    in blocks of ``query_block`` rows. ``rows = (start, stop)`` searches only those
    queries (against all points), for one shard of a job.
    """
    index = _flat_index(vectors, metric)
    indices, scores = _faiss_search(
        index,
        vectors,
        k,
        rows=rows or (0, vectors.shape[0]),
        query_block=query_block,
        progress=progress,
    )
    return Candidates(indices=indices, scores=scores)


def neighbours_of(
    vectors: np.ndarray, query_rows: np.ndarray, k: int, *, metric: Metric
) -> np.ndarray:
    """Exact k nearest neighbours of some rows among all rows (never the row itself)."""
    index = _flat_index(vectors, metric)
    scores, indices = index.search(vectors[query_rows], k + 1)
    return _drop_self(indices, scores, query_rows, k)[0]


def _recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    hits = sum(np.intersect1d(a, e).size for a, e in zip(approx, exact, strict=True))
    return hits / exact.size


@dataclass(frozen=True)
class ApproximateIndex:
    """A faiss HNSW index tuned to a recall target, serialisable for other processes."""

    index_bytes: bytes
    ef_search: int
    recall: float
    recall_sample: int

    def load(self) -> faiss.Index:
        index = faiss.deserialize_index(np.frombuffer(self.index_bytes, dtype=np.uint8))
        index.hnsw.efSearch = self.ef_search
        return index


def build_approximate_index(
    vectors: np.ndarray,
    k: int,
    *,
    metric: Metric,
    seed: int = 0,
    recall_target: float = _RECALL_TARGET,
) -> ApproximateIndex:
    """Build a faiss HNSW index and tune its search breadth to a measured recall@k.

    ``efSearch`` starts at ``max(2k, 64)`` and doubles until the recall@k measured on a
    sample of queries (against exact search of those queries) reaches
    ``recall_target``, so the reported recall is what the graph is built with.
    """
    n_points, dim = vectors.shape
    faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
    index = faiss.IndexHNSWFlat(dim, 32, faiss_metric)
    index.hnsw.efConstruction = 80
    index.add(vectors)

    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n_points, size=min(_RECALL_SAMPLE, n_points), replace=False))
    exact_sample = neighbours_of(vectors, sample, k, metric=metric)
    ef_search = max(2 * k, 64)
    while True:
        index.hnsw.efSearch = ef_search
        approx_sample, _ = _drop_self(*index.search(vectors[sample], k + 1)[::-1], sample, k)
        recall = _recall_at_k(approx_sample, exact_sample)
        if recall >= recall_target or ef_search >= 4096:
            break
        ef_search *= 2
    return ApproximateIndex(
        index_bytes=faiss.serialize_index(index).tobytes(),
        ef_search=ef_search,
        recall=recall,
        recall_sample=int(sample.size),
    )


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
    """Approximate k nearest neighbours from an HNSW index (built here unless given)."""
    index = index or build_approximate_index(vectors, k, metric=metric, seed=seed)
    indices, scores = _faiss_search(
        index.load(),
        vectors,
        k,
        rows=rows or (0, vectors.shape[0]),
        query_block=query_block,
        progress=progress,
    )
    return Candidates(
        indices=indices, scores=scores, recall=index.recall, recall_sample=index.recall_sample
    )


def torch_candidates(
    vectors: np.ndarray | torch.Tensor,
    k: int,
    *,
    metric: Metric,
    device: str | torch.device = "cpu",
    rows: tuple[int, int] | None = None,
    query_block: int = 8_192,
    column_block: int = 65_536,
    progress=None,
) -> Candidates:
    """Exact k nearest neighbours by blocked matrix products and a running top-k.

    Full-row ``torch.topk`` over N columns is far too slow (and too big) at a
    million points; each (query block x column block) tile is reduced to its own
    top-(k+1) and merged into the running best, so memory is O(block^2) and the
    selection works on short rows.
    """
    data = torch.as_tensor(vectors, dtype=torch.float32).to(device)
    n_points = data.shape[0]
    squared_norms = (data * data).sum(dim=1) if metric == "euclidean" else None
    keep = k + 1
    first, last = rows or (0, n_points)
    indices = np.empty((last - first, k), dtype=np.int64)
    scores = np.empty((last - first, k), dtype=np.float32)
    for q_start in range(first, last, query_block):
        q_stop = min(q_start + query_block, last)
        queries = data[q_start:q_stop]
        best_scores = torch.full((q_stop - q_start, 0), 0.0, device=data.device)
        best_indices = torch.empty((q_stop - q_start, 0), dtype=torch.int64, device=data.device)
        for c_start in range(0, n_points, column_block):
            c_stop = min(c_start + column_block, n_points)
            tile = queries @ data[c_start:c_stop].T
            if squared_norms is not None:
                # Rank by -(|x|^2 - 2<q, x>); |q|^2 is constant per row.
                tile = 2.0 * tile - squared_norms[c_start:c_stop]
            tile_scores, tile_indices = torch.topk(tile, min(keep, c_stop - c_start), dim=1)
            merged_scores = torch.cat([best_scores, tile_scores], dim=1)
            merged_indices = torch.cat([best_indices, tile_indices + c_start], dim=1)
            best_scores, order = torch.topk(merged_scores, min(keep, merged_scores.shape[1]))
            best_indices = torch.gather(merged_indices, 1, order)
        if squared_norms is not None:
            query_norms = squared_norms[q_start:q_stop, None]
            best_scores = torch.clamp(query_norms - best_scores, min=0.0)
        block_indices, block_scores = _drop_self(
            best_indices.cpu().numpy(), best_scores.cpu().numpy(), np.arange(q_start, q_stop), k
        )
        indices[q_start - first : q_stop - first] = block_indices
        scores[q_start - first : q_stop - first] = block_scores
        if progress is not None:
            progress((q_stop - first) / (last - first))
    return Candidates(indices=indices, scores=scores)


def find_candidates(
    vectors: np.ndarray,
    k: int,
    *,
    metric: Metric,
    method: Literal["exact", "approximate"] = "exact",
    backend: Literal["faiss", "torch"] = "faiss",
    device: str = "cpu",
    seed: int = 0,
    rows: tuple[int, int] | None = None,
    index: ApproximateIndex | None = None,
    progress=None,
) -> Candidates:
    """Dispatch to the exact, approximate or torch search; ``vectors`` from prepare_vectors.

    ``rows = (start, stop)`` limits the queries to those rows (searched against all
    points); ``index`` is a prebuilt approximate index, shared by the shards of a job.
    """
    if method == "approximate":
        return approximate_candidates(
            vectors, k, metric=metric, seed=seed, index=index, rows=rows, progress=progress
        )
    if backend == "torch":
        return torch_candidates(
            vectors, k, metric=metric, device=device, rows=rows, progress=progress
        )
    return exact_candidates(vectors, k, metric=metric, rows=rows, progress=progress)
