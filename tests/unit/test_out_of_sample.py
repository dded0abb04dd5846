"""Out-of-sample NNK against a slow reference written one query at a time.

The reference finds each query's neighbours by a full float64 distance scan (ties to the
smaller row), builds K_S and k_i by the DESIGN formulas, solves with scipy's NNLS on the
Cholesky factor (tests/unit/reference.py) and applies the four prediction rules of
DESIGN section 2 with plain loops. It shares no code with workers.geometry.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from jobstate.errors import InvalidInputError
from tests.unit.reference import authors_reference, kkt_residual, nnk_reference
from workers.geometry.out_of_sample import out_of_sample_metrics, query_candidates

N_REFERENCE, N_QUERIES, K = 300, 60, 10


def _neighbours(reference: np.ndarray, query: np.ndarray, k: int, *, metric: str) -> np.ndarray:
    reference = reference.astype(np.float64)
    query = query.astype(np.float64)
    if metric == "cosine":
        unit = reference / np.linalg.norm(reference, axis=1, keepdims=True)
        distance = -(unit @ (query / np.linalg.norm(query)))
    else:
        distance = ((reference - query) ** 2).sum(axis=1)
    return np.lexsort((np.arange(reference.shape[0]), distance))[:k]


def _node_problem(reference, query, candidates, *, kernel, sigma):
    neighbours, centre = reference[candidates].astype(np.float64), query.astype(np.float64)
    if kernel == "cosine":
        neighbours = neighbours / np.linalg.norm(neighbours, axis=1, keepdims=True)
        centre = centre / np.linalg.norm(centre)
        gram = np.clip((1.0 + neighbours @ neighbours.T) / 2.0, 0.0, 1.0)
        np.fill_diagonal(gram, 1.0)
        return gram, np.clip((1.0 + neighbours @ centre) / 2.0, 0.0, 1.0)
    pair = ((neighbours[:, None, :] - neighbours[None, :, :]) ** 2).sum(axis=2)
    to_query = ((neighbours - centre) ** 2).sum(axis=1)
    bandwidth = np.sqrt(to_query.max()) / 3.0 if sigma is None else sigma
    return np.exp(-pair / (2 * bandwidth**2)), np.exp(-to_query / (2 * bandwidth**2))


def _vote(labels: np.ndarray, weights: np.ndarray) -> object:
    """argmax over classes of the summed weights; ties to the smallest label."""
    totals: dict = {}
    for label, weight in zip(labels, weights, strict=True):
        totals[label] = totals.get(label, 0.0) + weight
    best = max(totals.values())
    return min(label for label, total in totals.items() if total == best)


def _reference_metrics(reference, reference_labels, queries, query_labels, *, kernel, sigma):
    metric = "cosine" if kernel == "cosine" else "euclidean"
    rows = []
    for query, label in zip(queries, query_labels, strict=True):
        candidates = _neighbours(reference, query, K, metric=metric)
        gram, rhs = _node_problem(reference, query, candidates, kernel=kernel, sigma=sigma)
        theta = nnk_reference(gram, rhs)
        neighbour_labels = reference_labels[candidates]
        support = theta > 0
        all_labels = sorted(set(reference_labels.tolist()))
        # A query with no NNK neighbour scores 0 everywhere: the smallest class wins.
        nnk_weighted = _vote(neighbour_labels, theta) if support.any() else all_labels[0]
        nnk_unweighted = (
            _vote(neighbour_labels[support], np.ones(support.sum()))
            if support.any()
            else all_labels[0]
        )
        rows.append(
            {
                "candidates": candidates,
                "theta": theta,
                "gram": gram,
                "rhs": rhs,
                "error": 1.0 - 2.0 * theta @ rhs + theta @ gram @ theta,
                "degree": int(support.sum()),
                "nnk_weighted": nnk_weighted == label,
                "nnk_unweighted": nnk_unweighted == label,
                "knn_weighted": _vote(neighbour_labels, rhs) == label,
                "knn_unweighted": _vote(neighbour_labels, np.ones(K)) == label,
            }
        )
    return rows


def _data(dim: int, seed: int = 0, spread: float = 1.2):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((4, dim))
    reference_clusters = rng.integers(0, 4, N_REFERENCE)
    query_clusters = rng.integers(0, 4, N_QUERIES)
    reference = centres[reference_clusters] + spread * rng.standard_normal((N_REFERENCE, dim))
    queries = centres[query_clusters] + spread * rng.standard_normal((N_QUERIES, dim))
    # Labels follow the clusters, with noise, so the four rules disagree on some queries.
    flip = rng.random(N_REFERENCE) < 0.25
    reference_labels = np.where(flip, rng.integers(0, 4, N_REFERENCE), reference_clusters)
    query_labels = query_clusters.copy()
    reference, queries = reference.astype(np.float32), queries.astype(np.float32)
    # Query 0 is a copy of reference point 17: a legitimate candidate that takes all weight.
    queries[0] = reference[17]
    query_labels[0] = reference_labels[17]
    return reference, reference_labels, queries, query_labels


# Cosine needs d + 1 >= k for a full-rank K_S (a unique optimum to compare weights with).
@pytest.mark.parametrize(
    ("kernel", "dim", "sigma"), [("cosine", 16, None), ("gaussian", 8, None), ("gaussian", 8, 2.0)]
)
def test_out_of_sample_matches_per_query_reference(kernel, dim, sigma):
    reference, reference_labels, queries, query_labels = _data(dim)
    got = out_of_sample_metrics(
        reference, reference_labels, queries, query_labels, k=K, kernel=kernel, sigma=sigma
    )
    expected = _reference_metrics(
        reference, reference_labels, queries, query_labels, kernel=kernel, sigma=sigma
    )

    for i, node in enumerate(expected):
        np.testing.assert_array_equal(got.graph.candidate_indices[i], node["candidates"])
        np.testing.assert_allclose(got.graph.query_kernel[i], node["rhs"], rtol=0, atol=1e-12)
        np.testing.assert_array_equal(got.graph.weights[i] > 0, node["theta"] > 0)
        np.testing.assert_allclose(
            got.graph.weights[i], node["theta"], rtol=0, atol=1e-8 * node["theta"].max()
        )
        assert kkt_residual(node["gram"], node["rhs"], got.graph.weights[i]) <= 1e-6
        assert got.graph.reconstruction_error[i] == pytest.approx(node["error"], abs=1e-10)

    for rule in ("nnk_weighted", "nnk_unweighted", "knn_weighted", "knn_unweighted"):
        correct = np.array([node[rule] for node in expected])
        np.testing.assert_array_equal(getattr(got, f"correct_{rule}"), correct, err_msg=rule)
        assert getattr(got.error, rule) == pytest.approx(1.0 - correct.mean(), abs=1e-15)

    degree = np.array([node["degree"] for node in expected])
    assert got.n == N_QUERIES
    assert got.nnk_degree.mean == pytest.approx(degree.mean())
    assert got.nnk_degree.median == pytest.approx(np.median(degree))
    assert got.nnk_degree.p10 == pytest.approx(np.percentile(degree, 10))
    assert got.nnk_degree.p90 == pytest.approx(np.percentile(degree, 90))
    errors = np.array([node["error"] for node in expected])
    assert got.reconstruction_error.mean == pytest.approx(errors.mean(), abs=1e-10)
    assert got.reconstruction_error.max == pytest.approx(errors.max(), abs=1e-10)

    weighted = np.array([node["nnk_weighted"] for node in expected])
    unweighted = np.array([node["nnk_unweighted"] for node in expected])
    b, c = int((weighted & ~unweighted).sum()), int((~weighted & unweighted).sum())
    test = got.mcnemar_weighted_vs_unweighted
    assert (test.b, test.c) == (b, c)
    assert b + c > 0, "the data should make the weighted and unweighted rules disagree"
    assert test.p_value == pytest.approx(scipy.stats.binomtest(b, b + c, 0.5).pvalue)
    # The data must exercise the rules: errors neither 0 nor all, and rules that differ.
    assert 0.0 < got.error.nnk_weighted < 1.0
    assert len({got.error.nnk_weighted, got.error.knn_unweighted, got.error.knn_weighted}) > 1


def test_reference_point_identical_to_query_takes_all_weight():
    reference, reference_labels, queries, query_labels = _data(16)
    got = out_of_sample_metrics(reference, reference_labels, queries, query_labels, k=K)
    assert got.graph.candidate_indices[0, 0] == 17
    np.testing.assert_array_equal(got.graph.weights[0], np.eye(K)[0])
    assert abs(got.graph.reconstruction_error[0]) <= 1e-12
    assert got.predicted[0] == reference_labels[17]
    assert got.correct_nnk_weighted[0] and got.correct_nnk_unweighted[0]


def test_ignore_identical_drops_the_identical_reference_point():
    reference, reference_labels, queries, query_labels = _data(16)
    got = out_of_sample_metrics(
        reference, reference_labels, queries, query_labels, k=K, ignore_identical=True
    )
    assert got.graph.candidate_indices[0, 0] == 17
    assert got.graph.weights[0, 0] == 0.0 and not got.graph.valid[0, 0]
    assert (got.graph.weights[0, 1:] > 0).any()
    assert got.graph.valid[1:].all()


def test_candidates_tied_at_the_kth_value_go_to_the_smaller_row():
    rng = np.random.default_rng(3)
    reference = rng.standard_normal((200, 6)).astype(np.float32)
    # Twelve copies of one point, scattered: a query next to it ties all twelve.
    copies = rng.choice(200, size=12, replace=False)
    reference[copies] = reference[copies[0]]
    queries = reference[copies[:1]] + np.float32(1e-3) * rng.standard_normal((1, 6)).astype(
        np.float32
    )
    for metric in ("cosine", "euclidean"):
        got = query_candidates(reference, queries, 5, metric=metric)
        np.testing.assert_array_equal(got[0], np.sort(copies)[:5], err_msg=metric)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_near_ties_below_float32_resolution_are_ranked_in_float64(metric):
    rng = np.random.default_rng(5)
    dim = 12
    far = 10.0 * rng.standard_normal((150, dim))
    direction = rng.standard_normal(dim)
    direction /= np.linalg.norm(direction)
    if metric == "cosine":
        # Forty points within 1e-4 of one direction: their cosines to it differ by ~1e-8,
        # below float32's resolution near 1, so faiss sees forty ties.
        close = direction + 1e-4 * rng.standard_normal((40, dim))
        queries = direction[None, :]
    else:
        # Forty points on a sphere of radius 30 around the query: distances equal to ~1e-7.
        offsets = rng.standard_normal((40, dim))
        offsets *= 30.0 / np.linalg.norm(offsets, axis=1, keepdims=True)
        queries = 5.0 * direction[None, :]
        close = queries + offsets
        far = queries + 40.0 + far
    reference = np.concatenate([far[:75], close, far[75:]]).astype(np.float32)
    queries = queries.astype(np.float32)
    got = query_candidates(reference, queries, 8, metric=metric)
    np.testing.assert_array_equal(got[0], _neighbours(reference, queries[0], 8, metric=metric))


def test_query_label_absent_from_the_reference_is_always_wrong():
    reference, reference_labels, queries, query_labels = _data(16)
    query_labels = query_labels.copy()
    query_labels[:5] = 99
    got = out_of_sample_metrics(reference, reference_labels, queries, query_labels, k=K)
    for rule in ("nnk_weighted", "nnk_unweighted", "knn_weighted", "knn_unweighted"):
        assert not getattr(got, f"correct_{rule}")[:5].any()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"queries": np.ones((N_QUERIES, 5), dtype=np.float32)}, "query.embeddings"),
        ({"query_labels": np.array(["a"] * N_QUERIES)}, "query.labels"),
        ({"k": N_REFERENCE + 1}, "params.k"),
        ({"k": 0}, "params.k"),
        ({"sigma": 1.0}, "params.sigma"),
        ({"reference_labels": np.zeros(5, dtype=int)}, "reference.labels"),
    ],
)
def test_bad_input_names_the_field(change, field):
    reference, reference_labels, queries, query_labels = _data(16)
    arguments = {
        "reference": reference,
        "reference_labels": reference_labels,
        "queries": queries,
        "query_labels": query_labels,
        "k": K,
    }
    arguments.update(change)
    with pytest.raises(InvalidInputError) as raised:
        out_of_sample_metrics(**arguments)
    assert raised.value.field == field


def test_non_finite_query_is_refused():
    reference, reference_labels, queries, query_labels = _data(16)
    queries = queries.copy()
    queries[3, 2] = np.nan
    with pytest.raises(InvalidInputError) as raised:
        out_of_sample_metrics(reference, reference_labels, queries, query_labels, k=K)
    assert raised.value.field == "query.embeddings"
    assert "row 3" in raised.value.message


def test_query_without_nnk_neighbours_predicts_the_smallest_reference_class():
    reference, reference_labels, queries, query_labels = _data(8)
    reference_labels = reference_labels + 10
    query_labels = np.where(np.arange(N_QUERIES) % 2 == 0, 10, 3)
    query_labels[0] = reference_labels[17]
    # sigma = 1e-3 makes every kernel value underflow to 0 except query 0's copy (K = 1).
    got = out_of_sample_metrics(
        reference, reference_labels, queries, query_labels, k=K, kernel="gaussian", sigma=1e-3
    )
    assert (got.graph.weights[1:] == 0).all()
    assert (got.predicted[1:] == 10).all()
    # Label 3, below every reference label, is never right (it is not a reference class).
    expected = query_labels == 10
    expected[0] = True
    np.testing.assert_array_equal(got.correct_nnk_weighted, expected)
    np.testing.assert_array_equal(got.correct_knn_weighted, expected)


def test_authors_solver_matches_its_reference_per_query():
    # The "authors" solver runs the torch path: the same candidates, the published rule.
    reference, reference_labels, queries, query_labels = _data(8)
    got = out_of_sample_metrics(
        reference, reference_labels, queries, query_labels, k=K, kernel="gaussian", solver="authors"
    )
    for i, query in enumerate(queries):
        candidates = _neighbours(reference, query, K, metric="euclidean")
        gram, rhs = _node_problem(reference, query, candidates, kernel="gaussian", sigma=None)
        np.testing.assert_array_equal(got.graph.candidate_indices[i], candidates)
        np.testing.assert_allclose(got.graph.weights[i], authors_reference(gram, rhs), atol=1e-9)
