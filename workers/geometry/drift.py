"""Drift of new embeddings against a reference set, measured by NNK reconstruction error.

The reference set's own NNK graph (DESIGN section 1) gives every reference point's
leave-one-out reconstruction error e_i: how well the reference interpolates it from its
other points. Each current point is solved against the reference with the out-of-sample
solve (:mod:`workers.geometry.out_of_sample`), which gives its error the same way. Points
from the reference's distribution get errors distributed as the reference's own; points
off it (a shifted class, a new cluster, a broken preprocessing step) are interpolated
worse, or better. No classifier and no label is needed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import scipy.stats
from pydantic import ValidationError

from api_schemas import AnalysisParams
from jobstate.checks import check_embedding_values
from jobstate.errors import InvalidInputError
from workers.geometry.analysis import build_nnk_graph
from workers.geometry.metrics import encode_labels, label_of
from workers.geometry.out_of_sample import solve_queries

__all__ = [
    "DEFAULT_THRESHOLD",
    "ClassDrift",
    "DriftResult",
    "DriftedPoint",
    "KolmogorovSmirnov",
    "ScoreStats",
    "drift_scores",
    "drift_statistics",
]

Kernel = Literal["cosine", "gaussian"]

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


def _check_vector(values: object, n: int, *, field: str) -> np.ndarray:
    array = np.asarray(values)
    if array.shape != (n,):
        raise InvalidInputError(field, f"need shape ({n},), got {array.shape}")
    return array


def _check_threshold(threshold: object) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, int | float | np.floating):
        raise InvalidInputError("threshold", f"need a number in (0, 1), got {threshold!r}")
    if not 0.0 < float(threshold) < 1.0:
        raise InvalidInputError("threshold", f"need a number in (0, 1), got {threshold}")
    return float(threshold)


def _check_top(top: object) -> int:
    if isinstance(top, bool) or not isinstance(top, int | np.integer) or top < 0:
        raise InvalidInputError("top", f"top must be a non-negative integer, got {top!r}")
    return int(top)


def _check_label_kinds(reference_labels: np.ndarray | None, current_labels: np.ndarray) -> None:
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
    threshold = _check_threshold(threshold)
    top = _check_top(top)
    degree = (
        None
        if current_degree is None
        else _check_vector(current_degree, n_current, field="current_degree").astype(np.int64)
    )
    ids = (
        None if current_ids is None else _check_vector(current_ids, n_current, field="current_ids")
    )
    labels_reference = (
        None
        if reference_labels is None
        else _check_vector(reference_labels, reference_error.size, field="reference_labels")
    )
    labels_current = (
        None
        if current_labels is None
        else _check_vector(current_labels, n_current, field="current_labels")
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
        _check_label_kinds(labels_reference, labels_current)
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


def _check_embeddings(embeddings: object, *, field: str, kernel: Kernel) -> np.ndarray:
    array = embeddings if isinstance(embeddings, np.ndarray) else np.asarray(embeddings)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise InvalidInputError(field, f"need a non-empty 2-D array, got shape {array.shape}")
    if array.dtype.kind not in "fiu":
        raise InvalidInputError(field, f"need numbers, got dtype {array.dtype}")
    try:
        check_embedding_values(array, name=field, kernel=kernel)
    except InvalidInputError as error:
        raise InvalidInputError(field, error.message) from None
    return array


def _centroid_shifts(
    reference: np.ndarray,
    current: np.ndarray,
    reference_labels: np.ndarray,
    current_labels: np.ndarray,
    *,
    kernel: Kernel,
) -> dict[object, float]:
    """Per shared class: |mu_cur - mu_ref| / RMS distance of the reference class to mu_ref."""

    def kernel_vectors(points: np.ndarray) -> np.ndarray:
        vectors = points.astype(np.float64)
        if kernel == "cosine":
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors

    reference_vectors = kernel_vectors(reference)
    current_vectors = kernel_vectors(current)
    shifts: dict[object, float] = {}
    for label in np.intersect1d(reference_labels, current_labels):
        members = reference_vectors[reference_labels == label]
        centre = members.mean(axis=0)
        spread = np.sqrt(((members - centre) ** 2).sum(axis=1).mean())
        moved = np.linalg.norm(current_vectors[current_labels == label].mean(axis=0) - centre)
        shifts[label_of(label)] = float(moved / spread) if spread > 0 else float("inf")
    return shifts


def drift_scores(
    reference: np.ndarray,
    current: np.ndarray,
    *,
    reference_labels: np.ndarray | None = None,
    current_labels: np.ndarray | None = None,
    current_ids: np.ndarray | None = None,
    k: int,
    kernel: Kernel = "cosine",
    sigma: float | None = None,
    ignore_identical: bool = False,
    solver: Literal["exact", "authors"] = "exact",
    device: Literal["cpu", "cuda"] = "cpu",
    n_threads: int | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    top: int = DEFAULT_TOP,
) -> DriftResult:
    """Score how far each current point drifted from a reference set, and test the whole.

    Parameters
    ----------
    reference : ndarray of shape (n_reference, dim)
        The reference embeddings (e.g. training data); finite.
    current : ndarray of shape (n_current, dim)
        The embeddings to check (e.g. production data); different points, same space.
    reference_labels : ndarray of shape (n_reference,), optional
    current_labels : ndarray of shape (n_current,), optional
        Labels give ``per_class`` (see :func:`drift_statistics`); both integers or both
        strings.
    current_ids : ndarray of shape (n_current,), optional
        Copied into ``drifted``.
    k : int
        Candidates per point, ``1 <= k <= n_reference - 1`` (a reference point's
        candidates are the other reference points).
    kernel : {"cosine", "gaussian"}, optional
    sigma : float, optional
        Fixed gaussian bandwidth; default per query, its k-th candidate's distance / 3.
    ignore_identical : bool, optional
    solver : {"exact", "authors"}, optional
    device : {"cpu", "cuda"}, optional
        Where the solves run (already resolved).
    n_threads : int, optional
        CPU threads for the solves; default one per core.
    threshold : float, optional
        KS p-value below which the verdict is "drift"; default 0.01
        (:data:`DEFAULT_THRESHOLD`, chosen so that a fresh sample of the reference's
        distribution is flagged well under 10 % of the time).
    top : int, optional
        Length of ``drifted`` (default 100).

    Returns
    -------
    DriftResult

    Raises
    ------
    InvalidInputError
        Naming the field: bad shapes, non-finite values, zero vectors under cosine, k
        out of range, labels of the wrong length or of different kinds, a bad threshold.

    Notes
    -----
    The reference's errors are those of its own NNK graph (DESIGN section 1: point i's
    candidates are its k nearest other reference points, so the errors are leave-one-out),
    searched exactly: an approximate search would raise them slightly, and the KS test
    would read that as drift. Each current point's candidates are its k nearest reference
    points (:func:`~workers.geometry.out_of_sample.solve_queries`), with the same kernel
    and solver, so for a current set drawn like the reference the two errors are alike
    in distribution (a current point sees n_reference candidates' worth of density, a
    reference point n_reference - 1). Scores, the KS test and the verdict are those of
    :func:`drift_statistics`.
    """
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise InvalidInputError("params.k", f"k must be an integer, got {k!r}")
    if kernel not in ("cosine", "gaussian"):
        raise InvalidInputError(
            "params.kernel", f"kernel must be 'cosine' or 'gaussian', got {kernel!r}"
        )
    if device not in ("cpu", "cuda"):
        raise InvalidInputError("params.device", f"device must be 'cpu' or 'cuda', got {device!r}")
    reference = _check_embeddings(reference, field="reference", kernel=kernel)
    current = _check_embeddings(current, field="current", kernel=kernel)
    if current.shape[1] != reference.shape[1]:
        raise InvalidInputError(
            "current",
            f"current points have {current.shape[1]} dimensions, the reference "
            f"{reference.shape[1]}",
        )
    if not 1 <= k <= reference.shape[0] - 1:
        raise InvalidInputError(
            "params.k",
            f"k must lie in 1..{reference.shape[0] - 1} (the reference points but one), got {k}",
        )
    try:
        # The engine's own limits (k <= 1024, sigma only for gaussian, ...), checked once.
        params = AnalysisParams(
            k=int(k),
            kernel=kernel,
            sigma=sigma,
            ignore_identical=ignore_identical,
            solver=solver,
            knn="exact",
            device=device,
        )
    except ValidationError as error:
        raise InvalidInputError("params", str(error)) from None
    threshold = _check_threshold(threshold)
    top = _check_top(top)
    labels_reference = (
        None
        if reference_labels is None
        else _check_vector(reference_labels, reference.shape[0], field="reference_labels")
    )
    labels_current = (
        None
        if current_labels is None
        else _check_vector(current_labels, current.shape[0], field="current_labels")
    )
    if labels_current is not None:
        _check_label_kinds(labels_reference, labels_current)

    workers = n_threads or os.cpu_count() or 1
    reference32 = np.ascontiguousarray(reference, dtype=np.float32)
    own = build_nnk_graph(reference32, params=params, device=device, n_threads=workers)
    queries = solve_queries(
        reference32,
        current,
        k=int(k),
        kernel=kernel,
        sigma=sigma,
        ignore_identical=ignore_identical,
        solver=solver,
        device=device,
        n_threads=workers,
    )
    result = drift_statistics(
        own.reconstruction_error,
        queries.reconstruction_error,
        current_degree=(queries.weights > 0).sum(axis=1),
        reference_labels=labels_reference,
        current_labels=labels_current,
        current_ids=current_ids,
        threshold=threshold,
        top=top,
    )
    if labels_reference is None or labels_current is None:
        return result
    shifts = _centroid_shifts(
        reference32,
        np.asarray(current, dtype=np.float32),
        labels_reference,
        labels_current,
        kernel=kernel,
    )
    return replace(
        result,
        per_class=[
            replace(entry, centroid_shift=shifts.get(entry.label)) for entry in result.per_class
        ],
    )
