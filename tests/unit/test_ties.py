"""Uniqueness and ties (issue 14, item 5).

Ties at the k-th candidate go to the smaller index, against a brute-force float64 ranking
by (distance, index). When K_S is singular (dimension 3, k = 10) the solve returns a basic
optimum, whose support has independent columns and whose objective is scipy NNLS's, on
both the compiled and the torch path; the nodes flagged as rank-deficient are those whose
K_S numpy finds rank-deficient.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.unit.reference import kernel_matrix, nnk_reference
from workers.geometry.candidates import exact_candidates, prepare_vectors, torch_candidates

nnk_kernel = pytest.importorskip("workers.geometry.nnk_kernel")


def _brute_force(points: np.ndarray, k: int, *, metric: str) -> np.ndarray:
    """k nearest other rows by float64 distance, ties to the smaller index."""
    x = points.astype(np.float64)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        # Element-wise, not BLAS: a matrix product may round equal columns differently.
        distance = -(x[:, None, :] * x[None, :, :]).sum(axis=2)
    else:
        distance = ((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=2)
    np.fill_diagonal(distance, np.inf)
    index = np.broadcast_to(np.arange(len(x)), distance.shape)
    return np.lexsort((index, distance), axis=1)[:, :k]


def _search(vectors: np.ndarray, k: int, *, metric: str, backend: str):
    if backend == "torch":
        pytest.importorskip("torch")
        return torch_candidates(vectors, k, metric=metric, query_block=16, column_block=64)
    return exact_candidates(vectors, k, metric=metric)


@pytest.mark.parametrize("backend", ["faiss", "torch"])
@pytest.mark.parametrize("k", [5, 6, 7, 9])
def test_lattice_ties_at_the_kth_place_go_to_the_smaller_index(k, backend):
    # A 9 x 9 integer lattice, rows shuffled: every interior point has 4 neighbours at
    # distance 1, 4 at sqrt(2), 4 at 2: k = 5..7 and 9 cut inside a tie.
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(np.arange(9), np.arange(9)), axis=-1).reshape(-1, 2)
    points = grid[rng.permutation(len(grid))].astype(np.float32) + np.float32(100.0)
    expected = _brute_force(points, k, metric="euclidean")
    vectors = prepare_vectors(points, metric="euclidean")
    got = _search(vectors, k, metric="euclidean", backend=backend)
    # The set of k everywhere; the order too where a tie crossed the k-th place.
    np.testing.assert_array_equal(np.sort(got.indices, axis=1), np.sort(expected, axis=1))
    distance = ((points[got.indices] - points[:, None, :]).astype(np.float64) ** 2).sum(axis=2)
    np.testing.assert_allclose(got.scores, distance, rtol=1e-6)
    # A shard that starts mid-block finds the same (in torch, the same set: torch.topk
    # orders ties inside the k by the shapes it runs).
    if backend == "torch":
        shard = torch_candidates(vectors, k, metric="euclidean", rows=(17, 60), query_block=8)
        np.testing.assert_array_equal(np.sort(shard.indices), np.sort(got.indices[17:60]))
    else:
        shard = exact_candidates(vectors, k, metric="euclidean", rows=(17, 60), tile=8)
        np.testing.assert_array_equal(shard.indices, got.indices[17:60])


def test_duplicates_tied_at_cosine_one_go_to_the_smaller_index():
    rng = np.random.default_rng(1)
    points = rng.standard_normal((150, 6)).astype(np.float32)
    copies = rng.choice(150, size=12, replace=False)
    # Copies scaled by powers of two (exact in float32): one direction, so the cosines
    # of all twelve tie at 1.
    scale = rng.choice([0.5, 1.0, 2.0, 4.0], size=(12, 1)).astype(np.float32)
    points[copies] = points[copies[0]] * scale
    expected = _brute_force(points, 5, metric="cosine")
    got = exact_candidates(prepare_vectors(points, metric="cosine"), 5, metric="cosine")
    for row in copies:
        others = np.sort(copies[copies != row])[:5]
        np.testing.assert_array_equal(got.indices[row], others)
        np.testing.assert_array_equal(expected[row], others)
    np.testing.assert_array_equal(np.sort(got.indices, axis=1), np.sort(expected, axis=1))


@pytest.mark.parametrize("backend", ["faiss", "torch"])
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_near_ties_below_float32_resolution_are_ranked_in_float64(metric, backend):
    # Forty points whose scores to point 80 differ by ~1e-8 relative: faiss's float32
    # cannot order them, the float64 ranking of the brute force can.
    rng = np.random.default_rng(4)
    dim = 12
    direction = rng.standard_normal(dim)
    direction /= np.linalg.norm(direction)
    if metric == "cosine":
        centre = direction
        close = direction + 1e-4 * rng.standard_normal((40, dim))
    else:
        centre = 5.0 * direction
        offsets = rng.standard_normal((40, dim))
        close = centre + offsets * 30.0 / np.linalg.norm(offsets, axis=1, keepdims=True)
    far = centre + 200.0 + 10.0 * rng.standard_normal((150, dim))
    points = np.concatenate([far[:80], centre[None], close, far[80:]]).astype(np.float32)
    vectors = prepare_vectors(points, metric=metric)
    got = _search(vectors, 8, metric=metric, backend=backend)
    expected = _brute_force(points, 8, metric=metric)
    np.testing.assert_array_equal(np.sort(got.indices[80]), np.sort(expected[80]))


def _node(points: np.ndarray, query: int, candidates: np.ndarray, kernel: str):
    """K_S and b of one node with reference.kernel_matrix (per-element loops)."""
    rows = np.concatenate([candidates, [query]])
    x = points[rows].astype(np.float64)
    sigma = 1.0
    if kernel == "gaussian":
        sigma = np.sqrt(((x[:-1] - x[-1]) ** 2).sum(axis=1).max()) / 3.0
    full = kernel_matrix(x, kernel=kernel, sigma=sigma)
    return full[:-1, :-1], full[:-1, -1]


def _singular_data(kernel: str) -> np.ndarray:
    rng = np.random.default_rng(2)
    if kernel == "gaussian":
        # The Gaussian K_S is regular for distinct points; duplicates make some singular.
        points = rng.standard_normal((120, 3)).astype(np.float32)
        points[100:110] = points[:10]
        return points
    # 80 points on a great circle, 20 just off its plane: under the cosine kernel an
    # off-plane point's features project inside the cone of its circle candidates, which
    # span 3 dimensions, so its optimum is a whole polytope, not a point.
    angle = rng.uniform(0.0, 2.0 * np.pi, 100)
    height = np.concatenate([np.zeros(80), rng.uniform(-0.3, 0.3, 20)])
    points = np.stack([np.cos(angle), np.sin(angle), height], axis=1)
    return np.concatenate([points, rng.standard_normal((20, 3))]).astype(np.float32)


def _objective(gram: np.ndarray, rhs: np.ndarray, theta: np.ndarray) -> float:
    return float(0.5 * theta @ gram @ theta - rhs @ theta)


@pytest.mark.parametrize("kernel", ["cosine", "gaussian"])
def test_singular_candidate_matrices_get_a_basic_optimum_on_both_paths(kernel):
    torch = pytest.importorskip("torch")
    from workers.geometry.solver import nnk_weights, rank_deficient

    points = _singular_data(kernel)
    k = 10
    metric = "cosine" if kernel == "cosine" else "euclidean"
    candidates = _brute_force(points, k, metric=metric)
    n = points.shape[0]
    problems = [_node(points, i, candidates[i], kernel) for i in range(n)]
    gram = np.stack([g for g, _ in problems])
    rhs = np.stack([b for _, b in problems])
    flags = np.empty(n, dtype=bool)
    compiled, _, _ = nnk_kernel.solve_vectors(
        points, np.arange(n), candidates, kernel=kernel, rank_deficient=flags
    )
    torch_weights, _ = nnk_weights(torch.from_numpy(gram), torch.from_numpy(rhs))
    torch_flags = rank_deficient(torch.from_numpy(gram)).numpy()

    expected_flags = np.array([np.linalg.matrix_rank(g) < k for g in gram])
    assert expected_flags.sum() > 0
    if kernel == "gaussian":
        assert expected_flags.sum() < n
    np.testing.assert_array_equal(flags, expected_flags)
    np.testing.assert_array_equal(torch_flags, expected_flags)
    for weights in (compiled, torch_weights.numpy()):
        for node in range(n):
            support = np.flatnonzero(weights[node] > 0)
            block = gram[node][np.ix_(support, support)]
            assert np.linalg.matrix_rank(block) == support.size, f"node {node}"
            best = _objective(gram[node], rhs[node], nnk_reference(gram[node], rhs[node]))
            got = _objective(gram[node], rhs[node], weights[node])
            assert abs(got - best) <= 1e-9 * abs(best), f"node {node}: {got} vs {best}"


def test_the_compiled_singular_threshold_is_the_shared_one():
    from workers.geometry import nnk_compiled
    from workers.geometry.nnk_common import SINGULAR_PIVOT

    assert nnk_compiled._SINGULAR_PIVOT == SINGULAR_PIVOT


@pytest.mark.parametrize("device", ["cpu", "torch"])
def test_the_report_counts_and_warns_of_nonunique_nodes(device, monkeypatch):
    from api_schemas import AnalysisParams
    from workers.geometry import EmbeddingSet, analyze_set, nnk_solve

    if device == "torch":
        pytest.importorskip("torch")
        # The torch path (the GPU's) on the CPU: as where numba is not installed.
        monkeypatch.setattr(nnk_solve, "compiled_kernel", lambda: None)
    # Gaussian: only the nodes whose candidates include a duplicated pair are singular.
    points = _singular_data("gaussian")
    k = 10
    candidates = _brute_force(points, k, metric="euclidean")
    expected = sum(
        np.linalg.matrix_rank(_node(points, i, candidates[i], "gaussian")[0]) < k
        for i in range(points.shape[0])
    )
    params = AnalysisParams(k=k, kernel="gaussian")
    report = analyze_set(EmbeddingSet("s", points), params=params).report
    assert 0 < report.graph.nonunique_nodes == expected < points.shape[0]
    assert any("lower bound" in warning for warning in report.warnings)
