"""The report's held-out, neural-collapse and baseline sections, and the LOO intervals.

Each is checked against an independent computation: the numeric core called directly,
NC1 from its definition in numpy, the Wilson interval from scipy, the probe from
scikit-learn.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from api_schemas import AnalysisParams, Report, SetReport
from jobstate.errors import InvalidInputError
from workers.geometry import EmbeddingSet
from workers.geometry.analysis import NNKGraph, analyze, analyze_set, build_nnk_graph, measure_set
from workers.geometry.out_of_sample import out_of_sample_metrics


@pytest.fixture(scope="module")
def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    data = load_digits()
    points = data.data.astype(np.float32)
    order = np.random.default_rng(0).permutation(points.shape[0])
    train, test = order[:1200], order[1200:]
    return points[train], data.target[train], points[test], data.target[test]


@pytest.fixture(scope="module")
def digits_report(digits_split) -> SetReport:
    x, y, q, qy = digits_split
    params = AnalysisParams(k=15, baselines=["linear_probe"])
    embedding_set = EmbeddingSet("digits", x, y, query_embeddings=q, query_labels=qy)
    return analyze_set(embedding_set, params=params, n_threads=1).report


def _nc1_by_definition(x: np.ndarray, y: np.ndarray) -> float:
    """Papyan, Han & Donoho (2020): tr(Sigma_W pinv(Sigma_B)) / C, straight from the sums."""
    x = x.astype(np.float64)
    classes = np.unique(y)
    global_mean = x.mean(axis=0)
    within = np.zeros((x.shape[1], x.shape[1]))
    between = np.zeros_like(within)
    for c in classes:
        members = x[y == c]
        mean = members.mean(axis=0)
        for row in members:
            within += np.outer(row - mean, row - mean)
        between += np.outer(mean - global_mean, mean - global_mean)
    within /= x.shape[0]
    between /= classes.size
    return float(np.trace(within @ np.linalg.pinv(between)) / classes.size)


def test_out_of_sample_section_is_the_core_called_directly(digits_split, digits_report):
    x, y, q, qy = digits_split
    direct = out_of_sample_metrics(x, y, q, qy, k=15, kernel="cosine", n_threads=1)
    section = digits_report.out_of_sample
    assert section is not None and section.n == q.shape[0] == direct.n
    for rule in ("nnk_weighted", "nnk_unweighted", "knn_weighted", "knn_unweighted"):
        assert getattr(section.error, rule) == getattr(direct.error, rule)
    assert section.nnk_degree.model_dump() == direct.nnk_degree.model_dump()
    assert section.reconstruction_error.model_dump() == direct.reconstruction_error.model_dump()
    test = direct.mcnemar_weighted_vs_unweighted
    assert section.mcnemar.weighted_vs_unweighted.model_dump() == {
        "b": test.b,
        "c": test.c,
        "p_value": test.p_value,
    }
    # McNemar's counts are the discordant queries, and its p-value scipy's exact test.
    b = int(np.sum(direct.correct_nnk_weighted & ~direct.correct_nnk_unweighted))
    c = int(np.sum(~direct.correct_nnk_weighted & direct.correct_nnk_unweighted))
    assert (section.mcnemar.weighted_vs_unweighted.b, section.mcnemar.weighted_vs_unweighted.c) == (
        b,
        c,
    )
    if b + c:
        expected_p = scipy.stats.binomtest(b, b + c, 0.5).pvalue
        assert section.mcnemar.weighted_vs_unweighted.p_value == pytest.approx(expected_p)
    # Digits are easy: the held-out error is small but not zero.
    assert 0.0 < section.error.nnk_weighted < 0.1


def test_neural_collapse_is_nc1_by_its_definition(digits_split, digits_report):
    x, y, _, _ = digits_split
    assert digits_report.neural_collapse.nc1 == pytest.approx(_nc1_by_definition(x, y), rel=1e-8)


def test_loo_intervals_are_scipys_wilson_intervals(digits_split, digits_report):
    x, _, _, _ = digits_split
    loo = digits_report.loo_error
    for rule in ("nnk_weighted", "nnk_unweighted"):
        errors = round(getattr(loo, rule) * x.shape[0])
        interval = scipy.stats.binomtest(errors, x.shape[0]).proportion_ci(method="wilson")
        assert getattr(loo, f"{rule}_ci95") == pytest.approx(
            [interval.low, interval.high], abs=1e-12
        )
    straddles = any(
        low <= 0.01 <= high for low, high in (loo.nnk_weighted_ci95, loo.nnk_unweighted_ci95)
    )
    assert digits_report.regime_uncertain is straddles


def test_regime_is_uncertain_when_an_interval_holds_the_threshold():
    # Four tight, far-apart clusters and one point mislabelled: it (and at most one
    # neighbour it sways) is wrong, 1 or 2 of 200, whose Wilson interval holds 0.01.
    rng = np.random.default_rng(1)
    centres = np.repeat(np.eye(4) * 100.0, 50, axis=0)
    points = (centres + rng.standard_normal((200, 4))).astype(np.float32)
    labels = np.repeat(np.arange(4), 50)
    labels[0] = 3
    report = analyze_set(EmbeddingSet("s", points, labels), params=AnalysisParams(k=10)).report
    errors = round(report.loo_error.nnk_weighted * 200)
    assert errors in (1, 2)
    assert report.regime == "homogeneous" or report.regime == "weighted"
    low, high = scipy.stats.binomtest(errors, 200).proportion_ci(method="wilson")
    assert low <= 0.01 <= high
    assert report.regime_uncertain is True


def test_linear_probe_baseline_is_sklearns_held_out_error(digits_split, digits_report):
    x, y, q, qy = digits_split
    scaler = StandardScaler().fit(x)
    probe = LogisticRegression(max_iter=1000, C=1.0).fit(scaler.transform(x), y)
    expected = float(np.mean(probe.predict(scaler.transform(q)) != qy))
    baseline = digits_report.baselines.linear_probe
    assert baseline.method == "held_out"
    assert baseline.error == pytest.approx(expected, abs=1e-12)


def test_sections_are_absent_unless_asked_or_possible(digits_split):
    x, y, q, _ = digits_split
    plain = analyze_set(EmbeddingSet("s", x[:300], y[:300]), params=AnalysisParams(k=10)).report
    assert plain.out_of_sample is None and plain.baselines is None
    assert plain.neural_collapse is not None  # labels: on by default
    unlabelled = analyze_set(
        EmbeddingSet("s", x[:300], query_embeddings=q[:50]), params=AnalysisParams(k=10)
    ).report
    held_out = unlabelled.out_of_sample
    assert unlabelled.neural_collapse is None and unlabelled.loo_error is None
    assert held_out.n == 50 and held_out.error is None and held_out.mcnemar is None
    direct = out_of_sample_metrics(x[:300], y[:300], q[:50], np.zeros(50, int), k=10)
    assert held_out.nnk_degree.model_dump() == direct.nnk_degree.model_dump()


def test_query_of_another_width_is_refused_naming_the_field(digits_split):
    x, y, q, qy = digits_split
    wide = EmbeddingSet("s", x, y, query_embeddings=q[:, :32], query_labels=qy)
    with pytest.raises(InvalidInputError) as refused:
        analyze([wide], params=AnalysisParams(k=10))
    assert refused.value.field == "sets[s].query.embeddings"
    short = EmbeddingSet("s", x, y, query_embeddings=q, query_labels=qy[:-1])
    with pytest.raises(InvalidInputError) as refused:
        analyze([short], params=AnalysisParams(k=10))
    assert refused.value.field == "sets[s].query.labels"


def test_reports_without_the_new_sections_parse_and_unknown_fields_are_kept(digits_report):
    report = Report(algorithm_version="x", params=AnalysisParams(), sets=[digits_report])
    data = report.model_dump(mode="json")
    data["sets"][0]["out_of_sample"]["from_a_newer_server"] = 1
    assert Report.model_validate(data).sets[0].out_of_sample.model_extra == {
        "from_a_newer_server": 1
    }
    for key in ("out_of_sample", "neural_collapse", "baselines", "regime_uncertain"):
        del data["sets"][0][key]
    for key in ("nnk_weighted_ci95", "nnk_unweighted_ci95"):
        del data["sets"][0]["loo_error"][key]
    old = Report.model_validate(data).sets[0]
    assert old.out_of_sample is None and old.loo_error.nnk_weighted_ci95 is None


def test_sharded_assembly_reports_the_queries_as_one_task_does(digits_split, digits_report):
    # A sharded job measures its set once, from the joined shards (workers/sharded.py):
    # the queries are solved there, against the whole set.
    x, y, q, qy = digits_split
    params = AnalysisParams(k=15, baselines=["linear_probe"])
    shards = [
        build_nnk_graph(x, params=params, rows=(start, min(start + 512, x.shape[0])))
        for start in range(0, x.shape[0], 512)
    ]
    embedding_set = EmbeddingSet("digits", x, y, query_embeddings=q, query_labels=qy)
    joined = measure_set(embedding_set, NNKGraph.concatenate(shards), params=params).report
    assert joined.out_of_sample == digits_report.out_of_sample
    assert joined.neural_collapse == digits_report.neural_collapse
    assert joined.baselines == digits_report.baselines
