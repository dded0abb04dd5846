"""Candidate search: the k points with the largest kernel value to each point.

For both kernels these are the k nearest neighbours (by cosine similarity, or by
Euclidean distance), so the search needs no kernel evaluation. Exact search runs on
tiles of the Gram matrix, each pair once (:mod:`workers.geometry.gram_search`), on the
CPU, or on blocked matrix products with a running top-k in torch (the path for a CUDA
device); approximate search is a faiss IVF-Flat index tuned to a measured recall
(:mod:`workers.geometry.approximate_search`). ``knn="auto"`` is resolved here, from the
number of points (:func:`api_schemas.params.resolve_knn`). Only the torch search
imports torch.

Exact searches break ties at the k-th value by the smaller index (DESIGN section 1):
:func:`tie_broken_search` ranks again, in float64, the queries whose k-th and next
scores tie within float32's error. The in-sample search (the query itself excluded) and
:func:`query_candidates` (held-out queries against a reference) share it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import faiss
import numpy as np

from api_schemas.params import KnnChoice, resolve_knn
from workers.geometry.gram_search import TILE, gram_search

# Held-out queries searched at a time (query_candidates).
_QUERY_BLOCK = 4_096

if TYPE_CHECKING:
    import torch

    from workers.geometry.approximate_search import ApproximateIndex

Metric = Literal["cosine", "euclidean"]

# faiss scores are float32, off by about sqrt(dim) float32 epsilons (relative to the
# norms): points this many such errors from a query's k-th may be its tie, or beat it, in
# float64, so they are searched for and re-scored before ranking.
_FLOAT32_ERRORS = 16.0
_RANK_BYTES = 32 * 2**20
# Results asked for beyond the k (and the query itself): a tie at the k-th mostly ends
# inside them, and is ranked without a second search.
_TIE_SLACK = 8


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
    recall : float
        Measured recall@k of an approximate search; 1.0 for an exact one.
    recall_sample : int
        Number of queries the recall was measured on; 0 for an exact search, whose
        recall is 1 by construction and is not sampled.
    """

    indices: np.ndarray
    scores: np.ndarray
    recall: float = 1.0
    recall_sample: int = 0


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


def _ranked(
    reference: np.ndarray,
    queries: np.ndarray,
    window: np.ndarray,
    k: int,
    *,
    metric: Metric,
    exclude: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The first k of each query's ``window`` rows by float64 score, then by smaller row.

    ``exclude[i]`` (a row, or -1) is left out of query i's ranking (the query itself, in
    sample). Returns the rows and their scores (cosine similarity, or squared Euclidean
    distance) rounded to float32.
    """
    out = np.empty((queries.shape[0], k), dtype=np.int64)
    out_scores = np.empty((queries.shape[0], k), dtype=np.float32)
    # Chunks keep the float64 gather of (queries x window x dim) near _RANK_BYTES.
    chunk = max(1, _RANK_BYTES // (8 * window.shape[1] * reference.shape[1]))
    for start in range(0, queries.shape[0], chunk):
        rows = window[start : start + chunk]
        neighbours = reference[rows].astype(np.float64)
        centre = queries[start : start + chunk, None, :].astype(np.float64)
        if metric == "cosine":
            # Normalised in float64, as the kernels do: float32 unit rows would reorder
            # near ties by their rounding.
            neighbours /= np.linalg.norm(neighbours, axis=2, keepdims=True)
            centre /= np.linalg.norm(centre, axis=2, keepdims=True)
            distance = -(neighbours * centre).sum(axis=2)
        else:
            distance = ((neighbours - centre) ** 2).sum(axis=2)
        if exclude is not None:
            distance[rows == exclude[start : start + chunk, None]] = np.inf
        order = np.lexsort((rows, distance), axis=-1)[:, :k]
        out[start : start + chunk] = np.take_along_axis(rows, order, axis=1)
        kept = np.take_along_axis(distance, order, axis=1)
        out_scores[start : start + chunk] = -kept if metric == "cosine" else kept
    return out, out_scores


def _error_scale(query_vectors: np.ndarray, metric: Metric) -> np.ndarray:
    """float32 errors of a query's scores, in units of the tolerance (see tie_broken_search)."""
    if metric == "cosine":
        return np.ones(query_vectors.shape[0])
    # |x|^2 + |q|^2 - 2 x.q in float32: its error scales with the norms.
    return 1.0 + 2.0 * np.einsum("ij,ij->i", query_vectors, query_vectors, dtype=np.float64)


def _tied_at_kth(
    scores: np.ndarray,
    window: np.ndarray,
    exclude: np.ndarray | None,
    k: int,
    *,
    metric: Metric,
    tolerance: float,
    error_scale: np.ndarray,
) -> np.ndarray:
    """Per query: whether the next, and the window's last, score is within float32's
    error of the k-th: (next tied, last tied).

    ``scores`` are sorted best first; ``exclude`` (a row per query, or None) is not
    counted; ``error_scale`` is :func:`_error_scale` of each query.
    """
    distance = -scores if metric == "cosine" else scores
    counted = np.broadcast_to(np.arange(1, window.shape[1] + 1), window.shape)
    if exclude is not None:
        # Count the results that are not the query itself.
        counted = np.cumsum(window != exclude[:, None], axis=1)
    kth = np.argmax(counted >= k, axis=1)
    after = np.argmax(counted >= k + 1, axis=1)
    kth_distance = np.take_along_axis(distance, kth[:, None], axis=1)[:, 0]
    after_distance = np.take_along_axis(distance, after[:, None], axis=1)[:, 0]
    margin = tolerance * (error_scale + 2.0 * np.abs(kth_distance))
    next_tied = (counted[:, -1] > k) & (after_distance - kth_distance <= margin)
    return next_tied, distance[:, -1] - kth_distance <= margin


def tie_broken_search(
    index: faiss.Index,
    reference: np.ndarray,
    queries: np.ndarray,
    query_vectors: np.ndarray,
    k: int,
    *,
    metric: Metric,
    self_rows: np.ndarray | None = None,
    rank_all: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest rows of a flat index, ties at the k-th value broken by smaller row.

    Parameters
    ----------
    index : faiss.Index
        A flat index of the prepared reference rows.
    reference : ndarray of shape (n_reference, dim), float32
        The reference rows as the kernels read them (re-scored in float64).
    queries : ndarray of shape (n_queries, dim), float32
        The queries as the kernels read them.
    query_vectors : ndarray of shape (n_queries, dim), float32
        The queries prepared for the index (:func:`prepare_vectors`).
    k : int
        Rows per query, at most the reference rows (less one in sample).
    metric : {"cosine", "euclidean"}
    self_rows : ndarray of shape (n_queries,), int64, optional
        In sample: the row of each query, never its own candidate.
    rank_all : bool, optional
        Rank every query's rows in float64; by default only the queries whose k-th and
        (k+1)-th scores tie within float32's error keep faiss's order no longer.

    Returns
    -------
    indices : ndarray of shape (n_queries, k), int64
        Nearest first.
    scores : ndarray of shape (n_queries, k), float32
        Cosine similarity or squared Euclidean distance.

    Notes
    -----
    faiss ranks in float32, and the order of its ties is not specified. The search asks
    for 8 more results than k. Wherever the (k+1)-th result is within float32's error
    (16 sqrt(dim) epsilons, relative to the squared norms under the Euclidean metric) of
    the k-th, the rows found are ranked by their float64 score from the float32 rows,
    then by the smaller row (DESIGN section 1); where the last one is, the search first
    widens (doubling) until it is not.
    """
    n_reference, dim = reference.shape
    n_queries = query_vectors.shape[0]
    extra = 1 if self_rows is None else 2
    tolerance = _FLOAT32_ERRORS * np.sqrt(dim) * float(np.finfo(np.float32).eps)
    error_scale = _error_scale(query_vectors, metric)
    indices = np.empty((n_queries, k), dtype=np.int64)
    scores = np.empty((n_queries, k), dtype=np.float32)
    first_width = min(k + extra + _TIE_SLACK, n_reference)
    width = first_width
    pending = np.arange(n_queries)
    while pending.size:
        found_scores, window = index.search(query_vectors[pending], width)
        exclude = None if self_rows is None else self_rows[pending]
        next_tied, last_tied = _tied_at_kth(
            found_scores,
            window,
            exclude,
            k,
            metric=metric,
            tolerance=tolerance,
            error_scale=error_scale[pending],
        )
        # Open: the window may end inside the k-th value's (near) ties; widen it.
        open_window = last_tied & (width < n_reference)
        closed = ~open_window
        rank = closed & (next_tied | (width > first_width) | rank_all)
        if rank.any():
            indices[pending[rank]], scores[pending[rank]] = _ranked(
                reference,
                queries[pending[rank]],
                window[rank],
                k,
                metric=metric,
                exclude=None if exclude is None else exclude[rank],
            )
        keep = closed & ~rank
        if keep.any():
            # No tie at the k-th: faiss's first k (its own order within them) stand.
            rows = np.flatnonzero(keep)
            indices[pending[rows]], scores[pending[rows]] = _drop_self_or_last(
                window[rows], found_scores[rows], exclude[rows] if exclude is not None else None, k
            )
        pending = pending[open_window]
        width = min(2 * width, n_reference)
    return indices, scores


def _drop_self_or_last(
    window: np.ndarray, scores: np.ndarray, exclude: np.ndarray | None, k: int
) -> tuple[np.ndarray, np.ndarray]:
    if exclude is None:
        return window[:, :k], scores[:, :k]
    return _drop_self(window[:, : k + 1], scores[:, : k + 1], exclude, k)


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
    tile: int = TILE,
    threads: int | None = None,
    progress=None,
) -> Candidates:
    """Exact k nearest neighbours of every point (or of ``rows``) among all points.

    The search runs on tiles of the Gram matrix, each pair of tiles once
    (:func:`~workers.geometry.gram_search.gram_search`), for ``k + 1 + 8`` results per
    point. Memory stays O(N * (d + k)). ``rows = (start, stop)`` searches only those
    points' neighbours, for one shard of a job: it finds bit for bit what the whole
    search finds for them.

    Notes
    -----
    Ties at the k-th value go to the smaller index: wherever the (k+1)-th result is
    within float32's error of the k-th, the results are ranked again by their float64
    score, then by index; where the last one is, the point takes the widening search of
    :func:`tie_broken_search` (duplicates, lattices).
    """
    n_points, dim = vectors.shape
    first, last = rows or (0, n_points)
    width = min(k + 1 + _TIE_SLACK, n_points - 1)
    found, keys = gram_search(
        vectors,
        width,
        metric=metric,
        rows=(first, last),
        tile=tile,
        threads=threads,
        progress=progress,
    )
    queries = vectors[first:last]
    if metric == "cosine":
        scores = keys
    else:
        # The search's key is 2 <x_i, x_j> - |x_j|^2: the distance is |x_i|^2 less it.
        query_norms = np.einsum("ij,ij->i", queries, queries)[:, None]
        scores = np.maximum(query_norms - keys, np.float32(0.0))
    tolerance = _FLOAT32_ERRORS * np.sqrt(dim) * float(np.finfo(np.float32).eps)
    next_tied, last_tied = _tied_at_kth(
        scores,
        found,
        None,
        k,
        metric=metric,
        tolerance=tolerance,
        error_scale=_error_scale(queries, metric),
    )
    # Open: the window may end inside the k-th value's (near) ties.
    open_window = last_tied & (width < n_points - 1)
    indices = np.ascontiguousarray(found[:, :k])
    out_scores = np.ascontiguousarray(scores[:, :k])
    rank = np.flatnonzero(next_tied & ~open_window)
    if rank.size:
        indices[rank], out_scores[rank] = _ranked(
            vectors, queries[rank], found[rank], k, metric=metric
        )
    widen = np.flatnonzero(open_window)
    if widen.size:
        indices[widen], out_scores[widen] = tie_broken_search(
            _flat_index(vectors, metric),
            vectors,
            queries[widen],
            queries[widen],
            k,
            metric=metric,
            self_rows=first + widen,
        )
    return Candidates(indices=indices, scores=out_scores)


def neighbours_of(
    vectors: np.ndarray, query_rows: np.ndarray, k: int, *, metric: Metric
) -> np.ndarray:
    """Exact k nearest neighbours of some rows among all rows (never the row itself)."""
    index = _flat_index(vectors, metric)
    scores, indices = index.search(vectors[query_rows], k + 1)
    return _drop_self(indices, scores, query_rows, k)[0]


def query_candidates(
    reference: np.ndarray,
    queries: np.ndarray,
    k: int,
    *,
    metric: Metric,
    query_block: int = _QUERY_BLOCK,
) -> np.ndarray:
    """Exact k nearest reference points of each query; ties go to the smaller row.

    Parameters
    ----------
    reference : ndarray of shape (n_reference, dim)
        The reference embeddings, as given (read in float32).
    queries : ndarray of shape (n_queries, dim)
        The query embeddings, as given.
    k : int
        Candidates per query, ``1 <= k <= n_reference``.
    metric : {"cosine", "euclidean"}
    query_block : int, optional
        Queries searched at a time.

    Returns
    -------
    ndarray of shape (n_queries, k), int64
        Reference rows, nearest first. No row is excluded: a reference point identical to
        a query is its nearest candidate.

    Notes
    -----
    :func:`tie_broken_search` with every query ranked in float64 from the float32
    embeddings (the values the kernels use), then by row.
    """
    reference32 = np.ascontiguousarray(reference, dtype=np.float32)
    queries32 = np.ascontiguousarray(queries, dtype=np.float32)
    index = _flat_index(prepare_vectors(reference32, metric=metric), metric)
    query_vectors = prepare_vectors(queries32, metric=metric)
    candidates = np.empty((query_vectors.shape[0], k), dtype=np.int64)
    for start in range(0, query_vectors.shape[0], query_block):
        stop = start + query_block
        candidates[start:stop], _ = tie_broken_search(
            index,
            reference32,
            queries32[start:stop],
            query_vectors[start:stop],
            k,
            metric=metric,
            rank_all=True,
        )
    return candidates


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
    top-(k+2) and merged into the running best, so memory is O(block^2) and the
    selection works on short rows. torch is imported here: the CPU path never comes here.
    A query whose k-th and next scores tie within float32's error is searched again by
    :func:`tie_broken_search`, so that ties go to the smaller index.
    """
    import torch

    data = torch.as_tensor(vectors, dtype=torch.float32).to(device)
    n_points, dim = data.shape
    squared_norms = (data * data).sum(dim=1) if metric == "euclidean" else None
    # k + 1 beside the query itself, to see whether the k-th ties with the next.
    keep = min(k + 2, n_points)
    tolerance = _FLOAT32_ERRORS * np.sqrt(dim) * float(np.finfo(np.float32).eps)
    tie_search: list = []
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
        found_indices, found_scores = best_indices.cpu().numpy(), best_scores.cpu().numpy()
        self_rows = np.arange(q_start, q_stop)
        block_indices, block_scores = _drop_self(
            found_indices[:, : k + 1], found_scores[:, : k + 1], self_rows, k
        )
        next_tied, _ = _tied_at_kth(
            found_scores,
            found_indices,
            self_rows,
            k,
            metric=metric,
            tolerance=tolerance,
            error_scale=_error_scale(queries.cpu().numpy(), metric),
        )
        tied = np.flatnonzero(next_tied)
        if tied.size:
            # Rare: the k-th ties with the next within float32's error. Those queries
            # take the widening, float64-ranked search of a faiss flat index (on the CPU,
            # built once) so that ties go to the smaller index as on the faiss path.
            if not tie_search:
                host = np.ascontiguousarray(data.cpu().numpy())
                tie_search.extend([_flat_index(host, metric), host])
            flat, host = tie_search
            block_indices[tied], block_scores[tied] = tie_broken_search(
                flat,
                host,
                host[q_start + tied],
                host[q_start + tied],
                k,
                metric=metric,
                self_rows=self_rows[tied],
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
    method: KnnChoice = "auto",
    backend: Literal["faiss", "torch"] = "faiss",
    device: str = "cpu",
    seed: int = 0,
    rows: tuple[int, int] | None = None,
    index: ApproximateIndex | None = None,
    threads: int | None = None,
    progress=None,
) -> Candidates:
    """Dispatch to the exact, approximate or torch search; ``vectors`` from prepare_vectors.

    ``method="auto"`` is exact below :data:`~api_schemas.params.APPROXIMATE_KNN_FROM`
    points (all of them, not the shard's rows) and approximate from there.
    ``rows = (start, stop)`` limits the queries to those rows (searched against all
    points); ``index`` is a prebuilt approximate index, shared by the shards of a job.
    """
    if resolve_knn(method, vectors.shape[0]) == "approximate":
        # Imported here: approximate_search builds on this module.
        from workers.geometry.approximate_search import approximate_candidates

        return approximate_candidates(
            vectors, k, metric=metric, seed=seed, index=index, rows=rows, progress=progress
        )
    if backend == "torch":
        return torch_candidates(
            vectors, k, metric=metric, device=device, rows=rows, progress=progress
        )
    return exact_candidates(
        vectors, k, metric=metric, rows=rows, threads=threads, progress=progress
    )
