"""knn="auto" and the recall every search reports, against brute-force numpy neighbours."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from api_schemas import AnalysisParams
from api_schemas.params import APPROXIMATE_KNN_FROM, resolve_knn
from tests.unit.reference import brute_force_neighbours
from workers.geometry import EmbeddingSet, analyze_set
from workers.geometry import candidates as candidates_module
from workers.geometry.approximate_search import build_approximate_index, ivf_list_count
from workers.geometry.candidates import find_candidates, prepare_vectors


def _clustered(n: int, dim: int, *, clusters: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)) * 2.0
    points = centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, dim))
    return points.astype(np.float32)


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    """Share of the true k neighbours found, over every given row (plain set arithmetic)."""
    hits = sum(len(set(a.tolist()) & set(e.tolist())) for a, e in zip(found, exact, strict=True))
    return hits / exact.size


def test_auto_is_exact_below_the_threshold_and_approximate_from_it():
    assert resolve_knn("auto", 999, approximate_from=1_000) == "exact"
    assert resolve_knn("auto", 1_000, approximate_from=1_000) == "approximate"
    assert resolve_knn("auto", APPROXIMATE_KNN_FROM - 1) == "exact"
    assert resolve_knn("auto", APPROXIMATE_KNN_FROM) == "approximate"
    assert APPROXIMATE_KNN_FROM == 200_000


@pytest.mark.parametrize("n_points", [10, 10**7])
def test_an_explicit_choice_ignores_the_size(n_points):
    assert resolve_knn("exact", n_points, approximate_from=100) == "exact"
    assert resolve_knn("approximate", n_points, approximate_from=100) == "approximate"


def test_auto_is_the_default():
    assert AnalysisParams().knn == "auto"


def test_find_candidates_resolves_auto_from_all_points_not_the_shards_rows(monkeypatch):
    points = _clustered(1_500, 16)
    vectors = prepare_vectors(points, metric="cosine")
    monkeypatch.setattr(
        candidates_module, "resolve_knn", functools.partial(resolve_knn, approximate_from=1_500)
    )
    # 1,500 points reach the (lowered) threshold even though the shard has 100 rows.
    above = find_candidates(vectors, 10, metric="cosine", method="auto", rows=(0, 100))
    assert above.recall_sample == 1_000
    monkeypatch.setattr(
        candidates_module, "resolve_knn", functools.partial(resolve_knn, approximate_from=1_501)
    )
    below = find_candidates(vectors, 10, metric="cosine", method="auto", rows=(0, 100))
    assert (below.recall, below.recall_sample) == (1.0, 0)
    exact = brute_force_neighbours(points, 10, metric="cosine")[:100]
    np.testing.assert_array_equal(below.indices, exact)


def test_exact_search_reports_recall_one_in_the_report():
    points = _clustered(400, 8)
    labels = np.arange(400) % 3
    result = analyze_set(
        EmbeddingSet("small", points, labels), params=AnalysisParams(k=10, device="cpu")
    )
    assert result.report.graph.knn_recall == 1.0
    assert result.report.graph.knn_recall_sample == 0


def test_reported_recall_is_the_recall_against_brute_force_when_every_point_is_sampled():
    # With at most 1,000 points the recall sample is every point, so the reported recall
    # must be exactly the recall of the whole search against float64 numpy neighbours.
    points = _clustered(1_000, 16)
    vectors = prepare_vectors(points, metric="euclidean")
    index = build_approximate_index(vectors, 15, metric="euclidean", seed=3)
    found = find_candidates(vectors, 15, metric="euclidean", method="approximate", index=index)
    exact = brute_force_neighbours(points, 15, metric="euclidean")
    assert index.recall_sample == 1_000
    assert index.recall == pytest.approx(_recall(found.indices, exact), abs=1e-12)
    assert found.recall == index.recall >= 0.95
    assert index.nprobe < ivf_list_count(1_000)  # a real approximation, not a flat scan


def test_approximate_search_uses_the_smallest_nprobe_that_reaches_the_target():
    # Ten broad clusters need nprobe 5 here: not a power of two, so doubling alone would
    # overshoot.
    points = _clustered(1_000, 16, clusters=10, seed=1)
    vectors = prepare_vectors(points, metric="cosine")
    index = build_approximate_index(vectors, 15, metric="cosine", seed=0)
    exact = brute_force_neighbours(points, 15, metric="cosine")
    assert index.nprobe > 1
    loaded = index.load()
    loaded.nprobe = index.nprobe - 1
    _, one_fewer = loaded.search(vectors, 16)
    one_fewer = np.array([[j for j in row if j != i][:15] for i, row in enumerate(one_fewer)])
    assert _recall(one_fewer, exact) < 0.95 <= index.recall


def test_reported_recall_estimates_the_whole_searchs_recall():
    points = _clustered(5_000, 16, clusters=60, seed=2)
    vectors = prepare_vectors(points, metric="cosine")
    found = find_candidates(vectors, 15, metric="cosine", method="approximate", seed=4)
    whole = _recall(found.indices, brute_force_neighbours(points, 15, metric="cosine"))
    assert found.recall_sample == 1_000
    assert found.recall >= 0.95
    # A 1,000-query sample of per-query recalls whose spread is well under 0.1.
    assert abs(found.recall - whole) < 0.01
