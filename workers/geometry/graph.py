"""Graph assembly: the directed NNK graph W and the symmetric graph A derived from it."""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.sparse as sp

Symmetrize = Literal["nnk", "max", "min", "mean"]


def directed_graph(candidate_indices: np.ndarray, weights: np.ndarray) -> sp.csr_matrix:
    """Directed NNK graph: row i holds theta_i on i's candidates, zeros dropped.

    Parameters
    ----------
    candidate_indices : ndarray of shape (n_points, k)
    weights : ndarray of shape (n_points, k)
        NNK weights, zero for candidates that are not NNK neighbours.

    Returns
    -------
    W : csr_matrix of shape (n_points, n_points), float64, sorted indices
    """
    n_points, k = candidate_indices.shape
    # Copies: csr_matrix wraps the arrays it is given, and eliminate_zeros compacts
    # them in place, which would scramble the caller's weights.
    graph = sp.csr_matrix(
        (
            np.array(weights, dtype=np.float64).ravel(),
            np.array(candidate_indices, dtype=np.int64).ravel(),
            np.arange(0, n_points * k + 1, k, dtype=np.int64),
        ),
        shape=(n_points, n_points),
    )
    graph.eliminate_zeros()
    graph.sort_indices()
    return graph


def _candidate_pattern(candidate_indices: np.ndarray) -> sp.csr_matrix:
    n_points, k = candidate_indices.shape
    return sp.csr_matrix(
        (
            np.ones(n_points * k, dtype=np.float64),
            np.asarray(candidate_indices, dtype=np.int64).ravel(),
            np.arange(0, n_points * k + 1, k, dtype=np.int64),
        ),
        shape=(n_points, n_points),
    )


def symmetric_graph(
    directed: sp.csr_matrix,
    *,
    rule: Symmetrize = "nnk",
    candidate_indices: np.ndarray | None = None,
    reconstruction_error: np.ndarray | None = None,
) -> sp.csr_matrix:
    """Derive the symmetric graph A from the directed graph W.

    Parameters
    ----------
    directed : csr_matrix of shape (n_points, n_points)
    rule : {"nnk", "max", "min", "mean"}
        ``"nnk"`` (the authors' rule): only pairs that are each other's candidates
        keep an edge, and for such a pair the endpoint with the smaller reconstruction
        error decides its weight (both do when the errors are equal), then
        ``A = max(W', W'^T)``. ``"max"`` is the union max(W, W^T), ``"min"`` the
        intersection min(W, W^T), ``"mean"`` (W + W^T) / 2.
    candidate_indices : ndarray of shape (n_points, k)
        Needed by ``"nnk"``.
    reconstruction_error : ndarray of shape (n_points,)
        Needed by ``"nnk"``.

    Returns
    -------
    A : csr_matrix of shape (n_points, n_points), symmetric, sorted indices
    """
    if rule == "max":
        result = directed.maximum(directed.T)
    elif rule == "min":
        result = directed.minimum(directed.T)
    elif rule == "mean":
        result = (directed + directed.T) * 0.5
    elif rule == "nnk":
        if candidate_indices is None or reconstruction_error is None:
            raise ValueError("rule='nnk' needs candidate_indices and reconstruction_error")
        pattern = _candidate_pattern(candidate_indices)
        mutual = pattern.multiply(pattern.T).tocsr()
        kept = directed.multiply(mutual).tocoo()
        error = np.asarray(reconstruction_error)
        decides = error[kept.row] <= error[kept.col]
        decided = sp.csr_matrix(
            (kept.data[decides], (kept.row[decides], kept.col[decides])), shape=directed.shape
        )
        result = decided.maximum(decided.T)
    else:
        raise ValueError(f"rule must be one of nnk, max, min, mean; got {rule!r}")
    result = sp.csr_matrix(result)
    result.eliminate_zeros()
    result.sort_indices()
    return result
