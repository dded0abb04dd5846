"""Report sections of ``compare`` and ``drift`` jobs (report schema 1.2).

``compare``: two sets of the same points, compared point by point through their NNK
neighbourhoods, with linear CKA beside. ``drift``: current points scored against a
reference set by their out-of-sample reconstruction error. Both are optional in
:class:`~api_schemas.report.Report` (null for other jobs), so older reports still parse.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from api_schemas.base import ResponseModel
from api_schemas.quantiles import QuantileStats

Label = int | str
PointId = int | str | None


class OverlapStats(ResponseModel):
    """Mean, median and 10th / 90th percentiles of a per-point overlap."""

    mean: float
    median: float
    p10: float
    p90: float


class Overlap(ResponseModel):
    jaccard: OverlapStats = Field(
        description=(
            "|N_a(i) & N_b(i)| / |N_a(i) | N_b(i)| over the NNK neighbours of each point "
            "(1 for a point isolated in both)."
        )
    )
    weighted: OverlapStats = Field(
        description=(
            "sum_j min(p_a[i, j], p_b[i, j]), p the NNK weights of each row normalised to "
            "sum 1: one minus the total-variation distance of the two neighbour "
            "distributions."
        )
    )


class ClassOverlap(ResponseModel):
    label: Label
    n: int
    jaccard: float = Field(description="Mean Jaccard overlap of the class's points.")
    weighted: float = Field(description="Mean weighted overlap of the class's points.")


class ChangedPoint(ResponseModel):
    index: int = Field(description="Row of the point in both sets.")
    id: PointId = Field(None, description="The point's id, when set a has ids.")
    jaccard: float
    weighted: float
    neighbours_a: list[int] = Field(description="NNK neighbours in a, by weight descending.")
    neighbours_b: list[int] = Field(description="NNK neighbours in b, by weight descending.")


class CompareReport(ResponseModel):
    """How the NNK neighbourhoods of the same points differ between two sets."""

    a: str = Field(description="Name of the first set (in `sets`).")
    b: str = Field(description="Name of the second set (in `sets`).")
    n_points: int
    overlap: Overlap
    per_class: list[ClassOverlap] = Field(
        description="Mean overlaps per class of set a's labels; empty without labels."
    )
    changed: list[ChangedPoint] = Field(
        description=(
            "The 100 points of lowest Jaccard overlap (ties: lower weighted overlap, then "
            "smaller index), lowest first."
        )
    )
    cka_linear: float = Field(
        description="Linear CKA of the two embeddings (Kornblith et al. 2019), for reference."
    )


class DriftScoreStats(ResponseModel):
    """Of the per-point scores: each the share of reference errors at or below its error."""

    mean: float
    p90: float
    p99: float


class KolmogorovSmirnovTest(ResponseModel):
    statistic: float = Field(
        description="Two-sample KS statistic of current against reference errors, in [0, 1]."
    )
    p_value: float


class DriftedPoint(ResponseModel):
    index: int = Field(description="Row of the point in the current set.")
    id: PointId = Field(None, description="Its id, when the current set has ids.")
    score: float
    reconstruction_error: float
    nnk_degree: int


class ClassDrift(ResponseModel):
    label: Label
    n_reference: int | None = Field(description="Null without reference labels.")
    n_current: int
    reference_error_mean: float | None
    current_error_mean: float | None
    error_shift: float | None = Field(
        description="current_error_mean - reference_error_mean, when both exist."
    )
    score_mean: float | None
    centroid_shift: float | None = Field(
        description=(
            "Distance between the class's centroids in the two sets, in units of the "
            "reference class's RMS distance to its centroid (unit rows under cosine)."
        )
    )


class DriftReport(ResponseModel):
    """Current points against a reference set's own leave-one-out errors."""

    reference: str = Field(description="Name of the reference set (in `sets`).")
    current: str = Field(description="Name of the current points (not a set of the report).")
    n_reference: int
    n_current: int
    score: DriftScoreStats = Field(
        description="Under no drift a score is about uniform: mean 0.5, p90 0.9, p99 0.99."
    )
    ks: KolmogorovSmirnovTest
    verdict: Literal["drift", "no_drift"] = Field(
        description="'drift' when ks.p_value < threshold."
    )
    threshold: float
    current_reconstruction_error: QuantileStats
    current_nnk_degree: QuantileStats
    drifted: list[DriftedPoint] = Field(
        description="The 100 highest scores (ties: larger error, then smaller index)."
    )
    per_class: list[ClassDrift] = Field(
        description="Per class of the current labels, sorted; empty without them."
    )
