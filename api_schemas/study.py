"""The ``study`` section of a report: a model-size study's intervals and verdicts.

A study (``POST /v1/jobs`` with ``kind: "study"``, or ``nnkgeo study``) trains every
model once per training seed; each (model, seed, layer) is one of the report's sets. This
section summarises them per model: the headline metrics with their Student-t 95 %
intervals over the *fitted* seeds, and a verdict on each claim of Shekkizhar & Ortega
(GSP 2023) that the study tests, with the numbers behind it. A model that did not meet
its stopping rule (``extra.fitted == 0``) is flagged by its absence from
``fitted_seeds`` and left out of every interval and verdict.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from api_schemas.base import ResponseModel

__all__ = [
    "CLAIM_RULES",
    "STUDY_METRICS",
    "Study",
    "StudyClaim",
    "StudyMetric",
    "StudyModelSummary",
]

STUDY_METRICS: tuple[str, ...] = (
    "homogeneity.pure_patch_fraction",
    "loo_error.nnk_weighted",
    "loo_error.nnk_unweighted",
    "loo_error.knn_unweighted",
    "out_of_sample.error.nnk_weighted",
    "out_of_sample.error.nnk_unweighted",
    "out_of_sample.error.knn_unweighted",
    "nnk_degree.mean",
    "out_of_sample.nnk_degree.mean",
    "extra.test_accuracy",
)
"""The headline metrics, each named by its dotted path in a set's report. The
``out_of_sample`` ones are the held-out split's points solved as queries against the
training graph (the ``sets[].out_of_sample`` section of issue 14)."""

CLAIM_RULES: dict[str, str] = {
    "pure_patches_grow": (
        "The pure-patch fraction grows with model size. For each pair of sizes, the 95 % "
        "Student-t interval of the paired difference (larger minus smaller, paired by "
        "training seed, fitted seeds only) must lie above 0. Supported when it does at every "
        "consecutive size step; partly when it does from the smallest to the largest size "
        "but not at every step; not supported otherwise. An interval touching 0, or a pair "
        "with fewer than two fitted seeds, does not exclude 0. Sizes with no fitted seed are "
        "left out."
    ),
    "unweighted_catches_up": (
        "NNK-unweighted interpolation catches up with NNK-weighted as models grow. McNemar's "
        "exact test on the pooled points (every fitted seed's points together) compares the "
        "two rules at the smallest and at the largest size, separately on training points "
        "(leave-one-out predictions) and on held-out points (queries against the training "
        "graph). On each kind of points the status is 'caught_up' when the difference is "
        "significant at the smallest size (p <= 0.05) and not at the largest (p > 0.05), "
        "'narrowed' when it stays significant but the gap (unweighted minus weighted error) "
        "shrank significantly (the 95 % Wald interval of smallest gap minus largest gap lies "
        "above 0), 'neither' otherwise. Supported when both kinds of points caught up; "
        "partly when each caught up or narrowed; not supported otherwise."
    ),
}
"""Each claim's rule, as the report states it beside the verdict."""


class StudyMetric(ResponseModel):
    mean: float | None = Field(description="Mean over the fitted seeds; null when no seed fitted.")
    ci95: list[float] | None = Field(
        description=(
            "[low, high]: the Student-t 95 % interval of the mean over the fitted seeds "
            "(mean +- t_{n-1} s / sqrt(n)); null below two fitted seeds."
        )
    )
    values: list[float] = Field(
        description="One value per fitted seed, in the order of `fitted_seeds`."
    )


class StudyModelSummary(ResponseModel):
    name: str = Field(
        description="The model (and layer, when several are read): `mlp-d2-w32`, `cnn-x0.5.pool`."
    )
    model: str = Field(description="The model alone, without the layer.")
    layer: str = Field(description="The layer read.")
    parameters: int = Field(description="Trainable parameters of the model.")
    seeds: int = Field(description="Training seeds run (fitted or not).")
    seed_values: list[int] = Field(description="The training seeds, in the order run.")
    fitted_seeds: list[int] = Field(
        description=(
            "The seeds whose model met its stopping rule (training accuracy 1.0, or the "
            "target loss). Only these enter the intervals and the verdicts."
        )
    )
    sets: list[str] = Field(description="The set of each seed, in the order of `seed_values`.")
    metrics: dict[str, StudyMetric] = Field(
        description="Headline metric (dotted path in a set's report) -> its summary."
    )


class StudyClaim(ResponseModel):
    id: str = Field(description="'pure_patches_grow' or 'unweighted_catches_up'.")
    layer: str = Field(description="The layer the claim was judged on.")
    verdict: Literal["supported", "partly", "not_supported"]
    rule: str = Field(description="How the verdict is decided (see CLAIM_RULES).")
    evidence: dict[str, Any] = Field(
        description=(
            "The numbers behind the verdict. pure_patches_grow: `steps` (per consecutive "
            "size pair: from, to, mean_difference, ci95, n_pairs) and `overall` (smallest to "
            "largest). unweighted_catches_up: `train` and `held_out` separately, each with "
            "`smallest` and `largest` (n, error_weighted, error_unweighted, gap, McNemar b, "
            "c, p_value, significant), `narrowing` and `status`; `alpha`; `sizes`."
        )
    )


class Study(ResponseModel):
    confidence: float = Field(0.95, description="Level of every interval and test.")
    metrics: list[str] = Field(
        default_factory=lambda: list(STUDY_METRICS),
        description="The headline metrics summarised per model, in display order.",
    )
    models: list[StudyModelSummary] = Field(
        description="One entry per model (and layer), smallest model first."
    )
    claims: list[StudyClaim] = Field(
        description=(
            "A verdict per claim and layer: 'supported', 'partly' or 'not_supported', "
            "by the rules of CLAIM_RULES, stated in each claim's `rule`."
        )
    )
