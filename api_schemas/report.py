"""The JSON report of DESIGN section 3: one entry per embedding set, plus a comparison.

Field names follow DESIGN section 2 exactly; users diff reports across versions.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from api_schemas.params import AnalysisParams

REPORT_SCHEMA_VERSION = "1.0"

Label = int | str
Regime = Literal["homogeneous", "weighted", "not_interpolating"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GraphStats(_Model):
    n_edges_directed: int = Field(description="Non-zero entries of the directed graph W.")
    n_edges_symmetric: int = Field(description="Undirected edges of A (each pair once).")
    duplicate_pairs: int = Field(
        description="Unordered candidate pairs with kernel value 1 (identical points)."
    )
    isolated: int = Field(description="Points with no NNK neighbour.")
    knn_recall: float | None = Field(
        None, description="Measured recall@k of the approximate search on a sample."
    )
    knn_recall_sample: int | None = Field(None, description="Queries in the recall sample.")


class QuantileStats(_Model):
    mean: float
    median: float
    p10: float
    p90: float
    max: float


class DegreeStats(QuantileStats):
    histogram: list[int] = Field(
        description="histogram[d] = number of points with exactly d NNK neighbours."
    )
    per_class: dict[str, float] | None = Field(None, description="Mean NNK degree per class label.")


class LooError(_Model):
    nnk_weighted: float
    nnk_unweighted: float
    knn_weighted: float
    knn_unweighted: float
    soft_nnk_weighted: float


class Homogeneity(_Model):
    nnk_mean: float
    knn_mean: float
    pure_patch_fraction: float


class IntrinsicDimension(_Model):
    twonn: float | None = Field(description="TwoNN maximum-likelihood estimate (Facco 2017).")
    mle: float | None = Field(
        description="Levina-Bickel MLE, inverse estimates averaged (MacKay-Ghahramani)."
    )
    mle_k: int
    n_used: int = Field(description="Query points the estimates were computed on.")


class LabelSmoothness(_Model):
    cross_class_edge_fraction: float


class ClassMetrics(_Model):
    label: Label
    n: int
    loo_error: LooError
    homogeneity: Homogeneity
    mean_degree: float


class Suspect(_Model):
    index: int
    id: str | None = None
    label: Label
    predicted: Label
    score: float = Field(description="1 - p_i[y_i] under NNK-weighted interpolation.")


class Timings(_Model):
    knn_s: float
    solve_s: float
    metrics_s: float


class SetReport(_Model):
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
    per_class: list[ClassMetrics]
    suspects: list[Suspect]
    timings: Timings
    warnings: list[str] = Field(default_factory=list)
    extra: dict[str, float | int | str | None] = Field(
        default_factory=dict,
        description="Facts about where the set came from (a study's model size, accuracy).",
    )


class Comparison(_Model):
    sets: list[str] = Field(description="Set names, in the order given.")
    series: dict[str, list[float | int | str | None]] = Field(
        description="Dotted metric name -> one value per set, in the order of `sets`."
    )


class Report(_Model):
    schema_version: str = REPORT_SCHEMA_VERSION
    job_id: str | None = None
    algorithm_version: str
    params: AnalysisParams
    sets: list[SetReport]
    comparison: Comparison | None = None
