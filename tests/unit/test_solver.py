"""The NNK solver against scipy NNLS one node at a time, and its KKT contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tests.unit.reference import (
    authors_reference,
    brute_force_neighbours,
    kkt_residual,
    nnk_reference,
)
from workers.geometry.kernels import candidate_kernels, kernel_vectors
from workers.geometry.solver import nnk_weights


def _problems(points: np.ndarray, k: int, *, kernel: str = "cosine", sigma=None):
    metric = "cosine" if kernel == "cosine" else "euclidean"
    candidates = brute_force_neighbours(points, k, metric=metric)
    vectors = kernel_vectors(points.astype(np.float32), kernel=kernel)
    gram, rhs = candidate_kernels(
        vectors, np.arange(points.shape[0]), candidates, kernel=kernel, sigma=sigma
    )
    return gram, rhs


def _clusters(rng, n=600, dim=32, n_clusters=6, spread=0.3):
    centres = rng.standard_normal((n_clusters, dim))
    return centres[rng.integers(0, n_clusters, n)] + spread * rng.standard_normal((n, dim))


def _sphere(rng, n=500, intrinsic=4, ambient=64):
    """Points on S^intrinsic, mapped isometrically into R^ambient."""
    ball = rng.standard_normal((n, intrinsic + 1))
    ball /= np.linalg.norm(ball, axis=1, keepdims=True)
    basis, _ = np.linalg.qr(rng.standard_normal((ambient, intrinsic + 1)))
    return ball @ basis.T + 3.0 * basis[:, 0]


DATASETS = {
    "gaussian_noise": lambda rng: rng.standard_normal((400, 48)),
    "clusters": _clusters,
    "low_dim_sphere": _sphere,
    "fewer_dims_than_k": lambda rng: rng.standard_normal((300, 6)),
}


def _assert_matches_reference(gram: torch.Tensor, rhs: torch.Tensor, weights: torch.Tensor):
    gram_np, rhs_np, weights_np = gram.numpy(), rhs.numpy(), weights.numpy()
    for node in range(rhs_np.shape[0]):
        expected = nnk_reference(gram_np[node], rhs_np[node])
        got = weights_np[node]
        np.testing.assert_array_equal(got > 0, expected > 0, err_msg=f"support of node {node}")
        assert np.abs(got - expected).max() <= 1e-4 * expected.max(), f"weights of node {node}"
        assert kkt_residual(gram_np[node], rhs_np[node], got) <= 1e-6, f"KKT of node {node}"


@pytest.mark.parametrize("dataset", sorted(DATASETS))
@pytest.mark.parametrize("kernel", ["cosine", "gaussian"])
def test_exact_solver_matches_scipy_nnls_per_node(dataset, kernel):
    rng = np.random.default_rng(sum(map(ord, dataset + kernel)))
    points = DATASETS[dataset](rng)
    gram, rhs = _problems(points, 20, kernel=kernel)
    weights, _ = nnk_weights(gram, rhs)
    _assert_matches_reference(gram, rhs, weights)


def test_reconstruction_error_is_the_quadratic_form():
    rng = np.random.default_rng(1)
    gram, rhs = _problems(_clusters(rng, n=200), 15)
    weights, error = nnk_weights(gram, rhs)
    g, b, w = gram.numpy(), rhs.numpy(), weights.numpy()
    expected = [1 - 2 * w[i] @ b[i] + w[i] @ g[i] @ w[i] for i in range(len(b))]
    np.testing.assert_allclose(error.numpy(), expected, rtol=0, atol=1e-12)
    assert (error.numpy() >= -1e-12).all()


def test_nnk_drops_neighbour_shadowed_by_closer_one():
    # On a line: the far candidate lies behind the near one as seen from the query,
    # so the near one explains it and the far one gets no weight (gaussian kernel).
    query, near, far, side = [0.0, 0.0], [1.0, 0.0], [2.0, 0.05], [0.0, 1.0]
    points = np.array([query, near, far, side])
    gram, rhs = _problems(points, 3, kernel="gaussian", sigma=1.0)
    weights, _ = nnk_weights(gram[:1], rhs[:1])
    candidates = brute_force_neighbours(points, 3, metric="euclidean")[0]
    by_point = dict(zip(candidates.tolist(), weights[0].tolist(), strict=True))
    assert by_point[1] > 0 and by_point[3] > 0
    assert by_point[2] == 0.0


def test_identical_candidate_takes_all_the_weight():
    rng = np.random.default_rng(2)
    points = rng.standard_normal((50, 8))
    points[7] = points[3]
    gram, rhs = _problems(points, 10)
    weights, error = nnk_weights(gram, rhs)
    candidates = brute_force_neighbours(points, 10, metric="cosine")
    for query, twin in ((3, 7), (7, 3)):
        row = weights[query].numpy()
        assert row[candidates[query] == twin].item() == 1.0
        assert (row > 0).sum() == 1
        assert abs(error[query].item()) < 1e-12
    assert torch.isfinite(weights).all()


def test_candidates_identical_to_each_other_do_not_break_the_solve():
    rng = np.random.default_rng(3)
    points = rng.standard_normal((120, 10))
    points[50:60] = points[40]  # eleven copies of one point
    gram, rhs = _problems(points, 15)
    weights, _ = nnk_weights(gram, rhs)
    assert torch.isfinite(weights).all()
    g, b, w = gram.numpy(), rhs.numpy(), weights.numpy()
    for node in range(len(b)):
        assert kkt_residual(g[node], b[node], w[node]) <= 1e-6
        reference = nnk_reference(g[node] + 0.0, b[node]) if node < 40 else None
        if reference is not None:
            # Where the twins are not involved, the optimum is unique: same objective.
            objective = 0.5 * w[node] @ g[node] @ w[node] - b[node] @ w[node]
            expected = 0.5 * reference @ g[node] @ reference - b[node] @ reference
            assert objective <= expected + 1e-9


def test_ignore_identical_excludes_such_candidates():
    rng = np.random.default_rng(4)
    points = rng.standard_normal((60, 8))
    points[10] = points[20]
    gram, rhs = _problems(points, 8)
    allowed = rhs < 1.0 - 1e-12
    weights, _ = nnk_weights(gram, rhs, allowed=allowed)
    assert (weights[~allowed] == 0).all()
    assert (weights[10] > 0).sum() > 1


def test_authors_solver_equals_its_transcription_and_is_not_exact():
    rng = np.random.default_rng(5)
    gram, rhs = _problems(_clusters(rng, n=300, dim=64), 25)
    authors, _ = nnk_weights(gram, rhs, solver="authors")
    exact, _ = nnk_weights(gram, rhs)
    g, b = gram.numpy(), rhs.numpy()
    for node in range(len(b)):
        np.testing.assert_allclose(
            authors[node].numpy(), authors_reference(g[node], b[node]), rtol=1e-7, atol=1e-9
        )
    same_support = ((authors > 0) == (exact > 0)).all(dim=1).float().mean().item()
    assert same_support < 0.9, "the prune-only solver should miss the optimum on many nodes"
    assert (authors > 0).sum() < (exact > 0).sum()


@st.composite
def _problem_sets(draw):
    n = draw(st.integers(8, 30))
    dim = draw(st.integers(2, 12))
    k = draw(st.integers(2, min(n - 1, 12)))
    points = draw(
        arrays(np.float64, (n, dim), elements=st.floats(-5, 5, allow_nan=False, width=32))
    )
    points += 1e-3 * np.arange(n * dim).reshape(n, dim) / (n * dim)  # no zero rows
    return points, k


@settings(max_examples=40, deadline=None)
@given(_problem_sets(), st.sampled_from(["cosine", "gaussian"]))
def test_weights_are_non_negative_and_satisfy_kkt(problem, kernel):
    points, k = problem
    gram, rhs = _problems(points, k, kernel=kernel)
    weights, error = nnk_weights(gram, rhs)
    assert (weights >= 0).all() and torch.isfinite(weights).all()
    assert (error > -1e-9).all()
    for node in range(points.shape[0]):
        assert kkt_residual(gram[node].numpy(), rhs[node].numpy(), weights[node].numpy()) <= 1e-6


@settings(max_examples=25, deadline=None)
@given(_problem_sets(), st.randoms(use_true_random=False))
def test_weights_are_equivariant_under_candidate_permutation(problem, random):
    points, k = problem
    gram, rhs = _problems(points, k)
    order = list(range(k))
    random.shuffle(order)
    permutation = torch.tensor(order)
    weights, _ = nnk_weights(gram, rhs)
    permuted_gram, permuted_rhs = gram[:, permutation][:, :, permutation], rhs[:, permutation]
    permuted, _ = nnk_weights(permuted_gram, permuted_rhs)

    def objective(g, b, w):
        return 0.5 * torch.einsum("ni,nij,nj->n", w, g, w) - (b * w).sum(dim=1)

    # Always: the same optimal value, to what the 1e-6 KKT contract allows (a KKT point
    # within delta of optimality is within about delta * |theta|_1 of the optimal value).
    gap = (objective(permuted_gram, permuted_rhs, permuted) - objective(gram, rhs, weights)).abs()
    bound = 1e-6 * (weights.abs().sum(dim=1) + permuted.abs().sum(dim=1)) + 1e-12
    assert bool((gap <= bound).all()), (gap.max().item(), bound.min().item())
    # The same weights wherever the optimum is unique: K_S positive definite (a singular
    # K_S, e.g. candidates in nearly one direction, admits many optimal weightings).
    unique = torch.linalg.eigvalsh(gram)[:, 0] > 1e-9
    torch.testing.assert_close(permuted[unique], weights[:, permutation][unique], rtol=0, atol=1e-6)
