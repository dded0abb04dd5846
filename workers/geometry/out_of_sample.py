"""Out-of-sample NNK: each query point interpolated from its k nearest reference points.

The queries are separate from the reference (a held-out split, or new data), so a
reference point identical to a query is a legitimate candidate, and takes all the
weight (DESIGN section 1, duplicates). Candidates, kernels and the solve are those of
the in-sample graph; only the candidate search differs (queries against the reference,
nothing excluded). The predictions follow the four rules of the LOO errors (DESIGN
section 2), with the reference labels as the interpolated values.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import ValidationError

from api_schemas import AnalysisParams, QuantileStats
from jobstate.checks import check_embedding_values
from jobstate.errors import InvalidInputError
from jobstate.memory_budget import MAX_SOLVE_BLOCK, plan_metrics_block
from workers.geometry.candidates import Metric, query_candidates
from workers.geometry.metrics import class_scores, encode_labels, quantile_stats
from workers.geometry.nnk_common import IDENTICAL_TOLERANCE
from workers.geometry.nnk_solve import solve_rows
from workers.geometry.statistics import McNemarResult, mcnemar_paired

__all__ = [
    "OutOfSampleErrors",
    "OutOfSampleMetrics",
    "QueryGraph",
    "out_of_sample_metrics",
    "query_candidates",
    "solve_queries",
]

Kernel = Literal["cosine", "gaussian"]


@dataclass(frozen=True)
class QueryGraph:
    """The NNK solve of every query point against the reference.

    Attributes
    ----------
    candidate_indices : ndarray of shape (n_queries, k), int64
        Reference rows of each query's candidates, best first (ties: smaller row first).
    weights : ndarray of shape (n_queries, k), float64
        NNK weights theta_i (zero off the NNK neighbours).
    query_kernel : ndarray of shape (n_queries, k), float64
        K(q_i, x_j) of each candidate.
    valid : bool ndarray of shape (n_queries, k)
        Candidates that count (``ignore_identical`` drops those identical to the query).
    reconstruction_error : ndarray of shape (n_queries,), float64
        e_i = 1 - 2 theta_i' k_i + theta_i' K_S theta_i.
    """

    candidate_indices: np.ndarray
    weights: np.ndarray
    query_kernel: np.ndarray
    valid: np.ndarray
    reconstruction_error: np.ndarray


@dataclass(frozen=True)
class OutOfSampleErrors:
    """Error rates of the four prediction rules of DESIGN section 2 on the queries."""

    nnk_weighted: float
    nnk_unweighted: float
    knn_weighted: float
    knn_unweighted: float


@dataclass(frozen=True)
class OutOfSampleMetrics:
    """What ``sets[].out_of_sample`` reports, and the per-query arrays behind it.

    Attributes
    ----------
    n : int
        Number of query points.
    error : OutOfSampleErrors
    nnk_degree : QuantileStats
        Of the number of NNK neighbours per query (mean, median, p10, p90, max).
    reconstruction_error : QuantileStats
    mcnemar_weighted_vs_unweighted : McNemarResult
        ``b``: queries NNK-weighted gets right and NNK-unweighted wrong; ``c``: the reverse.
    correct_nnk_weighted, correct_nnk_unweighted, correct_knn_weighted, correct_knn_unweighted
        Bool ndarrays of shape (n,): per query, whether each rule predicts its label; the
        input of McNemar tests pooled over seeds.
    predicted : ndarray of shape (n,)
        The NNK-weighted prediction of each query, as a label.
    graph : QueryGraph
    """

    n: int
    error: OutOfSampleErrors
    nnk_degree: QuantileStats
    reconstruction_error: QuantileStats
    mcnemar_weighted_vs_unweighted: McNemarResult
    correct_nnk_weighted: np.ndarray
    correct_nnk_unweighted: np.ndarray
    correct_knn_weighted: np.ndarray
    correct_knn_unweighted: np.ndarray
    predicted: np.ndarray
    graph: QueryGraph


def _metric_of(kernel: Kernel) -> Metric:
    # Both kernels decrease with the metric's distance: the k largest kernel values are
    # the k nearest points (DESIGN section 1).
    return "cosine" if kernel == "cosine" else "euclidean"


def _check_pair(embeddings: np.ndarray, labels: np.ndarray, *, field: str, kernel: Kernel) -> None:
    if embeddings.ndim != 2 or embeddings.shape[0] == 0 or embeddings.shape[1] == 0:
        raise InvalidInputError(
            f"{field}.embeddings", f"need a non-empty 2-D array, got shape {embeddings.shape}"
        )
    if embeddings.dtype.kind not in "fiu":
        raise InvalidInputError(
            f"{field}.embeddings", f"need numbers, got dtype {embeddings.dtype}"
        )
    if labels.shape != (embeddings.shape[0],):
        raise InvalidInputError(
            f"{field}.labels",
            f"need shape ({embeddings.shape[0]},) to match the embeddings, got {labels.shape}",
        )
    try:
        check_embedding_values(embeddings, name=field, kernel=kernel)
    except InvalidInputError as error:
        raise InvalidInputError(f"{field}.embeddings", error.message) from None


def _validate(
    reference: np.ndarray,
    reference_labels: np.ndarray,
    queries: np.ndarray,
    query_labels: np.ndarray,
    *,
    k: int,
    kernel: Kernel,
) -> None:
    _check_pair(reference, reference_labels, field="reference", kernel=kernel)
    _check_pair(queries, query_labels, field="query", kernel=kernel)
    if queries.shape[1] != reference.shape[1]:
        raise InvalidInputError(
            "query.embeddings",
            f"queries have {queries.shape[1]} dimensions, the reference {reference.shape[1]}",
        )
    if not 1 <= k <= reference.shape[0]:
        raise InvalidInputError(
            "params.k", f"k must lie in 1..{reference.shape[0]} (the reference points), got {k}"
        )
    numeric = {labels.dtype.kind in "iub" for labels in (reference_labels, query_labels)}
    if len(numeric) != 1:
        # A string label is never an integer class: the queries could not be scored.
        raise InvalidInputError(
            "query.labels",
            f"query labels ({query_labels.dtype}) and reference labels "
            f"({reference_labels.dtype}) must both be integers or both be strings",
        )


def solve_queries(
    reference: np.ndarray,
    queries: np.ndarray,
    *,
    k: int,
    kernel: Kernel = "cosine",
    sigma: float | None = None,
    ignore_identical: bool = False,
    solver: Literal["exact", "authors"] = "exact",
    device: Literal["cpu", "cuda"] = "cpu",
    n_threads: int | None = None,
) -> QueryGraph:
    """Candidates and NNK weights of every query against the reference (inputs trusted).

    The parameters are those of :func:`out_of_sample_metrics`, which validates them.
    """
    params = AnalysisParams(
        k=k, kernel=kernel, sigma=sigma, ignore_identical=ignore_identical, solver=solver
    )
    metric = _metric_of(kernel)
    candidate_indices = query_candidates(reference, queries, k, metric=metric)
    # The solve reads queries and candidates as rows of one array; the queries go after
    # the reference, so candidate rows need no shift. One float32 copy of both sets.
    combined = np.concatenate(
        [np.asarray(reference, dtype=np.float32), np.asarray(queries, dtype=np.float32)]
    )
    weights, query_kernel, reconstruction_error = solve_rows(
        combined,
        candidate_indices,
        first=reference.shape[0],
        params=params,
        device=device,
        block=MAX_SOLVE_BLOCK,
        workers=1 if device == "cuda" else (n_threads or os.cpu_count() or 1),
        progress=lambda fraction: None,
    )
    valid = (
        query_kernel < 1.0 - IDENTICAL_TOLERANCE
        if ignore_identical
        else np.ones_like(weights, dtype=bool)
    )
    return QueryGraph(
        candidate_indices=candidate_indices,
        weights=weights,
        query_kernel=query_kernel,
        valid=valid,
        reconstruction_error=reconstruction_error,
    )


def _predict(
    candidate_indices: np.ndarray,
    weights: np.ndarray,
    reference_codes: np.ndarray,
    n_classes: int,
) -> np.ndarray:
    """argmax_c sum_j w_ij [y_j = c] per query (ties: smallest class), a block at a time."""
    predicted = np.empty(candidate_indices.shape[0], dtype=np.int64)
    block = plan_metrics_block(n_classes)
    for start in range(0, candidate_indices.shape[0], block):
        stop = min(start + block, candidate_indices.shape[0])
        scores = class_scores(
            candidate_indices[start:stop], weights[start:stop], reference_codes, n_classes
        )
        predicted[start:stop] = scores.argmax(axis=1)
    return predicted


def out_of_sample_metrics(
    reference: np.ndarray,
    reference_labels: np.ndarray,
    queries: np.ndarray,
    query_labels: np.ndarray,
    *,
    k: int,
    kernel: Kernel = "cosine",
    sigma: float | None = None,
    ignore_identical: bool = False,
    solver: Literal["exact", "authors"] = "exact",
    device: Literal["cpu", "cuda"] = "cpu",
    n_threads: int | None = None,
) -> OutOfSampleMetrics:
    """NNK interpolation of held-out points from a labelled reference set.

    Parameters
    ----------
    reference : ndarray of shape (n_reference, dim)
        The points of the graph (e.g. the training split); finite.
    reference_labels : ndarray of shape (n_reference,)
    queries : ndarray of shape (n_queries, dim)
        The points to predict (e.g. the held-out split); finite.
    query_labels : ndarray of shape (n_queries,)
        Integers if the reference labels are integers, strings if they are strings.
    k : int
        Candidates per query, ``1 <= k <= n_reference``.
    kernel : {"cosine", "gaussian"}, optional
        As in the in-sample analysis; it also picks the neighbour metric (cosine
        similarity, or Euclidean distance).
    sigma : float, optional
        Fixed gaussian bandwidth; default per query, its k-th candidate's distance / 3.
    ignore_identical : bool, optional
        Drop reference points identical to the query from its candidates (default: keep
        them; one then takes all the weight).
    solver : {"exact", "authors"}, optional
    device : {"cpu", "cuda"}, optional
        Where the solve runs (already resolved; the search runs on the CPU).
    n_threads : int, optional
        CPU threads for the solve; default one per core.

    Returns
    -------
    OutOfSampleMetrics

    Raises
    ------
    InvalidInputError
        On bad shapes, non-finite values, zero vectors under cosine, k out of range,
        or labels of different kinds.

    Notes
    -----
    Query i's candidates S_i are its k nearest reference points, and
    theta_i = argmin_{theta >= 0} 1/2 theta' K_S theta - k_i' theta (DESIGN section 1).
    The rules of DESIGN section 2, with reference labels y_j and classes in sorted order
    (argmax ties go to the smallest): ``nnk_weighted`` predicts argmax sum_j theta_ij y_j;
    ``nnk_unweighted`` weighs the NNK neighbours (theta_ij > 0) equally;
    ``knn_weighted`` weighs the k (valid) candidates by K(q_i, x_j); ``knn_unweighted``
    is their majority vote. Predictions range over the reference's classes: a query with
    no NNK neighbour predicts the smallest, and a query whose label the reference lacks
    is always predicted wrongly.
    """
    reference = reference if isinstance(reference, np.ndarray) else np.asarray(reference)
    queries = queries if isinstance(queries, np.ndarray) else np.asarray(queries)
    reference_labels = np.asarray(reference_labels)
    query_labels = np.asarray(query_labels)
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise InvalidInputError("params.k", f"k must be an integer, got {k!r}")
    if kernel not in ("cosine", "gaussian"):
        raise InvalidInputError(
            "params.kernel", f"kernel must be 'cosine' or 'gaussian', got {kernel!r}"
        )
    if sigma is not None and (kernel != "gaussian" or not 0.0 < sigma < np.inf):
        raise InvalidInputError(
            "params.sigma",
            f"sigma must be a positive number, for kernel='gaussian' only; got {sigma}",
        )
    if solver not in ("exact", "authors"):
        raise InvalidInputError(
            "params.solver", f"solver must be 'exact' or 'authors', got {solver!r}"
        )
    if device not in ("cpu", "cuda"):
        raise InvalidInputError("params.device", f"device must be 'cpu' or 'cuda', got {device!r}")
    _validate(reference, reference_labels, queries, query_labels, k=int(k), kernel=kernel)
    try:
        # The engine's own limits on the parameters (k <= 1024, ...), checked once here.
        AnalysisParams(k=int(k), kernel=kernel, sigma=sigma, solver=solver)
    except ValidationError as error:
        raise InvalidInputError("params", str(error)) from None

    graph = solve_queries(
        reference,
        queries,
        k=int(k),
        kernel=kernel,
        sigma=sigma,
        ignore_identical=ignore_identical,
        solver=solver,
        device=device,
        n_threads=n_threads,
    )
    classes, reference_codes = encode_labels(reference_labels)
    n_classes = int(classes.size)
    # A query's class among the reference's; -1 (matching no prediction) for a label the
    # reference lacks.
    position = np.minimum(np.searchsorted(classes, query_labels), n_classes - 1)
    own = np.where(classes[position] == query_labels, position, -1)
    neighbour = graph.weights > 0

    def correct(candidate_weights: np.ndarray) -> np.ndarray:
        return (
            _predict(graph.candidate_indices, candidate_weights, reference_codes, n_classes) == own
        )

    predicted = _predict(graph.candidate_indices, graph.weights, reference_codes, n_classes)
    correct_nnk_weighted = predicted == own
    correct_nnk_unweighted = correct(neighbour.astype(np.float64))
    correct_knn_weighted = correct(np.where(graph.valid, graph.query_kernel, 0.0))
    correct_knn_unweighted = correct(graph.valid.astype(np.float64))
    return OutOfSampleMetrics(
        n=int(queries.shape[0]),
        error=OutOfSampleErrors(
            nnk_weighted=float(1.0 - correct_nnk_weighted.mean()),
            nnk_unweighted=float(1.0 - correct_nnk_unweighted.mean()),
            knn_weighted=float(1.0 - correct_knn_weighted.mean()),
            knn_unweighted=float(1.0 - correct_knn_unweighted.mean()),
        ),
        nnk_degree=quantile_stats(neighbour.sum(axis=1)),
        reconstruction_error=quantile_stats(graph.reconstruction_error),
        mcnemar_weighted_vs_unweighted=mcnemar_paired(correct_nnk_weighted, correct_nnk_unweighted),
        correct_nnk_weighted=correct_nnk_weighted,
        correct_nnk_unweighted=correct_nnk_unweighted,
        correct_knn_weighted=correct_knn_weighted,
        correct_knn_unweighted=correct_knn_unweighted,
        predicted=classes[predicted],
        graph=graph,
    )
