"""The linear-probe baseline: how well a linear classifier reads the labels off the embeddings.

Opt-in (``params.baselines: ["linear_probe"]``): a logistic regression costs far more than
the NNK analysis on large sets. Its error is the yardstick for the interpolation errors:
a space where NNK interpolation errs much more than a linear probe is not organised by
neighbourhoods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from jobstate.errors import InvalidInputError

__all__ = ["LinearProbeResult", "linear_probe_error", "linear_probe_pipeline"]

# Issue 14's baseline: scikit-learn's defaults, with enough iterations to converge on
# standardised embeddings.
_MAX_ITER = 1000
_INVERSE_REGULARISATION = 1.0
_FOLDS = 5


@dataclass(frozen=True)
class LinearProbeResult:
    """``baselines.linear_probe`` of a set.

    Attributes
    ----------
    error : float
        Share of points the probe predicts wrongly: on the held-out queries, or averaged
        over the cross-validation folds.
    method : {"held_out", "cross_validation"}
    """

    error: float
    method: Literal["held_out", "cross_validation"]


def linear_probe_pipeline() -> Pipeline:
    """StandardScaler, then LogisticRegression(max_iter=1000, C=1.0), unfitted."""
    return make_pipeline(
        StandardScaler(),
        LogisticRegression(max_iter=_MAX_ITER, C=_INVERSE_REGULARISATION),
    )


def _check(embeddings: np.ndarray, labels: np.ndarray, *, field: str) -> None:
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise InvalidInputError(
            f"{field}.embeddings", f"need shape (n_points, dim), got {embeddings.shape}"
        )
    if not np.isfinite(embeddings).all():
        raise InvalidInputError(f"{field}.embeddings", "every value must be finite")
    if labels.shape != (embeddings.shape[0],):
        raise InvalidInputError(
            f"{field}.labels",
            f"need shape ({embeddings.shape[0]},) to match the embeddings, got {labels.shape}",
        )


def linear_probe_error(
    embeddings: np.ndarray,
    labels: np.ndarray,
    *,
    query_embeddings: np.ndarray | None = None,
    query_labels: np.ndarray | None = None,
    seed: int = 0,
) -> LinearProbeResult:
    """Error of a logistic-regression probe on standardised embeddings.

    Parameters
    ----------
    embeddings : ndarray of shape (n_points, dim)
        The training (reference) points; finite.
    labels : ndarray of shape (n_points,)
        At least two classes.
    query_embeddings : ndarray of shape (n_queries, dim), optional
        Held-out points: the probe is fitted on all training points and scored on these.
    query_labels : ndarray of shape (n_queries,), optional
        Required with ``query_embeddings``.
    seed : int, optional
        Seeds the shuffle of the cross-validation folds.

    Returns
    -------
    LinearProbeResult
        ``method="held_out"`` with queries; otherwise ``"cross_validation"``: 1 minus
        the mean accuracy over 5 stratified, shuffled folds.

    Notes
    -----
    The scaler is part of the fitted pipeline, so it is fitted on the training points
    only (each fold's, under cross-validation): no statistics of the scored points leak
    into the probe.
    """
    embeddings = np.asarray(embeddings)
    labels = np.asarray(labels)
    _check(embeddings, labels, field="reference")
    if np.unique(labels).size < 2:
        raise InvalidInputError("reference.labels", "a linear probe needs at least two classes")
    if (query_embeddings is None) != (query_labels is None):
        raise InvalidInputError("query", "query_embeddings and query_labels must be given together")
    probe = linear_probe_pipeline()
    if query_embeddings is not None:
        queries = np.asarray(query_embeddings)
        query_targets = np.asarray(query_labels)
        _check(queries, query_targets, field="query")
        if queries.shape[1] != embeddings.shape[1]:
            raise InvalidInputError(
                "query.embeddings",
                f"queries have {queries.shape[1]} dimensions, the reference {embeddings.shape[1]}",
            )
        probe.fit(embeddings, labels)
        accuracy = float(np.mean(probe.predict(queries) == query_targets))
        return LinearProbeResult(error=1.0 - accuracy, method="held_out")
    folds = StratifiedKFold(n_splits=_FOLDS, shuffle=True, random_state=seed)
    if embeddings.shape[0] < _FOLDS:
        raise InvalidInputError(
            "reference.embeddings",
            f"cross-validation needs at least {_FOLDS} points, got {embeddings.shape[0]}",
        )
    accuracy = cross_val_score(probe, embeddings, labels, cv=folds, scoring="accuracy")
    return LinearProbeResult(error=float(1.0 - accuracy.mean()), method="cross_validation")
