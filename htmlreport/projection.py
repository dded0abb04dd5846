"""2-D projections of a sample of embeddings: a seeded randomized PCA, or UMAP.

:func:`project_to_2d` is what the report's map uses; :func:`top_components` is the PCA
underneath it. Only numpy is needed: UMAP is used when asked for and importable, and
threadpoolctl (which comes with scikit-learn) only when installed.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import NamedTuple

import numpy as np

__all__ = ["Projection", "project_to_2d", "top_components"]


class Projection(NamedTuple):
    """Points in 2-D, and how the page names the projection that put them there.

    Attributes
    ----------
    xy : ndarray of shape (m, 2), float64
        The coordinates, one row per projected point.
    method : str
        "PCA" or "UMAP".
    x_title, y_title : str
        The axis titles.
    note : str
        How the points were projected, for the figure's note.
    """

    xy: np.ndarray
    method: str
    x_title: str
    y_title: str
    note: str


def _one_blas_thread() -> AbstractContextManager[object]:
    """Run small linear algebra on one BLAS thread.

    The matrices here are small; OpenBLAS threads on a busy machine made the same QR
    steps twenty times slower. threadpoolctl comes with scikit-learn; without it this
    does nothing.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def top_components(
    centred: np.ndarray, count: int, *, seed: int = 0, power_iterations: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """The leading principal directions of centred rows, and their share of the variance.

    Parameters
    ----------
    centred : ndarray of shape (n, d)
        Rows with their mean removed.
    count : int
        How many directions.
    seed : int
        Seed of the random test matrix.
    power_iterations : int
        Subspace iterations; more sharpen directions whose variances are close.

    Returns
    -------
    components : ndarray of shape (c, d)
        Unit directions, ``c = min(count, n, d)`` (0 when the rows are all zero). Each is
        signed so that its entry of largest magnitude is positive.
    variance_share : ndarray of shape (c,)
        The share of the total variance along each.

    Notes
    -----
    A randomized range finder (Halko, Martinsson and Tropp 2011, algorithms 4.4 and 5.1)
    with a few power iterations, then a numpy SVD of the small projected matrix: O(n d)
    work where a full SVD of a tall matrix costs far more, and as exact as it for the
    two leading components when their variances stand apart.

    An SVD fixes each direction only up to its sign, and which sign comes out depends on
    the LAPACK build and the random test matrix; the sign rule (scikit-learn's
    ``svd_flip`` on V) makes the map the same wherever it is computed.
    """
    n, d = centred.shape
    total = float(np.square(centred).sum())
    width = min(n, d, count + 10)
    if width == 0 or total == 0:
        return np.zeros((0, d)), np.zeros(0)
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(centred @ rng.standard_normal((d, width)))
    for _ in range(power_iterations):
        basis, _ = np.linalg.qr(centred.T @ basis)
        basis, _ = np.linalg.qr(centred @ basis)
    _, singular, vt = np.linalg.svd(basis.T @ centred, full_matrices=False)
    keep = min(count, vt.shape[0])
    components = vt[:keep]
    signs = np.sign(components[np.arange(keep), np.argmax(np.abs(components), axis=1)])
    return components * signs[:, None], singular[:keep] ** 2 / total


def project_to_2d(sample: np.ndarray, *, seed: int, projection: str) -> Projection:
    """2-D coordinates of the rows: PCA, or with ``projection="auto"`` UMAP when it is
    importable (falling back to PCA).

    Parameters
    ----------
    sample : ndarray of shape (m, d), float64
        Finite rows to project.
    seed : int
        Seed of the randomized PCA (and of UMAP).
    projection : {"pca", "auto"}
        PCA, or UMAP when it is installed and there are more than 15 rows.

    Returns
    -------
    Projection
        The coordinates, the method, the axis titles and a note about the method.
    """
    umap = None
    if projection == "auto":
        try:
            import umap  # type: ignore[import-not-found]
        except ImportError:
            umap = None
    if umap is not None and sample.shape[0] > 15:
        try:
            xy = umap.UMAP(n_components=2, random_state=seed).fit_transform(sample)
            return Projection(np.asarray(xy, dtype=np.float64), "UMAP", "UMAP 1", "UMAP 2", "UMAP")
        except Exception:  # any UMAP failure falls back to PCA
            pass
    centred = sample - sample.mean(axis=0)
    with _one_blas_thread():
        components, share = top_components(centred, 2, seed=seed)
    xy = np.zeros((sample.shape[0], 2))
    xy[:, : components.shape[0]] = centred @ components.T
    shares = [float(share[i]) if i < share.size else 0.0 for i in range(2)]
    note = f"PCA; the two components explain {100 * (shares[0] + shares[1]):.1f} % of the variance"
    return Projection(
        xy,
        "PCA",
        f"PC 1 ({100 * shares[0]:.1f} % of variance)",
        f"PC 2 ({100 * shares[1]:.1f} % of variance)",
        note,
    )
