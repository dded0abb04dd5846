"""One analysis end to end: validate, search candidates, solve, assemble, measure.

This is the only module that knows the order of the steps; each step is a pure
function of its own module. The service's worker task and the local CLI both call
:func:`analyze`, so a report is the same number for number wherever it was made.

On a CPU the exact solve runs compiled (:mod:`workers.geometry.nnk_kernel`, numba) and
nothing imports torch; torch is imported only for a CUDA device, for the "authors"
solver, or when numba is not installed.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from api_schemas import (
    AnalysisParams,
    GraphStats,
    IntrinsicDimension,
    LabelSmoothness,
    Report,
    SetReport,
    Timings,
)
from api_schemas.out_of_sample import (
    Baselines,
    LinearProbe,
    McNemarTest,
    NeuralCollapse,
    OutOfSample,
    OutOfSampleError,
    OutOfSampleMcNemar,
)
from api_schemas.params import resolve_knn
from jobstate.checks import check_embedding_values, check_query_shapes, check_set_shapes
from jobstate.errors import InvalidInputError
from jobstate.memory_budget import MAX_SOLVE_BLOCK, SHARD_ALIGNMENT, plan_solve
from jobstate.version import ALGORITHM_VERSION
from workers.geometry import metrics
from workers.geometry.approximate_search import ApproximateIndex, build_approximate_index
from workers.geometry.candidates import Metric, find_candidates, prepare_vectors
from workers.geometry.graph import directed_graph, symmetric_graph
from workers.geometry.intrinsic_dimension import (
    IntrinsicDimensionEstimate,
    estimate_intrinsic_dimension,
)
from workers.geometry.neural_collapse import nc1
from workers.geometry.nnk_common import IDENTICAL_TOLERANCE
from workers.geometry.nnk_solve import solve_rows
from workers.geometry.out_of_sample import out_of_sample_metrics, solve_queries
from workers.geometry.report import assemble_report
from workers.geometry.statistics import regime_uncertain, wilson_interval

ProgressCallback = Callable[[str, float], None]
"""Called as ``progress(stage, fraction)``; may raise AnalysisCanceled to stop the run."""

# A GPU wants big batches; its memory holds 32k (k x k) float64 systems with ease.
_GPU_SOLVE_BLOCK = 32_768
# A GPU driver's device node: without it torch can see no GPU, and is not imported.
_NVIDIA_DEVICE = "/dev/nvidiactl"
# Rough share of a set's run time per stage (exact kNN dominates on a CPU), so that
# progress fractions advance evenly.
_STAGE_SHARE = {"knn": (0.0, 0.5), "solve": (0.5, 0.35), "metrics": (0.85, 0.15)}

__all__ = [
    "ALGORITHM_VERSION",
    "SHARD_ALIGNMENT",
    "Analysis",
    "EmbeddingSet",
    "ProgressCallback",
    "SetAnalysis",
    "analyze",
    "analyze_set",
    "check_set_shapes",
    "measure_out_of_sample",
    "validate_set",
]


@dataclass(frozen=True)
class EmbeddingSet:
    """One set of embeddings to analyse (a layer, or a model's output).

    ``query_embeddings`` (and ``query_labels``) are points outside the set, each
    interpolated from its k nearest points of the set (``sets[].out_of_sample``).
    """

    name: str
    embeddings: np.ndarray
    labels: np.ndarray | None = None
    ids: np.ndarray | None = None
    extra: dict[str, float | int | str | None] = field(default_factory=dict)
    query_embeddings: np.ndarray | None = None
    query_labels: np.ndarray | None = None


@dataclass(frozen=True)
class NNKGraph:
    """The NNK solve of a run of points (all of a set, or one shard's rows).

    Row r of every array belongs to point ``first_row + r``; candidate indices are
    global point indices.
    """

    candidate_indices: np.ndarray
    weights: np.ndarray
    query_kernel: np.ndarray
    valid: np.ndarray
    reconstruction_error: np.ndarray
    knn_recall: float | None
    knn_recall_sample: int | None
    knn_s: float
    solve_s: float
    first_row: int = 0
    # Rows whose K_S is numerically singular (NNK optimum maybe not unique); None: unknown.
    rank_deficient: np.ndarray | None = None

    @classmethod
    def concatenate(cls, shards: Sequence[NNKGraph]) -> NNKGraph:
        """Join shards that cover consecutive rows into the graph of the whole set."""
        ordered = sorted(shards, key=lambda shard: shard.first_row)
        expected = 0
        for shard in ordered:
            if shard.first_row != expected:
                raise ValueError(f"shards leave rows {expected}..{shard.first_row} uncovered")
            expected += shard.weights.shape[0]
        return cls(
            candidate_indices=np.concatenate([s.candidate_indices for s in ordered]),
            weights=np.concatenate([s.weights for s in ordered]),
            query_kernel=np.concatenate([s.query_kernel for s in ordered]),
            valid=np.concatenate([s.valid for s in ordered]),
            reconstruction_error=np.concatenate([s.reconstruction_error for s in ordered]),
            knn_recall=ordered[0].knn_recall,
            knn_recall_sample=ordered[0].knn_recall_sample,
            knn_s=sum(s.knn_s for s in ordered),
            solve_s=sum(s.solve_s for s in ordered),
            rank_deficient=None
            if any(s.rank_deficient is None for s in ordered)
            else np.concatenate([s.rank_deficient for s in ordered]),
        )


@dataclass(frozen=True)
class SetAnalysis:
    report: SetReport
    directed: sp.csr_matrix
    symmetric: sp.csr_matrix
    # Each point's leave-one-out reconstruction error (a drift job ranks current points
    # among them); None where the analysis did not keep them.
    reconstruction_error: np.ndarray | None = None


@dataclass(frozen=True)
class Analysis:
    report: Report
    sets: dict[str, SetAnalysis]


def validate_set(embedding_set: EmbeddingSet, *, params: AnalysisParams) -> None:
    """Every check of the boundary: shapes, dtypes, finiteness, zero vectors under cosine."""
    embeddings, labels, ids = embedding_set.embeddings, embedding_set.labels, embedding_set.ids
    check_set_shapes(
        name=embedding_set.name,
        embeddings_shape=embeddings.shape,
        embeddings_dtype=str(embeddings.dtype),
        labels_shape=None if labels is None else labels.shape,
        labels_dtype=None if labels is None else str(labels.dtype),
        ids_shape=None if ids is None else ids.shape,
        params=params,
    )
    check_embedding_values(embeddings, name=embedding_set.name, kernel=params.kernel)
    queries, query_labels = embedding_set.query_embeddings, embedding_set.query_labels
    if queries is None:
        if query_labels is not None:
            raise InvalidInputError(
                f"sets[{embedding_set.name}].query.labels", "query labels need query embeddings"
            )
        return
    check_query_shapes(
        name=embedding_set.name,
        dim=int(embeddings.shape[1]),
        set_has_labels=labels is not None,
        embeddings_shape=queries.shape,
        embeddings_dtype=str(queries.dtype),
        labels_shape=None if query_labels is None else query_labels.shape,
        labels_dtype=None if query_labels is None else str(query_labels.dtype),
    )
    if query_labels is not None and labels is not None:
        numeric = {np.asarray(y).dtype.kind in "iub" for y in (labels, query_labels)}
        if len(numeric) != 1:
            # A string label is never an integer class: the queries could not be scored.
            raise InvalidInputError(
                f"sets[{embedding_set.name}].query.labels",
                f"query labels ({query_labels.dtype}) and the set's labels ({labels.dtype}) "
                "must both be integers or both be strings",
            )
    try:
        check_embedding_values(queries, name=embedding_set.name, kernel=params.kernel)
    except InvalidInputError as error:
        raise InvalidInputError(
            f"sets[{embedding_set.name}].query.embeddings", error.message
        ) from None


def _cuda_available() -> bool:
    """Whether torch sees a GPU; torch is imported only when a driver and torch are there."""
    if not os.path.exists(_NVIDIA_DEVICE) or importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def resolve_device(requested: str) -> tuple[str, str | None]:
    """The device to run on, and a warning when a GPU was asked for but is absent.

    Deciding ``"auto"`` (or ``"cpu"``) on a machine without a GPU imports no torch.
    """
    if requested == "cpu":
        return "cpu", None
    has_cuda = _cuda_available()
    if requested == "cuda" and not has_cuda:
        return "cpu", "device 'cuda' was requested but no GPU is present; ran on the CPU"
    if requested == "auto":
        return ("cuda" if has_cuda else "cpu"), None
    return requested, None


def metric_of(params: AnalysisParams) -> Metric:
    """The neighbour metric whose nearest points are the kernel's largest values."""
    return "cosine" if params.kernel == "cosine" else "euclidean"


def build_approximate_index_for(
    embeddings: np.ndarray, *, params: AnalysisParams
) -> ApproximateIndex:
    """The approximate index of a set, built once and shared by the shards of a job."""
    metric = metric_of(params)
    return build_approximate_index(
        prepare_vectors(embeddings, metric=metric), params.k, metric=metric, seed=params.seed
    )


def build_nnk_graph(
    embeddings: np.ndarray,
    *,
    params: AnalysisParams,
    device: str = "cpu",
    progress: ProgressCallback | None = None,
    n_threads: int | None = None,
    rows: tuple[int, int] | None = None,
    index: ApproximateIndex | None = None,
    memory_budget_bytes: int | None = None,
) -> NNKGraph:
    """Candidates, kernels and the NNK solve for the points of one set.

    Parameters
    ----------
    embeddings : ndarray of shape (n_points, dim), float32
    params : AnalysisParams
    device : {"cpu", "cuda"}
    progress : callable, optional
        ``progress(stage, fraction)`` with stages "knn" and "solve".
    n_threads : int, optional
        CPU threads solving blocks side by side; default one per core.
    rows : (start, stop), optional
        Only these points' neighbourhoods (a shard of a job); candidates are still
        searched among all points. Shards that start at multiples of
        :data:`SHARD_ALIGNMENT` give bit-identical results to an unsharded run.
    index : ApproximateIndex, optional
        For ``knn="approximate"``: a prebuilt index (shared by shards).
    memory_budget_bytes : int, optional
        On the CPU, solve blocks (and, as a last resort, fewer threads) are chosen so that
        the whole task fits this (:func:`jobstate.memory_budget.plan_solve`); blocks
        are powers of two, so results do not depend on it. Default: blocks of
        :data:`~jobstate.memory_budget.MAX_SOLVE_BLOCK` rows.

    Raises
    ------
    MemoryBudgetError
        When even one row on one thread does not fit ``memory_budget_bytes``.
    """
    report = progress or (lambda stage, fraction: None)
    first, last = rows or (0, embeddings.shape[0])
    workers = 1 if device == "cuda" else (n_threads or os.cpu_count() or 1)
    block = _GPU_SOLVE_BLOCK if device == "cuda" else MAX_SOLVE_BLOCK
    if memory_budget_bytes is not None and device != "cuda":
        block, workers = plan_solve(
            embeddings.shape[0],
            embeddings.shape[1],
            params.k,
            budget_bytes=memory_budget_bytes,
            threads=workers,
            rows=last - first,
            approximate=resolve_knn(params.knn, embeddings.shape[0]) == "approximate",
        )
    metric = metric_of(params)
    started = time.perf_counter()
    report("knn", 0.0)
    candidates = find_candidates(
        prepare_vectors(embeddings, metric=metric),
        params.k,
        metric=metric,
        method=params.knn,
        backend="torch" if device == "cuda" else "faiss",
        device=device,
        seed=params.seed,
        rows=(first, last),
        index=index,
        threads=workers,
        progress=lambda fraction: report("knn", fraction),
    )
    knn_s = time.perf_counter() - started

    started = time.perf_counter()
    report("solve", 0.0)
    rank_deficient = np.zeros(last - first, dtype=bool)
    weights, query_kernel, reconstruction_error = solve_rows(
        embeddings,
        candidates.indices,
        first=first,
        params=params,
        device=device,
        block=block,
        workers=workers,
        progress=lambda fraction: report("solve", fraction),
        rank_deficient=rank_deficient,
    )
    valid = (
        query_kernel < 1.0 - IDENTICAL_TOLERANCE
        if params.ignore_identical
        else np.ones_like(weights, dtype=bool)
    )
    return NNKGraph(
        candidate_indices=candidates.indices,
        weights=weights,
        query_kernel=query_kernel,
        valid=valid,
        reconstruction_error=reconstruction_error,
        knn_recall=candidates.recall,
        knn_recall_sample=candidates.recall_sample,
        knn_s=knn_s,
        solve_s=time.perf_counter() - started,
        first_row=first,
        rank_deficient=rank_deficient,
    )


def _duplicate_pairs(candidate_indices: np.ndarray, query_kernel: np.ndarray) -> int:
    rows, columns = np.nonzero(query_kernel >= 1.0 - IDENTICAL_TOLERANCE)
    if rows.size == 0:
        return 0
    other = candidate_indices[rows, columns]
    pairs = np.stack([np.minimum(rows, other), np.maximum(rows, other)], axis=1)
    return int(np.unique(pairs, axis=0).shape[0])


def _field_in_set(error: InvalidInputError, name: str) -> InvalidInputError:
    """The core's "query.x" / "reference.x" fields, as the set's request names them."""
    field_name = error.field
    if field_name.startswith("query."):
        field_name = f"sets[{name}].{field_name}"
    elif field_name.startswith("reference."):
        field_name = f"sets[{name}].{field_name.removeprefix('reference.')}"
    return InvalidInputError(field_name, error.message)


def measure_out_of_sample(
    embedding_set: EmbeddingSet,
    *,
    params: AnalysisParams,
    device: str = "cpu",
    n_threads: int | None = None,
) -> OutOfSample | None:
    """The set's query points, each solved against its k nearest points of the set.

    Null without queries. With labels on both sides, the four held-out errors and
    McNemar's exact test of NNK-weighted against NNK-unweighted (DESIGN section 2's
    rules, :func:`~workers.geometry.out_of_sample.out_of_sample_metrics`); otherwise
    only the degrees and reconstruction errors.
    """
    queries = embedding_set.query_embeddings
    if queries is None:
        return None
    solve = {
        "k": params.k,
        "kernel": params.kernel,
        "sigma": params.sigma,
        "ignore_identical": params.ignore_identical,
        "solver": params.solver,
        "device": device,
        "n_threads": n_threads,
    }
    if embedding_set.labels is None or embedding_set.query_labels is None:
        graph = solve_queries(embedding_set.embeddings, queries, **solve)
        return OutOfSample(
            n=int(queries.shape[0]),
            nnk_degree=metrics.quantile_stats((graph.weights > 0).sum(axis=1)),
            reconstruction_error=metrics.quantile_stats(graph.reconstruction_error),
        )
    try:
        held_out = out_of_sample_metrics(
            embedding_set.embeddings,
            embedding_set.labels,
            queries,
            embedding_set.query_labels,
            **solve,
        )
    except InvalidInputError as error:
        raise _field_in_set(error, embedding_set.name) from None
    test = held_out.mcnemar_weighted_vs_unweighted
    return OutOfSample(
        n=held_out.n,
        error=OutOfSampleError(
            nnk_weighted=held_out.error.nnk_weighted,
            nnk_unweighted=held_out.error.nnk_unweighted,
            knn_weighted=held_out.error.knn_weighted,
            knn_unweighted=held_out.error.knn_unweighted,
        ),
        nnk_degree=held_out.nnk_degree,
        reconstruction_error=held_out.reconstruction_error,
        mcnemar=OutOfSampleMcNemar(
            weighted_vs_unweighted=McNemarTest(b=test.b, c=test.c, p_value=test.p_value)
        ),
    )


def _baselines(
    embedding_set: EmbeddingSet, *, params: AnalysisParams, warnings: list[str]
) -> Baselines | None:
    if "linear_probe" not in params.baselines:
        return None
    if embedding_set.labels is None:
        warnings.append("the linear_probe baseline needs labels; the set has none")
        return None
    # scikit-learn loads only for the opt-in baseline: the default analysis never pays it.
    from workers.geometry.linear_probe import linear_probe_error

    scored = embedding_set.query_labels is not None
    try:
        probe = linear_probe_error(
            embedding_set.embeddings,
            embedding_set.labels,
            query_embeddings=embedding_set.query_embeddings if scored else None,
            query_labels=embedding_set.query_labels if scored else None,
            seed=params.seed,
        )
    except (InvalidInputError, ValueError) as error:
        # One class, or a class too small for 5 folds: the baseline is skipped, the
        # analysis stands.
        message = error.message if isinstance(error, InvalidInputError) else str(error)
        warnings.append(f"linear_probe baseline skipped: {message}")
        return None
    return Baselines(linear_probe=LinearProbe(error=probe.error, method=probe.method))


def analyze_set(
    embedding_set: EmbeddingSet,
    *,
    params: AnalysisParams,
    progress: ProgressCallback | None = None,
    n_threads: int | None = None,
    memory_budget_bytes: int | None = None,
) -> SetAnalysis:
    """Build the NNK graph of one set and measure it (DESIGN sections 1 and 2).

    Parameters
    ----------
    embedding_set : EmbeddingSet
        Embeddings of shape (N, d), finite; optional labels and ids of length N.
    params : AnalysisParams
    progress : callable, optional
        ``progress(stage, fraction)`` with stages "knn", "solve", "metrics".
    n_threads : int, optional
        CPU threads for the solve; default one per core.
    memory_budget_bytes : int, optional
        Blocks are chosen to fit it (see :func:`build_nnk_graph`).

    Returns
    -------
    SetAnalysis
        The set's report, the directed graph W and the symmetric graph A (CSR).
    """
    validate_set(embedding_set, params=params)
    device, device_warning = resolve_device(params.device)
    embeddings = np.ascontiguousarray(embedding_set.embeddings, dtype=np.float32)
    nnk = build_nnk_graph(
        embeddings,
        params=params,
        device=device,
        progress=progress,
        n_threads=n_threads,
        memory_budget_bytes=memory_budget_bytes,
    )
    return measure_set(
        embedding_set,
        nnk,
        params=params,
        progress=progress,
        warnings=[device_warning] if device_warning else [],
        device=device,
        n_threads=n_threads,
    )


def measure_set(
    embedding_set: EmbeddingSet,
    nnk: NNKGraph,
    *,
    params: AnalysisParams,
    progress: ProgressCallback | None = None,
    warnings: Sequence[str] = (),
    device: str | None = None,
    n_threads: int | None = None,
) -> SetAnalysis:
    """Graphs, metrics and the set's report from a finished NNK solve of all its points.

    The second half of :func:`analyze_set`; a sharded job calls it once its shards'
    graphs are joined with :meth:`NNKGraph.concatenate`, so the set's query points
    (solved against the whole set here) work the same in both.
    ``device`` is where the queries are solved (default: ``params.device`` resolved).
    The intrinsic dimension is estimated on a second thread meanwhile; an error (or a
    cancel from ``progress``) waits for that thread before it propagates.
    """
    report = progress or (lambda stage, fraction: None)
    report("metrics", 0.0)
    started = time.perf_counter()
    # The intrinsic dimension needs only the embeddings: its search (faiss, GIL released)
    # runs beside the graphs and label metrics (numpy, mostly on one core). Its sample
    # and search are those of a sequential run, so the numbers are too.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="nnkgeo-id") as background:
        identity_job = background.submit(
            estimate_intrinsic_dimension,
            np.asarray(embedding_set.embeddings),
            sample=params.id_sample,
            seed=params.seed,
        )
        set_report, directed, symmetric = _measure_graph_and_labels(
            embedding_set,
            nnk,
            params=params,
            report=report,
            warnings=warnings,
            identity_job=identity_job,
            started=started,
            device=device,
            n_threads=n_threads,
        )
    report("metrics", 1.0)
    return SetAnalysis(
        report=set_report,
        directed=directed,
        symmetric=symmetric,
        reconstruction_error=nnk.reconstruction_error,
    )


def _measure_graph_and_labels(
    embedding_set: EmbeddingSet,
    nnk: NNKGraph,
    *,
    params: AnalysisParams,
    report: ProgressCallback,
    warnings: Sequence[str],
    identity_job: Future[IntrinsicDimensionEstimate],
    started: float,
    device: str | None,
    n_threads: int | None,
) -> tuple[SetReport, sp.csr_matrix, sp.csr_matrix]:
    """:func:`measure_set` but the intrinsic dimension, which ``identity_job`` estimates."""
    set_warnings = list(warnings)
    embeddings = np.asarray(embedding_set.embeddings)
    directed = directed_graph(nnk.candidate_indices, nnk.weights)
    symmetric = symmetric_graph(
        directed,
        rule=params.symmetrize,
        candidate_indices=nnk.candidate_indices,
        reconstruction_error=nnk.reconstruction_error,
    )
    degree = (nnk.weights > 0).sum(axis=1)
    duplicate_pairs = _duplicate_pairs(nnk.candidate_indices, nnk.query_kernel)
    if duplicate_pairs:
        set_warnings.append(
            f"{duplicate_pairs} pairs of identical points among the candidates"
            + (
                "; they were dropped from each other's candidates (ignore_identical)"
                if params.ignore_identical
                else "; an identical neighbour takes all of a point's NNK weight"
            )
        )
    report("metrics", 0.3)

    loo = homogeneity = smoothness = verdict = uncertain = collapse = None
    per_class: list = []
    suspects: list = []
    n_classes = None
    degree_codes = degree_classes = shown_classes = None
    if embedding_set.labels is not None:
        classes, codes = metrics.encode_labels(embedding_set.labels)
        n_classes = int(classes.size)
        points = metrics.point_metrics(
            nnk.candidate_indices,
            nnk.weights,
            nnk.query_kernel,
            codes,
            n_classes,
            valid=nnk.valid,
        )
        loo = metrics.loo_error(points)
        n_points = int(points.wrong_nnk_weighted.size)
        weighted_errors = int(np.count_nonzero(points.wrong_nnk_weighted))
        unweighted_errors = int(np.count_nonzero(points.wrong_nnk_unweighted))
        loo = loo.model_copy(
            update={
                "nnk_weighted_ci95": list(wilson_interval(weighted_errors, n_points)),
                "nnk_unweighted_ci95": list(wilson_interval(unweighted_errors, n_points)),
            }
        )
        uncertain = regime_uncertain(
            weighted_errors, unweighted_errors, n_points, epsilon=metrics.REGIME_EPSILON
        )
        if n_classes >= 2:
            value = nc1(embeddings, embedding_set.labels)
            collapse = NeuralCollapse(nc1=None if np.isnan(value) else value)
        homogeneity = metrics.homogeneity(points)
        smoothness = LabelSmoothness(
            cross_class_edge_fraction=metrics.cross_class_edge_fraction(symmetric, codes)
        )
        verdict = metrics.regime(loo)
        shown_classes = metrics.reported_classes(codes, n_classes)
        if shown_classes.size < n_classes:
            set_warnings.append(
                f"per_class and nnk_degree.per_class list the {shown_classes.size} largest of "
                f"{n_classes} classes"
            )
        per_class = metrics.per_class_metrics(points, classes, shown=shown_classes)
        suspects = metrics.suspects(points, classes, top=params.suspects_top, ids=embedding_set.ids)
        degree_codes, degree_classes = codes, classes
    isolated = int((degree == 0).sum())
    if isolated:
        set_warnings.append(f"{isolated} points have no NNK neighbour (all kernel values vanish)")
    if nnk.knn_recall is not None and nnk.knn_recall < 0.95:
        set_warnings.append(f"approximate search recall@k is only {nnk.knn_recall:.3f}")
    nonunique = None if nnk.rank_deficient is None else int(nnk.rank_deficient.sum())
    if nonunique:
        set_warnings.append(
            f"{nonunique} points have a singular candidate kernel matrix (dimension + 1 < k, "
            "or duplicates): their NNK optimum may not be unique; the solve returns a basic "
            "one (support no larger than the rank of K_S), so their degrees are a lower bound"
        )
    report("metrics", 0.8)
    out_of_sample = measure_out_of_sample(
        embedding_set,
        params=params,
        device=device if device is not None else resolve_device(params.device)[0],
        n_threads=n_threads,
    )
    baselines = _baselines(embedding_set, params=params, warnings=set_warnings)
    identity = identity_job.result()

    set_report = SetReport(
        name=embedding_set.name,
        n_points=int(embeddings.shape[0]),
        dim=int(embeddings.shape[1]),
        n_classes=n_classes,
        graph=GraphStats(
            n_edges_directed=int(directed.nnz),
            n_edges_symmetric=int(sp.triu(symmetric, k=1).nnz),
            duplicate_pairs=duplicate_pairs,
            isolated=isolated,
            knn_recall=nnk.knn_recall,
            knn_recall_sample=nnk.knn_recall_sample,
            nonunique_nodes=nonunique,
        ),
        nnk_degree=metrics.degree_stats(
            degree, codes=degree_codes, classes=degree_classes, shown=shown_classes
        ),
        loo_error=loo,
        homogeneity=homogeneity,
        reconstruction_error=metrics.quantile_stats(nnk.reconstruction_error),
        intrinsic_dimension=IntrinsicDimension(
            twonn=identity.twonn,
            mle=identity.mle,
            mle_k=identity.mle_k,
            n_used=identity.n_used,
            seed=identity.seed,
        ),
        label_smoothness=smoothness,
        regime=verdict,
        regime_uncertain=uncertain,
        per_class=per_class,
        suspects=suspects,
        timings=Timings(
            knn_s=nnk.knn_s, solve_s=nnk.solve_s, metrics_s=time.perf_counter() - started
        ),
        warnings=set_warnings,
        extra=dict(embedding_set.extra),
        out_of_sample=out_of_sample,
        neural_collapse=collapse,
        baselines=baselines,
    )
    return set_report, directed, symmetric


def analyze(
    sets: Sequence[EmbeddingSet],
    *,
    params: AnalysisParams,
    job_id: str | None = None,
    progress: ProgressCallback | None = None,
    n_threads: int | None = None,
    memory_budget_bytes: int | None = None,
) -> Analysis:
    """Analyse several sets with the same parameters and compare them, in the order given.

    Every set is validated before any is analysed, so bad input fails fast.
    Progress fractions run over the whole job; the stage names the set.
    """
    if not sets:
        raise ValueError("analyze needs at least one embedding set")
    for embedding_set in sets:
        validate_set(embedding_set, params=params)
    results: dict[str, SetAnalysis] = {}
    for position, embedding_set in enumerate(sets):

        def set_progress(
            stage: str, fraction: float, position: int = position, name: str = embedding_set.name
        ) -> None:
            if progress is not None:
                offset, span = _STAGE_SHARE.get(stage, (0.0, 1.0))
                overall = (position + offset + span * fraction) / len(sets)
                progress(f"{name}:{stage}", min(overall, 1.0))

        results[embedding_set.name] = analyze_set(
            embedding_set,
            params=params,
            progress=set_progress,
            n_threads=n_threads,
            memory_budget_bytes=memory_budget_bytes,
        )
    report = assemble_report(
        [result.report for result in results.values()],
        params=params,
        job_id=job_id,
        graphs=[result.directed for result in results.values()],
        point_ids=[embedding_set.ids for embedding_set in sets],
    )
    return Analysis(report=report, sets=results)
