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


def _scored(
    candidate_indices: np.ndarray, weights: np.ndarray, codes: np.ndarray, n_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per point: the predicted class, the score of its own class, and the total score.

    The (points x classes) scores are made a block of rows at a time
    (:func:`~jobstate.memory_budget.plan_metrics_block`): 12,000 classes would otherwise
    take N x 12,000 x 8 bytes. Each row's sums are the same as from the whole matrix.
    """
    n_points = candidate_indices.shape[0]
    predicted = np.empty(n_points, dtype=np.int64)
    own_score = np.empty(n_points)
    total = np.empty(n_points)
    block = plan_metrics_block(n_classes)
    for start in range(0, n_points, block):
        stop = min(start + block, n_points)
        scores = class_scores(candidate_indices[start:stop], weights[start:stop], codes, n_classes)
        predicted[start:stop] = scores.argmax(axis=1)
        own_score[start:stop] = scores[np.arange(stop - start), codes[start:stop]]
        total[start:stop] = scores.sum(axis=1)
    return predicted, own_score, total


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
    """
    valid = np.ones(candidate_indices.shape, dtype=bool) if valid is None else valid
    neighbour = weights > 0
    degree = neighbour.sum(axis=1)
    same = codes[candidate_indices] == codes[:, None]

    def predict(candidate_weights: np.ndarray) -> np.ndarray:
        return _scored(candidate_indices, candidate_weights, codes, n_classes)[0]

    predicted, own_score, total = _scored(candidate_indices, weights, codes, n_classes)
    own_share = np.divide(own_score, total, out=np.zeros(codes.size), where=total > 0)
    n_valid = valid.sum(axis=1)
    nnk_same = (same & neighbour).sum(axis=1)
    return PointMetrics(
        codes=codes,
        degree=degree,
        predicted=predicted,
        wrong_nnk_weighted=predicted != codes,
        wrong_nnk_unweighted=predict(neighbour.astype(np.float64)) != codes,
        wrong_knn_weighted=predict(np.where(valid, query_kernel, 0.0)) != codes,
        wrong_knn_unweighted=predict(valid.astype(np.float64)) != codes,
        soft_error=1.0 - own_share,
        nnk_same_share=np.divide(nnk_same, degree, out=np.zeros(codes.size), where=degree > 0),
        knn_same_share=np.divide(
            (same & valid).sum(axis=1), n_valid, out=np.zeros(codes.size), where=n_valid > 0
        ),
        pure=(degree > 0) & (nnk_same == degree),
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
    """Share of the symmetric graph's weight on edges joining different labels."""
    coo = symmetric.tocoo()
    total = coo.data.sum()
    if total == 0:
        return 0.0
    return float(coo.data[codes[coo.row] != codes[coo.col]].sum() / total)


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
