"""One analysis end to end: validate, search candidates, solve, assemble, measure.

This is the only module that knows the order of the steps; each step is a pure
function of its own module. The service's worker task and the local CLI both call
:func:`analyze`, so a report is the same number for number wherever it was made.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from api_schemas import (
    AnalysisParams,
    GraphStats,
    IntrinsicDimension,
    LabelSmoothness,
    Report,
    SetReport,
    Timings,
)
from jobstate.checks import check_embedding_values, check_set_shapes
from jobstate.memory_budget import MAX_SOLVE_BLOCK, SHARD_ALIGNMENT, plan_solve
from jobstate.version import ALGORITHM_VERSION
from workers.geometry import metrics
from workers.geometry.candidates import (
    ApproximateIndex,
    Metric,
    build_approximate_index,
    find_candidates,
    prepare_vectors,
)
from workers.geometry.graph import directed_graph, symmetric_graph
from workers.geometry.intrinsic_dimension import estimate_intrinsic_dimension
from workers.geometry.kernels import candidate_kernels, kernel_vectors
from workers.geometry.report import assemble_report
from workers.geometry.solver import IDENTICAL_TOLERANCE, nnk_weights

ProgressCallback = Callable[[str, float], None]
"""Called as ``progress(stage, fraction)``; may raise AnalysisCanceled to stop the run."""

# A GPU wants big batches; its memory holds 32k (k x k) float64 systems with ease.
_GPU_SOLVE_BLOCK = 32_768
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
    "validate_set",
]


@dataclass(frozen=True)
class EmbeddingSet:
    """One set of embeddings to analyse (a layer, or a model's output)."""

    name: str
    embeddings: np.ndarray
    labels: np.ndarray | None = None
    ids: np.ndarray | None = None
    extra: dict[str, float | int | str | None] = field(default_factory=dict)


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
        )


@dataclass(frozen=True)
class SetAnalysis:
    report: SetReport
    directed: sp.csr_matrix
    symmetric: sp.csr_matrix


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


def resolve_device(requested: str) -> tuple[str, str | None]:
    """The device to run on, and a warning when a GPU was asked for but is absent."""
    has_cuda = torch.cuda.is_available()
    if requested == "cuda" and not has_cuda:
        return "cpu", "device 'cuda' was requested but no GPU is present; ran on the CPU"
    if requested == "auto":
        return ("cuda" if has_cuda else "cpu"), None
    return requested, None


@contextmanager
def _single_threaded_torch():
    # Blocks are solved by one Python thread per core; torch's own intra-op threads
    # would then oversubscribe the cores.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


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
            approximate=params.knn == "approximate",
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
        progress=lambda fraction: report("knn", fraction),
    )
    knn_s = time.perf_counter() - started

    started = time.perf_counter()
    vectors = kernel_vectors(embeddings, kernel=params.kernel, device=device)
    n_rows, k = candidates.indices.shape
    weights = np.empty((n_rows, k))
    query_kernel = np.empty((n_rows, k))
    reconstruction_error = np.empty(n_rows)

    def solve_block(start: int) -> int:
        stop = min(start + block, n_rows)
        gram, rhs = candidate_kernels(
            vectors,
            np.arange(first + start, first + stop),
            candidates.indices[start:stop],
            kernel=params.kernel,
            sigma=params.sigma,
        )
        allowed = rhs < 1.0 - IDENTICAL_TOLERANCE if params.ignore_identical else None
        block_weights, block_error = nnk_weights(gram, rhs, solver=params.solver, allowed=allowed)
        weights[start:stop] = block_weights.cpu().numpy()
        query_kernel[start:stop] = rhs.cpu().numpy()
        reconstruction_error[start:stop] = block_error.cpu().numpy()
        return stop - start

    report("solve", 0.0)
    done = 0
    with _single_threaded_torch(), ThreadPoolExecutor(max_workers=workers) as pool:
        pending = [pool.submit(solve_block, start) for start in range(0, n_rows, block)]
        try:
            for future in pending:
                done += future.result()
                report("solve", done / max(n_rows, 1))
        finally:
            for future in pending:
                future.cancel()
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
    )


def _duplicate_pairs(candidate_indices: np.ndarray, query_kernel: np.ndarray) -> int:
    rows, columns = np.nonzero(query_kernel >= 1.0 - IDENTICAL_TOLERANCE)
    if rows.size == 0:
        return 0
    other = candidate_indices[rows, columns]
    pairs = np.stack([np.minimum(rows, other), np.maximum(rows, other)], axis=1)
    return int(np.unique(pairs, axis=0).shape[0])


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
    )


def measure_set(
    embedding_set: EmbeddingSet,
    nnk: NNKGraph,
    *,
    params: AnalysisParams,
    progress: ProgressCallback | None = None,
    warnings: Sequence[str] = (),
) -> SetAnalysis:
    """Graphs, metrics and the set's report from a finished NNK solve of all its points.

    The second half of :func:`analyze_set`; a sharded job calls it once its shards'
    graphs are joined with :meth:`NNKGraph.concatenate`.
    """
    report = progress or (lambda stage, fraction: None)
    set_warnings = list(warnings)
    embeddings = np.asarray(embedding_set.embeddings)
    report("metrics", 0.0)
    started = time.perf_counter()
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
    identity = estimate_intrinsic_dimension(embeddings, sample=params.id_sample, seed=params.seed)
    report("metrics", 0.6)

    loo = homogeneity = smoothness = verdict = None
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
        ),
        nnk_degree=metrics.degree_stats(
            degree, codes=degree_codes, classes=degree_classes, shown=shown_classes
        ),
        loo_error=loo,
        homogeneity=homogeneity,
        reconstruction_error=metrics.quantile_stats(nnk.reconstruction_error),
        intrinsic_dimension=IntrinsicDimension(
            twonn=identity.twonn, mle=identity.mle, mle_k=identity.mle_k, n_used=identity.n_used
        ),
        label_smoothness=smoothness,
        regime=verdict,
        per_class=per_class,
        suspects=suspects,
        timings=Timings(
            knn_s=nnk.knn_s, solve_s=nnk.solve_s, metrics_s=time.perf_counter() - started
        ),
        warnings=set_warnings,
        extra=dict(embedding_set.extra),
    )
    report("metrics", 1.0)
    return SetAnalysis(report=set_report, directed=directed, symmetric=symmetric)


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
        [result.report for result in results.values()], params=params, job_id=job_id
    )
    return Analysis(report=report, sets=results)
