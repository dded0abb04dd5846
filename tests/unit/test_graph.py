"""Graph assembly and symmetrisation against a dictionary-based reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.geometry.graph import directed_graph, symmetric_graph


def _random_nnk(rng, n=40, k=6):
    candidates = np.stack(
        [rng.choice(np.delete(np.arange(n), i), k, replace=False) for i in range(n)]
    )
    weights = rng.random((n, k)) * (rng.random((n, k)) < 0.6)
    errors = rng.integers(0, 4, n).astype(float) / 10  # ties on purpose
    return candidates, weights, errors


def _reference(candidates, weights, errors, rule):
    n, k = candidates.shape
    w = {(i, int(candidates[i, j])): weights[i, j] for i in range(n) for j in range(k)}
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            wij, wji = w.get((i, j), 0.0), w.get((j, i), 0.0)
            if rule == "max":
                out[i, j] = max(wij, wji)
            elif rule == "min":
                out[i, j] = min(wij, wji)
            elif rule == "mean":
                out[i, j] = (wij + wji) / 2
            else:
                if (i, j) not in w or (j, i) not in w:
                    continue
                if errors[i] < errors[j]:
                    out[i, j] = wij
                elif errors[j] < errors[i]:
                    out[i, j] = wji
                else:
                    out[i, j] = max(wij, wji)
    return out


def test_directed_graph_holds_each_row_of_weights():
    rng = np.random.default_rng(0)
    candidates, weights, _ = _random_nnk(rng)
    graph = directed_graph(candidates, weights)
    dense = graph.toarray()
    for i in range(candidates.shape[0]):
        np.testing.assert_array_equal(dense[i, candidates[i]], weights[i])
    assert graph.nnz == (weights > 0).sum()
    assert graph.has_sorted_indices


@pytest.mark.parametrize("rule", ["nnk", "max", "min", "mean"])
def test_symmetric_graph_matches_reference(rule):
    rng = np.random.default_rng(1)
    candidates, weights, errors = _random_nnk(rng)
    graph = symmetric_graph(
        directed_graph(candidates, weights),
        rule=rule,
        candidate_indices=candidates,
        reconstruction_error=errors,
    )
    np.testing.assert_allclose(graph.toarray(), _reference(candidates, weights, errors, rule))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(["nnk", "max", "min", "mean"]))
def test_symmetric_graph_is_symmetric_and_directed_rows_are_candidates(seed, rule):
    rng = np.random.default_rng(seed)
    candidates, weights, errors = _random_nnk(rng, n=25, k=5)
    directed = directed_graph(candidates, weights)
    for i in range(25):
        assert set(directed[i].indices) <= set(candidates[i])
    graph = symmetric_graph(
        directed, rule=rule, candidate_indices=candidates, reconstruction_error=errors
    )
    assert (graph != graph.T).nnz == 0
    assert graph.diagonal().sum() == 0
