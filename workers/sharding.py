"""Splitting a large job into row blocks, and the files that carry blocks between tasks.

A set of N points is cut into blocks of consecutive rows. Each block is solved by its
own task: the candidates of its rows are searched among all N points, so a block reads
the whole set (memory-mapped) but solves only its rows. Blocks start at multiples of
:data:`~workers.geometry.analysis.SHARD_ALIGNMENT`, which makes their joined graph
bit-identical to the graph of a single task.

Block size comes from N, d and k: at most ``shard_rows`` rows, fewer when the block's
estimated memory (:mod:`jobstate.memory_budget`) would exceed the job's memory budget
(``worker_memory_bytes``); each block task then chooses its solve blocks within it. A
set below ``shard_min_points`` is one block, and a job whose sets are all one block runs
as a single task.

The files: one uncompressed ``.npz`` per solved block (the arrays of
:class:`~workers.geometry.analysis.NNKGraph` and the block's device warning), and one per
approximate index, stored in the blob store by content. Each names its job, so two jobs
never share a file and a job that ends can remove its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from jobstate.memory_budget import SHARD_ALIGNMENT, estimate_set_memory
from jobstate.settings import Settings
from workers.geometry.analysis import NNKGraph
from workers.geometry.approximate_search import ApproximateIndex

RowBlock = tuple[int, int]
"""Rows [start, stop) of a set."""

# A last block this much smaller than the others joins the one before: each block pays
# for reading and indexing all N points, which a sliver of rows does not repay.
_SMALLEST_LAST_BLOCK_SHARE = 0.25


@dataclass(frozen=True)
class ShardingLimits:
    """When and how finely a set is split (from the NNKGEO_SHARD_* settings)."""

    min_points: int
    max_rows: int
    memory_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ShardingLimits:
        return cls(
            min_points=settings.shard_min_points,
            max_rows=settings.shard_rows,
            memory_bytes=settings.memory_planning_budget_bytes,
        )


def block_footprint_bytes(n_points: int, dim: int, k: int, rows: int) -> int:
    """Estimated peak memory of a task solving ``rows`` rows of an (n_points, dim) set, in
    its smallest solve blocks (:func:`jobstate.memory_budget.estimate_set_memory`)."""
    return estimate_set_memory(n_points, dim, k, rows=rows, solve_block=1, threads=1).total


def _align_down(rows: int) -> int:
    return max(SHARD_ALIGNMENT, rows // SHARD_ALIGNMENT * SHARD_ALIGNMENT)


def plan_row_blocks(n_points: int, dim: int, k: int, *, limits: ShardingLimits) -> list[RowBlock]:
    """The row blocks of one set, in order; a single block when the set is small.

    Parameters
    ----------
    n_points, dim : int
        Shape of the set's embeddings.
    k : int
        Candidates per point.
    limits : ShardingLimits

    Returns
    -------
    list of (start, stop)
        Consecutive blocks covering ``0..n_points``, each starting at a multiple of
        ``SHARD_ALIGNMENT``, each at least ``SHARD_ALIGNMENT`` rows except a lone block.
    """
    if n_points < limits.min_points:
        return [(0, n_points)]
    per_row = block_footprint_bytes(n_points, dim, k, 1) - block_footprint_bytes(
        n_points, dim, k, 0
    )
    affordable = (limits.memory_bytes - block_footprint_bytes(n_points, dim, k, 0)) // per_row
    # When all N points alone exceed the budget, no block size fits: the smallest
    # blocks still keep the per-row part down.
    rows = _align_down(min(limits.max_rows, max(affordable, 0)))
    blocks = [(start, min(start + rows, n_points)) for start in range(0, n_points, rows)]
    if len(blocks) > 1:
        last_start, last_stop = blocks[-1]
        if last_stop - last_start < math.ceil(rows * _SMALLEST_LAST_BLOCK_SHARE):
            blocks[-2:] = [(blocks[-2][0], last_stop)]
    return blocks


def needs_sharding(blocks_per_set: Sequence[Sequence[RowBlock]]) -> bool:
    """Whether a job with these plans runs as several tasks (some set has several blocks)."""
    return any(len(blocks) > 1 for blocks in blocks_per_set)


# Block files --------------------------------------------------------------------------


@dataclass(frozen=True)
class SolvedBlock:
    """A block's NNK solve as read back from its file."""

    nnk: NNKGraph
    device_warning: str | None


def write_block(file: BinaryIO, nnk: NNKGraph, *, job_id: str, device_warning: str | None) -> None:
    """Write a block's solve as an uncompressed npz (no pickled objects)."""
    np.savez(
        file,
        candidate_indices=nnk.candidate_indices,
        weights=nnk.weights,
        query_kernel=nnk.query_kernel,
        valid=nnk.valid,
        reconstruction_error=nnk.reconstruction_error,
        # Empty when the solve did not test its K_S (an older block file has no entry).
        rank_deficient=np.zeros(0, dtype=bool)
        if nnk.rank_deficient is None
        else nnk.rank_deficient,
        first_row=np.int64(nnk.first_row),
        knn_s=np.float64(nnk.knn_s),
        solve_s=np.float64(nnk.solve_s),
        knn_recall=np.float64(np.nan if nnk.knn_recall is None else nnk.knn_recall),
        knn_recall_sample=np.int64(-1 if nnk.knn_recall_sample is None else nnk.knn_recall_sample),
        device_warning=np.str_(device_warning or ""),
        job_id=np.str_(job_id),
    )


def read_block(path: Path) -> SolvedBlock:
    with np.load(path, allow_pickle=False) as arrays:
        recall = float(arrays["knn_recall"])
        recall_sample = int(arrays["knn_recall_sample"])
        deficient = arrays["rank_deficient"] if "rank_deficient" in arrays.files else None
        if deficient is not None and deficient.size != arrays["weights"].shape[0]:
            deficient = None
        nnk = NNKGraph(
            candidate_indices=arrays["candidate_indices"],
            weights=arrays["weights"],
            query_kernel=arrays["query_kernel"],
            valid=arrays["valid"],
            reconstruction_error=arrays["reconstruction_error"],
            rank_deficient=deficient,
            knn_recall=None if math.isnan(recall) else recall,
            knn_recall_sample=None if recall_sample < 0 else recall_sample,
            knn_s=float(arrays["knn_s"]),
            solve_s=float(arrays["solve_s"]),
            first_row=int(arrays["first_row"]),
        )
        device_warning = str(arrays["device_warning"]) or None
    return SolvedBlock(nnk=nnk, device_warning=device_warning)


def write_approximate_index(file: BinaryIO, index: ApproximateIndex, *, job_id: str) -> None:
    np.savez(
        file,
        index_bytes=np.frombuffer(index.index_bytes, dtype=np.uint8),
        nprobe=np.int64(index.nprobe),
        recall=np.float64(index.recall),
        recall_sample=np.int64(index.recall_sample),
        job_id=np.str_(job_id),
    )


def read_approximate_index(path: Path) -> ApproximateIndex:
    with np.load(path, allow_pickle=False) as arrays:
        return ApproximateIndex(
            index_bytes=arrays["index_bytes"].tobytes(),
            nprobe=int(arrays["nprobe"]),
            recall=float(arrays["recall"]),
            recall_sample=int(arrays["recall_sample"]),
        )
