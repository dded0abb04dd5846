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
    n_points = candidate_indices.shape[0]
    # Only the non-zero entries are copied (eliminate_zeros drops exact zeros, so the
    # same entries): a float64 and an int64 copy of all N x k entries, compacted after,
    # was 16 bytes per candidate at the peak.
    kept = np.asarray(weights) != 0
    index_dtype = _index_dtype(n_points, kept.size)
    indptr = np.zeros(n_points + 1, dtype=index_dtype)
    np.cumsum(kept.sum(axis=1), out=indptr[1:])
    graph = sp.csr_matrix(
        (
            np.asarray(weights)[kept].astype(np.float64, copy=False),
            np.asarray(candidate_indices)[kept].astype(index_dtype, copy=False),
            indptr,
        ),
        shape=(n_points, n_points),
    )
    graph.sort_indices()
    return graph


def _index_dtype(n_points: int, n_entries: int) -> type[np.signedinteger]:
    """int32 indices when they fit, as scipy itself chooses: half the bytes of int64."""
    return np.int32 if max(n_points, n_entries) <= np.iinfo(np.int32).max else np.int64


# Directed edges looked up per block: a block's gathered candidate rows take
# _EDGE_BLOCK x k x 8 bytes (16 MiB at k = 32).
_EDGE_BLOCK = 65_536


def _decided_edges(
    rows: np.ndarray, columns: np.ndarray, candidate_indices: np.ndarray, error: np.ndarray
) -> np.ndarray:
    """For each edge (i, j) of W: whether i is among j's candidates too, and e_i <= e_j.

    Blockwise over the edges, so memory is O(edges + block x k) instead of the two
    N x k candidate-pattern matrices (and their transposes) that a sparse product needs.
    """
    decides = np.empty(rows.size, dtype=bool)
    for start in range(0, rows.size, _EDGE_BLOCK):
        stop = min(start + _EDGE_BLOCK, rows.size)
        block_rows, block_columns = rows[start:stop], columns[start:stop]
        reverse = candidate_indices[block_columns]
        np.any(reverse == block_rows[:, None], axis=1, out=decides[start:stop])
        decides[start:stop] &= error[block_rows] <= error[block_columns]
    return decides


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
        result = _nnk_rule(directed, candidate_indices, np.asarray(reconstruction_error))
    else:
        raise ValueError(f"rule must be one of nnk, max, min, mean; got {rule!r}")
    result = sp.csr_matrix(result)
    result.eliminate_zeros()
    result.sort_indices()
    return result


def _nnk_rule(
    directed: sp.csr_matrix, candidate_indices: np.ndarray, error: np.ndarray
) -> sp.csr_matrix:
    """The authors' rule on the edges of W; O(edges) memory beyond W itself.

    An edge (i, j) of W is kept when i is also among j's candidates, and decided by i
    when e_i <= e_j; then A = max(D, D^T) over the decided edges D.
    """
    directed = sp.csr_matrix(directed)
    n_points = directed.shape[0]
    columns = directed.indices
    rows = np.repeat(
        np.arange(n_points, dtype=columns.dtype), np.diff(directed.indptr).astype(np.int64)
    )
    decides = _decided_edges(rows, columns, np.asarray(candidate_indices), error)
    indptr = np.zeros(n_points + 1, dtype=directed.indptr.dtype)
    np.cumsum(np.bincount(rows[decides], minlength=n_points), out=indptr[1:])
    del rows
    decided = sp.csr_matrix(
        (directed.data[decides], columns[decides], indptr), shape=directed.shape
    )
    return decided.maximum(decided.T)
