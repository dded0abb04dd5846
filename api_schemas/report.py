"""The JSON report of DESIGN section 3: one entry per embedding set, plus a comparison.

Field names follow DESIGN section 2 exactly; users diff reports across versions.

Every model here is a response (:mod:`api_schemas.base`): a report from a newer server
parses, with the fields this version does not know kept. A new field is a change of the
report's schema: bump ``REPORT_SCHEMA_VERSION`` with it (tests/contract guards this).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidatorFunctionWrapHandler, field_validator

from api_schemas.base import ResponseModel
from api_schemas.compare import CompareReport, DriftReport
from api_schemas.out_of_sample import Baselines, NeuralCollapse, OutOfSample
from api_schemas.params import AnalysisParams, ReportedParams
from api_schemas.quantiles import QuantileStats
from api_schemas.study import Study

REPORT_SCHEMA_VERSION = "1.2"
"""1.1: ``sets[].intrinsic_dimension.seed``, the seed of the intrinsic-dimension sample;
``sets[].out_of_sample``, ``sets[].neural_collapse``, ``sets[].baselines``,
``sets[].loo_error.{nnk_weighted,nnk_unweighted}_ci95``, ``sets[].regime_uncertain`` and
``sets[].graph.nonunique_nodes``;
``study``, a model-size study's intervals over seeds and verdicts per claim.
1.2: ``compare`` (a compare job's per-point NNK-neighbourhood overlap and linear CKA),
``drift`` (a drift job's scores, KS test and verdict) and
``comparison.overlap_consecutive``."""

REPORT_PAGE_CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'"
"""What the report page may load: nothing but its own inline styles. The page declares it
in a ``<meta>``, and the API sends it as a header with the page."""

REPORT_MAP_MAX_POINTS = 3000
"""A set's 2-D map on the report page draws at most this many points (a seeded sample,
the suspects always in)."""

Label = int | str
Regime = Literal["homogeneous", "weighted", "not_interpolating"]


class GraphStats(ResponseModel):
    n_edges_directed: int = Field(description="Non-zero entries of the directed graph W.")
    n_edges_symmetric: int = Field(description="Undirected edges of A (each pair once).")
    duplicate_pairs: int = Field(
        description="Unordered candidate pairs with kernel value 1 (identical points)."
    )
    isolated: int = Field(description="Points with no NNK neighbour.")
    knn_recall: float | None = Field(
        None,
        description=(
            "Measured recall@k of the neighbour search on a sample of queries; 1.0 for exact "
            "search."
        ),
    )
    knn_recall_sample: int | None = Field(None, description="Queries in the recall sample.")
    nonunique_nodes: int | None = Field(
        None,
        description=(
            "Points whose candidate kernel matrix K_S is numerically singular (a Cholesky "
            "pivot at or below 1e-13 of its diagonal: dimension + 1 < k, or duplicates): "
            "their NNK optimum may not be unique, and the solve returns a basic one (support "
            "no larger than the rank of K_S), so degrees are a lower bound there. None: not "
            "measured (a sharded job)."
        ),
    )


class DegreeStats(QuantileStats):
    histogram: list[int] = Field(
        description="histogram[d] = number of points with exactly d NNK neighbours."
    )
    per_class: dict[str, float] | None = Field(None, description="Mean NNK degree per class label.")


class LooError(ResponseModel):
    nnk_weighted: float
    nnk_unweighted: float
    knn_weighted: float
    knn_unweighted: float
    soft_nnk_weighted: float
    nnk_weighted_ci95: list[float] | None = Field(
        None,
        min_length=2,
        max_length=2,
        description="[low, high]: Wilson 95 % interval of nnk_weighted (the set's only).",
    )
    nnk_unweighted_ci95: list[float] | None = Field(
        None,
        min_length=2,
        max_length=2,
        description="[low, high]: Wilson 95 % interval of nnk_unweighted (the set's only).",
    )


class Homogeneity(ResponseModel):
    nnk_mean: float
    knn_mean: float
    pure_patch_fraction: float


class IntrinsicDimension(ResponseModel):
    twonn: float | None = Field(description="TwoNN maximum-likelihood estimate (Facco 2017).")
    mle: float | None = Field(
        description="Levina-Bickel MLE, inverse estimates averaged (MacKay-Ghahramani)."
    )
    mle_k: int
    n_used: int = Field(description="Query points the estimates were computed on.")
    seed: int | None = Field(
        None,
        description=(
            "Seed of the query sample (numpy default_rng, drawn without replacement when "
            "n_used < n_points), so that the estimate can be recomputed; absent from reports "
            "of schema 1.0."
        ),
    )


class LabelSmoothness(ResponseModel):
    cross_class_edge_fraction: float


class ClassMetrics(ResponseModel):
    label: Label
    n: int
    loo_error: LooError
    homogeneity: Homogeneity
    mean_degree: float


class Suspect(ResponseModel):
    index: int
    id: str | None = None
    label: Label
    predicted: Label
    score: float = Field(description="1 - p_i[y_i] under NNK-weighted interpolation.")


class Timings(ResponseModel):
    knn_s: float
    solve_s: float
    metrics_s: float


class SetReport(ResponseModel):
    name: str
    n_points: int
    dim: int
    n_classes: int | None
    graph: GraphStats
    nnk_degree: DegreeStats
    loo_error: LooError | None
    homogeneity: Homogeneity | None
    reconstruction_error: QuantileStats
    intrinsic_dimension: IntrinsicDimension
    label_smoothness: LabelSmoothness | None
    regime: Regime | None
    regime_uncertain: bool | None = Field(
        None,
        description=(
            "True when the Wilson 95 % interval of either NNK LOO error contains the "
            "regime threshold (0.01): the verdict could flip with a few points."
        ),
    )
    per_class: list[ClassMetrics]
    suspects: list[Suspect]
    timings: Timings
    warnings: list[str] = Field(default_factory=list)
    extra: dict[str, float | int | str | None] = Field(
        default_factory=dict,
        description="Facts about where the set came from (a study's model size, accuracy).",
    )
    out_of_sample: OutOfSample | None = Field(
        None, description="The set's query points, interpolated from the set; null without."
    )
    neural_collapse: NeuralCollapse | None = Field(
        None, description="Computed when the set has labels (at least two classes)."
    )
    baselines: Baselines | None = Field(
        None, description="The baselines params.baselines asked for; null when none."
    )


class Comparison(ResponseModel):
    sets: list[str] = Field(description="Set names, in the order given.")
    series: dict[str, list[float | int | str | None]] = Field(
        description="Dotted metric name -> one value per set, in the order of `sets`."
    )
    overlap_consecutive: list[float] | None = Field(
        None,
        description=(
            "When every set has the same number of points (the same points, e.g. layers): "
            "entry s is the mean Jaccard overlap of the points' NNK neighbourhoods in set s "
            "and in set s + 1. Null otherwise."
        ),
    )


class Report(ResponseModel):
    schema_version: str = REPORT_SCHEMA_VERSION
    job_id: str | None = None
    algorithm_version: str
    params: ReportedParams
    sets: list[SetReport]
    comparison: Comparison | None = None
    study: Study | None = Field(
        None,
        description=(
            "A model-size study's summary: per model, t-intervals over the fitted training "
            "seeds; per claim, a verdict and its evidence (api_schemas.study)."
        ),
    )
    compare: CompareReport | None = Field(
        None, description="A compare job's point-by-point comparison of its two sets."
    )
    drift: DriftReport | None = Field(
        None, description="A drift job's scores of the current points against the reference."
    )

    @field_validator("params", mode="wrap")
    @classmethod
    def _known_params_can_run_again(
        cls, value: Any, handler: ValidatorFunctionWrapHandler
    ) -> ReportedParams:
        """Params this version knows parse as AnalysisParams, unknown ones are kept.

        So a report's params can be run again (``analyze(sets, params=report.params)``)
        and equal the params it was computed with; only a newer server's report, naming
        a parameter this version lacks, keeps a ReportedParams.
        """
        params = handler(value)
        if isinstance(params, AnalysisParams) or params.model_extra:
            return params
        return AnalysisParams.model_construct(params.model_fields_set, **dict(params))
