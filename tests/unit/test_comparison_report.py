"""The compare and drift report sections, as jobs and the CLI make them, against references.

The sections come from the real analysis (``analyze``) followed by
``add_comparison_sections``, the path of the service's worker and of ``nnkgeo compare`` /
``nnkgeo drift``. They are checked against the slow references of test_compare (Python
sets and dicts over the graphs' rows; the n x n HSIC formula for CKA) and of test_drift
(float64 brute-force neighbours, scipy NNLS per point, plain loops for scores), and
against scipy.stats.ks_2samp.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from api_schemas import AnalysisParams, Report
from jobstate.errors import InvalidInputError
from tests.unit.test_compare import _reference_overlap, _row
from tests.unit.test_drift import _clusters, _reference_drift
from workers.geometry import EmbeddingSet, analyze
from workers.geometry.comparison_report import add_comparison_sections
from workers.geometry.drift import drift_scores

K = 8
# Fresh samples of the reference's distribution flagged as drift, over 20 seeds, through
# the job path; the bound is 10 %.
MAX_FALSE_POSITIVE_RATE = 0.10


def _hsic_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA by the n x n formula: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))."""
    n = x.shape[0]
    centring = np.eye(n) - np.ones((n, n)) / n
    gram_x = centring @ (x.astype(np.float64) @ x.astype(np.float64).T) @ centring
    gram_y = centring @ (y.astype(np.float64) @ y.astype(np.float64).T) @ centring
    return float(
        np.sum(gram_x * gram_y) / np.sqrt(np.sum(gram_x * gram_x) * np.sum(gram_y * gram_y))
    )


def _labelled_points(seed: int, n: int = 150, dim: int = 6):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    centres = 2.5 * rng.standard_normal((3, dim))
    points = (centres[labels] + rng.standard_normal((n, dim))).astype(np.float32)
    return rng, points, labels


def test_compare_section_matches_per_point_references():
    rng, first, labels = _labelled_points(3)
    second = np.tanh(first @ rng.standard_normal((6, 9))).astype(np.float32)
    ids = np.array([f"p{i}" for i in range(first.shape[0])])
    sets = [EmbeddingSet("early", first, labels, ids), EmbeddingSet("late", second, labels, ids)]
    params = AnalysisParams(k=K, device="cpu", knn="exact")
    analysis = add_comparison_sections(
        analyze(sets, params=params, n_threads=1), sets, params=params, compare_sets=True
    )
    section = analysis.report.compare
    assert section is not None and (section.a, section.b) == ("early", "late")
    graph_a, graph_b = analysis.sets["early"].directed, analysis.sets["late"].directed
    jaccard, weighted = (np.array(v) for v in _reference_overlap(graph_a, graph_b))
    # The points changed: neither all nor none of the neighbourhoods survive.
    assert 0.05 < jaccard.mean() < 0.95

    for got, values in ((section.overlap.jaccard, jaccard), (section.overlap.weighted, weighted)):
        assert got.mean == pytest.approx(values.mean(), abs=1e-12)
        assert got.median == pytest.approx(np.median(values), abs=1e-12)
        assert got.p10 == pytest.approx(np.percentile(values, 10), abs=1e-12)
        assert got.p90 == pytest.approx(np.percentile(values, 90), abs=1e-12)
    assert [c.label for c in section.per_class] == [0, 1, 2]
    for entry in section.per_class:
        members = labels == entry.label
        assert entry.n == members.sum()
        assert entry.jaccard == pytest.approx(jaccard[members].mean(), abs=1e-12)
        assert entry.weighted == pytest.approx(weighted[members].mean(), abs=1e-12)

    # The 100 most changed: lowest Jaccard, then lowest weighted overlap, then index.
    order = sorted(
        range(jaccard.size), key=lambda i: (round(jaccard[i], 12), round(weighted[i], 12), i)
    )
    assert [p.index for p in section.changed] == order[:100]
    for point in section.changed:
        assert point.id == f"p{point.index}"
        for listed, graph in ((point.neighbours_a, graph_a), (point.neighbours_b, graph_b)):
            row = _row(graph, point.index)
            assert listed == sorted(row, key=lambda j, row=row: (-row[j], j))
    assert section.cka_linear == pytest.approx(_hsic_cka(first, second), abs=1e-9)
    # The report round-trips through its JSON (what the service stores and serves).
    assert Report.model_validate_json(analysis.report.model_dump_json()) == analysis.report


def test_overlap_consecutive_follows_sets_of_the_same_points_only():
    rng, first, labels = _labelled_points(5)
    second = (first + 0.3 * rng.standard_normal(first.shape)).astype(np.float32)
    third = np.tanh(second).astype(np.float32)
    params = AnalysisParams(k=K, device="cpu", knn="exact")
    sets = [EmbeddingSet(n, x, labels) for n, x in (("l1", first), ("l2", second), ("l3", third))]
    analysis = analyze(sets, params=params, n_threads=1)
    graphs = [analysis.sets[name].directed for name in ("l1", "l2", "l3")]
    expected = [
        np.mean(_reference_overlap(graphs[0], graphs[1])[0]),
        np.mean(_reference_overlap(graphs[1], graphs[2])[0]),
    ]
    assert analysis.report.comparison.overlap_consecutive == pytest.approx(expected, abs=1e-12)
    assert analysis.report.compare is None and analysis.report.drift is None

    other = analyze(
        [EmbeddingSet("all", first), EmbeddingSet("fewer", first[:100])],
        params=params,
        n_threads=1,
    )
    assert other.report.comparison.overlap_consecutive is None
    # As many points, but other ones (a model job drops each layer's zero rows): their
    # ids differ, and rows are not compared.
    ids = np.arange(first.shape[0])
    shifted = analyze(
        [EmbeddingSet("l1", first, ids=ids), EmbeddingSet("l2", second, ids=ids + 1)],
        params=params,
        n_threads=1,
    )
    assert shifted.report.comparison.overlap_consecutive is None
    same = analyze(
        [EmbeddingSet("l1", first, ids=ids), EmbeddingSet("l2", second, ids=ids.copy())],
        params=params,
        n_threads=1,
    )
    assert same.report.comparison.overlap_consecutive == pytest.approx(expected[:1], abs=1e-12)


def test_compare_of_other_points_names_the_field():
    _, points, _ = _labelled_points(1)
    sets = [EmbeddingSet("a", points), EmbeddingSet("b", points[:100])]
    params = AnalysisParams(k=K, device="cpu")
    analysis = analyze(sets, params=params, n_threads=1)
    with pytest.raises(InvalidInputError) as raised:
        add_comparison_sections(analysis, sets, params=params, compare_sets=True)
    assert raised.value.field == "compare.b.embeddings"
    ids = np.arange(points.shape[0])
    sets = [EmbeddingSet("a", points, ids=ids), EmbeddingSet("b", points[::-1], ids=ids[::-1])]
    analysis = analyze(sets, params=params, n_threads=1)
    with pytest.raises(InvalidInputError) as raised:
        add_comparison_sections(analysis, sets, params=params, compare_sets=True)
    assert raised.value.field == "compare.b.ids"


@pytest.mark.parametrize(("kernel", "dim"), [("cosine", 12), ("gaussian", 6)])
def test_drift_section_matches_brute_force(kernel, dim):
    rng = np.random.default_rng(17)
    centres = 3.0 * rng.standard_normal((3, dim))
    reference, reference_labels = _clusters(rng, 120, centres)
    current, current_labels = _clusters(rng, 50, centres, shift=(2, 2.0))
    params = AnalysisParams(k=K, kernel=kernel, device="cpu", knn="exact")
    sets = [EmbeddingSet("train", reference, reference_labels)]
    analysis = add_comparison_sections(
        analyze(sets, params=params, n_threads=1),
        sets,
        params=params,
        current=EmbeddingSet("prod", current, current_labels, ids=np.arange(50) * 7),
        threshold=0.05,
        n_threads=1,
    )
    section = analysis.report.drift
    reference_error, current_error, degree, scores = _reference_drift(
        reference, current, kernel=kernel
    )
    # The reference's errors are the analysis's own graph's, not a second solve.
    np.testing.assert_allclose(
        analysis.sets["train"].reconstruction_error, reference_error, rtol=0, atol=1e-9
    )
    assert (section.reference, section.current) == ("train", "prod")
    assert (section.n_reference, section.n_current) == (120, 50)
    assert section.score.mean == pytest.approx(scores.mean())
    assert section.score.p90 == pytest.approx(np.percentile(scores, 90))
    assert section.score.p99 == pytest.approx(np.percentile(scores, 99))
    test = scipy.stats.ks_2samp(current_error, reference_error)
    assert section.ks.statistic == pytest.approx(test.statistic)
    assert section.ks.p_value == pytest.approx(test.pvalue, rel=1e-6)
    assert section.threshold == 0.05
    assert section.verdict == ("drift" if test.pvalue < 0.05 else "no_drift")
    assert section.current_reconstruction_error.mean == pytest.approx(current_error.mean())
    assert section.current_reconstruction_error.max == pytest.approx(current_error.max())
    assert section.current_nnk_degree.mean == pytest.approx(degree.mean())

    expected = sorted(range(50), key=lambda c: (-scores[c], -current_error[c], c))
    assert [d.index for d in section.drifted] == expected
    assert [d.id for d in section.drifted] == [7 * c for c in expected]
    assert [d.nnk_degree for d in section.drifted] == [int(degree[c]) for c in expected]
    for entry in section.per_class:
        in_current = current_labels == entry.label
        assert entry.score_mean == pytest.approx(scores[in_current].mean())
        assert entry.error_shift == pytest.approx(
            current_error[in_current].mean()
            - reference_error[reference_labels == entry.label].mean()
        )
    moved = max(section.per_class, key=lambda c: c.centroid_shift)
    assert moved.label == 2


def test_given_reference_errors_give_what_drift_scores_builds_itself():
    rng = np.random.default_rng(2)
    centres = 3.0 * rng.standard_normal((3, 6))
    reference, _ = _clusters(rng, 150, centres)
    current, _ = _clusters(rng, 60, centres)
    params = AnalysisParams(k=K, kernel="gaussian", device="cpu", knn="exact")
    analysis = analyze([EmbeddingSet("r", reference)], params=params, n_threads=1)
    given = drift_scores(
        reference,
        current,
        k=K,
        kernel="gaussian",
        n_threads=1,
        reference_error=analysis.sets["r"].reconstruction_error,
    )
    built = drift_scores(reference, current, k=K, kernel="gaussian", n_threads=1)
    np.testing.assert_array_equal(given.scores, built.scores)
    assert given.ks == built.ks
    with pytest.raises(InvalidInputError) as raised:
        drift_scores(reference, current, k=K, reference_error=np.zeros(3))
    assert raised.value.field == "reference_error"


def _drift_job(seed: int, *, shift: bool):
    """A drift job's section on 4 gaussian clusters in 8 dimensions (300 vs 200 points)."""
    rng = np.random.default_rng(1000 + seed)
    centres = 3.0 * rng.standard_normal((4, 8))
    reference, reference_labels = _clusters(rng, 300, centres)
    offset = None
    if shift:
        direction = rng.standard_normal(8)
        offset = (2, 6.0 * direction / np.linalg.norm(direction))
    current, current_labels = _clusters(rng, 200, centres, shift=offset)
    kernel = "cosine" if seed % 2 else "gaussian"
    params = AnalysisParams(k=10, kernel=kernel, device="cpu", knn="exact")
    sets = [EmbeddingSet("reference", reference, reference_labels)]
    analysis = add_comparison_sections(
        analyze(sets, params=params, n_threads=1),
        sets,
        params=params,
        current=EmbeddingSet("current", current, current_labels),
        n_threads=1,
    )
    return analysis.report.drift


def test_planted_drift_of_one_class_is_detected_by_the_job():
    for seed in (0, 1):
        section = _drift_job(seed, shift=True)
        assert section.verdict == "drift", section.ks
        moved = next(c for c in section.per_class if c.label == 2)
        assert moved.score_mean > max(c.score_mean for c in section.per_class if c.label != 2)
        others = [c.centroid_shift for c in section.per_class if c.label != 2]
        assert moved.centroid_shift > 3 * max(others)


def test_false_positive_rate_of_the_job_over_20_fresh_samples():
    sections = [_drift_job(seed, shift=False) for seed in range(20)]
    flagged = sum(section.verdict == "drift" for section in sections)
    p_values = sorted(section.ks.p_value for section in sections)
    assert flagged / 20 <= MAX_FALSE_POSITIVE_RATE, p_values
    assert all(0.35 < section.score.mean < 0.65 for section in sections)
