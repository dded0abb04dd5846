"""Planning row blocks of large sets, and the block files that carry them between tasks."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from api_schemas import AnalysisParams
from workers.geometry.analysis import (
    SHARD_ALIGNMENT,
    build_approximate_index_for,
    build_nnk_graph,
)
from workers.sharding import (
    ShardingLimits,
    block_footprint_bytes,
    needs_sharding,
    plan_row_blocks,
    read_approximate_index,
    read_block,
    write_approximate_index,
    write_block,
)

GIB = 1024**3
DEFAULT_LIMITS = ShardingLimits(min_points=50_000, max_rows=32_768, memory_bytes=4 * GIB)


def test_small_set_stays_one_block() -> None:
    assert plan_row_blocks(49_999, 128, 30, limits=DEFAULT_LIMITS) == [(0, 49_999)]
    assert not needs_sharding([[(0, 49_999)], [(0, 10)]])


def test_large_set_is_cut_into_aligned_blocks_of_the_configured_rows() -> None:
    blocks = plan_row_blocks(200_000, 128, 30, limits=DEFAULT_LIMITS)

    assert blocks[:5] == [(start, start + 32_768) for start in range(0, 5 * 32_768, 32_768)]
    assert blocks[-1] == (163_840, 200_000)
    assert needs_sharding([blocks])


def test_rows_are_rounded_down_to_the_alignment_and_never_below_it() -> None:
    limits = ShardingLimits(min_points=1, max_rows=5_000, memory_bytes=4 * GIB)
    assert plan_row_blocks(12_000, 64, 30, limits=limits) == [
        (0, 4096),
        (4096, 8192),
        (8192, 12_000),
    ]
    tiny = ShardingLimits(min_points=1, max_rows=10, memory_bytes=4 * GIB)
    assert plan_row_blocks(9_000, 8, 5, limits=tiny)[0] == (0, SHARD_ALIGNMENT)


def test_a_sliver_of_last_rows_joins_the_block_before() -> None:
    limits = ShardingLimits(min_points=1, max_rows=4096, memory_bytes=4 * GIB)
    assert plan_row_blocks(8_200, 16, 10, limits=limits) == [(0, 4096), (4096, 8_200)]


def test_memory_budget_shrinks_the_blocks() -> None:
    n_points, dim, k = 200_000, 128, 1000
    budget = block_footprint_bytes(n_points, dim, k, 12_288)
    limits = ShardingLimits(min_points=1, max_rows=65_536, memory_bytes=budget)

    blocks = plan_row_blocks(n_points, dim, k, limits=limits)

    assert blocks[0] == (0, 12_288)
    assert all(block_footprint_bytes(n_points, dim, k, b - a) <= budget for a, b in blocks[:-1])


@given(
    n_points=st.integers(1, 300_000),
    max_rows=st.integers(1, 100_000),
    min_points=st.integers(1, 100_000),
)
def test_blocks_cover_every_row_once_and_start_aligned(
    n_points: int, max_rows: int, min_points: int
) -> None:
    limits = ShardingLimits(min_points=min_points, max_rows=max_rows, memory_bytes=4 * GIB)

    blocks = plan_row_blocks(n_points, 32, 10, limits=limits)

    assert blocks[0][0] == 0
    assert blocks[-1][1] == n_points
    for (_, stop), (start, _) in itertools.pairwise(blocks):
        assert stop == start
    assert all(start % SHARD_ALIGNMENT == 0 and stop > start for start, stop in blocks)


@pytest.mark.parametrize("knn", ["exact", "approximate"])
def test_block_file_gives_back_the_solve_it_was_written_from(knn: str, tmp_path: Path) -> None:
    points = np.random.default_rng(3).standard_normal((SHARD_ALIGNMENT + 50, 8))
    points = points.astype(np.float32)
    params = AnalysisParams(k=6, knn=knn)
    index = build_approximate_index_for(points, params=params) if knn == "approximate" else None
    if index is not None:
        index_file = tmp_path / "index.npz"
        with index_file.open("wb") as file:
            write_approximate_index(file, index, job_id="job_x")
        assert read_approximate_index(index_file) == index
    nnk = build_nnk_graph(
        points, params=params, rows=(SHARD_ALIGNMENT, points.shape[0]), index=index
    )
    buffer = io.BytesIO()

    write_block(buffer, nnk, job_id="job_x", device_warning="no GPU")
    path = tmp_path / "block.npz"
    path.write_bytes(buffer.getvalue())
    solved = read_block(path)

    assert solved.device_warning == "no GPU"
    for field in ("candidate_indices", "weights", "query_kernel", "valid", "reconstruction_error"):
        np.testing.assert_array_equal(getattr(solved.nnk, field), getattr(nnk, field))
    assert solved.nnk.first_row == SHARD_ALIGNMENT
    assert solved.nnk.knn_recall == nnk.knn_recall
    assert solved.nnk.knn_recall_sample == nnk.knn_recall_sample
    assert (solved.nnk.knn_s, solved.nnk.solve_s) == (nnk.knn_s, nnk.solve_s)


def test_block_files_of_two_jobs_differ_so_each_job_can_remove_its_own() -> None:
    points = np.random.default_rng(4).standard_normal((100, 4)).astype(np.float32)
    nnk = build_nnk_graph(points, params=AnalysisParams(k=5))
    first, second = io.BytesIO(), io.BytesIO()

    write_block(first, nnk, job_id="job_a", device_warning=None)
    write_block(second, nnk, job_id="job_b", device_warning=None)

    assert first.getvalue() != second.getvalue()
