"""Drift statistics from reconstruction errors: per-point scores, the KS test, the verdict.

Given the reference set's leave-one-out reconstruction errors e_i (DESIGN section 1) and
the current points' out-of-sample errors (:mod:`workers.geometry.drift`, which computes
both), each current point is ranked among the reference errors, and the two samples are
compared by a two-sample Kolmogorov-Smirnov test. Pure functions of arrays: no solve.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.stats

from jobstate.errors import InvalidInputError
from workers.geometry.metrics import encode_labels, label_of

__all__ = [
    "DEFAULT_THRESHOLD",
    "DEFAULT_TOP",
    "ClassDrift",
    "DriftResult",
    "DriftedPoint",
    "KolmogorovSmirnov",
    "ScoreStats",
    "check_label_kinds",
    "check_threshold",
    "check_top",
    "check_vector",
    "drift_statistics",
]

# The KS p-value below which the verdict is "drift". The reference's leave-one-out errors
# are not independent (neighbouring points share neighbours), so the KS p-value of a
# fresh sample of the reference's own distribution is not exactly uniform: over 300
# seeds (300 reference and 200 current points, 4 Gaussian clusters in 8 dimensions,
# k = 10) p < 0.05 came out 6.7-7.7 % of the time instead of 5 %, and p < 0.01 2.0-2.3 %
# (gaussian and cosine kernels). 0.01 keeps the false-positive rate well under the
# 10 % the verdict promises; tests/unit/test_drift.py measures it over 20 other seeds
# (none flagged; smallest p-value 0.019).
DEFAULT_THRESHOLD = 0.01
DEFAULT_TOP = 100


@dataclass(frozen=True)
class ScoreStats:
    """Mean and 90th / 99th percentiles (linear interpolation) of the per-point scores."""

    mean: float
    p90: float
    p99: float


@dataclass(frozen=True)
class KolmogorovSmirnov:
    """Two-sample Kolmogorov-Smirnov test of current against reference errors (two-sided)."""

    statistic: float
    p_value: float


@dataclass(frozen=True)
class DriftedPoint:
    """A current point among the most drifted: highest score first.

    Attributes
    ----------
    index : int
        Row of the point in the current set.
    id : int or str or None
        Its id, when ids were given.
    score : float
        Fraction of reference errors at or below its error.
    reconstruction_error : float
    nnk_degree : int or None
        Number of its NNK neighbours in the reference, when known.
    """

    index: int
    id: int | str | None
    score: float
    reconstruction_error: float
    nnk_degree: int | None


@dataclass(frozen=True)
class ClassDrift:
    """How one class moved between the reference and the current set.

    Attributes
    ----------
    label : int or str
    n_reference, n_current : int
        Points of the class in each set (``n_reference`` is None without reference labels).
    reference_error_mean, current_error_mean : float or None
        Mean reconstruction error of the class's points in each set (None for a set with
        no point of the class, or without its labels).
    error_shift : float or None
        ``current_error_mean - reference_error_mean``, when both exist.
    score_mean : float or None
        Mean score of the class's current points.
    centroid_shift : float or None
        Distance between the class's centroids in the two sets, in units of the
        reference class's RMS distance to its centroid, on the vectors the kernel
        compares (unit rows under the cosine kernel). Only :func:`drift_scores`, which
        sees the embeddings, fills it; None when either side lacks the class.
    """

    label: int | str
    n_reference: int | None
    n_current: int
    reference_error_mean: float | None
    current_error_mean: float | None
    error_shift: float | None
    score_mean: float | None
    centroid_shift: float | None


@dataclass(frozen=True)
class DriftResult:
    """Per-point drift scores of the current set, their summaries and the verdict.

    Attributes
    ----------
    score : ScoreStats
    ks : KolmogorovSmirnov
    verdict : {"drift", "no_drift"}
        "drift" when ``ks.p_value < threshold``.
    threshold : float
    drifted : list of DriftedPoint
        The ``top`` highest scores (ties: larger error, then smaller index).
    per_class : list of ClassDrift
        In sorted label order; empty without current labels.
    scores : ndarray of shape (n_current,)
    reference_error : ndarray of shape (n_reference,)
        The reference's leave-one-out reconstruction errors.
    current_error : ndarray of shape (n_current,)
    current_degree : ndarray of shape (n_current,) or None
        NNK degree of each current point against the reference.
    """

    score: ScoreStats
    ks: KolmogorovSmirnov
    verdict: Literal["drift", "no_drift"]
    threshold: float
    drifted: list[DriftedPoint]
    per_class: list[ClassDrift]
    scores: np.ndarray
    reference_error: np.ndarray
    current_error: np.ndarray
    current_degree: np.ndarray | None


def _check_errors(values: object, *, field: str) -> np.ndarray:
    errors = np.asarray(values, dtype=np.float64)
    if errors.ndim != 1 or errors.size == 0:
        raise InvalidInputError(field, f"need a non-empty 1-D array, got shape {errors.shape}")
    if not np.isfinite(errors).all():
        raise InvalidInputError(field, "reconstruction errors must be finite")
    return errors


def check_vector(values: object, n: int, *, field: str) -> np.ndarray:
    array = np.asarray(values)
    if array.shape != (n,):
        raise InvalidInputError(field, f"need shape ({n},), got {array.shape}")
    return array


def check_threshold(threshold: object) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, int | float | np.floating):
        raise InvalidInputError("threshold", f"need a number in (0, 1), got {threshold!r}")
    if not 0.0 < float(threshold) < 1.0:
        raise InvalidInputError("threshold", f"need a number in (0, 1), got {threshold}")
    return float(threshold)


def check_top(top: object) -> int:
    if isinstance(top, bool) or not isinstance(top, int | np.integer) or top < 0:
        raise InvalidInputError("top", f"top must be a non-negative integer, got {top!r}")
    return int(top)


def check_label_kinds(reference_labels: np.ndarray | None, current_labels: np.ndarray) -> None:
    if reference_labels is None:
        return
    if (reference_labels.dtype.kind in "iub") != (current_labels.dtype.kind in "iub"):
        raise InvalidInputError(
            "current_labels",
            f"current labels ({current_labels.dtype}) and reference labels "
            f"({reference_labels.dtype}) must both be integers or both be strings",
        )


def _mean_or_none(sums: np.ndarray, counts: np.ndarray, code: int) -> float | None:
    return float(sums[code] / counts[code]) if counts[code] else None


def _per_class(
    reference_error: np.ndarray,
    current_error: np.ndarray,
    scores: np.ndarray,
    reference_labels: np.ndarray | None,
    current_labels: np.ndarray,
) -> list[ClassDrift]:
    pooled = (
        current_labels
        if reference_labels is None
        else np.concatenate([reference_labels, current_labels])
    )
    classes, codes = encode_labels(pooled)
    current_codes = codes[-current_labels.size :]
    n_current = np.bincount(current_codes, minlength=classes.size)
    current_sums = np.bincount(current_codes, weights=current_error, minlength=classes.size)
    score_sums = np.bincount(current_codes, weights=scores, minlength=classes.size)
    if reference_labels is not None:
        reference_codes = codes[: reference_labels.size]
        n_reference = np.bincount(reference_codes, minlength=classes.size)
        reference_sums = np.bincount(
            reference_codes, weights=reference_error, minlength=classes.size
        )
    per_class = []
    for code in range(classes.size):
        current_mean = _mean_or_none(current_sums, n_current, code)
        reference_mean = (
            None if reference_labels is None else _mean_or_none(reference_sums, n_reference, code)
        )
        per_class.append(
            ClassDrift(
                label=label_of(classes[code]),
                n_reference=None if reference_labels is None else int(n_reference[code]),
                n_current=int(n_current[code]),
                reference_error_mean=reference_mean,
                current_error_mean=current_mean,
                error_shift=(
                    None
                    if current_mean is None or reference_mean is None
                    else current_mean - reference_mean
                ),
                score_mean=_mean_or_none(score_sums, n_current, code),
                centroid_shift=None,
            )
        )
    return per_class


def drift_statistics(
    reference_error: np.ndarray,
    current_error: np.ndarray,
    *,
    current_degree: np.ndarray | None = None,
    reference_labels: np.ndarray | None = None,
    current_labels: np.ndarray | None = None,
    current_ids: np.ndarray | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    top: int = DEFAULT_TOP,
) -> DriftResult:
    """Drift scores, KS test and verdict from reconstruction errors already computed.

    :func:`drift_scores` computes the errors and calls this; a caller that already has
    the reference's analysis (its leave-one-out errors) can call it directly.

    Parameters
    ----------
    reference_error : ndarray of shape (n_reference,)
        Leave-one-out reconstruction errors of the reference points (DESIGN section 1).
    current_error : ndarray of shape (n_current,)
        Out-of-sample reconstruction errors of the current points against the reference.
    current_degree : ndarray of shape (n_current,), optional
        NNK degree of each current point, copied into ``drifted``.
    reference_labels : ndarray of shape (n_reference,), optional
    current_labels : ndarray of shape (n_current,), optional
        With current labels, ``per_class`` lists every class; the reference labels add
        the reference side of each class.
    current_ids : ndarray of shape (n_current,), optional
    threshold : float, optional
        The verdict is "drift" when the KS p-value is below it; default
        :data:`DEFAULT_THRESHOLD` (0.01).
    top : int, optional
        Length of ``drifted`` (default 100).

    Returns
    -------
    DriftResult

    Raises
    ------
    InvalidInputError
        Naming the field: empty or non-finite errors, arrays of the wrong length, labels
        of different kinds, a threshold outside (0, 1), a bad ``top``.

    Notes
    -----
    Score of current point c: s_c = #{i : e_i <= e_c} / n_reference, the reference's
    empirical CDF at e_c. Ties count as at or below, so a current error equal to some
    reference errors takes the top of their range (a current duplicate of a reference
    point, e_c = 0, scores the share of reference errors that are 0). s_c = 1 means an
    error at least the reference's largest; under no drift s_c is close to uniform on
    [0, 1] (mean 0.5, p90 0.9, p99 0.99).

    The global test is ``scipy.stats.ks_2samp(current_error, reference_error)``
    (two-sided, exact for small samples): drift can make errors larger (points off the
    reference) or smaller (points collapsed onto it).
    """
    reference_error = _check_errors(reference_error, field="reference_error")
    current_error = _check_errors(current_error, field="current_error")
    n_current = current_error.size
    threshold = check_threshold(threshold)
    top = check_top(top)
    degree = (
        None
        if current_degree is None
        else check_vector(current_degree, n_current, field="current_degree").astype(np.int64)
    )
    ids = None if current_ids is None else check_vector(current_ids, n_current, field="current_ids")
    labels_reference = (
        None
        if reference_labels is None
        else check_vector(reference_labels, reference_error.size, field="reference_labels")
    )
    labels_current = (
        None
        if current_labels is None
        else check_vector(current_labels, n_current, field="current_labels")
    )

    ranked = np.sort(reference_error)
    scores = np.searchsorted(ranked, current_error, side="right") / ranked.size
    ks = scipy.stats.ks_2samp(current_error, reference_error)
    p90, p99 = np.percentile(scores, [90, 99])

    order = np.lexsort((np.arange(n_current), -current_error, -scores))[:top]
    drifted = [
        DriftedPoint(
            index=int(c),
            id=None if ids is None else label_of(ids[c]),
            score=float(scores[c]),
            reconstruction_error=float(current_error[c]),
            nnk_degree=None if degree is None else int(degree[c]),
        )
        for c in order
    ]
    per_class: list[ClassDrift] = []
    if labels_current is not None:
        check_label_kinds(labels_reference, labels_current)
        per_class = _per_class(
            reference_error, current_error, scores, labels_reference, labels_current
        )
    p_value = float(ks.pvalue)
    return DriftResult(
        score=ScoreStats(mean=float(scores.mean()), p90=float(p90), p99=float(p99)),
        ks=KolmogorovSmirnov(statistic=float(ks.statistic), p_value=p_value),
        verdict="drift" if p_value < threshold else "no_drift",
        threshold=threshold,
        drifted=drifted,
        per_class=per_class,
        scores=scores,
        reference_error=reference_error,
        current_error=current_error,
        current_degree=degree,
    )
