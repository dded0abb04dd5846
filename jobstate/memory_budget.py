"""How much memory an analysis takes, term by term, and the block sizes that fit a budget.

Every array that grows with the input is counted: the embeddings and their float64
kernel copy, the kNN index and its results, the per-block gathers and Gram matrices of
the solve (and the solver's copies of them), the graph, and the class-score blocks of
the metrics. The counts are upper estimates from the shapes alone (no allocation), so
that the API can refuse a job before it is queued, and the worker can choose its block
sizes before it allocates anything.

The constants below were read off the code that allocates (``kernels.kernel_vectors``,
``solver.nnk_weights``, ``metrics.point_metrics``, ``graph.symmetrize``) and checked
against measured peaks in ``tests/unit/test_memory.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from jobstate.errors import InvalidInputError

__all__ = [
    "MAX_SOLVE_BLOCK",
    "SHARD_ALIGNMENT",
    "MemoryBudgetError",
    "MemoryEstimate",
    "estimate_set_memory",
    "is_allocation_failure",
    "plan_metrics_block",
    "plan_solve",
    "plan_solve_block",
]

SHARD_ALIGNMENT = 4096
"""Shards start at multiples of this: the same solve blocks, approximate-search query
blocks and exact-search tiles (1,024 rows, a divisor) as an unsharded run, so that
their results are bit-identical."""

MAX_SOLVE_BLOCK = 2048
"""The largest solve block; blocks are powers of two up to it, so that every block
boundary falls on a shard boundary (multiples of 4096) and sharded runs stay
bit-identical to unsharded ones."""

# float64 copies of one (k x k) Gram system alive at once inside the batched solver: the
# Gram block itself, the free-set submatrix, its Cholesky factor and the solver's work
# (5.6 measured at k = 256 in blocks of 600 rows; see tests/unit/test_memory.py).
_GRAM_COPIES = 6
# float64 vectors per row of the solve block: rhs, weights, gradient, masks.
_VECTORS_PER_CANDIDATE = 8
# Per point and candidate, alive through the whole run: indices (int64), distances
# (float32), weights, query kernel (float64), the valid mask (bool), and the metrics'
# label gathers (int64) and masks (3 bools).
_BYTES_PER_CANDIDATE = 8 + 4 + 8 + 8 + 1 + 8 + 3
# The graph: W and the symmetric A as CSR (float64 data, int32 indices), with the
# transposed copies scipy makes while symmetrising.
_GRAPH_BYTES_PER_CANDIDATE = 4 * (8 + 4)
# faiss answers queries in blocks of this many rows (distances and labels per block).
_KNN_QUERY_BLOCK = 4096
# The exact search (workers/geometry/gram_search.py): per searched row a reservoir of
# its best k + 9 and as many spare places (at least 32) of (float32, int32), their
# sorted copy (float32, int64), and per thread one tile of float32 products.
_KNN_WINDOW_EXTRA = 9
_KNN_MIN_SPARE = 32
_KNN_TILE = 1024
# Class scores are computed for this many bytes of (rows x classes) float64 at a time.
METRICS_BLOCK_BYTES = 16 * 1024**2
# The intrinsic-dimension estimate's float64 differences, one block of queries and one
# neighbour column at a time (three such arrays alive: the gathers and the difference).
DISTANCE_BLOCK_BYTES = 16 * 1024**2
# Interpreter, torch, faiss and numpy themselves.
_RUNTIME_BYTES = 400 * 1024**2


# How numpy, torch, faiss and onnxruntime say that an allocation failed.
_ALLOCATION_FAILURES = (
    "can't allocate memory",
    "cannot allocate memory",
    "bad_alloc",
    "failed to allocate memory",
    "out of memory",
)


def is_allocation_failure(error: BaseException) -> bool:
    """Whether ``error`` is a failed allocation (a MemoryError, or a RuntimeError from
    torch, faiss or onnxruntime that says so)."""
    if isinstance(error, MemoryError):
        return True
    text = str(error).lower()
    return any(marker in text for marker in _ALLOCATION_FAILURES)


class MemoryBudgetError(InvalidInputError):
    """Even the smallest block of the job would not fit the memory budget.

    ``field`` names the input that makes it too large; the message names the term, its
    size and the budget (``NNKGEO_WORKER_MEMORY_BYTES``).
    """


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak memory of one task, by term, in bytes.

    Attributes
    ----------
    terms : dict of str to int
        ``"embeddings"``, ``"kernel_vectors"``, ``"knn"``, ``"candidates"``,
        ``"solve_blocks"``, ``"graph"``, ``"class_scores"``, ``"runtime"``.
    solve_block : int
        Rows per solve block the estimate assumes.
    """

    terms: dict[str, int] = field(default_factory=dict)
    solve_block: int = MAX_SOLVE_BLOCK

    @property
    def total(self) -> int:
        return sum(self.terms.values())

    def largest(self) -> tuple[str, int]:
        """The largest term that grows with the input (the runtime is fixed)."""
        growing = {name: size for name, size in self.terms.items() if name != "runtime"}
        name = max(growing, key=lambda term: growing[term])
        return name, growing[name]


def _solve_bytes_per_row(dim: int, k: int) -> int:
    """One row of a solve block: its candidates' float64 vectors, its Gram systems."""
    return 8 * (k * dim + _GRAM_COPIES * k * k + _VECTORS_PER_CANDIDATE * k + dim)


def _knn_bytes(
    n_points: int, dim: int, k: int, rows: int, *, approximate: bool, threads: int
) -> int:
    if approximate:
        # The index (IVF lists ~ the data, twice for safety) and one block of answers.
        return 4 * n_points * dim * 2 + _KNN_QUERY_BLOCK * (k + 1) * (4 + 8)
    window = k + 1 + _KNN_WINDOW_EXTRA
    reservoirs = rows * (window + max(window, _KNN_MIN_SPARE)) * (4 + 4)
    # A flat index of the data for the rare point whose window ends inside a tie.
    return (
        4 * n_points * dim
        + reservoirs
        + rows * window * (4 + 8)
        + threads * _KNN_TILE * _KNN_TILE * 4
        + 8 * n_points
    )


def _fixed_terms(
    n_points: int, dim: int, k: int, rows: int, *, approximate: bool, threads: int
) -> dict[str, int]:
    return {
        "embeddings": 4 * n_points * dim,
        # float64, and a second copy while the cosine kernel normalises it.
        "kernel_vectors": 2 * 8 * n_points * dim,
        "knn": _knn_bytes(n_points, dim, k, rows, approximate=approximate, threads=threads),
        "candidates": rows * k * _BYTES_PER_CANDIDATE,
        "graph": rows * k * _GRAPH_BYTES_PER_CANDIDATE,
        "intrinsic_dimension": 3 * max(DISTANCE_BLOCK_BYTES, 8 * dim),
        "runtime": _RUNTIME_BYTES,
    }


def estimate_set_memory(
    n_points: int,
    dim: int,
    k: int,
    *,
    n_classes: int = 0,
    rows: int | None = None,
    solve_block: int = MAX_SOLVE_BLOCK,
    threads: int = 1,
    approximate: bool = False,
) -> MemoryEstimate:
    """Peak memory of analysing one set (or ``rows`` of it, for one shard).

    Parameters
    ----------
    n_points, dim : int
        Shape of the embeddings.
    k : int
        Candidates per point.
    n_classes : int
        Distinct labels (0 without labels).
    rows : int, optional
        Rows this task solves (a shard); default all.
    solve_block : int
        Rows per solve block.
    threads : int
        Solve blocks in flight at once.
    approximate : bool
        An approximate (HNSW/IVF) index instead of a flat one.

    Returns
    -------
    MemoryEstimate
    """
    rows = n_points if rows is None else rows
    terms = _fixed_terms(n_points, dim, k, rows, approximate=approximate, threads=threads)
    block = min(solve_block, max(rows, 1))
    terms["solve_blocks"] = threads * block * _solve_bytes_per_row(dim, k)
    if n_classes:
        scored_rows = min(plan_metrics_block(n_classes), max(rows, 1))
        terms["class_scores"] = scored_rows * n_classes * 8 * 2
    return MemoryEstimate(terms=terms, solve_block=block)


def plan_solve_block(
    n_points: int,
    dim: int,
    k: int,
    *,
    budget_bytes: int,
    n_classes: int = 0,
    rows: int | None = None,
    threads: int = 1,
    approximate: bool = False,
) -> int:
    """The largest solve block (a power of two up to :data:`MAX_SOLVE_BLOCK`) whose whole
    task fits ``budget_bytes``.

    Raises
    ------
    MemoryBudgetError
        When even one row per block does not fit: the message names the largest term.
    """
    block = MAX_SOLVE_BLOCK
    while True:
        estimate = estimate_set_memory(
            n_points,
            dim,
            k,
            n_classes=n_classes,
            rows=rows,
            solve_block=block,
            threads=threads,
            approximate=approximate,
        )
        if estimate.total <= budget_bytes:
            return block
        if block == 1:
            raise _over_budget(estimate, budget_bytes, dim=dim, k=k)
        block //= 2


def plan_solve(
    n_points: int,
    dim: int,
    k: int,
    *,
    budget_bytes: int,
    threads: int,
    n_classes: int = 0,
    rows: int | None = None,
    approximate: bool = False,
) -> tuple[int, int]:
    """``(solve_block, threads)``: the most threads (up to ``threads``) whose blocks fit,
    each with its largest block.

    Fewer threads is the last resort before refusing: k = 1,024 on a small budget solves
    in blocks of a few rows on one thread rather than not at all.

    Raises
    ------
    MemoryBudgetError
        When one row on one thread does not fit.
    """
    for candidate_threads in range(max(threads, 1), 0, -1):
        try:
            block = plan_solve_block(
                n_points,
                dim,
                k,
                budget_bytes=budget_bytes,
                n_classes=n_classes,
                rows=rows,
                threads=candidate_threads,
                approximate=approximate,
            )
        except MemoryBudgetError:
            if candidate_threads == 1:
                raise
            continue
        return block, candidate_threads
    raise AssertionError("unreachable")


def _over_budget(
    estimate: MemoryEstimate, budget_bytes: int, *, dim: int, k: int
) -> MemoryBudgetError:
    term, size = estimate.largest()
    field_of_term = {
        "solve_blocks": "params.k" if k * k > dim else "embeddings",
        "candidates": "params.k",
        "graph": "params.k",
    }
    return MemoryBudgetError(
        field_of_term.get(term, "embeddings"),
        f"the job needs about {estimate.total / 2**20:.0f} MiB even in its smallest blocks, "
        f"over the memory budget of {budget_bytes / 2**20:.0f} MiB "
        f"(NNKGEO_WORKER_MEMORY_BYTES); the largest term is {term} at "
        f"{size / 2**20:.0f} MiB: use fewer points or dimensions, or a smaller k",
    )


def plan_metrics_block(n_classes: int, *, candidates: int = 1) -> int:
    """Rows whose (rows x classes) float64 class scores fit :data:`METRICS_BLOCK_BYTES`,
    and whose (rows x candidates) gathers, weights and masks do too.

    The metrics work a block of rows at a time (``metrics.point_metrics``): with few
    classes the first bound alone would let 200,000 rows x 30 candidates of int64
    gathers (48 MiB each) into one block.
    """
    per_row = 8 * max(n_classes, candidates, 1)
    return max(1, METRICS_BLOCK_BYTES // per_row)
