"""Input checks at the boundary of the core: every message names the field and the fix."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from api_schemas import AnalysisParams
from jobstate.errors import InvalidInputError

MIN_POINTS = 3
_NUMERIC_KINDS = "biuf"
_LABEL_KINDS = "biuU"


def _dtype_kind(dtype: str) -> str:
    if dtype == "bfloat16":
        return "f"
    try:
        return np.dtype(dtype).kind
    except TypeError:
        return "O"


def check_set_shapes(
    *,
    name: str,
    embeddings_shape: Sequence[int],
    embeddings_dtype: str,
    labels_shape: Sequence[int] | None = None,
    labels_dtype: str | None = None,
    ids_shape: Sequence[int] | None = None,
    params: AnalysisParams,
) -> None:
    """Check what can be checked from shapes and dtypes alone.

    The service calls this before queueing a job, from upload metadata; the worker
    and the CLI call it again through :func:`validate_set` on the arrays themselves.

    Raises
    ------
    InvalidInputError
        With ``field`` naming ``sets[name].embeddings``, ``.labels``, ``.ids`` or
        ``params.k``.
    """
    where = f"sets[{name}]"
    if len(embeddings_shape) != 2:
        raise InvalidInputError(
            f"{where}.embeddings",
            f"embeddings must be a 2-D array (N points x d dimensions), got shape "
            f"{tuple(embeddings_shape)}; flatten or pool each point's features first",
        )
    n_points, dim = (int(s) for s in embeddings_shape)
    if _dtype_kind(embeddings_dtype) not in _NUMERIC_KINDS:
        raise InvalidInputError(
            f"{where}.embeddings",
            f"embeddings must be numeric, got dtype {embeddings_dtype}; store them as float32",
        )
    if dim < 1:
        raise InvalidInputError(f"{where}.embeddings", "embeddings have 0 dimensions")
    if n_points < MIN_POINTS:
        raise InvalidInputError(
            f"{where}.embeddings",
            f"at least {MIN_POINTS} points are needed for an NNK graph, got {n_points}",
        )
    if params.k >= n_points:
        raise InvalidInputError(
            "params.k",
            f"k={params.k} must be smaller than the number of points ({n_points}) of set "
            f"'{name}'; use k <= {n_points - 1}",
        )
    if labels_shape is not None:
        if len(labels_shape) != 1 or int(labels_shape[0]) != n_points:
            raise InvalidInputError(
                f"{where}.labels",
                f"labels must be a 1-D array with one entry per point ({n_points}), got "
                f"shape {tuple(labels_shape)}",
            )
        if labels_dtype is not None and _dtype_kind(labels_dtype) not in _LABEL_KINDS:
            raise InvalidInputError(
                f"{where}.labels",
                f"labels must be integers or strings, got dtype {labels_dtype}",
            )
    if ids_shape is not None and (len(ids_shape) != 1 or int(ids_shape[0]) != n_points):
        raise InvalidInputError(
            f"{where}.ids",
            f"ids must be a 1-D array with one entry per point ({n_points}), got shape "
            f"{tuple(ids_shape)}",
        )


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


def check_embedding_values(
    embeddings: np.ndarray, *, name: str, kernel: str, chunk_rows: int = 65_536
) -> None:
    """Refuse non-finite values, float32 overflow, and zero vectors under the cosine kernel.

    The analysis computes in float32, so values are judged after that cast: a float64
    value beyond float32's range (about 3.4e38) would become +-inf, and a row whose
    values all underflow to 0 has no direction. Scans in row chunks so that a
    memory-mapped array is never copied whole.

    Raises
    ------
    InvalidInputError
        With ``field="sets[name].embeddings"``; the message names the first row at fault.
    """
    where = f"sets[{name}].embeddings"
    for start in range(0, embeddings.shape[0], chunk_rows):
        chunk = np.asarray(embeddings[start : start + chunk_rows])
        finite = np.isfinite(chunk)
        if not finite.all():
            row = start + int(np.argwhere(~finite)[0, 0])
            raise InvalidInputError(
                where,
                f"embeddings hold NaN or Inf values (first at row {row}); every value must "
                "be finite",
            )
        with np.errstate(over="ignore"):
            narrowed = chunk.astype(np.float32, copy=False)
        overflow = np.isinf(narrowed)
        if overflow.any():
            row = start + int(np.argwhere(overflow)[0, 0])
            raise InvalidInputError(
                where,
                f"embeddings hold values beyond float32's range (magnitude above 3.4e38; "
                f"first at row {row}), which become +-inf in float32, the precision the "
                "analysis computes in; rescale them (e.g. divide by the largest absolute "
                "value)",
            )
        if kernel == "cosine":
            zero_rows = np.flatnonzero(~narrowed.any(axis=1))
            if zero_rows.size:
                raise InvalidInputError(
                    where,
                    f"row {start + int(zero_rows[0])} is a zero vector (in float32), which "
                    "has no direction under the cosine kernel; drop such rows or use "
                    "kernel='gaussian'",
                )
