"""Neural collapse NC1: within-class variability relative to the spread of class means.

NC1 = tr(Sigma_W Sigma_B^+) / C (Papyan, Han & Donoho, "Prevalence of neural collapse
during the terminal phase of deep learning training", PNAS 2020, eq. 6 and Fig. 6),
on the raw embeddings. It falls towards 0 as every class collapses onto its mean.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from jobstate.errors import InvalidInputError
from workers.geometry.metrics import encode_labels

__all__ = ["nc1"]

# Rows converted to float64 at a time: about 32 MiB of float64 per block at any width.
_BLOCK_BYTES = 32 * 2**20


def _row_blocks(n_points: int, dim: int) -> range:
    return range(0, n_points, max(1, _BLOCK_BYTES // (8 * max(dim, 1))))


def nc1(embeddings: np.ndarray, labels: np.ndarray) -> float:
    """The NC1 neural-collapse statistic of labelled embeddings.

    Parameters
    ----------
    embeddings : ndarray of shape (n_points, dim)
        Finite values (float32 or float64; a memory map is read a block at a time).
    labels : ndarray of shape (n_points,)
        Class of each point; at least two distinct classes.

    Returns
    -------
    float
        ``tr(Sigma_W pinv(Sigma_B)) / C``; NaN when every class has the same mean
        (Sigma_B = 0), where the statistic says nothing.

    Raises
    ------
    InvalidInputError
        On mismatched shapes, or fewer than two classes.

    Notes
    -----
    With C classes, mu_c the mean of class c and mu_G the mean of all N points::

        Sigma_W = (1/N) sum_c sum_{i in c} (x_i - mu_c)(x_i - mu_c)'
        Sigma_B = (1/C) sum_c (mu_c - mu_G)(mu_c - mu_G)'

    Two passes over the rows, a block at a time in float64 (class sums, then centred
    products), so memory is O(d^2 + C d) beyond one block. With M the (C x d) matrix of
    centred class means, Sigma_B = M'M / C; the thin SVD M = U S V' gives
    pinv(Sigma_B) = V diag(C / s_j^2) V' over the eigenvalues s_j^2 / C of Sigma_B
    above ``max(C, d) * eps`` times the largest (numpy's ``matrix_rank`` rule), so no
    d x d eigendecomposition is needed: NC1 = sum_j (v_j' Sigma_W v_j) / s_j^2.
    The weighted class means sum to zero, so Sigma_B has rank at most C - 1.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[1.0, 0.0], [3.0, 0.0], [-1.0, 0.0], [-3.0, 0.0]])
    >>> round(nc1(x, np.array([0, 0, 1, 1])), 6)
    0.125
    """
    # No copy: a memory map stays one, read a block at a time below.
    embeddings = embeddings if isinstance(embeddings, np.ndarray) else np.asarray(embeddings)
    labels = np.asarray(labels)
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise InvalidInputError("embeddings", f"need shape (n_points, dim), got {embeddings.shape}")
    if labels.shape != (embeddings.shape[0],):
        raise InvalidInputError(
            "labels", f"need shape ({embeddings.shape[0]},) to match embeddings, got {labels.shape}"
        )
    classes, codes = encode_labels(labels)
    n_classes = int(classes.size)
    if n_classes < 2:
        raise InvalidInputError("labels", "NC1 needs at least two classes")
    n_points, dim = embeddings.shape
    blocks = _row_blocks(n_points, dim)

    sums = np.zeros((n_classes, dim))
    for start in blocks:
        rows = np.asarray(embeddings[start : start + blocks.step], dtype=np.float64)
        block_codes = codes[start : start + rows.shape[0]]
        # A sparse (classes x rows) indicator sums the rows per class without a dense
        # one-hot, which would be C x block.
        indicator = sp.csr_matrix(
            (np.ones(rows.shape[0]), (block_codes, np.arange(rows.shape[0]))),
            shape=(n_classes, rows.shape[0]),
        )
        sums += indicator @ rows
    counts = np.bincount(codes, minlength=n_classes).astype(np.float64)
    class_means = sums / counts[:, None]
    global_mean = sums.sum(axis=0) / n_points

    within = np.zeros((dim, dim))
    for start in blocks:
        rows = np.asarray(embeddings[start : start + blocks.step], dtype=np.float64)
        centred = rows - class_means[codes[start : start + rows.shape[0]]]
        within += centred.T @ centred
    within /= n_points

    centred_means = class_means - global_mean
    _, singular, directions = np.linalg.svd(centred_means, full_matrices=False)
    if singular.size == 0 or singular[0] == 0.0:
        return float("nan")
    # Sigma_B's eigenvalues are s^2 / C: keep those above numpy's matrix_rank cutoff for
    # Sigma_B (max(C, d) eps of the largest). A cutoff on s itself would keep the
    # rounding left in the null direction (the weighted centred means sum to zero) when
    # the means sit far from the origin, and 1 / s^2 of that noise swamps NC1.
    keep = singular**2 > max(n_classes, dim) * np.finfo(np.float64).eps * singular[0] ** 2
    kept = directions[keep]
    # pinv(Sigma_B) = C V diag(1 / s^2) V', so tr(Sigma_W pinv(Sigma_B)) / C drops the C.
    projected = ((kept @ within) * kept).sum(axis=1)
    return float((projected / singular[keep] ** 2).sum())
