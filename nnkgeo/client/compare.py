"""The one-liners of compare and drift jobs as plans: upload, submit, wait, fetch.

``Client.compare(a, b)`` submits ``{"compare": {"a": ..., "b": ...}}`` (two sets of the
same points; report section ``compare``); ``Client.drift(reference, current)`` submits
``{"drift": {"reference": ..., "current": ...}}`` (report section ``drift``). Both
validate the body before anything is uploaded, as :func:`~nnkgeo.client.analyze.analyze_plan`.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from pydantic import ValidationError

from api_schemas import AnalysisParams, DatasetOut, JobCreate, JobOut, Report
from nnkgeo.client.analyze import _single_array_ref, submit_and_report_plan
from nnkgeo.client.calls import Plan
from nnkgeo.client.jobs import ParamsLike, _local_validation_problem
from nnkgeo.client.progress import ProgressOption
from nnkgeo.client.uploads import upload_call

_PLACEHOLDER = {"dataset": "-"}


def _job(body: dict[str, Any], params: ParamsLike) -> JobCreate:
    """The job body, checked as the service would (a 422 problem raised here)."""
    try:
        checked = AnalysisParams.model_validate({} if params is None else params)
    except ValidationError as error:
        raise _local_validation_problem(error, prefix="params") from None
    try:
        return JobCreate.model_validate({**body, "params": checked})
    except ValidationError as error:
        raise _local_validation_problem(error) from None


def _upload(obj: object | None, what: str) -> Generator[Any, DatasetOut, dict[str, str] | None]:
    if obj is None:
        return None
    return _single_array_ref((yield upload_call(obj, None)), what=what)


def _without_none(spec: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in spec.items() if value is not None}


def compare_plan(
    a: object,
    b: object,
    *,
    labels: object | None,
    ids: object | None,
    names: tuple[str, str],
    params: ParamsLike,
    wait: bool,
    progress: ProgressOption,
    timeout: float | None,
    poll_interval: float,
) -> Plan[Report | JobOut]:
    """Upload both sets (and the shared labels, ids), submit a compare job, and (``wait``)
    fetch its report.

    Raises
    ------
    ValidationProblem
        For invalid params or names, before anything is uploaded.
    """
    name_a, name_b = names
    _job(
        {
            "compare": {
                "a": {"name": name_a, "embeddings": _PLACEHOLDER},
                "b": {"name": name_b, "embeddings": _PLACEHOLDER},
            }
        },
        params,
    )
    labels_ref = yield from _upload(labels, "labels")
    ids_ref = yield from _upload(ids, "ids")
    sets = {}
    for key, set_name, embeddings in (("a", name_a, a), ("b", name_b, b)):
        embeddings_ref = yield from _upload(embeddings, f"embeddings of {set_name!r}")
        sets[key] = _without_none(
            {"name": set_name, "embeddings": embeddings_ref, "labels": labels_ref, "ids": ids_ref}
        )
    job = _job({"compare": sets}, params)
    return (
        yield from submit_and_report_plan(
            job, wait=wait, progress=progress, timeout=timeout, poll_interval=poll_interval
        )
    )


def drift_plan(
    reference: object,
    current: object,
    *,
    labels: object | None,
    current_labels: object | None,
    current_ids: object | None,
    threshold: float,
    name: str,
    params: ParamsLike,
    wait: bool,
    progress: ProgressOption,
    timeout: float | None,
    poll_interval: float,
) -> Plan[Report | JobOut]:
    """Upload the reference and the current points, submit a drift job, and (``wait``)
    fetch its report.

    Raises
    ------
    ValidationProblem
        For invalid params, name or threshold, before anything is uploaded.
    """

    def body(reference_spec: dict[str, Any], current_spec: dict[str, Any]) -> dict[str, Any]:
        return {
            "drift": {
                "reference": reference_spec,
                "current": current_spec,
                "threshold": threshold,
            }
        }

    _job(body({"name": name, "embeddings": _PLACEHOLDER}, {"embeddings": _PLACEHOLDER}), params)
    reference_spec = _without_none(
        {
            "name": name,
            "embeddings": (yield from _upload(reference, "reference embeddings")),
            "labels": (yield from _upload(labels, "labels")),
        }
    )
    current_spec = _without_none(
        {
            "embeddings": (yield from _upload(current, "current embeddings")),
            "labels": (yield from _upload(current_labels, "current labels")),
            "ids": (yield from _upload(current_ids, "current ids")),
        }
    )
    job = _job(body(reference_spec, current_spec), params)
    return (
        yield from submit_and_report_plan(
            job, wait=wait, progress=progress, timeout=timeout, poll_interval=poll_interval
        )
    )
