"""The compiled solve's shortcuts against slow references: K built inside the kernel,
nodes handed out in blocks, triangular solves carried four sums at a time.

References are tests/unit/reference.py (plain numpy/scipy loops, no code shared with
workers.geometry) and the same nodes solved one per batch.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")

from tests.unit.reference import brute_force_neighbours, kernel_matrix, nnk_reference
from workers.geometry import nnk_compiled, nnk_kernel


def _node_kernels(points, query, candidates, *, kernel, sigma):
    """K and b of one node from the compiled kernel builder, in fresh scratch."""
    k = candidates.size
    width = nnk_compiled.padded(k + 1)
    gram = np.full((k, k), np.nan)
    rhs = np.full(k, np.nan)
    scales = nnk_kernel.kernel_scales(points, kernel=kernel)
    nnk_compiled.node_kernels(
        points,
        scales,
        query,
        candidates,
        kernel == "gaussian",
        sigma,
        np.zeros((width, points.shape[1])),
        np.zeros((width, width)),
        gram,
        rhs,
    )
    return gram, rhs


@pytest.mark.parametrize("kernel", ["cosine", "gaussian"])
@pytest.mark.parametrize(("k", "dim"), [(5, 3), (7, 16), (30, 64), (33, 9)])
def test_node_kernel_is_exactly_symmetric_with_unit_diagonal_and_equals_the_formula(kernel, k, dim):
    rng = np.random.default_rng(k * dim)
    points = rng.standard_normal((60, dim)).astype(np.float32)
    points[40] = points[3]  # a duplicate among the candidates: K ~ 1 off the diagonal
    candidates = np.concatenate([[3, 40], rng.choice(np.arange(4, 40), k - 2, replace=False)])
    gram, rhs = _node_kernels(points, 0, candidates, kernel=kernel, sigma=0.9)
    expected = kernel_matrix(points[np.concatenate([candidates, [0]])], kernel=kernel, sigma=0.9)
    np.testing.assert_array_equal(gram, gram.T)
    np.testing.assert_array_equal(np.diag(gram), np.ones(k))
    np.testing.assert_allclose(gram, expected[:k, :k], rtol=0, atol=1e-12)
    np.testing.assert_allclose(rhs, expected[:k, k], rtol=0, atol=1e-12)


@pytest.mark.parametrize("n_threads", [1, 2])
def test_every_node_of_blocks_is_the_node_solved_alone(n_threads):
    # 64 nodes a block: 150 nodes end in a partial block, and each block's scratch
    # carries over from node to node; a node solved alone starts from fresh scratch.
    rng = np.random.default_rng(11)
    points = rng.standard_normal((150, 12)).astype(np.float32)
    points[100:110] = points[:10]
    candidates = brute_force_neighbours(points, 20, metric="cosine")
    rows = np.arange(points.shape[0])
    flags = np.empty(rows.size, dtype=bool)
    batch = nnk_kernel.solve_vectors(
        points, rows, candidates, kernel="cosine", n_threads=n_threads, rank_deficient=flags
    )
    for node in rows:
        flag = np.empty(1, dtype=bool)
        alone = nnk_kernel.solve_vectors(
            points, rows[[node]], candidates[[node]], kernel="cosine", rank_deficient=flag
        )
        for got, expected in zip(batch, alone, strict=True):
            np.testing.assert_array_equal(got[node], expected[0], err_msg=f"node {node}")
        assert flags[node] == flag[0]


@pytest.mark.parametrize("support_size", [1, 2, 3, 4, 5, 7, 8, 9, 13, 16, 17, 24])
def test_planted_supports_of_every_size_modulo_four_match_scipy(support_size):
    # The triangular solves go four rows (columns) at a time plus a remainder of 0-3:
    # planted optima whose support has each size modulo four reach every path.
    rng = np.random.default_rng(support_size)
    k = 28
    factor = rng.uniform(0.0, 1.0, (k + 8, k))  # K > 0: b > 0 on the support
    gram = factor.T @ factor
    scale = 1.0 / np.sqrt(np.diag(gram))
    gram = gram * scale[:, None] * scale[None, :]
    support = rng.choice(k, support_size, replace=False)
    planted = np.zeros(k)
    planted[support] = rng.uniform(0.2, 1.0, support_size)
    # b = K theta + slack off the support (a positive gradient there): theta is optimal.
    slack = np.where(planted > 0, 0.0, -rng.uniform(0.01, 0.1, k))
    rhs = gram @ planted + slack
    # Scaled below 1 (b = 1 would make a candidate the query's duplicate).
    shrink = 0.9 / rhs.max()
    planted, rhs = planted * shrink, rhs * shrink
    weights, error = nnk_kernel.solve_gram(gram[None], rhs[None])
    expected = nnk_reference(gram, rhs)
    np.testing.assert_array_equal(weights[0] > 0, planted > 0)
    np.testing.assert_allclose(weights[0], planted, rtol=0, atol=1e-9)
    np.testing.assert_allclose(weights[0], expected, rtol=0, atol=1e-9)
    theta = weights[0]
    assert abs(error[0] - (1 - 2 * theta @ rhs + theta @ gram @ theta)) <= 1e-12


@pytest.mark.parametrize("n_points", [1, 2, 3, 4, 5, 6, 7, 8, 9, 130])
def test_inverse_norms_of_every_row_count_modulo_four_equal_numpy(n_points):
    # Four rows a pass plus a remainder of 0-3 rows.
    rng = np.random.default_rng(n_points)
    points = (rng.standard_normal((n_points, 37)) * rng.uniform(0.01, 100.0, (n_points, 1))).astype(
        np.float32
    )
    expected = 1.0 / np.linalg.norm(points.astype(np.float64), axis=1)
    np.testing.assert_allclose(
        nnk_kernel.kernel_scales(points, kernel="cosine"), expected, rtol=1e-14, atol=0
    )
