"""The report sections of compare and drift jobs, from an analysis and its sets.

A compare job analyses its two sets as a sets job would, then compares their NNK
neighbourhoods point by point (:mod:`workers.geometry.compare`). A drift job analyses its
reference set, then solves the current points against it and ranks their errors among
the reference's own leave-one-out errors (:mod:`workers.geometry.drift`). The service's
worker and the local CLI (``nnkgeo compare``, ``nnkgeo drift``) both call
:func:`add_comparison_sections`, so the sections are the same wherever they were made.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from api_schemas import AnalysisParams
from api_schemas.compare import (
    ChangedPoint,
    ClassDrift,
    ClassOverlap,
    CompareReport,
    DriftedPoint,
    DriftReport,
    DriftScoreStats,
    KolmogorovSmirnovTest,
    Overlap,
    OverlapStats,
)
from jobstate.errors import InvalidInputError
from workers.geometry import compare
from workers.geometry.analysis import Analysis, EmbeddingSet, resolve_device
from workers.geometry.compare import linear_cka, neighbourhood_overlap
from workers.geometry.drift import drift_scores
from workers.geometry.drift_statistics import DEFAULT_THRESHOLD, DEFAULT_TOP
from workers.geometry.metrics import quantile_stats

__all__ = ["add_comparison_sections", "compare_section", "drift_section"]

# The core's field names, as a drift request names them.
_DRIFT_FIELDS = {
    "current": "drift.current.embeddings",
    "current_labels": "drift.current.labels",
    "current_ids": "drift.current.ids",
    "reference": "drift.reference.embeddings",
    "reference_labels": "drift.reference.labels",
}


def _overlap_stats(stats: compare.OverlapStats) -> OverlapStats:
    return OverlapStats(mean=stats.mean, median=stats.median, p10=stats.p10, p90=stats.p90)


def compare_section(
    set_a: EmbeddingSet,
    set_b: EmbeddingSet,
    analysis: Analysis,
    *,
    top: int = DEFAULT_TOP,
) -> CompareReport:
    """Per-point overlap of the NNK neighbourhoods of the same points in two analysed sets.

    Parameters
    ----------
    set_a, set_b : EmbeddingSet
        The same points in the same order; set a's labels give ``per_class`` and its ids
        name the ``changed`` points.
    analysis : Analysis
        Holds both sets' directed graphs W (``analysis.sets[name].directed``).
    top : int, optional
        Length of ``changed`` (default 100).

    Returns
    -------
    CompareReport
        Jaccard and weighted overlaps (:func:`~workers.geometry.compare.neighbourhood_overlap`)
        and linear CKA of the two embeddings (:func:`~workers.geometry.compare.linear_cka`).

    Raises
    ------
    InvalidInputError
        ``compare.b.embeddings`` when the sets hold different numbers of points,
        ``compare.b.ids`` when both have ids and they differ.
    """
    n_a, n_b = int(set_a.embeddings.shape[0]), int(set_b.embeddings.shape[0])
    if n_a != n_b:
        raise InvalidInputError(
            "compare.b.embeddings",
            f"compare.b has {n_b} points and compare.a {n_a}; both sets must hold the same "
            "points, in the same order",
        )
    if (
        set_a.ids is not None
        and set_b.ids is not None
        and not np.array_equal(np.asarray(set_a.ids), np.asarray(set_b.ids))
    ):
        raise InvalidInputError(
            "compare.b.ids",
            "compare.a and compare.b have different ids: a compare job needs the same points "
            "in the same order in both sets",
        )
    overlap = neighbourhood_overlap(
        analysis.sets[set_a.name].directed,
        analysis.sets[set_b.name].directed,
        labels=set_a.labels,
        ids=set_a.ids,
        top=top,
    )
    return CompareReport(
        a=set_a.name,
        b=set_b.name,
        n_points=n_a,
        overlap=Overlap(
            jaccard=_overlap_stats(overlap.jaccard_stats),
            weighted=_overlap_stats(overlap.weighted_stats),
        ),
        per_class=[
            ClassOverlap(label=c.label, n=c.n, jaccard=c.jaccard_mean, weighted=c.weighted_mean)
            for c in overlap.per_class
        ],
        changed=[
            ChangedPoint(
                index=p.index,
                id=p.id,
                jaccard=p.jaccard,
                weighted=p.weighted,
                neighbours_a=p.neighbours_a,
                neighbours_b=p.neighbours_b,
            )
            for p in overlap.changed
        ],
        cka_linear=linear_cka(set_a.embeddings, set_b.embeddings),
    )


def drift_section(
    reference: EmbeddingSet,
    current: EmbeddingSet,
    analysis: Analysis,
    *,
    params: AnalysisParams,
    threshold: float = DEFAULT_THRESHOLD,
    n_threads: int | None = None,
    top: int = DEFAULT_TOP,
) -> DriftReport:
    """Score the current points against the analysed reference set.

    Parameters
    ----------
    reference : EmbeddingSet
        The reference set, analysed in ``analysis`` with exact search (its leave-one-out
        errors are ``analysis.sets[reference.name].reconstruction_error``).
    current : EmbeddingSet
        The current points (embeddings, optional labels and ids).
    analysis : Analysis
    params : AnalysisParams
        The parameters the reference was analysed with; the current points are solved
        with the same.
    threshold : float, optional
        KS p-value below which the verdict is "drift" (default 0.01).
    n_threads : int, optional
        CPU threads for the solve; default one per core.
    top : int, optional
        Length of ``drifted`` (default 100).

    Returns
    -------
    DriftReport

    Raises
    ------
    InvalidInputError
        Naming the request's field (``drift.current.embeddings``, ``.labels``, ``.ids``).
    """
    reference_error = analysis.sets[reference.name].reconstruction_error
    if reference_error is None:
        raise ValueError(f"the analysis of {reference.name!r} kept no reconstruction errors")
    if params.knn == "approximate":
        raise InvalidInputError(
            "params.knn", "drift compares exact leave-one-out errors; use knn='exact'"
        )
    device, _ = resolve_device(params.device)
    try:
        result = drift_scores(
            reference.embeddings,
            current.embeddings,
            reference_labels=reference.labels,
            current_labels=current.labels,
            current_ids=current.ids,
            k=params.k,
            kernel=params.kernel,
            sigma=params.sigma,
            ignore_identical=params.ignore_identical,
            solver=params.solver,
            device=device,  # type: ignore[arg-type]
            n_threads=n_threads,
            threshold=threshold,
            top=top,
            reference_error=reference_error,
        )
    except InvalidInputError as error:
        raise InvalidInputError(
            _DRIFT_FIELDS.get(error.field, error.field), error.message
        ) from None
    assert result.current_degree is not None
    return DriftReport(
        reference=reference.name,
        current=current.name,
        n_reference=int(result.reference_error.size),
        n_current=int(result.current_error.size),
        score=DriftScoreStats(mean=result.score.mean, p90=result.score.p90, p99=result.score.p99),
        ks=KolmogorovSmirnovTest(statistic=result.ks.statistic, p_value=result.ks.p_value),
        verdict=result.verdict,
        threshold=result.threshold,
        current_reconstruction_error=quantile_stats(result.current_error),
        current_nnk_degree=quantile_stats(result.current_degree),
        drifted=[
            DriftedPoint(
                index=p.index,
                id=p.id,
                score=p.score,
                reconstruction_error=p.reconstruction_error,
                nnk_degree=int(p.nnk_degree if p.nnk_degree is not None else 0),
            )
            for p in result.drifted
        ],
        per_class=[
            ClassDrift(
                label=c.label,
                n_reference=c.n_reference,
                n_current=c.n_current,
                reference_error_mean=c.reference_error_mean,
                current_error_mean=c.current_error_mean,
                error_shift=c.error_shift,
                score_mean=c.score_mean,
                centroid_shift=_finite_or_none(c.centroid_shift),
            )
            for c in result.per_class
        ],
    )


def _finite_or_none(value: float | None) -> float | None:
    # A reference class of one point has no spread: its shift has no unit (JSON has no inf).
    return value if value is None or np.isfinite(value) else None


def add_comparison_sections(
    analysis: Analysis,
    sets: Sequence[EmbeddingSet],
    *,
    params: AnalysisParams,
    compare_sets: bool = False,
    current: EmbeddingSet | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    n_threads: int | None = None,
) -> Analysis:
    """The analysis with its report's ``compare`` or ``drift`` section; else unchanged.

    Parameters
    ----------
    analysis : Analysis
        Of ``sets``, in their order.
    sets : sequence of EmbeddingSet
        A compare job's two sets (a, b), or a drift job's reference alone.
    params : AnalysisParams
    compare_sets : bool, optional
        Add ``compare`` (sets[0] against sets[1]).
    current : EmbeddingSet, optional
        Add ``drift``: these points against sets[0].
    threshold : float, optional
        The drift verdict's KS p-value threshold.
    n_threads : int, optional
        CPU threads for the drift solve.
    """
    report = analysis.report
    if compare_sets:
        report = report.model_copy(update={"compare": compare_section(sets[0], sets[1], analysis)})
    if current is not None:
        section = drift_section(
            sets[0], current, analysis, params=params, threshold=threshold, n_threads=n_threads
        )
        report = report.model_copy(update={"drift": section})
    return replace(analysis, report=report)
