"""Analysis parameters: the knobs of DESIGN section 1 and 2, validated once here.

Two models share the fields, because a request and a report treat an unknown parameter
differently (see :mod:`api_schemas.base`): :class:`AnalysisParams` is what can be run,
and refuses one; :class:`ReportedParams` is what a report records, and keeps one (a
newer server may have run with a parameter this version does not know).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

KnnChoice = Literal["auto", "exact", "approximate"]
BaselineName = Literal["linear_probe"]

# knn="auto" searches exactly below this many points. Exact search costs O(N^2 d): at 200k
# x 128 it already takes minutes on a few cores, while IVF-Flat at recall 0.95 is several
# times faster (docs/BENCHMARKS_KNN.md); below it, exact search is quick enough and its
# recall is 1.
APPROXIMATE_KNN_FROM = 200_000

# Most kNN candidates per point the engine accepts (the bound of `k`, named in its message).
MAX_K = 1024


def resolve_knn(
    knn: KnnChoice, n_points: int, *, approximate_from: int = APPROXIMATE_KNN_FROM
) -> Literal["exact", "approximate"]:
    """The search that ``knn`` means for a set of ``n_points`` points.

    Parameters
    ----------
    knn : {"auto", "exact", "approximate"}
        The requested search (:attr:`ReportedParams.knn`).
    n_points : int
        Points in the set (every shard of a set resolves the same way).
    approximate_from : int, optional
        Smallest set that "auto" searches approximately; default
        :data:`APPROXIMATE_KNN_FROM`.

    Returns
    -------
    {"exact", "approximate"}
    """
    if knn == "auto":
        return "approximate" if n_points >= approximate_from else "exact"
    return knn


class ReportedParams(BaseModel):
    """The parameters a report was computed with, as the report records them.

    The fields of AnalysisParams, with the same checks; unknown fields (a parameter of a
    newer server) are kept.
    """

    # Parsing a report gives an AnalysisParams when it names no unknown parameter, and
    # this class otherwise (Report's validator of `params`).
    model_config = ConfigDict(extra="allow", frozen=True)

    k: int = Field(
        50,
        ge=1,
        le=MAX_K,
        description=(
            f"Number of kNN candidates per point: at most {MAX_K}, and less than the number "
            "of points of every set."
        ),
    )
    kernel: Literal["cosine", "gaussian"] = Field(
        "cosine", description="Similarity kernel; both satisfy K(x, x) = 1."
    )
    sigma: float | None = Field(
        None,
        gt=0,
        description=(
            "Fixed gaussian bandwidth. Default: per query, the distance to its k-th "
            "candidate divided by 3."
        ),
    )
    knn: KnnChoice = Field(
        "auto",
        description=(
            "Candidate search. 'exact': a flat index; 'approximate': a faiss IVF-Flat index "
            "whose nprobe is raised until the recall@k measured on 1,000 sampled queries "
            "reaches 0.95; 'auto': exact below 200,000 points, approximate from there. "
            "The report gives the measured recall either way (1.0 for exact)."
        ),
    )
    solver: Literal["exact", "authors"] = Field(
        "exact",
        description=(
            "'exact' satisfies the KKT conditions; 'authors' is the prune-only solver of "
            "the PyNNK code, for comparison with published numbers only."
        ),
    )
    symmetrize: Literal["nnk", "max", "min", "mean"] = Field(
        "nnk", description="Rule deriving the symmetric graph A from the directed W."
    )
    ignore_identical: bool = Field(
        False, description="Drop candidates identical to the query before solving."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where to run kNN and the solve; 'auto' uses a GPU if present."
    )
    suspects_top: int = Field(100, ge=0, le=10_000, description="Length of the suspects list.")
    id_sample: int = Field(
        2_000,
        ge=100,
        description=(
            "Intrinsic dimension is estimated from at most this many query points, "
            "searched against all points (a separate Euclidean search: its cost is "
            "id_sample / N of the kNN search)."
        ),
    )
    seed: int = Field(0, description="Seed for every sampled estimate (recall, ID sample).")
    # A report keeps a baseline this version does not know (a newer server's); only
    # AnalysisParams, what can be run, restricts the names.
    baselines: list[str] = Field(
        default=[],
        description=(
            "Opt-in baselines, reported under sets[].baselines (labelled sets only). "
            "'linear_probe': a logistic regression on standardised embeddings, scored on "
            "the set's query points, or by 5-fold cross-validation without them. Off by "
            "default so that the default analysis stays as fast as the engine."
        ),
    )

    @field_validator("k", mode="before")
    @classmethod
    def _k_within_max(cls, k: object) -> object:
        # Before pydantic's own bound, whose "less than or equal to 1024" says neither
        # what 1024 is nor that k must also stay below each set's number of points.
        if isinstance(k, int | float) and not isinstance(k, bool) and k > MAX_K:
            raise ValueError(
                f"k={k:g} is more than {MAX_K}, the most kNN candidates per point nnkgeo "
                f"solves for; use k <= {MAX_K} (and k less than the number of points N of "
                "every set)"
            )
        return k

    @model_validator(mode="after")
    def _sigma_only_for_gaussian(self) -> ReportedParams:
        if self.sigma is not None and self.kernel != "gaussian":
            raise ValueError("sigma applies only to kernel='gaussian'; remove it or set kernel")
        return self


class AnalysisParams(ReportedParams):
    """Parameters of one NNK analysis; the same for every set of a job.

    Unknown fields are refused (a typo must not silently fall back to a default).
    """

    # The fields are ReportedParams'; only the answer to an unknown one differs. A job's
    # params, the engine and the command-line flags take this class.
    model_config = ConfigDict(extra="forbid", frozen=True)

    baselines: list[BaselineName] = Field(
        default=[],
        description=ReportedParams.model_fields["baselines"].description,
    )

    @field_validator("baselines")
    @classmethod
    def _baselines_once_each(cls, baselines: list[BaselineName]) -> list[BaselineName]:
        # Sorted and unique, so that the same request always has the same cache key.
        return sorted(set(baselines))
