"""Report sections beyond the in-sample graph: held-out queries, neural collapse, baselines.

Each is optional in :class:`~api_schemas.report.SetReport` (null when not computed), so
that reports of schema 1.0 still parse.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from api_schemas.base import ResponseModel
from api_schemas.quantiles import QuantileStats


class OutOfSampleError(ResponseModel):
    """Error rates of the four prediction rules of docs/ALGORITHM.md on the query points."""

    nnk_weighted: float
    nnk_unweighted: float
    knn_weighted: float
    knn_unweighted: float


class McNemarTest(ResponseModel):
    b: int = Field(description="Points the first rule predicts right and the second wrongly.")
    c: int = Field(description="Points the second rule predicts right and the first wrongly.")
    p_value: float = Field(
        description="Exact two-sided binomial test of b against b + c trials at 1/2."
    )


class OutOfSampleMcNemar(ResponseModel):
    weighted_vs_unweighted: McNemarTest = Field(
        description="NNK-weighted (first) against NNK-unweighted (second), paired by query."
    )


class OutOfSample(ResponseModel):
    """Each query point solved against its k nearest reference points (the set's own).

    A reference point identical to a query is a candidate like any other, and takes all
    of the query's weight. ``error`` and ``mcnemar`` are null when the set or the queries
    have no labels.
    """

    n: int = Field(description="Query points.")
    error: OutOfSampleError | None = None
    nnk_degree: QuantileStats = Field(description="NNK neighbours per query.")
    reconstruction_error: QuantileStats
    mcnemar: OutOfSampleMcNemar | None = None


class NeuralCollapse(ResponseModel):
    nc1: float | None = Field(
        description=(
            "tr(Sigma_W pinv(Sigma_B)) / C on the raw embeddings (Papyan, Han & Donoho "
            "2020); null when every class has the same mean."
        )
    )


class LinearProbe(ResponseModel):
    error: float = Field(
        description=(
            "Error of a logistic regression (C=1, max_iter=1000) on standardised embeddings."
        )
    )
    method: Literal["held_out", "cross_validation"] = Field(
        description="Scored on the query points, or by 5-fold stratified cross-validation."
    )


class Baselines(ResponseModel):
    linear_probe: LinearProbe | None = None
