"""The ``study`` section of a study's report: held-out queries, intervals over seeds, verdicts.

After :func:`workers.geometry.analyze` has analysed a study's sets (the training points
of each model, seed and layer), :func:`add_study_section`:

1. solves each set's held-out points as queries against its training graph
   (:func:`workers.geometry.out_of_sample.out_of_sample_metrics`, the analysis's own
   parameters) and puts the result in the set's ``out_of_sample`` section;
2. summarises each model (and layer) over its *fitted* seeds: the headline metrics of
   :data:`api_schemas.study.STUDY_METRICS`, each with its Student-t 95 % interval;
3. judges the two claims of :data:`api_schemas.study.CLAIM_RULES` with the pure rules of
   :mod:`workers.geometry.statistics`, per layer.

Unfitted models (``extra.fitted == 0``) are kept in ``sets`` and flagged, but enter no
interval and no verdict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from api_schemas import AnalysisParams, SetReport
from api_schemas.study import (
    CLAIM_RULES,
    STUDY_METRICS,
    Study,
    StudyClaim,
    StudyMetric,
    StudyModelSummary,
)
from workers.geometry import Analysis, EmbeddingSet
from workers.geometry.analysis import resolve_device
from workers.geometry.metrics import encode_labels, predicted_classes
from workers.geometry.out_of_sample import OutOfSampleMetrics, out_of_sample_metrics
from workers.geometry.report import assemble_report
from workers.geometry.statistics import (
    PairedCorrectness,
    pure_patches_grow_verdict,
    t_interval,
    unweighted_catches_up_verdict,
)
from workers.models.study import StudyEmbeddingSet

__all__ = ["add_study_section", "loo_correctness", "metric_value", "study_section"]


@dataclass(frozen=True)
class _Member:
    """One (model, seed, layer) of the study: its set, report and held-out analysis."""

    embedding_set: StudyEmbeddingSet
    report: SetReport
    training: PairedCorrectness
    held_out: OutOfSampleMetrics


def loo_correctness(directed: Any, labels: np.ndarray) -> PairedCorrectness:
    """Per-point correctness of the NNK-weighted and -unweighted LOO predictions.

    Parameters
    ----------
    directed : scipy.sparse.csr_matrix of shape (n, n)
        The directed NNK graph W of the set (row i: theta_i on i's NNK neighbours).
    labels : ndarray of shape (n,)

    Returns
    -------
    PairedCorrectness
        The rules of DESIGN section 2 (argmax of the class scores, ties to the smallest
        class), as :func:`workers.geometry.metrics.point_metrics` applies them: their
        means are the report's ``loo_error.nnk_weighted`` and ``nnk_unweighted``.
    """
    classes, codes = encode_labels(labels)
    n_points = directed.shape[0]
    degree = np.diff(directed.indptr)
    width = max(int(degree.max(initial=0)), 1)
    # Each row's NNK neighbours, padded with zero weights (which add nothing to a class).
    column = np.arange(width)[None, :] < degree[:, None]
    candidates = np.zeros((n_points, width), dtype=np.int64)
    weights = np.zeros((n_points, width))
    candidates[column] = directed.indices
    weights[column] = directed.data
    weighted = predicted_classes(candidates, weights, codes, int(classes.size))
    unweighted = predicted_classes(
        candidates, (weights > 0).astype(np.float64), codes, classes.size
    )
    return PairedCorrectness(weighted=weighted == codes, unweighted=unweighted == codes)


def _out_of_sample_section(held_out: OutOfSampleMetrics) -> dict[str, Any]:
    """The ``sets[].out_of_sample`` section of issue 14, as a plain dict."""
    test = held_out.mcnemar_weighted_vs_unweighted
    return {
        "n": held_out.n,
        "error": vars(held_out.error),
        "nnk_degree": held_out.nnk_degree.model_dump(),
        "reconstruction_error": held_out.reconstruction_error.model_dump(),
        "mcnemar": {"weighted_vs_unweighted": {"b": test.b, "c": test.c, "p_value": test.p_value}},
    }


def metric_value(report: SetReport, path: str) -> float | None:
    """The value at a dotted path of a set's report (``"loo_error.nnk_weighted"``)."""
    value: Any = report.model_dump()
    for key in path.split("."):
        if not isinstance(value, dict) or value.get(key) is None:
            return None
        value = value[key]
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _summary(values: Sequence[float]) -> StudyMetric:
    if not values:
        return StudyMetric(mean=None, ci95=None, values=[])
    interval = t_interval(np.asarray(values, dtype=np.float64))
    ci95 = None if interval.low is None else [interval.low, interval.high]
    return StudyMetric(mean=interval.mean, ci95=ci95, values=list(values))


def _pooled(members: Sequence[_Member], kind: str) -> PairedCorrectness:
    parts = [member.training if kind == "train" else member.held_out for member in members]
    if kind == "train":
        weighted = [part.weighted for part in parts]
        unweighted = [part.unweighted for part in parts]
    else:
        weighted = [part.correct_nnk_weighted for part in parts]
        unweighted = [part.correct_nnk_unweighted for part in parts]
    return PairedCorrectness(
        weighted=np.concatenate(weighted), unweighted=np.concatenate(unweighted)
    )


def _claims(
    layer: str, by_model: dict[str, list[_Member]], seeds: Sequence[int]
) -> list[StudyClaim]:
    """Both claims on one layer, over the models (smallest first) with a fitted seed."""
    fitted = {
        model: [member for member in members if member.embedding_set.fitted]
        for model, members in by_model.items()
    }
    sizes = [model for model, members in fitted.items() if members]
    left_out = [model for model, members in fitted.items() if not members]
    claims = []
    if len(sizes) < 2:
        reason = {
            "reason": "fewer than two model sizes have a fitted seed",
            "sizes": sizes,
            "left_out_unfitted": left_out,
        }
        return [
            StudyClaim(id=claim, layer=layer, verdict="not_supported", rule=rule, evidence=reason)
            for claim, rule in CLAIM_RULES.items()
        ]
    # Rows: sizes; columns: seeds; NaN where that seed's model did not fit.
    fractions = np.full((len(sizes), len(seeds)), np.nan)
    for row, model in enumerate(sizes):
        for member in fitted[model]:
            value = metric_value(member.report, "homogeneity.pure_patch_fraction")
            fractions[row, list(seeds).index(member.embedding_set.seed)] = value
    verdict, evidence = pure_patches_grow_verdict(fractions, sizes=sizes)
    claims.append(
        StudyClaim(
            id="pure_patches_grow",
            layer=layer,
            verdict=verdict,
            rule=CLAIM_RULES["pure_patches_grow"],
            evidence={**evidence, "seeds": list(seeds), "left_out_unfitted": left_out},
        )
    )
    smallest, largest = fitted[sizes[0]], fitted[sizes[-1]]
    verdict, evidence = unweighted_catches_up_verdict(
        train=(_pooled(smallest, "train"), _pooled(largest, "train")),
        held_out=(_pooled(smallest, "held_out"), _pooled(largest, "held_out")),
    )
    claims.append(
        StudyClaim(
            id="unweighted_catches_up",
            layer=layer,
            verdict=verdict,
            rule=CLAIM_RULES["unweighted_catches_up"],
            evidence={
                **evidence,
                "sizes": {"smallest": sizes[0], "largest": sizes[-1]},
                "fitted_seeds": {
                    "smallest": [member.embedding_set.seed for member in smallest],
                    "largest": [member.embedding_set.seed for member in largest],
                },
                "left_out_unfitted": left_out,
            },
        )
    )
    return claims


def study_section(
    sets: Sequence[StudyEmbeddingSet],
    analysis: Analysis,
    *,
    params: AnalysisParams,
) -> tuple[Study, dict[str, SetReport]]:
    """The study section, and each set's report with its ``out_of_sample`` filled.

    Parameters
    ----------
    sets : sequence of StudyEmbeddingSet
        From :func:`workers.models.study.run_study`, in its order (size, seed, layer).
    analysis : Analysis
        :func:`workers.geometry.analyze` of exactly these sets.
    params : AnalysisParams
        The analysis's parameters; the held-out queries are solved with the same k,
        kernel, sigma, solver and device.

    Returns
    -------
    study : Study
    set_reports : dict of str to SetReport
        Each set's report with ``out_of_sample`` (its held-out points as queries
        against its training points).
    """
    device, _ = resolve_device(params.device)
    members: list[_Member] = []
    set_reports: dict[str, SetReport] = {}
    for embedding_set in sets:
        result = analysis.sets[embedding_set.name]
        held_out = out_of_sample_metrics(
            embedding_set.embeddings,
            embedding_set.labels,
            embedding_set.held_out_embeddings,
            embedding_set.held_out_labels,
            k=min(params.k, embedding_set.embeddings.shape[0]),
            kernel=params.kernel,
            sigma=params.sigma,
            ignore_identical=params.ignore_identical,
            solver=params.solver,
            device=device,
        )
        report = SetReport.model_validate(
            {**result.report.model_dump(), "out_of_sample": _out_of_sample_section(held_out)}
        )
        set_reports[embedding_set.name] = report
        members.append(
            _Member(
                embedding_set=embedding_set,
                report=report,
                training=loo_correctness(result.directed, embedding_set.labels),
                held_out=held_out,
            )
        )
    seeds = list(dict.fromkeys(member.embedding_set.seed for member in members))
    layers = list(dict.fromkeys(member.embedding_set.layer for member in members))
    several_layers = len(layers) > 1
    summaries: list[StudyModelSummary] = []
    claims: list[StudyClaim] = []
    for layer in layers:
        by_model: dict[str, list[_Member]] = {}
        for member in members:
            if member.embedding_set.layer == layer:
                by_model.setdefault(member.embedding_set.model, []).append(member)
        for model, model_members in by_model.items():
            fitted = [member for member in model_members if member.embedding_set.fitted]
            metrics = {}
            for path in STUDY_METRICS:
                values = [metric_value(member.report, path) for member in fitted]
                metrics[path] = _summary([value for value in values if value is not None])
            summaries.append(
                StudyModelSummary(
                    name=f"{model}.{layer}" if several_layers else model,
                    model=model,
                    layer=layer,
                    parameters=int(model_members[0].report.extra["parameters"] or 0),
                    seeds=len(model_members),
                    seed_values=[member.embedding_set.seed for member in model_members],
                    fitted_seeds=[member.embedding_set.seed for member in fitted],
                    sets=[member.embedding_set.name for member in model_members],
                    metrics=metrics,
                )
            )
        claims += _claims(layer, by_model, seeds)
    # Models in size order, each model's layers in depth order.
    order = {model: position for position, model in enumerate(dict.fromkeys(s.model for s in sets))}
    summaries.sort(key=lambda summary: order[summary.model])
    return Study(models=summaries, claims=claims), set_reports


def add_study_section(
    analysis: Analysis, sets: Sequence[EmbeddingSet], *, params: AnalysisParams
) -> Analysis:
    """The analysis with its report's ``study`` section, when ``sets`` come from a study.

    Any other sets (an embed or analyze job) give the analysis back unchanged.
    """
    if not sets or not all(isinstance(s, StudyEmbeddingSet) for s in sets):
        return analysis
    study, set_reports = study_section(
        [s for s in sets if isinstance(s, StudyEmbeddingSet)], analysis, params=params
    )
    ids_of = {s.name: s.ids for s in sets}
    # Assembled again, so that the comparison runs over the out-of-sample figures too.
    report = assemble_report(
        [set_reports.get(entry.name, entry) for entry in analysis.report.sets],
        params=params,
        job_id=analysis.report.job_id,
        graphs=[analysis.sets[entry.name].directed for entry in analysis.report.sets],
        point_ids=[ids_of.get(entry.name) for entry in analysis.report.sets],
    ).model_copy(update={"study": study})
    return Analysis(report=report, sets=analysis.sets)
