"""What the NNK solvers share, without torch or numba: tolerances and the scipy last resort.

Both the torch solver (:mod:`workers.geometry.solver`, the GPU path) and the compiled
CPU kernel (:mod:`workers.geometry.nnk_kernel`) read their constants here, so that the
two paths cut weights and detect duplicates identically.
"""

from __future__ import annotations

import numpy as np

# Two points whose kernel value is within this of 1 are identical (DESIGN: "K = 1").
IDENTICAL_TOLERANCE = 1e-12
# DESIGN: weights at or below 1e-6 times the node's largest weight count as zero.
RELATIVE_ZERO_WEIGHT = 1e-6
# Pivoting decisions ignore violations smaller than this; far below the 1e-6 KKT contract.
PIVOT_TOLERANCE = 1e-11
# A Cholesky pivot (squared) at or below this, relative to K_jj, is a singular one: the
# column is numerically a combination of the ones before it. nnk_compiled keeps its own
# copy (_SINGULAR_PIVOT, compiled in); tests/unit/test_ties.py checks that they agree.
SINGULAR_PIVOT = 1e-13


def scipy_nnls(gram: np.ndarray, rhs: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """One node by scipy's NNLS on a square-root factor of K (works when K is singular).

    Parameters
    ----------
    gram : ndarray of shape (k, k), float64
    rhs : ndarray of shape (k,), float64
    allowed : bool ndarray of shape (k,)
        Candidates that may take weight; the others get 0.

    Returns
    -------
    ndarray of shape (k,)
        A KKT point of the NNK problem restricted to ``allowed`` (not yet cut).
    """
    # Imported here: this reference path is rare, and scipy.optimize costs ~0.2 s of the
    # start-up of every analysis.
    import scipy.linalg
    import scipy.optimize

    weights = np.zeros_like(rhs)
    index = np.flatnonzero(allowed)
    if index.size == 0:
        return weights
    eigenvalues, eigenvectors = scipy.linalg.eigh(gram[np.ix_(index, index)])
    keep = eigenvalues > eigenvalues.max() * 1e-13
    root = np.sqrt(eigenvalues[keep])
    factor = root[:, None] * eigenvectors[:, keep].T
    target = (eigenvectors[:, keep].T @ rhs[index]) / root
    weights[index], _ = scipy.optimize.nnls(factor, target, maxiter=50 * index.size)
    return weights
