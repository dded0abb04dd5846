"""Checks of a set's query points (``sets[].query``), from shapes and dtypes alone.

Beside :func:`jobstate.checks.check_set_shapes`: the service calls this at submission
from upload metadata, the engine again on the arrays themselves.
"""

from __future__ import annotations

from collections.abc import Sequence

from jobstate.checks import _LABEL_KINDS, _NUMERIC_KINDS, _dtype_kind
from jobstate.errors import InvalidInputError


def check_query_shapes(
    *,
    name: str,
    dim: int,
    set_has_labels: bool,
    embeddings_shape: Sequence[int],
    embeddings_dtype: str,
    labels_shape: Sequence[int] | None = None,
    labels_dtype: str | None = None,
) -> None:
    """Check a set's query points against the set they are interpolated from.

    Parameters
    ----------
    name : str
        The set's name.
    dim : int
        Width of the set's embeddings; the queries must have the same.
    set_has_labels : bool
        Query labels are only usable when the set's points have labels to interpolate.
    embeddings_shape, embeddings_dtype
        Of the query embeddings.
    labels_shape, labels_dtype : optional
        Of the query labels, when given.

    Raises
    ------
    InvalidInputError
        With ``field`` naming ``sets[name].query.embeddings`` or ``.query.labels``.
    """
    where = f"sets[{name}].query"
    if len(embeddings_shape) != 2:
        raise InvalidInputError(
            f"{where}.embeddings",
            f"query embeddings must be a 2-D array (points x {dim} dimensions), got shape "
            f"{tuple(embeddings_shape)}",
        )
    n_queries, query_dim = (int(s) for s in embeddings_shape)
    if _dtype_kind(embeddings_dtype) not in _NUMERIC_KINDS:
        raise InvalidInputError(
            f"{where}.embeddings",
            f"query embeddings must be numeric, got dtype {embeddings_dtype}; store them as "
            "float32",
        )
    if query_dim != dim:
        raise InvalidInputError(
            f"{where}.embeddings",
            f"query embeddings have {query_dim} dimensions, the set's embeddings {dim}; "
            "embed the queries with the same model and layer",
        )
    if n_queries < 1:
        raise InvalidInputError(f"{where}.embeddings", "query embeddings hold no points")
    if labels_shape is None:
        return
    if not set_has_labels:
        raise InvalidInputError(
            f"{where}.labels",
            "query labels are predicted from the set's labels; give the set's labels too",
        )
    if len(labels_shape) != 1 or int(labels_shape[0]) != n_queries:
        raise InvalidInputError(
            f"{where}.labels",
            f"query labels must be a 1-D array with one entry per query point ({n_queries}), "
            f"got shape {tuple(labels_shape)}",
        )
    if labels_dtype is not None and _dtype_kind(labels_dtype) not in _LABEL_KINDS:
        raise InvalidInputError(
            f"{where}.labels", f"query labels must be integers or strings, got dtype {labels_dtype}"
        )
