"""Metrics on data whose answer is known, and against per-point loops over the graph."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from api_schemas import AnalysisParams
from workers.geometry import EmbeddingSet, analyze, analyze_set
from workers.geometry.intrinsic_dimension import estimate_intrinsic_dimension


def _two_far_clusters(rng, n_per=150, dim=16):
    a = rng.standard_normal((n_per, dim)) + 100.0 * np.eye(dim)[0]
    b = rng.standard_normal((n_per, dim)) - 100.0 * np.eye(dim)[0]
    points = np.vstack([a, b]).astype(np.float32)
    labels = np.repeat([0, 1], n_per)
    return points, labels


def test_two_far_apart_clusters_are_homogeneous_with_zero_loo_error():
    points, labels = _two_far_clusters(np.random.default_rng(0))
    report = analyze_set(
        EmbeddingSet("clusters", points, labels), params=AnalysisParams(k=10)
    ).report
    assert report.homogeneity.nnk_mean == 1.0
    assert report.homogeneity.knn_mean == 1.0
    assert report.homogeneity.pure_patch_fraction == 1.0
    assert report.loo_error.model_dump(exclude={"nnk_weighted_ci95", "nnk_unweighted_ci95"}) == {
        "nnk_weighted": 0.0,
        "nnk_unweighted": 0.0,
        "knn_weighted": 0.0,
        "knn_unweighted": 0.0,
        "soft_nnk_weighted": 0.0,
    }
    assert report.regime == "homogeneous"
    assert report.label_smoothness.cross_class_edge_fraction == 0.0
    assert report.suspects == []
    assert [c.n for c in report.per_class] == [150, 150]


def test_a_flipped_label_is_the_first_suspect():
    rng = np.random.default_rng(1)
    points, labels = _two_far_clusters(rng)
    centre = points[:150].mean(axis=0)
    flipped = int(np.argmin(np.linalg.norm(points[:150] - centre, axis=1)))
    labels = labels.copy()
    labels[flipped] = 1
    ids = np.array([f"img-{i}" for i in range(300)])
    report = analyze_set(
        EmbeddingSet("clusters", points, labels, ids=ids), params=AnalysisParams(k=10)
    ).report
    first = report.suspects[0]
    assert (first.index, first.id, first.label, first.predicted) == (
        flipped,
        f"img-{flipped}",
        1,
        0,
    )
    assert first.score == 1.0
    assert report.loo_error.nnk_weighted == pytest.approx(
        sum(s.label != s.predicted for s in report.suspects) / 300
    )


def _loop_reference(directed, candidate_rows, kernel_rows, labels, n_classes):
    """Every metric of DESIGN section 2 for every point, by explicit loops."""
    out = {
        key: [] for key in ("nnk_w", "nnk_u", "knn_w", "knn_u", "soft", "nnk_h", "knn_h", "pure")
    }
    for i in range(labels.size):
        row = directed.getrow(i)
        neighbours, theta = row.indices, row.data
        scores = {name: np.zeros(n_classes) for name in ("w", "u", "kw", "ku")}
        for j, t in zip(neighbours, theta, strict=True):
            scores["w"][labels[j]] += t
            scores["u"][labels[j]] += 1
        for j, kv in zip(candidate_rows[i], kernel_rows[i], strict=True):
            scores["kw"][labels[j]] += kv
            scores["ku"][labels[j]] += 1
        out["nnk_w"].append(np.argmax(scores["w"]) != labels[i])
        out["nnk_u"].append(np.argmax(scores["u"]) != labels[i])
        out["knn_w"].append(np.argmax(scores["kw"]) != labels[i])
        out["knn_u"].append(np.argmax(scores["ku"]) != labels[i])
        total = scores["w"].sum()
        out["soft"].append(1 - (scores["w"][labels[i]] / total if total > 0 else 0))
        same = [labels[j] == labels[i] for j in neighbours]
        out["nnk_h"].append(np.mean(same) if same else 0.0)
        out["knn_h"].append(np.mean([labels[j] == labels[i] for j in candidate_rows[i]]))
        out["pure"].append(bool(same) and all(same))
    return {key: float(np.mean(values)) for key, values in out.items()}


def test_label_metrics_equal_per_point_loops_on_digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    points, labels = digits.data[:700].astype(np.float32), digits.target[:700]
    params = AnalysisParams(k=20)
    result = analyze_set(EmbeddingSet("digits", points, labels), params=params)
    report = result.report
    unit = points / np.linalg.norm(points, axis=1, keepdims=True)
    candidates = (
        NearestNeighbors(n_neighbors=21, metric="cosine")
        .fit(unit)
        .kneighbors(unit, return_distance=False)[:, 1:]
    )
    kernels = np.array([(1 + unit[candidates[i]] @ unit[i]) / 2 for i in range(700)])
    expected = _loop_reference(result.directed, candidates, kernels, labels, 10)
    assert report.loo_error.nnk_weighted == pytest.approx(expected["nnk_w"], abs=1e-12)
    assert report.loo_error.nnk_unweighted == pytest.approx(expected["nnk_u"], abs=1e-12)
    assert report.loo_error.knn_weighted == pytest.approx(expected["knn_w"], abs=1e-12)
    assert report.loo_error.knn_unweighted == pytest.approx(expected["knn_u"], abs=1e-12)
    assert report.loo_error.soft_nnk_weighted == pytest.approx(expected["soft"], abs=1e-9)
    assert report.homogeneity.nnk_mean == pytest.approx(expected["nnk_h"], abs=1e-12)
    assert report.homogeneity.knn_mean == pytest.approx(expected["knn_h"], abs=1e-12)
    assert report.homogeneity.pure_patch_fraction == pytest.approx(expected["pure"], abs=1e-12)

    degree = np.diff(result.directed.indptr)
    assert report.nnk_degree.mean == pytest.approx(degree.mean())
    assert report.nnk_degree.histogram == np.bincount(degree).tolist()
    assert report.graph.n_edges_directed == degree.sum()
    sym = result.symmetric.tocoo()
    cross = sum(
        w for i, j, w in zip(sym.row, sym.col, sym.data, strict=True) if labels[i] != labels[j]
    )
    assert report.label_smoothness.cross_class_edge_fraction == pytest.approx(
        cross / sym.data.sum()
    )
    per_class_n = {c.label: c.n for c in report.per_class}
    assert per_class_n == {d: int((labels == d).sum()) for d in range(10)}
    for entry in report.per_class:
        mask = labels == entry.label
        assert entry.mean_degree == pytest.approx(degree[mask].mean())


def _sphere(rng, n, intrinsic, ambient):
    ball = rng.standard_normal((n, intrinsic + 1))
    ball /= np.linalg.norm(ball, axis=1, keepdims=True)
    basis, _ = np.linalg.qr(rng.standard_normal((ambient, intrinsic + 1)))
    return (ball @ basis.T).astype(np.float32)


def test_twonn_and_mle_find_four_dimensions_on_a_sphere_s4_in_r64():
    points = _sphere(np.random.default_rng(2), 4000, 4, 64)
    estimate = estimate_intrinsic_dimension(points, sample=4000)
    assert 3.6 <= estimate.twonn <= 4.4
    assert 3.6 <= estimate.mle <= 4.4
    assert estimate.n_used == 4000


def test_intrinsic_dimension_equals_the_formulas_from_sklearn_neighbours():
    rng = np.random.default_rng(3)
    points = (rng.standard_normal((800, 3)) @ rng.standard_normal((3, 20))).astype(np.float32)
    estimate = estimate_intrinsic_dimension(points, sample=10_000)
    distances, _ = NearestNeighbors(n_neighbors=21).fit(points.astype(np.float64)).kneighbors()
    twonn = len(distances) / np.sum(np.log(distances[:, 1] / distances[:, 0]))
    inverse = [np.mean(np.log(row[19] / row[:19])) for row in distances]
    mle = 1 / np.mean(inverse)
    assert estimate.twonn == pytest.approx(twonn, rel=1e-5)
    assert estimate.mle == pytest.approx(mle, rel=1e-5)


def test_intrinsic_dimension_leaves_out_points_with_a_duplicate():
    rng = np.random.default_rng(4)
    points = rng.standard_normal((300, 5)).astype(np.float32)
    with_twins = np.vstack([points, points[:10]])
    twins = estimate_intrinsic_dimension(with_twins, sample=10_000)
    assert np.isfinite(twins.twonn) and np.isfinite(twins.mle)


def test_comparison_follows_each_metric_over_sets_in_order():
    points, labels = _two_far_clusters(np.random.default_rng(5))
    noisy = np.random.default_rng(6).standard_normal(points.shape).astype(np.float32)
    result = analyze(
        [EmbeddingSet("separated", points, labels), EmbeddingSet("noise", noisy, labels)],
        params=AnalysisParams(k=10),
    )
    comparison = result.report.comparison
    assert comparison.sets == ["separated", "noise"]
    first, second = result.report.sets
    assert comparison.series["loo_error.nnk_weighted"] == [
        first.loo_error.nnk_weighted,
        second.loo_error.nnk_weighted,
    ]
    assert comparison.series["regime"] == ["homogeneous", "not_interpolating"]
    assert comparison.series["homogeneity.pure_patch_fraction"][0] == 1.0
    assert comparison.series["homogeneity.pure_patch_fraction"][1] < 0.5
