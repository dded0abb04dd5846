"""The compiled CPU solve (numba) against scipy one node at a time, and against torch.

The reference builds each node's K and b with plain numpy from the DESIGN formulas and
solves with scipy (Cholesky, triangular solve, NNLS: tests/unit/reference.py); it shares
no code with workers.geometry. The torch solver is the GPU path: both must agree.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")

from tests.unit.reference import brute_force_neighbours, kkt_residual, nnk_reference
from workers.geometry import nnk_compiled, nnk_kernel
from workers.geometry.nnk_common import IDENTICAL_TOLERANCE


def _node_problem(points: np.ndarray, query: int, candidates: np.ndarray, *, kernel: str, sigma):
    """K[S, S] and K[S, i] of one node by the DESIGN formulas, in float64."""
    points = np.asarray(points, dtype=np.float32).astype(np.float64)
    if kernel == "cosine":
        unit = points / np.linalg.norm(points, axis=1, keepdims=True)
        neighbours, centre = unit[candidates], unit[query]
        gram = np.clip((1.0 + neighbours @ neighbours.T) / 2.0, 0.0, 1.0)
        np.fill_diagonal(gram, 1.0)
        return gram, np.clip((1.0 + neighbours @ centre) / 2.0, 0.0, 1.0)
    neighbours, centre = points[candidates], points[query]
    pair = ((neighbours[:, None, :] - neighbours[None, :, :]) ** 2).sum(axis=2)
    to_query = ((neighbours - centre) ** 2).sum(axis=1)
    bandwidth = np.sqrt(to_query.max()) / 3.0 if sigma is None else sigma
    bandwidth = bandwidth if bandwidth > 0 else 1.0
    return np.exp(-pair / (2 * bandwidth**2)), np.exp(-to_query / (2 * bandwidth**2))


def _problems(points: np.ndarray, k: int, *, kernel: str = "cosine", sigma=None):
    metric = "cosine" if kernel == "cosine" else "euclidean"
    candidates = brute_force_neighbours(points, k, metric=metric)
    pairs = [
        _node_problem(points, i, candidates[i], kernel=kernel, sigma=sigma)
        for i in range(points.shape[0])
    ]
    gram = np.stack([g for g, _ in pairs])
    rhs = np.stack([b for _, b in pairs])
    return candidates, gram, rhs


def _objective(gram: np.ndarray, rhs: np.ndarray, theta: np.ndarray) -> float:
    return 0.5 * theta @ gram @ theta - rhs @ theta


def _clusters(rng, n=300, dim=96, n_clusters=5, spread=0.4):
    centres = rng.standard_normal((n_clusters, dim))
    return centres[rng.integers(0, n_clusters, n)] + spread * rng.standard_normal((n, dim))


@pytest.mark.parametrize("kernel", ["cosine", "gaussian"])
@pytest.mark.parametrize("k", [5, 17, 30, 64])
def test_full_rank_problems_match_scipy_per_node(kernel, k):
    rng = np.random.default_rng(k + (kernel == "gaussian"))
    points = _clusters(rng).astype(np.float32)
    candidates, gram, rhs = _problems(points, k, kernel=kernel)
    weights, query_kernel, error = nnk_kernel.solve_vectors(
        points, np.arange(points.shape[0]), candidates, kernel=kernel
    )
    np.testing.assert_allclose(query_kernel, rhs, rtol=0, atol=1e-12)
    for node in range(points.shape[0]):
        expected = nnk_reference(gram[node], rhs[node])
        got = weights[node]
        np.testing.assert_array_equal(got > 0, expected > 0, err_msg=f"support of node {node}")
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-8 * expected.max())
        assert kkt_residual(gram[node], rhs[node], got) <= 1e-6, f"KKT of node {node}"
        expected_error = 1 - 2 * got @ rhs[node] + got @ gram[node] @ got
        assert abs(error[node] - expected_error) <= 1e-12


@pytest.mark.parametrize("kernel", ["cosine", "gaussian"])
@pytest.mark.parametrize("dim", [2, 5])
def test_rank_deficient_problems_reach_kkt_and_the_optimum(kernel, dim):
    # dim < k: K_S is singular (rank <= dim + 1), the optimum need not be unique.
    rng = np.random.default_rng(dim)
    points = rng.standard_normal((300, dim)).astype(np.float32)
    _candidates, gram, rhs = _problems(points, 30, kernel=kernel)
    weights, _ = nnk_kernel.solve_gram(gram, rhs)
    for node in range(points.shape[0]):
        got = weights[node]
        assert (got >= 0).all()
        assert kkt_residual(gram[node], rhs[node], got) <= 1e-6, f"KKT of node {node}"
        best = _objective(gram[node], rhs[node], nnk_reference(gram[node], rhs[node]))
        assert _objective(gram[node], rhs[node], got) <= best + 1e-9, f"optimum of node {node}"


@pytest.mark.parametrize("k", [5, 17, 30, 64])
def test_rank_deficient_flags_exactly_the_singular_candidate_matrices(k):
    # K = F F' (unit diagonal) from a factor F with r random columns: singular for r < k,
    # its first vanishing pivot at column r (so every panel and row of the blocked
    # factorisation is reached), and far from singular for r = 3k (eigenvalues around
    # (1 - 3^-1/2)^2, not near the 1e-13 pivot rule). The flag is then the numerical rank.
    # r >= 2: with r = 1 the candidates are copies of one another.
    rng = np.random.default_rng(100 + k)
    n_nodes = 80
    columns = np.where(rng.random(n_nodes) < 0.5, rng.integers(2, k, n_nodes), 3 * k)
    gram = np.empty((n_nodes, k, k))
    for node, width in enumerate(columns):
        factor = rng.standard_normal((k, width))
        factor /= np.linalg.norm(factor, axis=1, keepdims=True)
        gram[node] = factor @ factor.T
        np.fill_diagonal(gram[node], 1.0)
    flags = np.empty(n_nodes, dtype=bool)
    nnk_kernel.solve_gram(gram, rng.uniform(0.1, 0.9, (n_nodes, k)), rank_deficient=flags)
    expected = np.array([np.linalg.matrix_rank(g) < k for g in gram])
    assert 0 < expected.sum() < n_nodes
    np.testing.assert_array_equal(flags, expected)
    np.testing.assert_array_equal(flags, columns < k)


def test_planted_optima_are_found_and_tiny_weights_cut():
    # b = K theta* - slack, slack > 0 off the support of theta* and 0 on it: theta* is
    # the optimum (K theta - b = slack >= 0, = 0 where theta* > 0), known in advance.
    rng = np.random.default_rng(8)
    n_nodes, k = 200, 24
    # Non-negative factors: K >= 0 entrywise, as kernels are (the b_j <= 0 rule needs it).
    factor = np.abs(rng.standard_normal((n_nodes, k, 3 * k)))
    gram = factor @ factor.transpose(0, 2, 1)
    scale = 1.0 / np.sqrt(np.einsum("nii->ni", gram))
    gram *= scale[:, :, None] * scale[:, None, :]
    planted = np.where(rng.random((n_nodes, k)) < 0.4, rng.uniform(0.05, 1.0, (n_nodes, k)), 0.0)
    # Kernel values stay below 1 (b_j = 1 would mean a candidate identical to the query).
    planted *= 0.9 / np.einsum("nij,nj->ni", gram, planted).max(axis=1, keepdims=True)
    tiny = rng.random(n_nodes) < 0.5
    planted[tiny, 0] = 1e-9  # below RELATIVE_ZERO_WEIGHT times the largest: cut
    slack = np.where(planted > 0, 0.0, rng.uniform(1e-3, 0.1, (n_nodes, k)))
    rhs = np.einsum("nij,nj->ni", gram, planted) - slack
    weights, error = nnk_kernel.solve_gram(gram, rhs)
    expected = np.where(planted > 1e-6 * planted.max(axis=1, keepdims=True), planted, 0.0)
    np.testing.assert_array_equal(weights > 0, expected > 0)
    np.testing.assert_allclose(weights, expected, rtol=0, atol=1e-9)
    assert (weights[tiny, 0] == 0).all()
    expected_error = (
        1 - 2 * (expected * rhs).sum(1) + np.einsum("ni,nij,nj->n", expected, gram, expected)
    )
    np.testing.assert_allclose(error, expected_error, rtol=0, atol=1e-9)


def test_masks_duplicates_and_a_candidate_identical_to_the_query():
    rng = np.random.default_rng(3)
    points = _clusters(rng, n=200, dim=40).astype(np.float32)
    # Exact copies: some candidates equal one another, some equal their query.
    points[100:140] = points[:40]
    _candidates, gram, rhs = _problems(points, 20)
    allowed = rng.random(rhs.shape) < 0.8
    weights, error = nnk_kernel.solve_gram(gram, rhs, allowed)
    n_identical = n_shadowed = 0
    for node in range(points.shape[0]):
        mask = allowed[node] & (rhs[node] > 0)
        # j is left out when an earlier allowed candidate is identical to it (judged
        # with the mask from before any is left out).
        shadowed = np.array(
            [
                (mask[:j] & (gram[node, :j, j] >= 1 - IDENTICAL_TOLERANCE)).any()
                for j in range(mask.size)
            ]
        )
        n_shadowed += int((mask & shadowed).sum())
        mask &= ~shadowed
        identical = np.flatnonzero(mask & (rhs[node] >= 1 - IDENTICAL_TOLERANCE))
        expected = np.zeros(mask.size)
        if identical.size:
            n_identical += 1
            expected[identical[0]] = 1.0
        elif mask.any():
            expected[mask] = nnk_reference(gram[node][np.ix_(mask, mask)], rhs[node][mask])
        np.testing.assert_array_equal(weights[node] > 0, expected > 0, err_msg=f"node {node}")
        np.testing.assert_allclose(weights[node], expected, rtol=0, atol=1e-8)
    assert n_identical >= 30 and n_shadowed >= 10  # the cases were exercised
    assert np.abs(error[weights.max(axis=1) == 1.0]).max() <= 1e-12


def test_ignore_identical_and_fixed_sigma_from_the_embeddings():
    rng = np.random.default_rng(4)
    points = _clusters(rng, n=150, dim=24).astype(np.float32)
    points[75:100] = points[:25]
    for kernel, sigma in (("cosine", None), ("gaussian", 2.5)):
        candidates, gram, rhs = _problems(points, 12, kernel=kernel, sigma=sigma)
        allowed = rhs < 1.0 - IDENTICAL_TOLERANCE
        assert (~allowed).any()
        expected, expected_error = nnk_kernel.solve_gram(gram, rhs, allowed)
        weights, query_kernel, error = nnk_kernel.solve_vectors(
            points,
            np.arange(points.shape[0]),
            candidates,
            kernel=kernel,
            sigma=sigma,
            ignore_identical=True,
        )
        np.testing.assert_allclose(query_kernel, rhs, rtol=0, atol=1e-12)
        assert not (weights[~allowed] > 0).any()
        np.testing.assert_allclose(weights, expected, rtol=0, atol=1e-9)
        np.testing.assert_allclose(error, expected_error, rtol=0, atol=1e-12)


def test_agrees_with_the_torch_solver():
    torch = pytest.importorskip("torch")
    from workers.geometry.solver import nnk_weights

    rng = np.random.default_rng(5)
    points = _clusters(rng, n=400, dim=64).astype(np.float32)
    points[300:320] = points[:20]
    for kernel in ("cosine", "gaussian"):
        _candidates, gram, rhs = _problems(points, 30, kernel=kernel)
        allowed = rng.random(rhs.shape) < 0.9
        for mask in (None, allowed):
            expected, expected_error = nnk_weights(
                torch.from_numpy(gram),
                torch.from_numpy(rhs),
                allowed=None if mask is None else torch.from_numpy(mask),
            )
            weights, error = nnk_kernel.solve_gram(gram, rhs, mask)
            np.testing.assert_array_equal(weights > 0, expected.numpy() > 0)
            np.testing.assert_allclose(weights, expected.numpy(), rtol=0, atol=1e-9)
            np.testing.assert_allclose(error, expected_error.numpy(), rtol=0, atol=1e-12)


def test_results_do_not_depend_on_threads_or_blocks():
    rng = np.random.default_rng(6)
    points = _clusters(rng, n=500, dim=32).astype(np.float32)
    candidates = brute_force_neighbours(points, 16, metric="cosine")
    rows = np.arange(points.shape[0])
    one = nnk_kernel.solve_vectors(points, rows, candidates, kernel="cosine", n_threads=1)
    two = nnk_kernel.solve_vectors(points, rows, candidates, kernel="cosine", n_threads=2)
    halves = [
        nnk_kernel.solve_vectors(points, rows[part], candidates[part], kernel="cosine")
        for part in (slice(0, 123), slice(123, None))
    ]
    for got, other, *parts in zip(one, two, *halves, strict=True):
        np.testing.assert_array_equal(got, other)
        np.testing.assert_array_equal(got, np.concatenate(parts))


def test_unsettled_nodes_go_to_scipy_and_still_satisfy_kkt(monkeypatch):
    # Force every node through the fallback by declaring each one unsettled.
    rng = np.random.default_rng(7)
    points = rng.standard_normal((120, 4)).astype(np.float32)
    points[60:70] = points[:10]
    _candidates, gram, rhs = _problems(points, 25)
    compiled, compiled_error = nnk_kernel.solve_gram(gram, rhs)
    calls = []
    original = nnk_kernel._fallback

    def spy(*args):
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(nnk_kernel, "_fallback", spy)
    monkeypatch.setattr(nnk_compiled, "solve_gram_batch", _unsettled_batch)
    weights, error = nnk_kernel.solve_gram(gram, rhs)
    assert len(calls) == rhs.shape[0]
    for node in range(rhs.shape[0]):
        assert kkt_residual(gram[node], rhs[node], weights[node]) <= 1e-6
        assert _objective(gram[node], rhs[node], weights[node]) <= (
            _objective(gram[node], rhs[node], compiled[node]) + 1e-9
        )
    assert np.abs(error - compiled_error).max() <= 1e-6


def _unsettled_batch(gram, rhs, allowed, tolerances, slots, weights, error, settled, deficient):
    weights[:] = np.nan
    error[:] = np.nan
    settled[:] = False
    deficient[:] = False


def test_warm_up_compiles_every_entry_point():
    nnk_kernel.warm_up()
    for dispatcher in (nnk_compiled.solve_vectors_batch, nnk_compiled.solve_gram_batch):
        assert dispatcher.signatures, dispatcher
