"""Compare two embeddings of the same points: NNK-neighbourhood overlap and linear CKA.

Two sets describe the same points in the same order (two layers, two models, two
checkpoints). Their directed NNK graphs W_a and W_b (DESIGN section 1, row i holds
theta_i) say, point by point, which neighbours each space interpolates it from; the
overlap of those neighbourhoods shows where the two spaces agree and which points moved.
Linear CKA (Kornblith et al. 2019) is the usual single global number, given beside it.

Everything here works on CSR graphs and arrays in memory: no I/O, no service.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from jobstate.errors import InvalidInputError
from workers.geometry.metrics import encode_labels, label_of

__all__ = [
    "ChangedPoint",
    "ClassOverlap",
    "NeighbourhoodOverlap",
    "OverlapStats",
    "consecutive_overlap",
    "linear_cka",
    "neighbourhood_overlap",
]

# Rows of X and Y centred and multiplied per block in linear_cka: a block holds
# block x (d_a + d_b) float64 values, about 32 MiB at d_a + d_b = 4096.
_CKA_BLOCK_BYTES = 32 * 2**20
DEFAULT_TOP = 100


@dataclass(frozen=True)
class OverlapStats:
    """Mean, median and 10th / 90th percentiles (linear interpolation) of a per-point overlap."""

    mean: float
    median: float
    p10: float
    p90: float


@dataclass(frozen=True)
class ClassOverlap:
    """Mean overlaps over the points of one class."""

    label: int | str
    n: int
    jaccard_mean: float
    weighted_mean: float


@dataclass(frozen=True)
class ChangedPoint:
    """A point whose NNK neighbourhood changed most between the two graphs.

    Attributes
    ----------
    index : int
        Row of the point in both sets.
    id : int or str or None
        The point's id, when ids were given.
    jaccard, weighted : float
        Its Jaccard and weighted overlaps.
    neighbours_a, neighbours_b : list of int
        Its NNK neighbours in A and in B, by weight descending (ties: smaller index first).
    """

    index: int
    id: int | str | None
    jaccard: float
    weighted: float
    neighbours_a: list[int]
    neighbours_b: list[int]


@dataclass(frozen=True)
class NeighbourhoodOverlap:
    """Per-point overlap of two NNK graphs of the same points, and its summaries.

    Attributes
    ----------
    jaccard : ndarray of shape (n_points,), float64
        |N_a(i) & N_b(i)| / |N_a(i) | N_b(i)|, 1.0 when both are empty.
    weighted : ndarray of shape (n_points,), float64
        sum_j min(p_a[i, j], p_b[i, j]) with p the row-normalised weights; 1.0 when both
        rows are empty, 0.0 when exactly one is.
    jaccard_stats, weighted_stats : OverlapStats
    per_class : list of ClassOverlap
        One per class in sorted label order; empty without labels.
    changed : list of ChangedPoint
        The ``top`` points of lowest Jaccard (ties: lower weighted overlap, then smaller
        index), lowest first.
    """

    jaccard: np.ndarray
    weighted: np.ndarray
    jaccard_stats: OverlapStats
    weighted_stats: OverlapStats
    per_class: list[ClassOverlap]
    changed: list[ChangedPoint]


def _check_graph(graph: object, *, field: str) -> sp.csr_matrix:
    """A canonical float64 CSR copy of a directed NNK graph: no stored zeros, sorted."""
    if not sp.issparse(graph):
        raise InvalidInputError(field, f"need a scipy.sparse matrix, got {type(graph).__name__}")
    rows, columns = graph.shape
    if rows != columns:
        raise InvalidInputError(field, f"need a square (n, n) graph, got shape {graph.shape}")
    csr = sp.csr_matrix(graph, dtype=np.float64, copy=True)
    if not np.isfinite(csr.data).all():
        raise InvalidInputError(field, "weights must be finite")
    if (csr.data < 0).any():
        raise InvalidInputError(field, "NNK weights are non-negative; found a negative weight")
    csr.sum_duplicates()
    csr.eliminate_zeros()
    csr.sort_indices()
    return csr


def _check_pair(graph_a: object, graph_b: object) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    a = _check_graph(graph_a, field="graph_a")
    b = _check_graph(graph_b, field="graph_b")
    if a.shape != b.shape:
        raise InvalidInputError(
            "graph_b", f"both graphs must describe the same points: {a.shape} vs {b.shape}"
        )
    return a, b


def _pattern(graph: sp.csr_matrix) -> sp.csr_matrix:
    return sp.csr_matrix((np.ones_like(graph.data), graph.indices, graph.indptr), shape=graph.shape)


def _jaccard(a: sp.csr_matrix, b: sp.csr_matrix) -> np.ndarray:
    """Per-row Jaccard of the supports of two canonical CSR graphs (1.0 for two empty rows)."""
    size_a = np.diff(a.indptr).astype(np.float64)
    size_b = np.diff(b.indptr).astype(np.float64)
    # The elementwise product of the 0/1 patterns keeps exactly the shared columns.
    shared = np.asarray(_pattern(a).multiply(_pattern(b)).sum(axis=1)).ravel()
    union = size_a + size_b - shared
    return np.divide(shared, union, out=np.ones_like(union), where=union > 0)


def _row_normalised(graph: sp.csr_matrix) -> sp.csr_matrix:
    """Each non-empty row divided by its sum (canonical rows hold positive weights only)."""
    row_totals = np.asarray(graph.sum(axis=1)).ravel()
    scale = np.repeat(row_totals, np.diff(graph.indptr))
    return sp.csr_matrix((graph.data / scale, graph.indices, graph.indptr), shape=graph.shape)


def _weighted(a: sp.csr_matrix, b: sp.csr_matrix) -> np.ndarray:
    """Per-row sum_j min(p_a[j], p_b[j]) of the row-normalised graphs."""
    empty_a = np.diff(a.indptr) == 0
    empty_b = np.diff(b.indptr) == 0
    # A sparse minimum is zero wherever either side is: only shared neighbours count.
    shared = np.asarray(_row_normalised(a).minimum(_row_normalised(b)).sum(axis=1)).ravel()
    # Rounding of the normalised weights may push a full overlap a few ulps past 1.
    overlap = np.minimum(shared, 1.0)
    overlap[empty_a & empty_b] = 1.0
    return overlap


def _stats(values: np.ndarray) -> OverlapStats:
    p10, median, p90 = np.percentile(values, [10, 50, 90])
    return OverlapStats(
        mean=float(values.mean()), median=float(median), p10=float(p10), p90=float(p90)
    )


def _neighbour_list(graph: sp.csr_matrix, row: int) -> list[int]:
    start, stop = graph.indptr[row], graph.indptr[row + 1]
    columns, weights = graph.indices[start:stop], graph.data[start:stop]
    return [int(c) for c in columns[np.lexsort((columns, -weights))]]


def _check_labels(labels: object, n_points: int, *, field: str) -> np.ndarray:
    values = np.asarray(labels)
    if values.shape != (n_points,):
        raise InvalidInputError(field, f"need shape ({n_points},), got {values.shape}")
    return values


def _check_top(top: object) -> int:
    if isinstance(top, bool) or not isinstance(top, int | np.integer) or top < 0:
        raise InvalidInputError("top", f"top must be a non-negative integer, got {top!r}")
    return int(top)


def neighbourhood_overlap(
    graph_a: sp.spmatrix,
    graph_b: sp.spmatrix,
    *,
    labels: np.ndarray | None = None,
    ids: np.ndarray | None = None,
    top: int = DEFAULT_TOP,
) -> NeighbourhoodOverlap:
    """Per-point overlap of the NNK neighbourhoods of the same points in two spaces.

    Parameters
    ----------
    graph_a, graph_b : sparse matrix of shape (n_points, n_points)
        Directed NNK graphs W (row i holds theta_i, DESIGN section 1) of the same points in
        the same order; CSR preferred (others are converted). Weights must be finite and
        non-negative; stored zeros are not neighbours.
    labels : ndarray of shape (n_points,), optional
        Class labels; per-class means are reported when given.
    ids : ndarray of shape (n_points,), optional
        Point ids, copied into the ``changed`` list.
    top : int, optional
        Length of the ``changed`` list (default 100).

    Returns
    -------
    NeighbourhoodOverlap

    Raises
    ------
    InvalidInputError
        Naming the field: a non-sparse or non-square graph, graphs of different sizes,
        negative or non-finite weights, labels or ids of the wrong length, a bad ``top``.

    Notes
    -----
    With N_a(i), N_b(i) the NNK neighbours of i (columns with theta_ij > 0):

    - Jaccard: J_i = |N_a(i) & N_b(i)| / |N_a(i) | N_b(i)|. A point with no neighbour in
      either graph (an isolated point, DESIGN section 2) has the same, empty,
      neighbourhood in both, so J_i = 1.0 by definition.
    - Weighted: O_i = sum_j min(p_a[i, j], p_b[i, j]) with p[i, j] = theta_ij / sum_l
      theta_il. DESIGN's theta_i are the raw minimisers of the NNK objective, not
      normalised: their sum follows the kernel scale (about 1 for a point well inside the
      data, smaller for an outlier, whose kernel values are all small). Normalising each
      row makes the two spaces comparable whatever their kernel scale, makes O_i the
      complement of the total-variation distance between the two neighbour
      distributions (1 - TV, in [0, 1], 1 exactly when the weights agree up to a factor),
      and follows the normalised weights p_i of ``soft_nnk_weighted``. O_i = 1.0 when
      both rows are empty, 0.0 when exactly one is.

    Both are computed over the whole CSR arrays at once (elementwise products and
    minima of sparse matrices): time and memory are O(edges).

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> a = sp.csr_matrix([[0, 1.0, 1.0], [1.0, 0, 0], [0, 0, 0]])
    >>> b = sp.csr_matrix([[0, 3.0, 0], [1.0, 0, 0], [0, 0, 0]])
    >>> result = neighbourhood_overlap(a, b)
    >>> result.jaccard.tolist(), result.weighted.tolist()
    ([0.5, 1.0, 1.0], [0.5, 1.0, 1.0])
    """
    a, b = _check_pair(graph_a, graph_b)
    n_points = a.shape[0]
    if n_points == 0:
        raise InvalidInputError("graph_a", "the graphs have no points")
    top = _check_top(top)
    label_values = None if labels is None else _check_labels(labels, n_points, field="labels")
    id_values = None if ids is None else _check_labels(ids, n_points, field="ids")

    jaccard = _jaccard(a, b)
    weighted = _weighted(a, b)

    per_class: list[ClassOverlap] = []
    if label_values is not None:
        classes, codes = encode_labels(label_values)
        counts = np.bincount(codes, minlength=classes.size)
        jaccard_sums = np.bincount(codes, weights=jaccard, minlength=classes.size)
        weighted_sums = np.bincount(codes, weights=weighted, minlength=classes.size)
        per_class = [
            ClassOverlap(
                label=label_of(classes[code]),
                n=int(counts[code]),
                jaccard_mean=float(jaccard_sums[code] / counts[code]),
                weighted_mean=float(weighted_sums[code] / counts[code]),
            )
            for code in range(classes.size)
        ]

    order = np.lexsort((np.arange(n_points), weighted, jaccard))[:top]
    changed = [
        ChangedPoint(
            index=int(i),
            id=None if id_values is None else label_of(id_values[i]),
            jaccard=float(jaccard[i]),
            weighted=float(weighted[i]),
            neighbours_a=_neighbour_list(a, int(i)),
            neighbours_b=_neighbour_list(b, int(i)),
        )
        for i in order
    ]
    return NeighbourhoodOverlap(
        jaccard=jaccard,
        weighted=weighted,
        jaccard_stats=_stats(jaccard),
        weighted_stats=_stats(weighted),
        per_class=per_class,
        changed=changed,
    )


def consecutive_overlap(graphs: Sequence[sp.spmatrix]) -> np.ndarray:
    """Mean Jaccard overlap between each NNK graph and the next (layers in order).

    Parameters
    ----------
    graphs : sequence of sparse matrices of shape (n_points, n_points)
        Directed NNK graphs of the same points, at least two, in the order given.

    Returns
    -------
    ndarray of shape (len(graphs) - 1,), float64
        Entry s is the mean over points of J_i between graph s and graph s + 1, with
        J_i as in :func:`neighbourhood_overlap` (1.0 for a point isolated in both).

    Raises
    ------
    InvalidInputError
        Fewer than two graphs, or a graph that :func:`neighbourhood_overlap` refuses.
    """
    if len(graphs) < 2:
        raise InvalidInputError("graphs", f"need at least two graphs, got {len(graphs)}")
    checked = [_check_graph(graph, field=f"graphs[{i}]") for i, graph in enumerate(graphs)]
    for i, graph in enumerate(checked):
        if graph.shape != checked[0].shape:
            raise InvalidInputError(
                f"graphs[{i}]", f"shape {graph.shape} differs from graphs[0]'s {checked[0].shape}"
            )
    if checked[0].shape[0] == 0:
        raise InvalidInputError("graphs", "the graphs have no points")
    return np.array(
        [_jaccard(first, second).mean() for first, second in itertools.pairwise(checked)],
        dtype=np.float64,
    )


def _check_features(values: object, *, field: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 2 or array.shape[1] == 0:
        raise InvalidInputError(field, f"need a 2-D array (n_points, dim), got shape {array.shape}")
    if array.dtype.kind not in "fiu":
        raise InvalidInputError(field, f"need numbers, got dtype {array.dtype}")
    if not np.isfinite(array).all():
        raise InvalidInputError(field, "values must be finite")
    return array


def linear_cka(x: np.ndarray, y: np.ndarray, *, block_rows: int | None = None) -> float:
    """Linear centred kernel alignment of two representations of the same points.

    Parameters
    ----------
    x : ndarray of shape (n_points, d_a)
    y : ndarray of shape (n_points, d_b)
        The same points, in the same order; finite.
    block_rows : int, optional
        Rows centred and multiplied at a time; default about 32 MiB of float64 per block.

    Returns
    -------
    float
        In [0, 1]; 1.0 when Y is X up to an orthogonal transform and an isotropic scale.

    Raises
    ------
    InvalidInputError
        Naming the field: shapes, non-finite values, fewer than two points, or a
        representation with no variance (CKA is undefined there).

    Notes
    -----
    Kornblith, Norouzi, Lee & Hinton (2019), "Similarity of neural network
    representations revisited", eq. (2) with linear kernels and centred features
    X_c, Y_c:

        CKA = ||Y_c' X_c||_F^2 / (||X_c' X_c||_F ||Y_c' Y_c||_F),

    equal to HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with K = X_c X_c', L = Y_c Y_c'
    but without an n x n matrix: the d x d (cross-)covariances are accumulated over
    blocks of rows, in float64, after the column means are subtracted (the uncentred
    shortcut X'X - n mu mu' loses precision when the means are large). Memory is
    O(d_a^2 + d_b^2 + d_a d_b) plus one block; time O(n (d_a + d_b)^2).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal((100, 5))
    >>> round(linear_cka(x, 3.0 * x[:, ::-1]), 12)
    1.0
    """
    a = _check_features(x, field="x")
    b = _check_features(y, field="y")
    if b.shape[0] != a.shape[0]:
        raise InvalidInputError(
            "y", f"need the same points as x: {b.shape[0]} rows vs {a.shape[0]}"
        )
    n_points = a.shape[0]
    if n_points < 2:
        raise InvalidInputError("x", f"need at least two points, got {n_points}")
    if block_rows is None:
        block_rows = max(1, _CKA_BLOCK_BYTES // (8 * (a.shape[1] + b.shape[1])))
    elif isinstance(block_rows, bool) or not isinstance(block_rows, int) or block_rows < 1:
        raise InvalidInputError("block_rows", f"need a positive integer, got {block_rows!r}")

    mean_a = np.zeros(a.shape[1])
    mean_b = np.zeros(b.shape[1])
    for start in range(0, n_points, block_rows):
        mean_a += a[start : start + block_rows].sum(axis=0, dtype=np.float64)
        mean_b += b[start : start + block_rows].sum(axis=0, dtype=np.float64)
    mean_a /= n_points
    mean_b /= n_points

    cov_aa = np.zeros((a.shape[1], a.shape[1]))
    cov_bb = np.zeros((b.shape[1], b.shape[1]))
    cov_ba = np.zeros((b.shape[1], a.shape[1]))
    for start in range(0, n_points, block_rows):
        block_a = a[start : start + block_rows].astype(np.float64) - mean_a
        block_b = b[start : start + block_rows].astype(np.float64) - mean_b
        cov_aa += block_a.T @ block_a
        cov_bb += block_b.T @ block_b
        cov_ba += block_b.T @ block_a
    norm_a = np.linalg.norm(cov_aa)
    norm_b = np.linalg.norm(cov_bb)
    if norm_a == 0.0:
        raise InvalidInputError("x", "every column is constant: CKA is undefined")
    if norm_b == 0.0:
        raise InvalidInputError("y", "every column is constant: CKA is undefined")
    # ||Y_c'X_c||^2 <= ||X_c'X_c|| ||Y_c'Y_c|| (Cauchy-Schwarz); clip the rounding.
    return float(min(1.0, np.linalg.norm(cov_ba) ** 2 / norm_a / norm_b))
