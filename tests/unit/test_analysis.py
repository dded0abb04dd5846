"""The whole in-process analysis: validation at the boundary, options, progress, cancel."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from pydantic import ValidationError

from api_schemas import AnalysisParams, Report
from workers.geometry import (
    AnalysisCanceled,
    EmbeddingSet,
    InvalidInputError,
    analyze,
    analyze_set,
)


def _points(n=200, dim=8, seed=0):
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


@pytest.mark.parametrize(
    ("embeddings", "labels", "k", "field", "phrase"),
    [
        (np.full((10, 3), np.nan, np.float32), None, 3, "sets[s].embeddings", "NaN or Inf"),
        (
            np.array([[1, 2], [np.inf, 0], [1, 1], [2, 2]], np.float32),
            None,
            2,
            "sets[s].embeddings",
            "row 1",
        ),
        (
            np.vstack([_points(10, 3), np.zeros((1, 3), np.float32)]),
            None,
            3,
            "sets[s].embeddings",
            "zero vector",
        ),
        (_points(10, 3), None, 10, "params.k", "smaller than the number of points"),
        (_points(2, 3), None, 1, "sets[s].embeddings", "at least 3 points"),
        (_points(10, 3)[:, :, None], None, 3, "sets[s].embeddings", "2-D"),
        (_points(10, 3), np.zeros(9, int), 3, "sets[s].labels", "one entry per point"),
        (_points(10, 3), np.zeros(10, float), 3, "sets[s].labels", "integers or strings"),
        (np.array([["a", "b"]] * 5), None, 3, "sets[s].embeddings", "numeric"),
    ],
)
def test_bad_input_is_refused_with_the_field_named(embeddings, labels, k, field, phrase):
    with pytest.raises(InvalidInputError) as caught:
        analyze_set(EmbeddingSet("s", embeddings, labels), params=AnalysisParams(k=k))
    assert caught.value.field == field
    assert phrase in caught.value.message


def test_params_refuse_unknown_fields_and_misplaced_sigma():
    with pytest.raises(ValidationError):
        AnalysisParams(k=5, neighbours=3)
    with pytest.raises(ValidationError, match="sigma applies only"):
        AnalysisParams(k=5, sigma=1.0)
    assert AnalysisParams(k=5, kernel="gaussian", sigma=1.0).sigma == 1.0


def test_gaussian_kernel_and_string_labels():
    points = _points()
    labels = np.array(["cat", "dog"])[np.arange(200) % 2]
    report = analyze_set(
        EmbeddingSet("s", points, labels), params=AnalysisParams(k=10, kernel="gaussian")
    ).report
    assert [c.label for c in report.per_class] == ["cat", "dog"]
    assert set(report.nnk_degree.per_class) == {"cat", "dog"}
    assert report.n_classes == 2


def test_duplicates_are_counted_and_ignore_identical_drops_them():
    points = _points(100, 6)
    points[50:53] = points[10]
    plain = analyze_set(EmbeddingSet("s", points), params=AnalysisParams(k=8))
    assert plain.report.graph.duplicate_pairs == 6  # 4 copies: C(4, 2) pairs
    assert np.diff(plain.directed.indptr)[10] == 1
    assert any("identical" in warning for warning in plain.report.warnings)
    dropped = analyze_set(
        EmbeddingSet("s", points), params=AnalysisParams(k=8, ignore_identical=True)
    )
    assert dropped.report.graph.duplicate_pairs == 6
    twins = {10, 50, 51, 52}
    for i in twins:
        assert not twins & set(dropped.directed[i].indices) - {i}
        assert dropped.directed[i].nnz > 1


def test_authors_solver_and_approximate_search_run_end_to_end():
    points = _points(3000, 16)
    result = analyze_set(
        EmbeddingSet("s", points),
        params=AnalysisParams(k=10, solver="authors", knn="approximate"),
    )
    assert result.report.graph.knn_recall >= 0.95
    assert result.report.graph.knn_recall_sample == 1000
    assert result.report.loo_error is None and result.report.regime is None


def test_cuda_request_without_a_gpu_falls_back_with_a_warning():
    result = analyze_set(EmbeddingSet("s", _points()), params=AnalysisParams(k=5, device="cuda"))
    assert any("no GPU" in warning for warning in result.report.warnings)


def test_threads_do_not_change_the_numbers():
    points = _points(5000, 12)
    params = AnalysisParams(k=15)
    one = analyze_set(EmbeddingSet("s", points), params=params, n_threads=1)
    two = analyze_set(EmbeddingSet("s", points), params=params, n_threads=2)
    assert (one.directed != two.directed).nnz == 0


def test_progress_reaches_one_and_a_callback_can_cancel():
    seen: list[tuple[str, float]] = []
    sets = [EmbeddingSet("a", _points()), EmbeddingSet("b", _points(seed=1))]
    analyze(sets, params=AnalysisParams(k=5), progress=lambda s, f: seen.append((s, f)))
    fractions = [f for _, f in seen]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert {stage.split(":")[0] for stage, _ in seen} == {"a", "b"}

    def cancel(stage: str, fraction: float) -> None:
        if stage.endswith("solve"):
            raise AnalysisCanceled

    with pytest.raises(AnalysisCanceled):
        analyze(sets, params=AnalysisParams(k=5), progress=cancel)


def test_report_round_trips_through_json_and_its_schema():
    result = analyze(
        [EmbeddingSet("s", _points(), np.arange(200) % 3)], params=AnalysisParams(k=5), job_id="j1"
    )
    text = result.report.model_dump_json()
    assert Report.model_validate_json(text) == result.report
    schema = Report.model_json_schema()
    assert {"sets", "algorithm_version", "params"} <= set(schema["properties"])


@pytest.mark.parametrize("knn", ["exact", "approximate"])
def test_shards_of_rows_join_into_the_unsharded_graph_bit_for_bit(knn):
    from workers.geometry.analysis import (
        SHARD_ALIGNMENT,
        NNKGraph,
        build_approximate_index_for,
        build_nnk_graph,
        measure_set,
    )

    points = _points(3 * SHARD_ALIGNMENT + 123, 10, seed=7)
    labels = np.arange(points.shape[0]) % 4
    params = AnalysisParams(k=12, knn=knn)
    index = build_approximate_index_for(points, params=params) if knn == "approximate" else None
    whole = build_nnk_graph(points, params=params, index=index)
    bounds = [0, SHARD_ALIGNMENT, 3 * SHARD_ALIGNMENT, points.shape[0]]
    shards = [
        build_nnk_graph(points, params=params, rows=(start, stop), index=index)
        for start, stop in itertools.pairwise(bounds)
    ]
    joined = NNKGraph.concatenate(shards[::-1])
    for field in ("candidate_indices", "weights", "query_kernel", "reconstruction_error"):
        np.testing.assert_array_equal(getattr(joined, field), getattr(whole, field))
    embedding_set = EmbeddingSet("s", points, labels)
    from_shards = measure_set(embedding_set, joined, params=params).report
    from_whole = analyze_set(embedding_set, params=params).report
    assert from_shards.model_dump(exclude={"timings"}) == from_whole.model_dump(exclude={"timings"})
    with pytest.raises(ValueError, match="uncovered"):
        NNKGraph.concatenate([shards[0], shards[2]])
