"""The label-aware metrics of DESIGN section 2, per point first, then aggregated.

Every metric is computed as one value per point (is the NNK-weighted prediction
wrong? what share of the NNK neighbours share the label?), so the same arrays give
the set's figure and each class's figure by averaging over a mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from api_schemas import (
    ClassMetrics,
    DegreeStats,
    Homogeneity,
    LooError,
    QuantileStats,
    Suspect,
)
from jobstate.memory_budget import plan_metrics_block

# DESIGN section 2: both interpolations count as exact below this LOO error.
REGIME_EPSILON = 0.01
# Classes a set's report lists one by one (per_class, nnk_degree.per_class).
MAX_REPORTED_CLASSES = 1000
# point_metrics predicts from each row's candidates (predicted_classes) rather than from
# dense class scores above this many classes per candidate; both give the same classes.
_SPARSE_CLASSES_PER_CANDIDATE = 20
# Rows point_metrics scores at a time at most, whatever the memory budget allows: the
# np.bincount of a block scatters into its (rows x classes) scores, and at 4,096 rows
# those and the (rows x k) gathers stay in the cache. Measured at 50,000 x 30 with 10
# and 100 classes: 40 % less time than blocks of 20,000 rows; no change at 400 classes.
_CACHE_BLOCK_ROWS = 4096
# Edges of the symmetric graph compared per block in cross_class_edge_fraction (about
# 1M edges: 9 MiB of gathered labels).
_EDGE_BLOCK = 1 << 20


def encode_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct labels and each point's class index into them.

    Argmax ties go to the smallest class index, i.e. the smallest label in sort order.
    """
    classes, codes = np.unique(np.asarray(labels), return_inverse=True)
    return classes, codes.astype(np.int64)


def class_scores(
    candidate_indices: np.ndarray, weights: np.ndarray, codes: np.ndarray, n_classes: int
) -> np.ndarray:
    """``scores[i, c] = sum_j weights[i, j] * [y_{S_i[j]} == c]``, shape (n_points, n_classes)."""
    n_points = candidate_indices.shape[0]
    flat = np.arange(n_points)[:, None] * n_classes + codes[candidate_indices]
    totals = np.bincount(flat.ravel(), weights=weights.ravel(), minlength=n_points * n_classes)
    return totals.reshape(n_points, n_classes)


def predicted_classes(
    candidate_indices: np.ndarray, weights: np.ndarray, codes: np.ndarray, n_classes: int
) -> np.ndarray:
    """``class_scores(...).argmax(axis=1)``, from each row's k candidates alone.

    Parameters
    ----------
    candidate_indices : ndarray of shape (n_rows, k)
    weights : ndarray of shape (n_rows, k)
    codes : ndarray of shape (n_points,)
        Every point's class index; the candidates index into it.
    n_classes : int

    Returns
    -------
    predicted : ndarray of shape (n_rows,), int64
        The class with the largest summed weight; ties go to the smallest class index.

    Notes
    -----
    A row's candidates name at most k classes, so the scores are summed per class present
    (a stable sort by class, then one pass over the k columns, adding in candidate order
    as ``np.bincount`` does: the same floats), and the classes absent from the row, whose
    score is 0, are considered only when no present class scores above 0. Time and memory
    are O(n_rows x k) instead of O(n_rows x n_classes), for the same result.
    """
    n_rows, k = candidate_indices.shape
    if n_rows == 0:
        return np.empty(0, dtype=np.int64)
    row_codes = codes[candidate_indices]
    order = np.argsort(row_codes, axis=1, kind="stable")
    sorted_codes = np.take_along_axis(row_codes, order, axis=1)
    # Column-major, so that the pass over the k columns reads contiguous rows.
    sorted_weights = np.take_along_axis(np.asarray(weights), order, axis=1).T.copy()
    starts = np.ones((n_rows, k), dtype=bool)
    np.not_equal(sorted_codes[:, 1:], sorted_codes[:, :-1], out=starts[:, 1:])
    ends = np.ones((n_rows, k), dtype=bool)
    ends[:, :-1] = starts[:, 1:]
    starts_by_column = starts.T.copy()
    # Running sum of each class's weights, restarted at each class: 0.0 + w_1 + w_2 ...,
    # in candidate order (the sort is stable), the additions np.bincount makes.
    running = np.zeros((k, n_rows))
    total = np.zeros(n_rows)
    for column in range(k):
        total[starts_by_column[column]] = 0.0
        total += sorted_weights[column]
        running[column] = total
    # A class's score sits at its last candidate; classes are in order along the row, so
    # the first maximum is the smallest class among ties.
    scores = np.where(ends, running.T, -np.inf)
    best_position = scores.argmax(axis=1)
    rows = np.arange(n_rows)
    best = scores[rows, best_position]
    predicted = sorted_codes[rows, best_position]
    # Absent classes score 0. The smallest is the number of leading classes 0, 1, 2, ...
    # present: those whose code equals their rank in the row.
    rank = np.cumsum(starts, axis=1) - 1
    n_present = rank[:, -1] + 1
    absent = n_present < n_classes
    smallest_absent = (starts & (sorted_codes == rank)).sum(axis=1)
    below = absent & (best < 0)
    predicted[below] = smallest_absent[below]
    level = absent & (best == 0)
    predicted[level] = np.minimum(predicted[level], smallest_absent[level])
    return predicted


def _scored(
    candidate_indices: np.ndarray, weights: np.ndarray, codes: np.ndarray, n_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For one block of rows: the predicted class, the class scores and their row totals.

    ``codes`` holds every point's class (candidates index into it). Argmax ties go to
    the smallest class index, as DESIGN section 2 asks.
    """
    scores = class_scores(candidate_indices, weights, codes, n_classes)
    return scores.argmax(axis=1), scores, scores.sum(axis=1)


@dataclass(frozen=True)
class PointMetrics:
    """Per-point values; every set or class figure is a mean of these over a mask."""

    codes: np.ndarray
    degree: np.ndarray
    predicted: np.ndarray
    wrong_nnk_weighted: np.ndarray
    wrong_nnk_unweighted: np.ndarray
    wrong_knn_weighted: np.ndarray
    wrong_knn_unweighted: np.ndarray
    soft_error: np.ndarray
    nnk_same_share: np.ndarray
    knn_same_share: np.ndarray
    pure: np.ndarray


def point_metrics(
    candidate_indices: np.ndarray,
    weights: np.ndarray,
    query_kernel: np.ndarray,
    codes: np.ndarray,
    n_classes: int,
    *,
    valid: np.ndarray | None = None,
) -> PointMetrics:
    """Leave-one-out predictions and neighbourhood purity of every point.

    Parameters
    ----------
    candidate_indices : ndarray of shape (n_points, k)
        Candidates S_i; i itself is never among them, so predictions are leave-one-out.
    weights : ndarray of shape (n_points, k)
        NNK weights theta_i (zero off the NNK neighbours).
    query_kernel : ndarray of shape (n_points, k)
        K(x_i, x_j) for each candidate: the weights of ``knn_weighted``.
    codes : ndarray of shape (n_points,)
        Class index of each point (:func:`encode_labels`).
    n_classes : int
    valid : bool ndarray of shape (n_points, k), optional
        Candidates that count (``ignore_identical`` removes some); default all.

    Notes
    -----
    Everything is computed a block of rows at a time (at most 4,096 rows, and
    :func:`~jobstate.memory_budget.plan_metrics_block`), every (rows x k) mask and
    weight array included, so that memory beyond the per-point results is one block's,
    whatever N and the number of classes. Each row's values are the same as from whole
    matrices: a row's sums never mix other rows. Only ``nnk_weighted`` makes dense
    (rows x classes) scores: its soft error divides by their row total, summed as numpy
    sums a dense row. The three other rules need only an argmax, which
    :func:`predicted_classes` finds in O(k log k) per row when classes are many.
    """
    n_points = candidate_indices.shape[0]
    degree = np.empty(n_points, dtype=np.int64)
    predicted = np.empty(n_points, dtype=np.int64)
    wrong = {rule: np.empty(n_points, dtype=bool) for rule in ("nnk_u", "knn_w", "knn_u")}
    own_share = np.zeros(n_points)
    nnk_same_share = np.zeros(n_points)
    knn_same_share = np.zeros(n_points)
    pure = np.empty(n_points, dtype=bool)
    n_candidates = candidate_indices.shape[1]
    block = min(plan_metrics_block(n_classes, candidates=n_candidates), _CACHE_BLOCK_ROWS)
    # Dense scores cost O(classes) per row, the per-row sort O(k log k) and more numpy
    # calls: the sort wins above about 20 classes per candidate (measured at k = 30).
    sparse = n_classes > _SPARSE_CLASSES_PER_CANDIDATE * n_candidates
    for start in range(0, n_points, block):
        rows = slice(start, min(start + block, n_points))
        block_indices, block_weights = candidate_indices[rows], weights[rows]
        block_valid = np.ones(block_indices.shape, dtype=bool) if valid is None else valid[rows]
        own = codes[rows]
        neighbour = block_weights > 0
        block_degree = neighbour.sum(axis=1)
        same = codes[block_indices] == own[:, None]

        block_predicted, scores, total = _scored(block_indices, block_weights, codes, n_classes)
        own_score = scores[np.arange(own.size), own]
        del scores
        np.divide(own_score, total, out=own_share[rows], where=total > 0)

        for rule, rule_weights in (
            ("nnk_u", neighbour.astype(np.float64)),
            ("knn_w", np.where(block_valid, query_kernel[rows], 0.0)),
            ("knn_u", block_valid.astype(np.float64)),
        ):
            guess = (
                predicted_classes(block_indices, rule_weights, codes, n_classes)
                if sparse
                else class_scores(block_indices, rule_weights, codes, n_classes).argmax(axis=1)
            )
            np.not_equal(guess, own, out=wrong[rule][rows])

        n_valid = block_valid.sum(axis=1)
        nnk_same = (same & neighbour).sum(axis=1)
        np.divide(nnk_same, block_degree, out=nnk_same_share[rows], where=block_degree > 0)
        np.divide(
            (same & block_valid).sum(axis=1), n_valid, out=knn_same_share[rows], where=n_valid > 0
        )
        pure[rows] = (block_degree > 0) & (nnk_same == block_degree)
        degree[rows] = block_degree
        predicted[rows] = block_predicted
    return PointMetrics(
        codes=codes,
        degree=degree,
        predicted=predicted,
        wrong_nnk_weighted=predicted != codes,
        wrong_nnk_unweighted=wrong["nnk_u"],
        wrong_knn_weighted=wrong["knn_w"],
        wrong_knn_unweighted=wrong["knn_u"],
        soft_error=1.0 - own_share,
        nnk_same_share=nnk_same_share,
        knn_same_share=knn_same_share,
        pure=pure,
    )


def loo_error(points: PointMetrics, mask: np.ndarray | slice = slice(None)) -> LooError:
    return LooError(
        nnk_weighted=float(points.wrong_nnk_weighted[mask].mean()),
        nnk_unweighted=float(points.wrong_nnk_unweighted[mask].mean()),
        knn_weighted=float(points.wrong_knn_weighted[mask].mean()),
        knn_unweighted=float(points.wrong_knn_unweighted[mask].mean()),
        soft_nnk_weighted=float(points.soft_error[mask].mean()),
    )


def homogeneity(points: PointMetrics, mask: np.ndarray | slice = slice(None)) -> Homogeneity:
    return Homogeneity(
        nnk_mean=float(points.nnk_same_share[mask].mean()),
        knn_mean=float(points.knn_same_share[mask].mean()),
        pure_patch_fraction=float(points.pure[mask].mean()),
    )


def regime(errors: LooError, *, epsilon: float = REGIME_EPSILON) -> str:
    """The seed's two kinds of embedding space, and the third: no interpolation at all."""
    if errors.nnk_weighted <= epsilon and errors.nnk_unweighted <= epsilon:
        return "homogeneous"
    if errors.nnk_weighted <= epsilon:
        return "weighted"
    return "not_interpolating"


def quantile_stats(values: np.ndarray) -> QuantileStats:
    values = np.asarray(values, dtype=np.float64)
    p10, median, p90 = np.percentile(values, [10, 50, 90])
    return QuantileStats(
        mean=float(values.mean()),
        median=float(median),
        p10=float(p10),
        p90=float(p90),
        max=float(values.max()),
    )


def degree_stats(
    degree: np.ndarray,
    *,
    codes: np.ndarray | None = None,
    classes: np.ndarray | None = None,
    shown: np.ndarray | None = None,
) -> DegreeStats:
    per_class = None
    if codes is not None and classes is not None:
        sums = np.bincount(codes, weights=degree, minlength=classes.size)
        counts = np.bincount(codes, minlength=classes.size)
        listed = np.arange(classes.size) if shown is None else shown
        per_class = {str(classes[code]): float(sums[code] / counts[code]) for code in listed}
    return DegreeStats(
        **quantile_stats(degree).model_dump(),
        histogram=np.bincount(degree).tolist(),
        per_class=per_class,
    )


def label_of(value: np.generic) -> int | str:
    return value.item() if isinstance(value.item(), int | str) else str(value)


def reported_classes(
    codes: np.ndarray, n_classes: int, *, limit: int = MAX_REPORTED_CLASSES
) -> np.ndarray:
    """Class indices the report lists per class: all, or the ``limit`` most populous.

    Ties go to the smaller class index; the result is sorted, so listed classes keep
    label order. 12,000 classes would otherwise make megabytes of JSON per set.
    """
    if n_classes <= limit:
        return np.arange(n_classes)
    counts = np.bincount(codes, minlength=n_classes)
    largest = np.argsort(-counts, kind="stable")[:limit]
    return np.sort(largest)


def per_class_metrics(
    points: PointMetrics, classes: np.ndarray, *, shown: np.ndarray | None = None
) -> list[ClassMetrics]:
    """The metrics of each class in ``shown`` (default all), in label order."""
    shown = np.arange(classes.size) if shown is None else shown
    # Each class's members, in their original order: a mean over them equals the mean
    # over a boolean mask, and grouping once costs N log N instead of N per class.
    order = np.argsort(points.codes, kind="stable")
    bounds = np.searchsorted(points.codes[order], np.arange(classes.size + 1))
    out = []
    for code in shown:
        members = order[bounds[code] : bounds[code + 1]]
        out.append(
            ClassMetrics(
                label=label_of(classes[code]),
                n=int(members.size),
                loo_error=loo_error(points, members),
                homogeneity=homogeneity(points, members),
                mean_degree=float(points.degree[members].mean()),
            )
        )
    return out


def cross_class_edge_fraction(symmetric: sp.csr_matrix, codes: np.ndarray) -> float:
    """Share of the symmetric graph's weight on edges joining different labels.

    The edges' label comparison is made a block of rows at a time, into one boolean per
    edge: a COO copy with gathered int64 labels took 28 bytes per edge.
    """
    graph = sp.csr_matrix(symmetric)
    total = graph.data.sum()
    if total == 0:
        return 0.0
    crossing = np.empty(graph.nnz, dtype=bool)
    indptr, n_rows = graph.indptr, graph.shape[0]
    block = max(1, _EDGE_BLOCK * n_rows // max(graph.nnz, 1))
    for start in range(0, n_rows, block):
        stop = min(start + block, n_rows)
        edges = slice(indptr[start], indptr[stop])
        row_codes = np.repeat(codes[start:stop], np.diff(indptr[start : stop + 1]))
        np.not_equal(row_codes, codes[graph.indices[edges]], out=crossing[edges])
    return float(graph.data[crossing].sum() / total)


def suspects(
    points: PointMetrics,
    classes: np.ndarray,
    *,
    top: int,
    ids: np.ndarray | None = None,
) -> list[Suspect]:
    """Points whose NNK-weighted prediction disagrees with their label, most doubtful first."""
    flagged = np.flatnonzero(points.wrong_nnk_weighted)
    # Highest score first; ties by index for a stable report.
    order = flagged[np.lexsort((flagged, -points.soft_error[flagged]))][:top]
    return [
        Suspect(
            index=int(i),
            id=None if ids is None else str(ids[i]),
            label=label_of(classes[points.codes[i]]),
            predicted=label_of(classes[points.predicted[i]]),
            score=float(points.soft_error[i]),
        )
        for i in order
    ]
