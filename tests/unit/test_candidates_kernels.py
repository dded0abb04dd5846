"""Candidate search against a brute-force distance matrix; kernels against their formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.unit.reference import brute_force_neighbours, kernel_matrix
from workers.geometry.approximate_search import approximate_candidates
from workers.geometry.candidates import exact_candidates, prepare_vectors, torch_candidates
from workers.geometry.kernels import candidate_kernels, kernel_vectors


def _distinct_points(seed: int, n: int = 500, dim: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_exact_search_equals_brute_force(metric):
    points = _distinct_points(0)
    found = exact_candidates(prepare_vectors(points, metric=metric), 12, metric=metric, tile=97)
    np.testing.assert_array_equal(found.indices, brute_force_neighbours(points, 12, metric=metric))
    assert (found.recall, found.recall_sample) == (1.0, 0)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_torch_search_equals_faiss(metric):
    points = _distinct_points(1, n=700)
    vectors = prepare_vectors(points, metric=metric)
    faiss_found = exact_candidates(vectors, 10, metric=metric)
    torch_found = torch_candidates(vectors, 10, metric=metric, query_block=128, column_block=200)
    np.testing.assert_array_equal(torch_found.indices, faiss_found.indices)
    np.testing.assert_allclose(torch_found.scores, faiss_found.scores, rtol=1e-4, atol=1e-4)


def test_a_point_is_never_its_own_candidate_even_among_duplicates():
    points = _distinct_points(2, n=80, dim=4)
    points[10:30] = points[10]  # twenty copies: more than k + 1 ties
    found = exact_candidates(prepare_vectors(points, metric="euclidean"), 5, metric="euclidean")
    rows = np.arange(points.shape[0])[:, None]
    assert not (found.indices == rows).any()
    assert all(len(set(row)) == 5 for row in found.indices.tolist())
    assert set(found.indices[15].tolist()) <= set(range(10, 30))


def test_approximate_search_reports_the_recall_it_reached():
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((20, 24)) * 4
    points = (centres[rng.integers(0, 20, 4000)] + rng.standard_normal((4000, 24))).astype(
        np.float32
    )
    vectors = prepare_vectors(points, metric="cosine")
    found = approximate_candidates(vectors, 15, metric="cosine", seed=0)
    exact = brute_force_neighbours(points, 15, metric="cosine")
    true_recall = np.mean(
        [np.intersect1d(a, e).size / 15 for a, e in zip(found.indices, exact, strict=True)]
    )
    assert found.recall >= 0.95
    assert found.recall_sample == 1000
    assert abs(found.recall - true_recall) < 0.02


def test_cosine_kernel_matches_the_formula():
    points = _distinct_points(4, n=60, dim=5)
    candidates = brute_force_neighbours(points, 7, metric="cosine")
    vectors = kernel_vectors(points, kernel="cosine")
    gram, rhs = candidate_kernels(vectors, np.arange(60), candidates, kernel="cosine")
    dense = kernel_matrix(points, kernel="cosine")
    for i in range(60):
        np.testing.assert_allclose(
            gram[i].numpy(), dense[np.ix_(candidates[i], candidates[i])], atol=1e-12
        )
        np.testing.assert_allclose(rhs[i].numpy(), dense[candidates[i], i], atol=1e-12)
    assert torch.all(gram.diagonal(dim1=1, dim2=2) == 1.0)


def test_gaussian_kernel_uses_a_third_of_the_kth_candidate_distance():
    points = _distinct_points(5, n=60, dim=5)
    candidates = brute_force_neighbours(points, 7, metric="euclidean")
    vectors = kernel_vectors(points, kernel="gaussian")
    gram, rhs = candidate_kernels(vectors, np.arange(60), candidates, kernel="gaussian")
    p64 = points.astype(np.float64)
    for i in range(60):
        sigma = np.linalg.norm(p64[i] - p64[candidates[i][-1]]) / 3.0
        dense = kernel_matrix(p64[np.r_[candidates[i], i]], kernel="gaussian", sigma=sigma)
        np.testing.assert_allclose(gram[i].numpy(), dense[:7, :7], atol=1e-10)
        np.testing.assert_allclose(rhs[i].numpy(), dense[:7, 7], atol=1e-10)
    # The k-th candidate sits at 3 sigma: exp(-9/2).
    np.testing.assert_allclose(rhs[:, -1].numpy(), np.exp(-4.5), rtol=1e-9)


def test_gaussian_kernel_with_fixed_sigma():
    points = _distinct_points(6, n=30, dim=3)
    candidates = brute_force_neighbours(points, 4, metric="euclidean")
    vectors = kernel_vectors(points, kernel="gaussian")
    _gram, rhs = candidate_kernels(vectors, np.arange(30), candidates, kernel="gaussian", sigma=0.7)
    dense = kernel_matrix(points, kernel="gaussian", sigma=0.7)
    for i in range(30):
        np.testing.assert_allclose(rhs[i].numpy(), dense[candidates[i], i], atol=1e-10)
