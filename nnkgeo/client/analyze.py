"""The notebook one-liner as one plan: upload, submit, wait, fetch the report."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from api_schemas import DatasetOut, JobCreate, JobOut, Report
from nnkgeo.client.calls import Plan
from nnkgeo.client.jobs import ParamsLike, job_create, submit_call, wait_plan
from nnkgeo.client.progress import ProgressOption
from nnkgeo.client.results import report_call
from nnkgeo.client.uploads import is_table, upload_call
from nnkgeo.errors import UsageError


def analyze_plan(
    embeddings: object,
    labels: object | None,
    *,
    name: str,
    params: ParamsLike,
    wait: bool,
    query: object | None = None,
    query_labels: object | None = None,
    progress: ProgressOption,
    timeout: float | None,
    poll_interval: float,
) -> Plan[Report | JobOut]:
    """Upload the labels (and queries) once and each set's embeddings, submit, and
    (``wait``) the report. The query points are every set's (``sets[].query``).

    Raises
    ------
    ValidationProblem
        For invalid params or set names, before anything is uploaded.
    UsageError
        When an upload holds several arrays and none can be chosen.
    """
    named = (
        dict(embeddings)
        if isinstance(embeddings, Mapping) and not is_table(embeddings)
        else {name: embeddings}
    )
    # Validate before uploading anything: a bad params dict must not cost an upload.
    job_create([{"name": set_name, "embeddings": {"dataset": "-"}} for set_name in named], params)
    if query_labels is not None and query is None:
        raise UsageError("query_labels need query (the query points' embeddings)")
    labels_ref = None
    if labels is not None:
        labels_ref = _single_array_ref((yield upload_call(labels, None)), what="labels")
    query_ref: dict[str, Any] | None = None
    if query is not None:
        query_ref = {
            "embeddings": _single_array_ref((yield upload_call(query, None)), what="query")
        }
        if query_labels is not None:
            query_ref["labels"] = _single_array_ref(
                (yield upload_call(query_labels, None)), what="query labels"
            )
    sets = []
    for set_name, set_embeddings in named.items():
        uploaded = yield upload_call(set_embeddings, None)
        spec: dict[str, Any] = {
            "name": set_name,
            "embeddings": _single_array_ref(uploaded, what=f"embeddings of {set_name!r}"),
        }
        if labels_ref is not None:
            spec["labels"] = labels_ref
        if query_ref is not None:
            spec["query"] = query_ref
        sets.append(spec)
    return (
        yield from submit_and_report_plan(
            job_create(sets, params),
            wait=wait,
            progress=progress,
            timeout=timeout,
            poll_interval=poll_interval,
        )
    )


def submit_and_report_plan(
    job: JobCreate,
    *,
    wait: bool,
    progress: ProgressOption,
    timeout: float | None,
    poll_interval: float,
) -> Plan[Report | JobOut]:
    """Submit a checked job and, with ``wait``, wait for it and fetch its report."""
    submitted = yield submit_call(job, None, None)
    if not wait:
        return submitted
    finished = yield from wait_plan(
        submitted.id, timeout=timeout, progress=progress, poll_interval=poll_interval
    )
    return (yield report_call(finished.id))


def _single_array_ref(dataset: DatasetOut, *, what: str) -> dict[str, str]:
    """The one array of an uploaded dataset (for a table: its float columns side by side)."""
    names = [array.name for array in dataset.arrays]
    if len(names) == 1:
        return {"dataset": dataset.id}
    if "__columns__" in names:
        return {"dataset": dataset.id, "array": "__columns__"}
    raise UsageError(
        f"the {what} upload holds several arrays ({', '.join(names)}); upload it and "
        "submit the job with the array named, e.g. {'dataset': id, 'array': name}"
    )
