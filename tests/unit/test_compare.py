"""Neighbourhood overlap and linear CKA against slow references written in the tests.

The overlap reference walks each row of the two graphs with Python sets and dicts; the
CKA reference builds the n x n centred Gram matrices and the HSIC formula. Neither shares
code with workers.geometry.compare.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from api_schemas import AnalysisParams
from jobstate.errors import InvalidInputError
from workers.geometry.analysis import EmbeddingSet, analyze_set
from workers.geometry.compare import consecutive_overlap, linear_cka, neighbourhood_overlap

N_POINTS, DIM, K = 200, 8, 10


def _row(graph: sp.csr_matrix, i: int) -> dict[int, float]:
    """Row i as {column: weight}, stored zeros left out."""
    start, stop = graph.indptr[i], graph.indptr[i + 1]
    return {
        int(j): float(w)
        for j, w in zip(graph.indices[start:stop], graph.data[start:stop], strict=True)
        if w != 0
    }


def _reference_overlap(a: sp.csr_matrix, b: sp.csr_matrix) -> tuple[list[float], list[float]]:
    jaccard, weighted = [], []
    for i in range(a.shape[0]):
        row_a, row_b = _row(a, i), _row(b, i)
        union = set(row_a) | set(row_b)
        jaccard.append(len(set(row_a) & set(row_b)) / len(union) if union else 1.0)
        if not row_a and not row_b:
            weighted.append(1.0)
            continue
        total_a, total_b = sum(row_a.values()), sum(row_b.values())
        weighted.append(
            sum(
                min(
                    row_a.get(j, 0.0) / total_a if total_a else 0.0,
                    row_b.get(j, 0.0) / total_b if total_b else 0.0,
                )
                for j in union
            )
        )
    return jaccard, weighted


def _engine_graphs(seed: int = 0, noise: float = 0.1) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """The real engine's directed graphs of one random set under two nearby embeddings."""
    rng = np.random.default_rng(seed)
    first = rng.standard_normal((N_POINTS, DIM)).astype(np.float32)
    second = (first + noise * rng.standard_normal((N_POINTS, DIM))).astype(np.float32)
    params = AnalysisParams(k=K, kernel="gaussian", device="cpu")
    graphs = [
        analyze_set(EmbeddingSet(name, x), params=params, n_threads=1).directed
        for name, x in (("a", first), ("b", second))
    ]
    return graphs[0], graphs[1]


def test_overlap_matches_per_point_sets_on_engine_graphs():
    a, b = _engine_graphs()
    labels = np.random.default_rng(1).integers(0, 3, N_POINTS)
    ids = np.array([f"p{i}" for i in range(N_POINTS)])
    got = neighbourhood_overlap(a, b, labels=labels, ids=ids, top=15)
    jaccard, weighted = _reference_overlap(a, b)

    np.testing.assert_allclose(got.jaccard, jaccard, rtol=0, atol=1e-15)
    np.testing.assert_allclose(got.weighted, weighted, rtol=0, atol=1e-12)
    swapped = neighbourhood_overlap(b, a)
    np.testing.assert_array_equal(swapped.jaccard, got.jaccard)
    np.testing.assert_allclose(swapped.weighted, got.weighted, rtol=0, atol=1e-15)
    # The data must exercise the overlap: some neighbourhoods kept, many changed.
    assert 0 < sum(j == 1.0 for j in jaccard) < N_POINTS
    assert min(jaccard) < 0.5 and min(weighted) < max(weighted)

    for stats, values in ((got.jaccard_stats, jaccard), (got.weighted_stats, weighted)):
        ordered = sorted(values)
        assert stats.mean == pytest.approx(sum(values) / len(values), abs=1e-12)
        assert stats.median == pytest.approx((ordered[99] + ordered[100]) / 2, abs=1e-12)
        # Linear interpolation: the 10th percentile of 200 values sits at rank 19.9.
        assert stats.p10 == pytest.approx(ordered[19] + 0.9 * (ordered[20] - ordered[19]))
        assert stats.p90 == pytest.approx(ordered[179] + 0.1 * (ordered[180] - ordered[179]))

    assert [c.label for c in got.per_class] == [0, 1, 2]
    for entry in got.per_class:
        members = [i for i in range(N_POINTS) if labels[i] == entry.label]
        assert entry.n == len(members)
        assert entry.jaccard_mean == pytest.approx(np.mean([jaccard[i] for i in members]))
        assert entry.weighted_mean == pytest.approx(np.mean([weighted[i] for i in members]))

    expected = sorted(range(N_POINTS), key=lambda i: (jaccard[i], weighted[i], i))[:15]
    assert [c.index for c in got.changed] == expected
    for changed in got.changed:
        i = changed.index
        assert changed.id == f"p{i}"
        assert changed.jaccard == pytest.approx(jaccard[i], abs=1e-15)
        for listed, graph in ((changed.neighbours_a, a), (changed.neighbours_b, b)):
            row = _row(graph, i)
            assert listed == sorted(row, key=lambda j, row=row: (-row[j], j))


def test_identical_graphs_overlap_fully():
    a, _ = _engine_graphs()
    got = neighbourhood_overlap(a, a.copy())
    np.testing.assert_array_equal(got.jaccard, 1.0)
    np.testing.assert_allclose(got.weighted, 1.0, rtol=0, atol=1e-12)
    assert got.per_class == []


def test_empty_rows_scaled_rows_and_stored_zeros():
    # Row 0: same support, weights scaled by 3 -> both overlaps 1. Row 1: empty in both
    # -> 1 by definition. Row 2: empty in b only -> 0. Row 3: a stored zero in a is no
    # neighbour: supports {0} vs {0, 2}. Row 4: disjoint supports -> 0.
    a = sp.csr_matrix(
        (
            [0.2, 0.6, 0.5, 0.0, 0.7, 0.9],
            [1, 2, 0, 2, 0, 1],
            [0, 2, 2, 3, 5, 6],
        ),
        shape=(5, 5),
    )
    b = sp.csr_matrix(
        ([0.6, 1.8, 0.3, 0.1, 0.4], [1, 2, 0, 2, 3], [0, 2, 2, 2, 4, 5]), shape=(5, 5)
    )
    got = neighbourhood_overlap(a, b)
    np.testing.assert_allclose(got.jaccard, [1.0, 1.0, 0.0, 0.5, 0.0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(got.weighted, [1.0, 1.0, 0.0, 0.75, 0.0], rtol=0, atol=1e-15)
    assert [c.index for c in got.changed] == [2, 4, 3, 0, 1]
    assert got.changed[2].neighbours_a == [0] and got.changed[2].neighbours_b == [0, 2]
    assert got.changed[0].neighbours_b == []


def test_consecutive_overlap_is_the_mean_jaccard_of_each_pair():
    a, b = _engine_graphs(seed=2, noise=0.2)
    _, c = _engine_graphs(seed=2, noise=0.6)
    got = consecutive_overlap([a, b, c])
    expected = [np.mean(_reference_overlap(x, y)[0]) for x, y in ((a, b), (b, c))]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-14)
    assert got.shape == (2,) and got[0] != got[1]


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: neighbourhood_overlap(np.eye(3), sp.eye(3, format="csr")), "graph_a"),
        (lambda: neighbourhood_overlap(sp.csr_matrix((3, 4)), sp.csr_matrix((3, 4))), "graph_a"),
        (
            lambda: neighbourhood_overlap(sp.eye(3, format="csr"), sp.eye(4, format="csr")),
            "graph_b",
        ),
        (
            lambda: neighbourhood_overlap(sp.eye(3, format="csr"), -sp.eye(3, format="csr")),
            "graph_b",
        ),
        (
            lambda: neighbourhood_overlap(
                sp.eye(3, format="csr"), sp.eye(3, format="csr"), labels=[1, 2]
            ),
            "labels",
        ),
        (
            lambda: neighbourhood_overlap(sp.eye(3, format="csr"), sp.eye(3, format="csr"), top=-1),
            "top",
        ),
        (lambda: consecutive_overlap([sp.eye(3, format="csr")]), "graphs"),
        (
            lambda: consecutive_overlap([sp.eye(3, format="csr"), sp.eye(2, format="csr")]),
            "graphs[1]",
        ),
        (lambda: linear_cka(np.ones((5, 2)), np.random.default_rng(0).random((5, 3))), "x"),
        (lambda: linear_cka(np.eye(5), np.eye(4)), "y"),
        (lambda: linear_cka(np.array([[np.nan, 1.0], [2.0, 3.0]]), np.eye(2)), "x"),
    ],
)
def test_bad_input_names_the_field(call, field):
    with pytest.raises(InvalidInputError) as raised:
        call()
    assert raised.value.field == field


def _hsic_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. 2019 via n x n Gram matrices: HSIC(K, L) / sqrt(HSIC(K,K) HSIC(L,L))."""
    n = x.shape[0]
    centring = np.eye(n) - np.ones((n, n)) / n
    gram_x = centring @ (x @ x.T) @ centring
    gram_y = centring @ (y @ y.T) @ centring

    def hsic(first: np.ndarray, second: np.ndarray) -> float:
        return float(np.trace(first @ second)) / (n - 1) ** 2

    return hsic(gram_x, gram_y) / np.sqrt(hsic(gram_x, gram_x) * hsic(gram_y, gram_y))


@pytest.mark.parametrize("block_rows", [None, 1, 7, 1000])
def test_linear_cka_matches_the_hsic_formula(block_rows):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((60, 7)) + 5.0
    y = np.tanh(x[:, :4] @ rng.standard_normal((4, 4))) + 0.5 * rng.standard_normal((60, 4))
    expected = _hsic_cka(x, y)
    assert 0.05 < expected < 0.95
    assert linear_cka(x, y, block_rows=block_rows) == pytest.approx(expected, abs=1e-12)
    assert linear_cka(y, x, block_rows=block_rows) == pytest.approx(expected, abs=1e-12)


def test_linear_cka_is_one_under_orthogonal_transform_scale_and_shift():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((300, 12)).astype(np.float32) * np.linspace(0.5, 3, 12)
    rotation, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    assert linear_cka(x, x @ rotation) == pytest.approx(1.0, abs=1e-10)
    assert linear_cka(x, 3.7 * (x @ rotation) + 1e3) == pytest.approx(1.0, abs=1e-10)
    # Not invariant to an anisotropic rescaling, and near 0 for independent features.
    assert linear_cka(x, x * np.linspace(1, 10, 12)) < 0.99
    assert linear_cka(x, rng.standard_normal((300, 5))) < 0.1


def test_linear_cka_of_large_offsets_keeps_precision():
    # Centring each block after subtracting the float64 means: the uncentred shortcut
    # X'X - n mu mu' would cancel 1e12-sized terms here.
    rng = np.random.default_rng(6)
    x = rng.standard_normal((80, 3))
    y = x @ rng.standard_normal((3, 3)) + rng.standard_normal((80, 3))
    expected = _hsic_cka(x, y)
    assert linear_cka(x + 1e6, y - 1e6, block_rows=9) == pytest.approx(expected, abs=1e-8)
