"""Exact in-sample nearest neighbours from tiles of the Gram matrix, each tile used twice.

An in-sample search scores every pair of points, and the score of (i, j) is the score of
(j, i). A flat faiss index does not know that: it computes the whole N x N product, in
query blocks whose result (4,096 x 1,024 floats) leaves the cache before its top-k scan
reads it. Here the points are cut into tiles of ``tile`` rows; each pair of tiles
(I <= J) is multiplied once, single-threaded, by BLAS, into a buffer that stays in the
cache, and a compiled scan offers every product to the running best of its row in I
*and* of its column in J: half the arithmetic of the flat search, and each product read
while it is still in the cache (docs/BENCHMARKS.md). The tiles run on the engine's
threads; a tile's scan holds the locks of its two row tiles.

The running best of a row is a reservoir: what reaches the row's threshold is appended,
and a full reservoir keeps its ``width`` best by (score, then the smaller index) and
raises the threshold to the worst of them. That order is total: whichever thread offers
whichever tile first, the rows found are the same. Every score comes from one and the
same BLAS call, tile (I, J) with I <= J (a diagonal tile's lower half is never read),
whatever rows a search asks for: a shard of a job finds bit for bit what the whole
search finds for its rows.

Scores are the cosine similarity (``"cosine"``: the rows are unit vectors) or
``2 <x_i, x_j> - |x_j|^2`` (``"euclidean"``), which orders row i's candidates as
``-|x_i - x_j|^2`` does; the caller turns them into distances.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import nullcontext
from typing import Literal

import numpy as np
from numba import get_num_threads, njit

from workers.geometry.blas_threads import single_threaded_blas

Metric = Literal["cosine", "euclidean"]

# 1,024 x 1,024 float32 products are 4 MiB, still in the cache when the scan reads them,
# and large enough for BLAS to run near its peak: a probe of the whole 50k x 50k x 64
# product on two threads took 1.36 s in such tiles, 1.48 s in 2,048-row tiles and
# 2.09 s in 4,096-row ones. It divides the block boundaries of sharded jobs (4,096).
TILE = 1_024
# numba wraps a negative signed index on every access, which keeps LLVM from
# vectorising the loop around it: indices that cannot be negative are cast to unsigned.
_at = np.uint64
# Spare places of a row's reservoir beyond its best: more spare, fewer selections.
_MIN_SPARE = 32
_PROGRESS_SECONDS = 0.25
# Column offers a scan holds back before delivering them (see _deliver).
_PENDING = 4_096
# The cells of the starting thresholds: seeded, so that every run and shard draws the
# same (the thresholds change only the time a search takes, never what it finds).
_PIVOT_SEED = 0
_ASSIGN_BLOCK = 8_192


@njit(cache=True, nogil=True, inline="always")
def _better(key, row, other_key, other_row):  # pragma: no cover - compiled
    return key > other_key or (key == other_key and row < other_row)


@njit(cache=True, nogil=True)
def _keep_best(keys, rows, slot, count, width):  # pragma: no cover - compiled
    """Move the ``width`` best of the first ``count`` entries of a row to its front.

    Hoare's selection: afterwards place ``width - 1`` holds the width-th best entry,
    and every entry before it is better. Entries are distinct (a candidate comes once).
    The pivot is the median of the first, middle and last entries: Wirth's choice (the
    entry at ``width - 1``) is the old threshold's entry, the worst of a reservoir whose
    spare places hold only what beat it, which made every selection quadratic.
    """
    target = width - 1
    low, high = 0, count - 1
    while low < high:
        middle = (low + high) // 2
        pick = middle
        if _better(keys[slot, low], rows[slot, low], keys[slot, middle], rows[slot, middle]):
            # low before middle: the median is middle, or the better of low and high.
            if _better(keys[slot, high], rows[slot, high], keys[slot, middle], rows[slot, middle]):
                pick = (
                    low
                    if _better(keys[slot, high], rows[slot, high], keys[slot, low], rows[slot, low])
                    else high
                )
        elif _better(keys[slot, middle], rows[slot, middle], keys[slot, high], rows[slot, high]):
            # middle before low: the median is middle, or the worse of low and high.
            pick = (
                low
                if _better(keys[slot, low], rows[slot, low], keys[slot, high], rows[slot, high])
                else high
            )
        pivot_key, pivot_row = keys[slot, pick], rows[slot, pick]
        left, right = low, high
        while True:
            while _better(keys[slot, left], rows[slot, left], pivot_key, pivot_row):
                left += 1
            while _better(pivot_key, pivot_row, keys[slot, right], rows[slot, right]):
                right -= 1
            if left <= right:
                keys[slot, left], keys[slot, right] = keys[slot, right], keys[slot, left]
                rows[slot, left], rows[slot, right] = rows[slot, right], rows[slot, left]
                left += 1
                right -= 1
            if left > right:
                break
        if right < target:
            low = left
        if target < left:
            high = right


@njit(cache=True, nogil=True, inline="always")
def _offer(
    keys, rows, counts, thresholds, slot, first, width, key, candidate
):  # pragma: no cover - compiled
    """Append (key, candidate) to row ``first + slot``'s reservoir; keep its best when full.

    A full reservoir (``keys.shape[1]`` entries) keeps its ``width`` best, and the worst
    of those becomes the row's threshold: what scores below it can never be among the
    row's best, and is not offered again.
    """
    count = counts[slot]
    keys[slot, count] = key
    rows[slot, count] = candidate
    counts[slot] = count + 1
    if count + 1 == keys.shape[1]:
        _compact(keys, rows, counts, thresholds, slot, first, width)


@njit(cache=True, nogil=True)
def _compact(keys, rows, counts, thresholds, slot, first, width):  # pragma: no cover - compiled
    """Keep a row's ``width`` best (of at least ``width``); the worst of them is its threshold."""
    _keep_best(keys, rows, slot, counts[slot], width)
    counts[slot] = width
    thresholds[first + slot] = keys[slot, width - 1]


@njit(cache=True, nogil=True)
def _raise_thresholds(  # pragma: no cover - compiled
    products, row_start, euclidean, squared_norms, thresholds, first, last, width
):
    """Raise each searched row's threshold from a diagonal tile (I, I), before its scan.

    This is a row's first tile, and an empty reservoir takes everything: the
    ``width``-th largest of row a's scores in the upper half of the tile (b > a, read as
    the scan reads them) is a bound that at least ``width`` candidates reach, and the
    scan offers them all, so it offers a few dozen products per row rather than all of
    them. (The lower half would tighten the bounds of the tile's last rows, but its
    strided reads cost more than the offers they save.)
    """
    size = products.shape[0]
    # One row of scores, and their places as the tie-break that _keep_best needs.
    scores = np.empty((1, size), dtype=np.float32)
    places = np.empty((1, size), dtype=np.int32)
    two = np.float32(2.0)
    for a in range(size):
        i = row_start + a
        if i < first or i >= last or size - a - 1 < width:
            continue
        count = 0
        for b in range(a + 1, size):
            product = products[a, b]
            scores[0, count] = (
                two * product - squared_norms[row_start + b] if euclidean else product
            )
            places[0, count] = count
            count += 1
        _keep_best(scores, places, 0, count, width)
        bound = scores[0, width - 1]
        if bound > thresholds[i]:
            thresholds[i] = bound


@njit(cache=True, nogil=True)
def _scan_tile(  # pragma: no cover - compiled
    products,
    row_start,
    col_start,
    euclidean,
    squared_norms,
    thresholds,
    keys,
    rows,
    counts,
    first,
    width,
):
    """Offer each product of a tile to its row's reservoir and to its column's.

    ``products[a, b]`` is <x_i, x_j> for i = row_start + a and j = col_start + b. Points
    outside the searched rows have an infinite threshold, so they take nothing. On a
    diagonal tile (I, I) only b > a is read.
    """
    n_rows, n_cols = products.shape
    diagonal = row_start == col_start
    two = np.float32(2.0)
    # One flag per column, read eight at a time: the flags loop has no reduction and no
    # branch, so it vectorises; a reduction over the same compare does not (in numba).
    flags = np.zeros(8 * ((n_cols + 7) // 8), dtype=np.uint8)
    words = flags.view(np.uint64)
    column_base = _at(col_start)
    # A row's offers go to one reservoir, its columns' to a thousand: those wait here
    # and are delivered together (see _deliver).
    pending_slots = np.empty(_PENDING, dtype=np.int64)
    pending_keys = np.empty(_PENDING, dtype=np.float32)
    pending_rows = np.empty(_PENDING, dtype=np.int64)
    pending = 0
    reservoirs = (keys, rows, counts, thresholds, first, width)
    for a in range(n_rows):
        i = row_start + a
        row = _at(a)
        row_threshold = thresholds[i]
        row_norm = squared_norms[i]
        # float32 keys throughout: the flags must agree with the offers below.
        if euclidean:
            for b in range(_at(n_cols)):
                product = products[row, b]
                flags[b] = np.uint8(
                    two * product - squared_norms[column_base + b] >= row_threshold
                ) | np.uint8(two * product - row_norm >= thresholds[column_base + b])
        else:
            for b in range(_at(n_cols)):
                product = products[row, b]
                flags[b] = np.uint8(product >= row_threshold) | np.uint8(
                    product >= thresholds[column_base + b]
                )
        if diagonal:
            # Only b > a: the product (a, b) stands for the pair both ways.
            for b in range(a + 1):
                flags[b] = 0
        for word in range((n_cols + 7) // 8):
            if words[word] == 0:
                continue
            for b in range(8 * word, min(8 * word + 8, n_cols)):
                if flags[b] == 0:
                    continue
                j = col_start + b
                product = products[row, _at(b)]
                row_key = two * product - squared_norms[j] if euclidean else product
                col_key = two * product - row_norm if euclidean else product
                if row_key >= thresholds[i]:
                    _offer(keys, rows, counts, thresholds, i - first, first, width, row_key, j)
                if col_key >= thresholds[j]:
                    pending_slots[pending] = j - first
                    pending_keys[pending] = col_key
                    pending_rows[pending] = i
                    pending += 1
                    if pending == _PENDING:
                        _deliver(pending_slots, pending_keys, pending_rows, pending, *reservoirs)
                        pending = 0
    _deliver(pending_slots, pending_keys, pending_rows, pending, *reservoirs)


@njit(cache=True, nogil=True)
def _deliver(  # pragma: no cover - compiled
    slots, offered_keys, offered_rows, count, keys, rows, counts, thresholds, first, width
):
    """Offer ``count`` waiting (slot, key, row) entries to their reservoirs.

    Each offer first reads its reservoir's count, most often a cache miss, and the
    write depends on it: offered one at a time, the misses come one after the other.
    Read first, in a loop of independent loads, they overlap.
    """
    touched = 0
    for entry in range(count):
        touched += counts[slots[entry]]
    for entry in range(count):
        slot = slots[entry]
        key = offered_keys[entry]
        if key >= thresholds[first + slot]:
            _offer(keys, rows, counts, thresholds, slot, first, width, key, offered_rows[entry])
    return touched


@njit(cache=True, nogil=True)
def _sort_best(
    keys, rows, counts, width, out_keys, out_rows, start, stop
):  # pragma: no cover - compiled
    """Rows ``start:stop``'s ``width`` best into ``out_*``: the largest key first, equal
    keys by the smaller index.

    Not a numba parallel loop: numba's OpenMP layer kills a process whose parent started
    that layer's pool (a Celery pool process, should its main process ever start it), so
    the search's own threads share this work, as they share the tiles.
    """
    for slot in range(start, stop):
        _keep_best(keys, rows, slot, counts[slot], width)
        # Insertion sort of the best: a few dozen entries.
        for place in range(width):
            key = keys[slot, place]
            row = np.int64(rows[slot, place])
            before = place
            while before > 0 and _better(
                key, row, out_keys[slot, before - 1], out_rows[slot, before - 1]
            ):
                out_keys[slot, before] = out_keys[slot, before - 1]
                out_rows[slot, before] = out_rows[slot, before - 1]
                before -= 1
            out_keys[slot, before] = key
            out_rows[slot, before] = row


def _starting_thresholds(
    vectors: np.ndarray,
    squared_norms: np.ndarray,
    width: int,
    first: int,
    last: int,
    *,
    tile: int,
    euclidean: bool,
) -> np.ndarray:
    """A bound below each searched row's ``width``-th best score, from its cell-mates.

    Offers are what the scans spend most on, and a row offers each score that beats its
    threshold: about ``width * ln(N / seen)`` of them after ``seen`` scores, most in its
    first tiles. So each row starts at the ``width``-th best of its scores against the
    points of its cell: points are put in the cell of their nearest of sqrt(N) seeded
    random pivots, where a point's neighbours mostly are too. Those ``width`` points are
    real candidates, so the bound holds, less a margin for the rounding of these
    products against the tiles' (at most 2 dim epsilon |x| |y| apart). -inf where a cell
    is too small, or for fewer than 4 tiles of points (the diagonal tile does it then).
    """
    n_points, dim = vectors.shape
    bounds = np.full(last - first, -np.inf, dtype=np.float32)
    cells = int(np.sqrt(n_points))
    if n_points < 4 * tile or n_points // cells <= width:
        return bounds
    rng = np.random.default_rng(_PIVOT_SEED)
    pivots = vectors[np.sort(rng.choice(n_points, size=cells, replace=False))]
    pivot_norms = np.einsum("ij,ij->i", pivots, pivots) if euclidean else 0.0
    cell = np.empty(n_points, dtype=np.int64)
    for start in range(0, n_points, _ASSIGN_BLOCK):
        block = vectors[start : start + _ASSIGN_BLOCK] @ pivots.T
        # Nearest pivot: the largest <x, p> - |p|^2 / 2 (the cosine's unit pivots: <x, p>).
        cell[start : start + block.shape[0]] = np.argmax(block - 0.5 * pivot_norms, axis=1)
    order = np.argsort(cell, kind="stable")
    edges = np.searchsorted(cell[order], np.arange(cells + 1))
    norms = np.sqrt(squared_norms) if euclidean else np.ones(n_points, dtype=np.float32)
    epsilon = float(np.finfo(np.float32).eps)
    for c in range(cells):
        members = order[edges[c] : edges[c + 1]]
        searched = members[(members >= first) & (members < last)]
        if members.size <= width or searched.size == 0:
            continue
        scores = vectors[searched] @ vectors[members].T
        if euclidean:
            scores = 2.0 * scores - squared_norms[members]
        scores[searched[:, None] == members[None, :]] = -np.inf
        best = -np.partition(-scores, width - 1, axis=1)[:, width - 1]
        # Products here and in the tiles may differ by 2 dim eps |x_i| |x_j| each way;
        # Euclidean scores double it and round once more.
        scale = norms[searched] * norms[members].max()
        if euclidean:
            scale = 2.0 * scale + squared_norms[members].max() + np.abs(best)
        bounds[searched - first] = best - 8.0 * dim * epsilon * scale
    return bounds


def _tile_pairs(n_points: int, tile: int, first: int, last: int) -> list[tuple[int, int]]:
    """The pairs (I, J), I <= J, of tile starts that hold a searched row, far ones apart.

    Ordered by J - I, so that the tiles running at once seldom share a row tile (lock).
    """
    starts = range(0, n_points, tile)
    searched = {s for s in starts if s < last and s + tile > first}
    pairs = [(i, j) for i in starts for j in starts if i <= j and (i in searched or j in searched)]
    return sorted(pairs, key=lambda pair: (pair[1] - pair[0], pair[0]))


def gram_search(
    vectors: np.ndarray,
    width: int,
    *,
    metric: Metric,
    rows: tuple[int, int] | None = None,
    tile: int = TILE,
    threads: int | None = None,
    progress: Callable[[float], object] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``width`` best other points of each row, by score, ties to the smaller index.

    Parameters
    ----------
    vectors : ndarray of shape (n_points, dim), float32, C-contiguous
        The prepared points (unit rows under the cosine metric).
    width : int
        Results per row, ``1 <= width <= n_points - 1``.
    metric : {"cosine", "euclidean"}
    rows : (start, stop), optional
        Search only these rows' neighbours (among all points); all rows by default.
    tile : int, optional
        Rows per tile. Searches meant to agree bit for bit must use the same tile.
    threads : int, optional
        Tiles at a time; numba's thread count by default (the engine's setting).
    progress : callable, optional
        Called with the share of tiles done, from the calling thread; what it raises
        (a cancelled job) stops the search and is raised here.

    Returns
    -------
    indices : ndarray of shape (stop - start, width), int64
        Best first; never the row itself.
    scores : ndarray of shape (stop - start, width), float32
        Cosine similarity, or ``2 <x_i, x_j> - |x_j|^2`` under the Euclidean metric.
    """
    n_points = vectors.shape[0]
    first, last = rows or (0, n_points)
    if not 1 <= width < n_points:
        raise ValueError(f"width must be in [1, {n_points - 1}], got {width}")
    euclidean = metric == "euclidean"
    squared_norms = (
        np.einsum("ij,ij->i", vectors, vectors)
        if euclidean
        else np.zeros(n_points, dtype=np.float32)
    ).astype(np.float32)
    thresholds = np.full(n_points, np.inf, dtype=np.float32)
    thresholds[first:last] = _starting_thresholds(
        vectors, squared_norms, width, first, last, tile=tile, euclidean=euclidean
    )
    # Each row's reservoir: its best so far and what came since (see _offer).
    capacity = width + max(width, _MIN_SPARE)
    keys = np.empty((last - first, capacity), dtype=np.float32)
    found = np.empty((last - first, capacity), dtype=np.int32)
    counts = np.zeros(last - first, dtype=np.int64)
    shared = (euclidean, squared_norms, thresholds, keys, found, counts, first, width)
    pairs = _tile_pairs(n_points, tile, first, last)
    locks = {start: threading.Lock() for start in range(0, n_points, tile)}
    state = {"next": 0, "done": 0, "error": None}
    claim = threading.Lock()
    stop = threading.Event()

    def work() -> None:
        buffer = np.empty(tile * tile, dtype=np.float32)
        try:
            while not stop.is_set():
                with claim:
                    if state["next"] == len(pairs):
                        return
                    row_start, col_start = pairs[state["next"]]
                    state["next"] += 1
                left = vectors[row_start : row_start + tile]
                right = vectors[col_start : col_start + tile]
                products = buffer[: left.shape[0] * right.shape[0]].reshape(
                    left.shape[0], right.shape[0]
                )
                np.matmul(left, right.T, out=products)
                same_tile = row_start == col_start
                with locks[row_start], nullcontext() if same_tile else locks[col_start]:
                    if same_tile:
                        _raise_thresholds(
                            products,
                            row_start,
                            euclidean,
                            squared_norms,
                            thresholds,
                            first,
                            last,
                            width,
                        )
                    _scan_tile(products, row_start, col_start, *shared)
                with claim:
                    state["done"] += 1
        except BaseException as error:  # re-raised by the calling thread
            state["error"] = error
            stop.set()

    count = max(1, min(threads or get_num_threads(), len(pairs)))
    # One BLAS thread per tile: the tiles themselves are the parallel work, and a
    # single-threaded product rounds the same whatever else runs.
    with single_threaded_blas():
        workers = [threading.Thread(target=work, daemon=True) for _ in range(count)]
        for worker in workers:
            worker.start()
        try:
            for worker in workers:
                while worker.is_alive():
                    worker.join(_PROGRESS_SECONDS)
                    if progress is not None and state["error"] is None:
                        progress(state["done"] / len(pairs))
        finally:
            stop.set()
            for worker in workers:
                worker.join()
    if state["error"] is not None:
        raise state["error"]
    if progress is not None:
        progress(1.0)
    if (counts < width).any():
        # Only a score that compares with nothing (NaN) is never offered.
        raise ValueError("vectors must be finite: a row's scores could not be ranked")
    scores = np.empty((last - first, width), dtype=np.float32)
    indices = np.empty((last - first, width), dtype=np.int64)
    edges = np.linspace(0, last - first, count + 1).astype(np.int64)
    sorters = [
        threading.Thread(
            target=_sort_best,
            args=(keys, found, counts, width, scores, indices, edges[part], edges[part + 1]),
        )
        for part in range(count)
    ]
    for sorter in sorters:
        sorter.start()
    for sorter in sorters:
        sorter.join()
    return indices, scores


def warm_up() -> None:
    """Compile (or load from the cache) the scans with the types the engine uses."""
    points = np.random.default_rng(0).standard_normal((40, 6)).astype(np.float32)
    for metric in ("cosine", "euclidean"):
        gram_search(points, 5, metric=metric, tile=16, threads=1)
