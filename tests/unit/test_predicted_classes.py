"""Predictions from each row's k candidates equal the argmax of the dense class scores.

The dense (rows x classes) scores of :func:`class_scores` are the slow obvious reference;
:func:`predicted_classes` must agree on every row, ties, absent classes, zero and
negative weights included.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.geometry.metrics import class_scores, point_metrics, predicted_classes


def _case(seed: int, n_classes: int, k: int, weight_kind: str):
    rng = np.random.default_rng(seed)
    n_points = 60
    codes = rng.integers(0, n_classes, n_points)
    candidates = rng.integers(0, n_points, (n_points, k))
    if weight_kind == "ties":
        weights = rng.integers(0, 3, (n_points, k)).astype(np.float64)  # many equal sums
    elif weight_kind == "signed":
        weights = rng.integers(-2, 3, (n_points, k)) * 0.5  # negative, zero and tied sums
    elif weight_kind == "sparse":
        weights = rng.random((n_points, k)) * (rng.random((n_points, k)) < 0.3)
    else:
        weights = rng.random((n_points, k)).astype(np.float32)
    return candidates, weights, codes


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 100_000),
    st.integers(1, 12),
    st.integers(1, 9),
    st.sampled_from(["ties", "signed", "sparse", "float32"]),
)
def test_predicted_classes_equal_the_argmax_of_dense_scores(seed, n_classes, k, weight_kind):
    candidates, weights, codes = _case(seed, n_classes, k, weight_kind)
    dense = class_scores(candidates, weights, codes, n_classes).argmax(axis=1)
    np.testing.assert_array_equal(predicted_classes(candidates, weights, codes, n_classes), dense)


def test_an_isolated_point_predicts_the_smallest_class_as_the_dense_argmax_does() -> None:
    codes = np.array([3, 1, 2, 0, 1])
    candidates = np.array([[1, 2], [0, 2], [0, 1], [1, 2], [0, 2]])
    weights = np.zeros((5, 2))
    assert (predicted_classes(candidates, weights, codes, 4) == 0).all()
    # Class 0 absent from row 0's candidates (classes 1, 2) and every score negative: the
    # absent class 0 scores 0, the largest.
    assert predicted_classes(candidates[:1], -np.ones((1, 2)), codes, 4)[0] == 0


def test_point_metrics_unweighted_rules_equal_the_dense_argmax() -> None:
    rng = np.random.default_rng(3)
    n, k, n_classes = 400, 7, 5
    candidates = rng.integers(0, n, (n, k))
    weights = rng.random((n, k)) * (rng.random((n, k)) < 0.5)
    query_kernel = rng.random((n, k))
    valid = rng.random((n, k)) < 0.9
    codes = rng.integers(0, n_classes, n)
    points = point_metrics(candidates, weights, query_kernel, codes, n_classes, valid=valid)

    def dense_wrong(candidate_weights):
        return class_scores(candidates, candidate_weights, codes, n_classes).argmax(1) != codes

    np.testing.assert_array_equal(
        points.wrong_nnk_unweighted, dense_wrong((weights > 0).astype(float))
    )
    np.testing.assert_array_equal(
        points.wrong_knn_weighted, dense_wrong(np.where(valid, query_kernel, 0.0))
    )
    np.testing.assert_array_equal(points.wrong_knn_unweighted, dense_wrong(valid.astype(float)))
