"""What `compare` and `drift` submissions add to the checks of a `sets` job.

A compare job is a sets job of its two sets (``compare.a``, ``compare.b``), which must
describe the same points; a drift job is a sets job of its reference set, plus current
points that are solved against it but never analysed as a set. `service.jobs` resolves
and checks the sets as usual, naming fields as the request does (``compare.b.labels``),
and calls these for the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import numpy as np

from api_schemas import AnalysisParams, CompareSpec, DriftSpec, EmbeddingSetSpec, JobCreate
from api_schemas.datasets import DatasetRef
from api_schemas.problems import FieldError
from jobstate.checks import check_query_shapes
from jobstate.errors import InvalidInputError
from jobstate.records import ArrayInput, DriftInput, SetInput, StoredArray

Resolver = Callable[[DatasetRef | None, str], tuple[ArrayInput, StoredArray] | None]
"""``resolve(ref, field)``: the array a reference names, or None with an error noted."""


class QueryMemoryPolicy(Protocol):
    def check_query(
        self, shape: Sequence[int], n_queries: int, *, params: AnalysisParams, field: str
    ) -> None: ...


def comparison_params(request: JobCreate) -> AnalysisParams:
    """The params a job runs with: a drift job's reference search is always exact.

    Drift ranks each current error among the reference's leave-one-out errors, and the
    current points' candidates are searched exactly; an approximate search of the
    reference would raise only its errors, which the test would read as drift. So
    ``knn="auto"`` runs exact, and ``knn="approximate"`` is refused (a 422 naming
    ``params.knn``).
    """
    params = request.params
    if request.drift is None or params.knn == "exact":
        return params
    if params.knn == "approximate":
        raise InvalidInputError(
            "params.knn",
            "a drift job compares the reference's exact leave-one-out errors with the "
            "current points'; use knn='exact' or 'auto' (which runs exact here)",
        )
    return params.model_copy(update={"knn": "exact"})


def named_sets(request: JobCreate) -> Iterator[tuple[str, EmbeddingSetSpec]]:
    """The job's sets, each with the field its errors name (``sets[x]``, ``compare.a``)."""
    if request.compare is not None:
        yield "compare.a", request.compare.a
        yield "compare.b", request.compare.b
    elif request.drift is not None:
        yield "drift.reference", request.drift.reference
    else:
        for set_spec in request.sets or ():
            yield f"sets[{set_spec.name}]", set_spec


def as_named(field: str, name: str, where: str) -> str:
    """A shape check's ``sets[name].x`` field as the request names the set."""
    prefix = f"sets[{name}]"
    return where + field.removeprefix(prefix) if field.startswith(prefix) else field


def check_label_kinds(reference_dtype: str, current_dtype: str, *, field: str) -> None:
    """Per-class shifts pair classes by label: both integers, or both strings."""

    def is_integer(dtype: str) -> bool:
        try:
            return np.dtype(dtype).kind in "iub"
        except TypeError:
            return False

    if is_integer(reference_dtype) != is_integer(current_dtype):
        raise InvalidInputError(
            field,
            f"current labels ({current_dtype}) and reference labels ({reference_dtype}) must "
            "both be integers or both be strings, so that their classes pair up",
        )


def compare_errors(spec: CompareSpec, *, resolve: Resolver) -> list[FieldError]:
    """Both sets must hold the same number of points (the same points, in order).

    Called once both sets resolved, so ``resolve`` finds them again without new errors.
    """
    resolved_a = resolve(spec.a.embeddings, "compare.a.embeddings")
    resolved_b = resolve(spec.b.embeddings, "compare.b.embeddings")
    if resolved_a is None or resolved_b is None:
        return []
    n_a, n_b = int(resolved_a[1].shape[0]), int(resolved_b[1].shape[0])
    if n_a == n_b:
        return []
    return [
        FieldError(
            field="compare.b.embeddings",
            message=f"compare.b has {n_b} points and compare.a {n_a}; a compare job needs "
            "the same points in both sets, in the same order (e.g. two layers of one "
            "dataset)",
        )
    ]


def resolve_current(
    spec: DriftSpec,
    *,
    reference_resolved: bool,
    resolve: Resolver,
    params: AnalysisParams,
    memory: QueryMemoryPolicy | None,
    errors: list[FieldError],
) -> DriftInput | None:
    """A drift job's current points, checked against the reference; None after an error.

    Errors are appended to ``errors`` and name ``drift.current.embeddings``, ``.labels``
    or ``.ids``.
    """
    where = "drift.current"
    current = spec.current
    embeddings = resolve(current.embeddings, f"{where}.embeddings")
    labels = resolve(current.labels, f"{where}.labels")
    ids = resolve(current.ids, f"{where}.ids")
    if (
        embeddings is None
        or (current.labels is not None and labels is None)
        or (current.ids is not None and ids is None)
    ):
        return None
    if not reference_resolved:
        return None
    # The reference resolved and passed its checks: resolving it again adds no error.
    reference = resolve(spec.reference.embeddings, "drift.reference.embeddings")
    if reference is None:
        return None
    shape = embeddings[1].shape
    try:
        # The current points are the reference's queries, checked by the same rule; the
        # current side of per-class shifts needs no reference labels.
        check_query_shapes(
            name=spec.reference.name,
            dim=int(reference[1].shape[1]),
            set_has_labels=True,
            embeddings_shape=shape,
            embeddings_dtype=embeddings[1].dtype,
            labels_shape=labels[1].shape if labels else None,
            labels_dtype=labels[1].dtype if labels else None,
        )
        reference_labels = resolve(spec.reference.labels, "drift.reference.labels")
        if labels is not None and reference_labels is not None:
            check_label_kinds(reference_labels[1].dtype, labels[1].dtype, field=f"{where}.labels")
        if ids is not None and (len(ids[1].shape) != 1 or int(ids[1].shape[0]) != shape[0]):
            raise InvalidInputError(
                f"{where}.ids",
                f"ids must be a 1-D array with one entry per current point ({shape[0]}), got "
                f"shape {tuple(ids[1].shape)}",
            )
        if memory is not None:
            memory.check_query(
                reference[1].shape, int(shape[0]), params=params, field=f"{where}.embeddings"
            )
    except InvalidInputError as error:
        field_name = error.field.replace(f"sets[{spec.reference.name}].query", where)
        errors.append(FieldError(field=field_name, message=error.message))
        return None
    if params.kernel == "cosine" and embeddings[1].zero_rows:
        errors.append(
            FieldError(
                field=f"{where}.embeddings",
                message=f"{embeddings[1].zero_rows} rows are zero vectors, which have no "
                "direction under the cosine kernel; drop them or use kernel='gaussian'",
            )
        )
        return None
    return DriftInput(
        current=SetInput(
            name=current.name,
            embeddings=embeddings[0],
            labels=labels[0] if labels else None,
            ids=ids[0] if ids else None,
        ),
        threshold=spec.threshold,
    )
