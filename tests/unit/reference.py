"""Slow, obviously correct references the core is tested against.

Each works one point at a time with plain numpy/scipy loops, sharing no code with
workers.geometry.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.optimize


def kernel_matrix(points: np.ndarray, *, kernel: str, sigma: float = 1.0) -> np.ndarray:
    """Dense kernel among rows of ``points`` (float64), by the DESIGN formulas."""
    points = np.asarray(points, dtype=np.float64)
    n = points.shape[0]
    out = np.empty((n, n))
    for a in range(n):
        for b in range(n):
            x, z = points[a], points[b]
            if kernel == "cosine":
                cos = x @ z / (np.linalg.norm(x) * np.linalg.norm(z))
                out[a, b] = (1.0 + min(1.0, max(-1.0, cos))) / 2.0
            else:
                out[a, b] = np.exp(-np.sum((x - z) ** 2) / (2.0 * sigma**2))
    return out


def nnk_reference(gram: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """min_{theta >= 0} 1/2 theta' K theta - b' theta by scipy NNLS on a factor of K.

    With K = R'R (Cholesky) and R' z = b, the objective is 1/2 |R theta - z|^2 + const.
    A singular K (fewer dimensions than candidates) uses its eigen square root instead.
    """
    try:
        upper = scipy.linalg.cholesky(gram, lower=False)
        target = scipy.linalg.solve_triangular(upper, rhs, trans="T")
    except np.linalg.LinAlgError:
        values, vectors = np.linalg.eigh(gram)
        keep = values > values.max() * 1e-12
        upper = np.sqrt(values[keep])[:, None] * vectors[:, keep].T
        target = (vectors[:, keep].T @ rhs) / np.sqrt(values[keep])
    theta, _ = scipy.optimize.nnls(upper, target, maxiter=1000)
    theta[theta <= 1e-6 * theta.max()] = 0.0
    return theta


def authors_reference(gram: np.ndarray, rhs: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """PyNNK's non_negative_qpsolver, transcribed from DESIGN's appendix, one node."""
    x = rhs.copy()
    if (rhs > 1 - tol).any():
        return np.where(rhs > 1 - tol, rhs, 0.0)
    active = rhs > tol
    for _ in range(50_000):
        x = np.zeros_like(rhs)
        sub = gram[np.ix_(active, active)]
        try:
            factor = scipy.linalg.cho_factor(sub)
        except np.linalg.LinAlgError:
            factor = scipy.linalg.cho_factor(sub + tol * np.eye(sub.shape[0]))
        x[active] = scipy.linalg.cho_solve(factor, rhs[active])
        negative = x < tol
        check = np.abs(x[negative]).max() if negative.any() else 0.0
        active = active & (x > tol)
        if check <= tol:
            break
    x[x < tol] = 0.0
    return x


def kkt_residual(gram: np.ndarray, rhs: np.ndarray, theta: np.ndarray) -> float:
    """Largest violation of theta >= 0, grad >= 0 off the support, grad = 0 on it."""
    gradient = gram @ theta - rhs
    support = theta > 0
    violations = [
        max(0.0, -theta.min()),
        max(0.0, -gradient[~support].min()) if (~support).any() else 0.0,
        np.abs(gradient[support]).max() if support.any() else 0.0,
    ]
    return float(max(violations))


def brute_force_neighbours(points: np.ndarray, k: int, *, metric: str) -> np.ndarray:
    """k nearest other points of each point by a full float64 distance matrix."""
    points = np.asarray(points, dtype=np.float64)
    if metric == "cosine":
        unit = points / np.linalg.norm(points, axis=1, keepdims=True)
        distance = -(unit @ unit.T)
    else:
        distance = ((points[:, None, :] - points[None, :, :]) ** 2).sum(axis=2)
    np.fill_diagonal(distance, np.inf)
    return np.argsort(distance, axis=1, kind="stable")[:, :k]


def headline_metrics_of(set_report) -> dict[str, float]:
    """The headline numbers a tracker integration logs, spelled out from the report
    rather than from nnkgeo.integrations."""
    loo, homogeneity = set_report.loo_error, set_report.homogeneity
    numbers = {
        "loo_error.nnk_weighted": loo.nnk_weighted,
        "loo_error.nnk_unweighted": loo.nnk_unweighted,
        "loo_error.knn_weighted": loo.knn_weighted,
        "loo_error.knn_unweighted": loo.knn_unweighted,
        "loo_error.soft_nnk_weighted": loo.soft_nnk_weighted,
        "homogeneity.nnk_mean": homogeneity.nnk_mean,
        "homogeneity.knn_mean": homogeneity.knn_mean,
        "homogeneity.pure_patch_fraction": homogeneity.pure_patch_fraction,
        "nnk_degree.mean": set_report.nnk_degree.mean,
        "nnk_degree.median": set_report.nnk_degree.median,
        "reconstruction_error.mean": set_report.reconstruction_error.mean,
        "reconstruction_error.median": set_report.reconstruction_error.median,
        "intrinsic_dimension.twonn": set_report.intrinsic_dimension.twonn,
        "intrinsic_dimension.mle": set_report.intrinsic_dimension.mle,
        "label_smoothness.cross_class_edge_fraction": (
            set_report.label_smoothness.cross_class_edge_fraction
        ),
    }
    if set_report.neural_collapse is not None and set_report.neural_collapse.nc1 is not None:
        numbers["neural_collapse.nc1"] = set_report.neural_collapse.nc1
    return numbers
