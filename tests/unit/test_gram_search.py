"""The tiled Gram search against brute force: the same rows, the same order, any threads.

Integer-valued points make every product exact in float32 (BLAS or not), so the
expected ranking, ties included, comes from integer arithmetic: the best ``width``
other points by (score, then the smaller index). Real-valued points are checked against
a float64 ranking where no two scores are near.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from workers.geometry.blas_threads import _numpy_openblas, single_threaded_blas
from workers.geometry.gram_search import _starting_thresholds, gram_search


def _integer_points(seed: int, n: int, dim: int) -> np.ndarray:
    # Entries in -2..2: products are small integers, exact in float32, and tie often.
    return np.random.default_rng(seed).integers(-2, 3, size=(n, dim)).astype(np.float32)


def _expected(points: np.ndarray, width: int, *, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Best ``width`` other rows by integer score, ties to the smaller row; their scores."""
    exact = points.astype(np.int64)
    products = exact @ exact.T
    if metric == "euclidean":
        scores = 2 * products - (exact * exact).sum(axis=1)[None, :]
    else:
        scores = products
    scores = scores.astype(np.float64)
    np.fill_diagonal(scores, -np.inf)
    index = np.broadcast_to(np.arange(len(points)), scores.shape)
    order = np.lexsort((index, -scores), axis=1)[:, :width]
    return order, np.take_along_axis(scores, order, axis=1)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize(("tile", "threads"), [(16, 1), (16, 2), (23, 3), (1024, 2)])
def test_finds_the_best_other_rows_ties_to_the_smaller_index(metric, tile, threads):
    points = _integer_points(0, 150, 5)
    expected, expected_scores = _expected(points, 12, metric=metric)
    found, scores = gram_search(points, 12, metric=metric, tile=tile, threads=threads)
    np.testing.assert_array_equal(found, expected)
    np.testing.assert_array_equal(scores, expected_scores)


def test_many_exact_duplicates_fill_the_reservoir_with_ties():
    # Forty copies of one point and a few others: each copy's best are the other copies,
    # all tied, so its reservoir compacts on ties alone.
    rng = np.random.default_rng(1)
    points = rng.integers(-2, 3, size=(90, 4)).astype(np.float32)
    copies = rng.choice(90, size=40, replace=False)
    points[copies] = np.float32([2, 2, 2, 2])
    expected, _ = _expected(points, 30, metric="cosine")
    found, scores = gram_search(points, 30, metric="cosine", tile=16, threads=2)
    np.testing.assert_array_equal(found, expected)
    # The copies' 30 best all tie at the top score (16): the index alone ranked them.
    assert (scores[copies] == 16.0).all()


def test_a_shard_finds_bit_for_bit_what_the_whole_search_finds():
    points = np.random.default_rng(2).standard_normal((700, 9)).astype(np.float32)
    for metric in ("cosine", "euclidean"):
        whole, whole_scores = gram_search(points, 20, metric=metric, tile=64, threads=2)
        # Shards that start and end inside tiles, and one row.
        for rows in ((0, 100), (130, 455), (455, 700), (333, 334)):
            part, part_scores = gram_search(
                points, 20, metric=metric, rows=rows, tile=64, threads=3
            )
            np.testing.assert_array_equal(part, whole[slice(*rows)])
            np.testing.assert_array_equal(part_scores, whole_scores[slice(*rows)])


def test_real_points_against_a_float64_ranking():
    rng = np.random.default_rng(3)
    points = rng.standard_normal((600, 32)).astype(np.float32)
    unit = points / np.linalg.norm(points, axis=1, keepdims=True)
    exact = unit.astype(np.float64)
    similarity = (exact[:, None, :] * exact[None, :, :]).sum(axis=2)
    np.fill_diagonal(similarity, -np.inf)
    expected = np.argsort(-similarity, axis=1, kind="stable")[:, :15]
    found, scores = gram_search(unit, 15, metric="cosine", tile=128, threads=2)
    np.testing.assert_array_equal(found, expected)
    np.testing.assert_allclose(
        scores, np.take_along_axis(similarity, expected, axis=1), rtol=0, atol=1e-6
    )


def test_progress_reaches_one_and_what_it_raises_stops_the_search():
    points = _integer_points(4, 400, 6)
    seen: list[float] = []
    gram_search(points, 10, metric="cosine", tile=16, threads=2, progress=seen.append)
    assert seen and seen == sorted(seen) and seen[0] >= 0.0 and seen[-1] == 1.0

    class Cancelled(Exception):
        pass

    def cancel(share: float) -> None:
        raise Cancelled

    with pytest.raises(Cancelled):
        gram_search(points, 10, metric="cosine", tile=16, threads=2, progress=cancel)


def test_non_finite_points_and_bad_widths_are_refused():
    points = _integer_points(5, 50, 4)
    points[7, 2] = np.nan
    with pytest.raises(ValueError, match="finite"):
        gram_search(points, 5, metric="cosine", tile=16, threads=2)
    with pytest.raises(ValueError, match="width"):
        gram_search(points[:10], 10, metric="cosine")


def test_a_tile_with_more_waiting_offers_than_the_scan_holds_back():
    # One 2,000-row diagonal tile: its columns receive tens of thousands of offers,
    # several times what a scan holds back before delivering them.
    points = _integer_points(6, 2_000, 6)
    expected, expected_scores = _expected(points, 30, metric="euclidean")
    found, scores = gram_search(points, 30, metric="euclidean", tile=2_048, threads=1)
    np.testing.assert_array_equal(found, expected)
    np.testing.assert_array_equal(scores, expected_scores)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_starting_thresholds_stay_below_every_rows_last_score(metric):
    # The bounds only save offers: one above a row's width-th score would lose a result.
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((12, 16)) * 3
    points = (centres[rng.integers(0, 12, 3_000)] + rng.standard_normal((3_000, 16))).astype(
        np.float32
    )
    if metric == "cosine":
        points /= np.linalg.norm(points, axis=1, keepdims=True)
    squared_norms = np.einsum("ij,ij->i", points, points).astype(np.float32)
    _, scores = gram_search(points, 25, metric=metric, tile=256, threads=2)
    for rows in ((0, 3_000), (700, 1_900)):
        bounds = _starting_thresholds(
            points, squared_norms, 25, *rows, tile=256, euclidean=metric == "euclidean"
        )
        assert np.isfinite(bounds).mean() > 0.9
        assert (bounds <= scores[slice(*rows), -1]).all()
        # Close below: most rows start nearer their final threshold than the width of
        # their final best (the first score less the last).
        spread = scores[slice(*rows), 0] - scores[slice(*rows), -1]
        assert np.median((scores[slice(*rows), -1] - bounds) / spread) < 1.0


def test_a_process_forked_after_numbas_openmp_ran_can_still_search():
    # A Celery pool worker is forked from a process whose numba OpenMP pool may have
    # run, and numba kills such a process at its first parallel loop: the search must
    # run none (its final sort did). Run in a fresh interpreter, OpenMP layer.
    script = textwrap.dedent(
        """
        import os
        import numpy as np
        from workers.geometry import nnk_kernel
        from workers.geometry.gram_search import gram_search

        points = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
        candidates = (np.arange(300)[:, None] + np.arange(1, 9)[None, :]) % 300
        nnk_kernel.solve_vectors(points, np.arange(300), candidates, kernel="cosine")
        pid = os.fork()
        if pid == 0:
            found, _ = gram_search(points, 5, metric="cosine", tile=64)
            os._exit(0 if found.shape == (300, 5) else 3)
        _, status = os.waitpid(pid, 0)
        raise SystemExit(os.waitstatus_to_exitcode(status))
        """
    )
    environment = {**os.environ, "NUMBA_THREADING_LAYER": "omp"}
    finished = subprocess.run(
        [sys.executable, "-c", script], env=environment, capture_output=True, timeout=120
    )
    assert finished.returncode == 0, finished.stderr.decode()[-2000:]


def test_numpys_blas_runs_on_one_thread_inside_the_block_and_as_before_after():
    functions = _numpy_openblas()
    if functions is None:
        pytest.skip("numpy's BLAS here is not an OpenBLAS")
    _, threads = functions
    before = threads()
    with single_threaded_blas() as limited:
        assert limited and threads() == 1
    assert threads() == before
