"""Drift of new embeddings against a reference set, measured by NNK reconstruction error.

The reference set's own NNK graph (DESIGN section 1) gives every reference point's
leave-one-out reconstruction error e_i: how well the reference interpolates it from its
other points. Each current point is solved against the reference with the out-of-sample
solve (:mod:`workers.geometry.out_of_sample`), which gives its error the same way. Points
from the reference's distribution get errors distributed as the reference's own; points
off it (a shifted class, a new cluster, a broken preprocessing step) are interpolated
worse, or better. No classifier and no label is needed.

This module computes the errors (the solves); :mod:`workers.geometry.drift_statistics`
turns them into scores, a test and a verdict.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Literal

import numpy as np
from pydantic import ValidationError

from api_schemas import AnalysisParams
from jobstate.checks import check_embedding_values
from jobstate.errors import InvalidInputError
from workers.geometry.analysis import build_nnk_graph
from workers.geometry.drift_statistics import (
    DEFAULT_THRESHOLD,
    DEFAULT_TOP,
    DriftResult,
    check_label_kinds,
    check_threshold,
    check_top,
    check_vector,
    drift_statistics,
)
from workers.geometry.metrics import label_of
from workers.geometry.out_of_sample import solve_queries

__all__ = ["DEFAULT_THRESHOLD", "DEFAULT_TOP", "drift_scores"]

Kernel = Literal["cosine", "gaussian"]


def _check_embeddings(embeddings: object, *, field: str, kernel: Kernel) -> np.ndarray:
    array = embeddings if isinstance(embeddings, np.ndarray) else np.asarray(embeddings)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise InvalidInputError(field, f"need a non-empty 2-D array, got shape {array.shape}")
    if array.dtype.kind not in "fiu":
        raise InvalidInputError(field, f"need numbers, got dtype {array.dtype}")
    try:
        check_embedding_values(array, name=field, kernel=kernel)
    except InvalidInputError as error:
        raise InvalidInputError(field, error.message) from None
    return array


def _centroid_shifts(
    reference: np.ndarray,
    current: np.ndarray,
    reference_labels: np.ndarray,
    current_labels: np.ndarray,
    *,
    kernel: Kernel,
) -> dict[object, float]:
    """Per shared class: |mu_cur - mu_ref| / RMS distance of the reference class to mu_ref."""

    def kernel_vectors(points: np.ndarray) -> np.ndarray:
        vectors = points.astype(np.float64)
        if kernel == "cosine":
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors

    reference_vectors = kernel_vectors(reference)
    current_vectors = kernel_vectors(current)
    shifts: dict[object, float] = {}
    for label in np.intersect1d(reference_labels, current_labels):
        members = reference_vectors[reference_labels == label]
        centre = members.mean(axis=0)
        spread = np.sqrt(((members - centre) ** 2).sum(axis=1).mean())
        moved = np.linalg.norm(current_vectors[current_labels == label].mean(axis=0) - centre)
        shifts[label_of(label)] = float(moved / spread) if spread > 0 else float("inf")
    return shifts


def drift_scores(
    reference: np.ndarray,
    current: np.ndarray,
    *,
    reference_labels: np.ndarray | None = None,
    current_labels: np.ndarray | None = None,
    current_ids: np.ndarray | None = None,
    k: int,
    kernel: Kernel = "cosine",
    sigma: float | None = None,
    ignore_identical: bool = False,
    solver: Literal["exact", "authors"] = "exact",
    device: Literal["cpu", "cuda"] = "cpu",
    n_threads: int | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    top: int = DEFAULT_TOP,
    reference_error: np.ndarray | None = None,
) -> DriftResult:
    """Score how far each current point drifted from a reference set, and test the whole.

    Parameters
    ----------
    reference : ndarray of shape (n_reference, dim)
        The reference embeddings (e.g. training data); finite.
    current : ndarray of shape (n_current, dim)
        The embeddings to check (e.g. production data); different points, same space.
    reference_labels : ndarray of shape (n_reference,), optional
    current_labels : ndarray of shape (n_current,), optional
        Labels give ``per_class`` (see :func:`drift_statistics`); both integers or both
        strings.
    current_ids : ndarray of shape (n_current,), optional
        Copied into ``drifted``.
    k : int
        Candidates per point, ``1 <= k <= n_reference - 1`` (a reference point's
        candidates are the other reference points).
    kernel : {"cosine", "gaussian"}, optional
    sigma : float, optional
        Fixed gaussian bandwidth; default per query, its k-th candidate's distance / 3.
    ignore_identical : bool, optional
    solver : {"exact", "authors"}, optional
    device : {"cpu", "cuda"}, optional
        Where the solves run (already resolved).
    n_threads : int, optional
        CPU threads for the solves; default one per core.
    threshold : float, optional
        KS p-value below which the verdict is "drift"; default 0.01
        (:data:`DEFAULT_THRESHOLD`, chosen so that a fresh sample of the reference's
        distribution is flagged well under 10 % of the time).
    top : int, optional
        Length of ``drifted`` (default 100).
    reference_error : ndarray of shape (n_reference,), optional
        The reference's leave-one-out reconstruction errors, when its NNK graph was
        already built with exact search and these parameters (a drift job analyses the
        reference as a set first); default: built here.

    Returns
    -------
    DriftResult

    Raises
    ------
    InvalidInputError
        Naming the field: bad shapes, non-finite values, zero vectors under cosine, k
        out of range, labels of the wrong length or of different kinds, a bad threshold,
        reference errors of the wrong length.

    Notes
    -----
    The reference's errors are those of its own NNK graph (DESIGN section 1: point i's
    candidates are its k nearest other reference points, so the errors are leave-one-out),
    searched exactly: an approximate search would raise them slightly, and the KS test
    would read that as drift. Each current point's candidates are its k nearest reference
    points (:func:`~workers.geometry.out_of_sample.solve_queries`), with the same kernel
    and solver, so for a current set drawn like the reference the two errors are alike
    in distribution (a current point sees n_reference candidates' worth of density, a
    reference point n_reference - 1). Scores, the KS test and the verdict are those of
    :func:`drift_statistics`.
    """
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise InvalidInputError("params.k", f"k must be an integer, got {k!r}")
    if kernel not in ("cosine", "gaussian"):
        raise InvalidInputError(
            "params.kernel", f"kernel must be 'cosine' or 'gaussian', got {kernel!r}"
        )
    if device not in ("cpu", "cuda"):
        raise InvalidInputError("params.device", f"device must be 'cpu' or 'cuda', got {device!r}")
    reference = _check_embeddings(reference, field="reference", kernel=kernel)
    current = _check_embeddings(current, field="current", kernel=kernel)
    if current.shape[1] != reference.shape[1]:
        raise InvalidInputError(
            "current",
            f"current points have {current.shape[1]} dimensions, the reference "
            f"{reference.shape[1]}",
        )
    if not 1 <= k <= reference.shape[0] - 1:
        raise InvalidInputError(
            "params.k",
            f"k must lie in 1..{reference.shape[0] - 1} (the reference points but one), got {k}",
        )
    try:
        # The engine's own limits (k <= 1024, sigma only for gaussian, ...), checked once.
        params = AnalysisParams(
            k=int(k),
            kernel=kernel,
            sigma=sigma,
            ignore_identical=ignore_identical,
            solver=solver,
            knn="exact",
            device=device,
        )
    except ValidationError as error:
        raise InvalidInputError("params", str(error)) from None
    threshold = check_threshold(threshold)
    top = check_top(top)
    labels_reference = (
        None
        if reference_labels is None
        else check_vector(reference_labels, reference.shape[0], field="reference_labels")
    )
    labels_current = (
        None
        if current_labels is None
        else check_vector(current_labels, current.shape[0], field="current_labels")
    )
    if labels_current is not None:
        check_label_kinds(labels_reference, labels_current)

    if reference_error is not None:
        reference_error = check_vector(reference_error, reference.shape[0], field="reference_error")

    workers = n_threads or os.cpu_count() or 1
    reference32 = np.ascontiguousarray(reference, dtype=np.float32)
    if reference_error is None:
        own = build_nnk_graph(reference32, params=params, device=device, n_threads=workers)
        reference_error = own.reconstruction_error
    queries = solve_queries(
        reference32,
        current,
        k=int(k),
        kernel=kernel,
        sigma=sigma,
        ignore_identical=ignore_identical,
        solver=solver,
        device=device,
        n_threads=workers,
    )
    result = drift_statistics(
        reference_error,
        queries.reconstruction_error,
        current_degree=(queries.weights > 0).sum(axis=1),
        reference_labels=labels_reference,
        current_labels=labels_current,
        current_ids=current_ids,
        threshold=threshold,
        top=top,
    )
    if labels_reference is None or labels_current is None:
        return result
    shifts = _centroid_shifts(
        reference32,
        np.asarray(current, dtype=np.float32),
        labels_reference,
        labels_current,
        kernel=kernel,
    )
    return replace(
        result,
        per_class=[
            replace(entry, centroid_shift=shifts.get(entry.label)) for entry in result.per_class
        ],
    )
