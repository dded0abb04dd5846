"""Python client of the nnkgeo REST API: :class:`Client` (sync) and :class:`AsyncClient`.

Both clients offer the same methods; the async ones are coroutines. They share every
piece of request building and response parsing: each method describes its HTTP calls
as :class:`_Call` values (method, path, body, how to parse the answer), and operations
that need several calls and pauses (``wait``, ``analyze``) are written once as
generators that yield calls and sleeps (a "sans-IO" plan). The two clients differ only
in the few lines that send a call and sleep.

Importing this module needs only httpx, pydantic and ``api_schemas``: numpy, scipy,
pyarrow and rich are imported when a method needs them, and torch, FastAPI, Celery and
faiss never.

Examples
--------
>>> from nnkgeo.client import Client
>>> with Client("http://127.0.0.1:8000", api_key="...") as nnk:     # doctest: +SKIP
...     report = nnk.analyze(embeddings, labels, name="layer4", params={"k": 30})
...     report.sets[0].loo_error.nnk_weighted
...     graph = nnk.graph(report.job_id, "layer4")                     # scipy CSR
"""

from __future__ import annotations

import email.utils
import io
import os
import random
import sys
import time
import urllib.parse
import uuid
from collections.abc import (
    AsyncIterator,
    Callable,
    Generator,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    Generic,
    Literal,
    Protocol,
    TextIO,
    TypeAlias,
    TypeVar,
    get_args,
)

import httpx
from pydantic import ValidationError

from api_schemas import (
    AnalysisParams,
    DatasetOut,
    DatasetRef,
    EmbeddingSetSpec,
    JobCreate,
    JobList,
    JobOut,
    JobStatus,
    Problem,
    Report,
)
from api_schemas.datasets import DatasetFormat
from api_schemas.problems import FieldError
from nnkgeo import __version__
from nnkgeo.errors import (
    JobCanceledError,
    JobFailedError,
    JobTimeoutError,
    NNKGeoHTTPError,
    ServiceUnreachableError,
    UsageError,
    ValidationProblem,
    error_for_problem,
)

if TYPE_CHECKING:
    import numpy as np
    import scipy.sparse as sp

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "AsyncClient",
    "Client",
    "GraphKind",
    "SetInputs",
    "format_for_path",
]

T = TypeVar("T")

URL_VARIABLE = "NNKGEO_URL"
API_KEY_VARIABLE = "NNKGEO_API_KEY"
DEFAULT_TIMEOUT_S = 60.0
# Statuses that mean "not now" rather than "no": the request is sent again.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
MAX_BACKOFF_S = 30.0
# A Retry-After longer than this is not slept through: the error is raised at once.
MAX_RETRY_AFTER_S = 120.0
# Used between polls when the service sends no Retry-After.
DEFAULT_POLL_INTERVAL_S = 1.0
UPLOAD_CHUNK_BYTES = 1 << 20
FORMAT_BY_SUFFIX = {
    ".npy": "npy",
    ".npz": "npz",
    ".safetensors": "safetensors",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".onnx": "onnx",
    ".pt2": "pt2",
}
# The service's list of formats, not a copy of it.
UploadFormat = DatasetFormat
_FORMAT_CHOICES = "|".join(repr(name) for name in get_args(DatasetFormat))
GraphKind = Literal["symmetric", "directed"]
DatasetLike: TypeAlias = "str | DatasetOut | DatasetRef"
SetInputs: TypeAlias = (
    "str | DatasetOut | DatasetRef | tuple[DatasetLike, DatasetLike | None] "
    "| tuple[DatasetLike, DatasetLike | None, DatasetLike | None]"
)
ProgressOption: TypeAlias = "bool | TextIO"


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class _Settings:
    url: str
    api_key: str | None
    timeout: float | httpx.Timeout
    retries: int
    backoff: float

    @classmethod
    def resolve(
        cls,
        url: str | None,
        api_key: str | None,
        *,
        timeout: float | httpx.Timeout,
        retries: int,
        backoff: float,
    ) -> _Settings:
        url = url or os.environ.get(URL_VARIABLE)
        if not url:
            raise UsageError(
                f"no nnkgeo service URL: pass url=... or set {URL_VARIABLE} "
                "(e.g. http://127.0.0.1:8000)"
            )
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"the service URL must start with http:// or https://, got {url!r}")
        if retries < 0:
            raise UsageError(f"retries must be >= 0, got {retries}")
        if backoff < 0:
            raise UsageError(f"backoff must be >= 0 seconds, got {backoff}")
        return cls(
            url=url.rstrip("/"),
            api_key=api_key or os.environ.get(API_KEY_VARIABLE) or None,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
        )

    def headers(self) -> dict[str, str]:
        headers = {"User-Agent": f"nnkgeo-python/{__version__}", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers


# --------------------------------------------------------------------------- upload bodies


@dataclass(frozen=True)
class _UploadBody:
    """An upload, re-readable for every attempt: a file streamed from disk, or buffers."""

    format: UploadFormat
    length: int
    path: Path | None = None
    buffers: tuple[bytes | memoryview, ...] = ()

    def sync_chunks(self) -> Iterator[bytes]:
        if self.path is not None:
            with self.path.open("rb") as file:
                while chunk := file.read(UPLOAD_CHUNK_BYTES):
                    yield chunk
            return
        yield from _buffer_chunks(self.buffers)

    async def async_chunks(self) -> AsyncIterator[bytes]:
        if self.path is not None:
            import anyio  # httpx's own dependency

            async with await anyio.open_file(self.path, "rb") as file:
                while chunk := await file.read(UPLOAD_CHUNK_BYTES):
                    yield chunk
            return
        for chunk in _buffer_chunks(self.buffers):
            yield chunk


def _buffer_chunks(buffers: Sequence[bytes | memoryview]) -> Iterator[bytes]:
    for buffer in buffers:
        view = memoryview(buffer).cast("B")
        for start in range(0, len(view), UPLOAD_CHUNK_BYTES):
            yield bytes(view[start : start + UPLOAD_CHUNK_BYTES])


def format_for_path(path: str | os.PathLike[str]) -> UploadFormat:
    """The upload format a file's suffix names (``.npy``, ``.npz``, ``.safetensors``,
    parquet; models: ``.onnx``, ``.pt2``; a TorchScript ``.pt`` needs ``format=``).

    Raises
    ------
    UsageError
        When the suffix is none of them; pass ``format=`` then.
    """
    suffix = Path(path).suffix.lower()
    try:
        return FORMAT_BY_SUFFIX[suffix]  # type: ignore[return-value]
    except KeyError:
        known = ", ".join(sorted(FORMAT_BY_SUFFIX))
        raise UsageError(
            f"cannot tell the format of {os.fspath(path)!r} from its suffix ({known}); "
            f"pass format={_FORMAT_CHOICES}"
        ) from None


def _module_of(obj: object) -> str:
    return type(obj).__module__ or ""


def _upload_body(obj: object, fmt: str | None) -> _UploadBody:
    """Encode what :meth:`Client.upload` accepts, without importing torch or pandas."""
    if isinstance(obj, str | os.PathLike):
        path = Path(obj)
        if not path.is_file():
            raise UsageError(f"no such file: {os.fspath(path)}")
        chosen = _check_format(fmt) if fmt else format_for_path(path)
        return _UploadBody(format=chosen, length=path.stat().st_size, path=path)
    if isinstance(obj, bytes | bytearray | memoryview):
        if fmt is None:
            raise UsageError(f"uploading raw bytes needs format={_FORMAT_CHOICES}")
        view = memoryview(obj).cast("B")
        return _UploadBody(format=_check_format(fmt), length=len(view), buffers=(view,))
    module = _module_of(obj)
    if module.startswith("pyarrow") or (
        module.startswith("pandas") and type(obj).__name__ == "DataFrame"
    ):
        return _parquet_body(obj, fmt)
    if module.startswith("torch") and hasattr(obj, "detach"):
        obj = _tensor_to_numpy(obj)
    elif module.startswith("pandas"):
        obj = obj.to_numpy()  # type: ignore[attr-defined]  # a Series: labels or ids
    if fmt not in (None, "npy"):
        raise UsageError(f"arrays are uploaded as npy; format={fmt!r} applies to files only")
    return _npy_body(obj)


def _check_format(fmt: str) -> UploadFormat:
    if fmt not in get_args(UploadFormat):
        raise UsageError(f"format must be one of {_FORMAT_CHOICES}, got {fmt!r}")
    return fmt  # type: ignore[return-value]


def _tensor_to_numpy(tensor: Any) -> np.ndarray:
    tensor = tensor.detach().cpu()
    if str(tensor.dtype) == "torch.bfloat16":  # numpy has no bfloat16
        tensor = tensor.float()
    return tensor.numpy()


def _npy_body(obj: object) -> _UploadBody:
    """The ``.npy`` file ``np.save(..., allow_pickle=False)`` writes, without copying the data.

    The header is numpy's own; the data is the array's buffer, sent in slices.
    """
    import numpy as np

    array = np.asarray(obj)
    if array.dtype.hasobject:
        raise UsageError(
            "cannot upload an object array (it would need pickling, which the service "
            "refuses); convert it to numbers or fixed-width strings first"
        )
    array = np.ascontiguousarray(array)
    header_fields = np.lib.format.header_data_from_array_1_0(array)
    header = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(header, header_fields)
    except ValueError:  # a header over 64 KiB: format 2.0, as np.save would choose
        header = io.BytesIO()
        np.lib.format.write_array_header_2_0(header, header_fields)
    data = memoryview(array.reshape(-1).view(np.uint8))
    return _UploadBody(
        format="npy",
        length=len(header.getbuffer()) + array.nbytes,
        buffers=(header.getvalue(), data),
    )


def _parquet_body(table: Any, fmt: str | None) -> _UploadBody:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if fmt not in (None, "parquet"):
        raise UsageError(f"tables are uploaded as parquet; format={fmt!r} does not apply")
    if _module_of(table).startswith("pandas"):
        table = pa.Table.from_pandas(table, preserve_index=False)
    elif isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    buffer = sink.getvalue()
    return _UploadBody(format="parquet", length=buffer.size, buffers=(memoryview(buffer),))


# --------------------------------------------------------------------------- calls and plans


@dataclass(frozen=True)
class _Call(Generic[T]):
    """One HTTP request and how to read its successful answer; sent by either client."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: Mapping[str, str | int] | None = None
    json: Any = None
    body: _UploadBody | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    # Stream the answer's body into this file (written whole, or not at all).
    download_to: Path | None = None

    def request_headers(self) -> dict[str, str]:
        headers = dict(self.headers)
        if self.body is not None:
            headers["Content-Type"] = "application/octet-stream"
            headers["Content-Length"] = str(self.body.length)
        return headers


@dataclass(frozen=True)
class _Sleep:
    seconds: float


_Step: TypeAlias = "_Call[Any] | _Sleep"
# An operation of several calls: yields calls (and receives their parsed results) or
# sleeps (and receives None), and returns the operation's result.
_Plan: TypeAlias = Generator["_Step", Any, T]


def _model(model: type[T]) -> Callable[[httpx.Response], T]:
    return lambda response: model.model_validate_json(response.content)  # type: ignore[attr-defined]


def _nothing(_response: httpx.Response) -> None:
    return None


def _upload_call(obj: object, fmt: str | None) -> _Call[DatasetOut]:
    body = _upload_body(obj, fmt)
    return _Call(
        "POST", "/v1/datasets", _model(DatasetOut), params={"format": body.format}, body=body
    )


def _dataset_call(dataset_id: str) -> _Call[DatasetOut]:
    return _Call("GET", f"/v1/datasets/{_segment(dataset_id)}", _model(DatasetOut))


def _delete_dataset_call(dataset_id: str) -> _Call[None]:
    return _Call("DELETE", f"/v1/datasets/{_segment(dataset_id)}", _nothing)


def _submit_call(
    sets: JobCreate | Sequence[Mapping[str, Any] | EmbeddingSetSpec] | Mapping[str, SetInputs],
    params: AnalysisParams | Mapping[str, Any] | None,
    idempotency_key: str | None,
) -> _Call[JobOut]:
    job = _job_create(sets, params)
    # Always keyed: a retried submit (lost answer, 503) must not start a second job.
    key = idempotency_key or f"nnkgeo-python-{uuid.uuid4()}"
    return _Call(
        "POST",
        "/v1/jobs",
        _model(JobOut),
        json=job.model_dump(mode="json", exclude_unset=True),
        headers={"Idempotency-Key": key},
    )


def _job_call(job_id: str) -> _Call[JobOut]:
    return _Call("GET", f"/v1/jobs/{_segment(job_id)}", _model(JobOut))


def _poll_call(job_id: str) -> _Call[tuple[JobOut, float | None]]:
    def parse(response: httpx.Response) -> tuple[JobOut, float | None]:
        job = JobOut.model_validate_json(response.content)
        return job, _retry_after_s(response.headers.get("Retry-After"))

    return _Call("GET", f"/v1/jobs/{_segment(job_id)}", parse)


def _jobs_call(limit: int, cursor: str | None) -> _Call[JobList]:
    params: dict[str, str | int] = {"limit": limit}
    if cursor:
        params["cursor"] = cursor
    return _Call("GET", "/v1/jobs", _model(JobList), params=params)


def _cancel_call(job_id: str) -> _Call[JobOut]:
    return _Call("POST", f"/v1/jobs/{_segment(job_id)}/cancel", _model(JobOut))


def _report_call(job_id: str) -> _Call[Report]:
    return _Call("GET", f"/v1/jobs/{_segment(job_id)}/report", _model(Report))


def _report_html_call(job_id: str, path: str | os.PathLike[str]) -> _Call[Path]:
    target = Path(path)
    return _Call(
        "GET",
        f"/v1/jobs/{_segment(job_id)}/report.html",
        lambda _response: target,
        headers={"Accept": "text/html"},
        download_to=target,
    )


def _graph_path(job_id: str, set_name: str) -> str:
    return f"/v1/jobs/{_segment(job_id)}/graphs/{_segment(set_name)}"


def _graph_call(job_id: str, set_name: str, kind: GraphKind) -> _Call[sp.csr_matrix]:
    def parse(response: httpx.Response) -> sp.csr_matrix:
        import scipy.sparse as sp

        return sp.csr_matrix(sp.load_npz(io.BytesIO(response.content)))

    return _Call(
        "GET",
        _graph_path(job_id, set_name),
        parse,
        params={"kind": _check_kind(kind)},
        headers={"Accept": "application/octet-stream"},
    )


def _save_graph_call(
    job_id: str, set_name: str, path: str | os.PathLike[str], kind: GraphKind
) -> _Call[Path]:
    target = Path(path)
    return _Call(
        "GET",
        _graph_path(job_id, set_name),
        lambda _response: target,
        params={"kind": _check_kind(kind)},
        headers={"Accept": "application/octet-stream"},
        download_to=target,
    )


def _check_kind(kind: str) -> str:
    if kind not in ("symmetric", "directed"):
        raise UsageError(f"kind must be 'symmetric' or 'directed', got {kind!r}")
    return kind


def _segment(value: str) -> str:
    """An id or set name as one URL path segment (never a path traversal)."""
    if not value or value in (".", ".."):
        raise UsageError(f"not a valid id or set name: {value!r}")
    return urllib.parse.quote(value, safe="")


def _wait_plan(
    job_id: str,
    *,
    timeout: float | None,
    progress: ProgressOption,
    poll_interval: float,
) -> _Plan[JobOut]:
    """Poll until the job finishes, sleeping as its Retry-After says; raise unless it succeeded."""
    started = time.monotonic()
    display = _progress_display(progress, job_id)
    try:
        while True:
            job, retry_after = yield _poll_call(job_id)
            display.update(job)
            if job.status.finished:
                break
            delay = retry_after if retry_after is not None else poll_interval
            if timeout is not None:
                remaining = timeout - (time.monotonic() - started)
                if remaining <= 0:
                    raise JobTimeoutError(
                        f"job {job_id} is still {job.status.value} after {timeout:g} s "
                        "(it goes on running; wait again or cancel it)",
                        job=job,
                    )
                delay = min(delay, remaining)
            yield _Sleep(delay)
    finally:
        display.close()
    _raise_unless_succeeded(job)
    return job


def _raise_unless_succeeded(job: JobOut) -> None:
    if job.status is JobStatus.failed:
        problem = job.error or Problem(
            title="Job failed", status=500, detail=f"job {job.id} failed without a reason"
        )
        raise JobFailedError(job, problem)
    if job.status is JobStatus.canceled:
        raise JobCanceledError(
            job,
            Problem(
                type="about:blank",
                title="Job canceled",
                status=409,
                detail=f"job {job.id} was canceled before it finished",
                instance=f"/v1/jobs/{job.id}",
            ),
        )


def _analyze_plan(
    embeddings: object,
    labels: object | None,
    *,
    name: str,
    params: AnalysisParams | Mapping[str, Any] | None,
    wait: bool,
    progress: ProgressOption,
    timeout: float | None,
    poll_interval: float,
) -> _Plan[Report | JobOut]:
    named = (
        dict(embeddings)
        if isinstance(embeddings, Mapping) and not _is_table(embeddings)
        else {name: embeddings}
    )
    # Validate before uploading anything: a bad params dict must not cost an upload.
    _job_create([{"name": set_name, "embeddings": {"dataset": "-"}} for set_name in named], params)
    labels_ref = None
    if labels is not None:
        labels_ref = _single_array_ref((yield _upload_call(labels, None)), what="labels")
    sets = []
    for set_name, set_embeddings in named.items():
        uploaded = yield _upload_call(set_embeddings, None)
        spec: dict[str, Any] = {
            "name": set_name,
            "embeddings": _single_array_ref(uploaded, what=f"embeddings of {set_name!r}"),
        }
        if labels_ref is not None:
            spec["labels"] = labels_ref
        sets.append(spec)
    job = yield _submit_call(sets, params, None)
    if not wait:
        return job
    finished = yield from _wait_plan(
        job.id, timeout=timeout, progress=progress, poll_interval=poll_interval
    )
    return (yield _report_call(finished.id))


def _is_table(obj: object) -> bool:
    return _module_of(obj).startswith(("pandas", "pyarrow"))


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


def _job_create(
    sets: JobCreate | Sequence[Mapping[str, Any] | EmbeddingSetSpec] | Mapping[str, SetInputs],
    params: AnalysisParams | Mapping[str, Any] | None,
) -> JobCreate:
    """The job body, validated here so that mistakes are named before anything is sent."""
    if isinstance(sets, JobCreate):
        if params is not None:
            raise UsageError("pass params inside the JobCreate, not beside it")
        return sets
    if isinstance(sets, Mapping):
        if "embeddings" in sets:
            raise UsageError(
                "sets is one set's spec; pass a list of them, or {name: (embeddings_id, labels_id)}"
            )
        set_specs: list[Any] = [
            _set_from_shorthand(set_name, inputs) for set_name, inputs in sets.items()
        ]
    elif isinstance(sets, str) or not isinstance(sets, Sequence):
        raise UsageError(
            "sets must be a list of set specs, or {name: (embeddings_id, labels_id)}, "
            f"not {type(sets).__name__}"
        )
    else:
        set_specs = list(sets)
    try:
        checked_params = AnalysisParams.model_validate({} if params is None else params)
    except ValidationError as error:
        raise _local_validation_problem(error, prefix="params") from None
    try:
        return JobCreate(sets=set_specs, params=checked_params)
    except ValidationError as error:
        raise _local_validation_problem(error) from None


def _set_from_shorthand(set_name: str, inputs: SetInputs) -> dict[str, Any]:
    parts = list(inputs) if isinstance(inputs, tuple | list) else [inputs]
    if not 1 <= len(parts) <= 3:
        raise UsageError(
            f"set {set_name!r}: give (embeddings, labels) or (embeddings, labels, ids), "
            f"got {len(parts)} items"
        )
    spec: dict[str, Any] = {"name": set_name}
    for role, part in zip(("embeddings", "labels", "ids"), parts, strict=False):
        if part is not None:
            spec[role] = _dataset_ref(part, what=f"set {set_name!r} {role}")
    if "embeddings" not in spec:
        raise UsageError(f"set {set_name!r}: the embeddings dataset is missing")
    return spec


def _dataset_ref(value: object, *, what: str) -> dict[str, Any]:
    if isinstance(value, DatasetRef):
        return value.model_dump(exclude_none=True)
    if isinstance(value, DatasetOut):
        return {"dataset": value.id}
    if isinstance(value, str):
        return {"dataset": value}
    raise UsageError(
        f"{what}: expected a dataset id, a DatasetOut or a DatasetRef, got {type(value).__name__}"
    )


def _local_validation_problem(error: ValidationError, *, prefix: str = "") -> ValidationProblem:
    """A pydantic error as the 422 problem the service would have answered."""
    field_errors = [
        FieldError(
            field=".".join(str(part) for part in (prefix, *item["loc"]) if part != "") or "body",
            message=item["msg"],
        )
        for item in error.errors()
    ]
    return ValidationProblem(
        Problem(
            title="Unprocessable Content",
            status=422,
            detail="The job was refused before it was sent.",
            errors=field_errors,
        )
    )


# --------------------------------------------------------------------------- retries


@dataclass(frozen=True)
class _RetryPolicy:
    retries: int
    backoff: float

    def delay_after_status(
        self, attempt: int, call: _Call[Any], response: httpx.Response
    ) -> float | None:
        """Seconds to wait before sending again, or None to raise the answer's error."""
        retry_after = _retry_after_s(response.headers.get("Retry-After"))
        retryable = response.status_code in RETRY_STATUSES or (
            # A submit whose Idempotency-Key is still being processed: a retry of ours
            # overtook the first attempt. (Other 409s with Retry-After, such as the report
            # of a running job, are the caller's to handle: wait() exists for that.)
            response.status_code == 409
            and retry_after is not None
            and "Idempotency-Key" in call.headers
        )
        if not retryable or attempt >= self.retries:
            return None
        if retry_after is not None:
            return retry_after if retry_after <= MAX_RETRY_AFTER_S else None
        return self.backoff_s(attempt)

    def delay_after_error(self, attempt: int) -> float | None:
        return None if attempt >= self.retries else self.backoff_s(attempt)

    def backoff_s(self, attempt: int) -> float:
        # Exponential, with "equal jitter": clients that failed together spread out.
        ceiling = min(self.backoff * 2**attempt, MAX_BACKOFF_S)
        return ceiling / 2 + random.uniform(0, ceiling / 2)


def _retry_after_s(value: str | None) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date (RFC 9110, 10.2.3)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


# Connection failures worth another attempt; not, e.g., an unsupported URL scheme.
_RETRYABLE_TRANSPORT_ERRORS = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)


def _error_from(response: httpx.Response) -> NNKGeoHTTPError:
    """The typed exception for an error answer (problem+json, or whatever a proxy sent)."""
    try:
        problem = Problem.model_validate_json(response.content)
    except ValidationError:
        text = response.text.strip()
        problem = Problem(
            title=response.reason_phrase or "HTTP error",
            status=response.status_code,
            detail=(text[:300] or None),
            instance=response.request.url.path,
        )
    return error_for_problem(problem)


def _unreachable(
    settings: _Settings, call: _Call[Any], error: Exception
) -> ServiceUnreachableError:
    attempts = settings.retries + 1
    return ServiceUnreachableError(
        f"{call.method} {settings.url}{call.path} failed after {attempts} attempt"
        f"{'s' if attempts > 1 else ''}: {type(error).__name__}: {error}"
    )


def _partial_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")


# --------------------------------------------------------------------------- progress


class _ProgressDisplay(Protocol):
    def update(self, job: JobOut) -> None: ...

    def close(self) -> None: ...


class _NoProgress:
    def update(self, job: JobOut) -> None:
        pass

    def close(self) -> None:
        pass


class _LineProgress:
    """A text bar: redrawn in place on a terminal; in logs, a line per stage or 10 %."""

    WIDTH = 24

    def __init__(self, stream: TextIO, job_id: str) -> None:
        self._stream = stream
        self._job_id = job_id
        self._interactive = _is_terminal(stream)
        self._started = time.monotonic()
        self._last: tuple[str, str, int] | None = None
        self._drawn = False

    def update(self, job: JobOut) -> None:
        fraction = min(max(job.progress.fraction, 0.0), 1.0)
        step = int(fraction * 100) if self._interactive else int(fraction * 10) * 10
        key = (job.status.value, job.progress.stage, step)
        if key == self._last:
            return
        self._last = key
        filled = int(fraction * self.WIDTH)
        bar = "#" * filled + "." * (self.WIDTH - filled)
        line = (
            f"{self._job_id} {job.status.value:<9} [{bar}] {int(fraction * 100):3d}% "
            f"{job.progress.stage} ({time.monotonic() - self._started:.1f} s)"
        )
        if self._interactive:
            self._stream.write("\r\x1b[2K" + line)
        else:
            self._stream.write(line + "\n")
        self._stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._interactive and self._drawn:
            self._stream.write("\n")
            self._stream.flush()


class _RichProgress:
    """rich's live bar, on terminals where rich is installed."""

    def __init__(self, stream: TextIO, job_id: str) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.fields[job_id]}"),
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            console=Console(file=stream),
        )
        self._task = self._progress.add_task("queued", total=1.0, job_id=job_id)
        self._progress.start()

    def update(self, job: JobOut) -> None:
        self._progress.update(
            self._task,
            completed=job.progress.fraction,
            description=f"{job.status.value} {job.progress.stage}",
        )

    def close(self) -> None:
        self._progress.stop()


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _progress_display(progress: ProgressOption, job_id: str) -> _ProgressDisplay:
    """No display, or a bar on stderr (``True``) or the given stream.

    rich draws it where installed and the stream is a terminal; elsewhere (logs, CI,
    notebooks capturing stderr) a plain text bar writes a line per change.
    """
    if progress is False:
        return _NoProgress()
    stream: TextIO = sys.stderr if progress is True else progress
    if _is_terminal(stream):
        try:
            return _RichProgress(stream, job_id)
        except ImportError:
            pass
    return _LineProgress(stream, job_id)


# --------------------------------------------------------------------------- the clients


class _ClientBase:
    """Settings and the description of every operation; subclasses only send and sleep."""

    def __init__(
        self,
        url: str | None,
        api_key: str | None,
        *,
        timeout: float | httpx.Timeout,
        retries: int,
        backoff: float,
    ) -> None:
        self._settings = _Settings.resolve(
            url, api_key, timeout=timeout, retries=retries, backoff=backoff
        )
        self._policy = _RetryPolicy(retries=retries, backoff=backoff)

    @property
    def url(self) -> str:
        """The service's base URL."""
        return self._settings.url

    def __repr__(self) -> str:
        key = "set" if self._settings.api_key else "none"
        return f"{type(self).__name__}(url={self.url!r}, api_key={key})"


class Client(_ClientBase):
    """A synchronous client of the nnkgeo service.

    Parameters
    ----------
    url : str, optional
        The service's base URL, e.g. ``http://127.0.0.1:8000``. Default: ``NNKGEO_URL``.
    api_key : str, optional
        The tenant's API key, sent as ``Authorization: Bearer``. Default:
        ``NNKGEO_API_KEY``; none for a service run with ``NNKGEO_ALLOW_ANONYMOUS``.
    timeout : float or httpx.Timeout, default 60
        Seconds per network operation (connect, each read or write), not per request.
    retries : int, default 5
        Extra attempts for answers 429, 502, 503, 504 (and 409 with ``Retry-After``, a
        submit still in flight) and for connection errors.
    backoff : float, default 0.5
        First retry delay in seconds, doubled on each retry (with jitter, at most 30 s);
        a ``Retry-After`` from the service is honoured instead.

    Raises
    ------
    UsageError
        Without a URL (argument or ``NNKGEO_URL``).

    Notes
    -----
    Every submit carries an ``Idempotency-Key`` (a random one when none is given), so a
    retried submit never starts a second job. Errors are raised as the typed exceptions
    of :mod:`nnkgeo.errors`, carrying the service's problem+json.

    Examples
    --------
    >>> with Client() as nnk:                                      # doctest: +SKIP
    ...     emb, y = nnk.upload(embeddings), nnk.upload(labels)
    ...     job = nnk.submit({"layer4": (emb.id, y.id)}, params={"k": 30})
    ...     nnk.wait(job.id)
    ...     report = nnk.report(job.id)
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT_S,
        retries: int = 5,
        backoff: float = 0.5,
    ) -> None:
        super().__init__(url, api_key, timeout=timeout, retries=retries, backoff=backoff)
        self._http = httpx.Client(
            base_url=self._settings.url,
            headers=self._settings.headers(),
            timeout=self._settings.timeout,
        )

    # -- transport: the only code that differs from AsyncClient

    def _send(self, call: _Call[T]) -> T:
        attempt = 0
        while True:
            try:
                response = self._attempt(call)
            except _RETRYABLE_TRANSPORT_ERRORS as error:
                delay = self._policy.delay_after_error(attempt)
                if delay is None:
                    raise _unreachable(self._settings, call, error) from error
            else:
                if response.is_success:
                    return call.parse(response)
                delay = self._policy.delay_after_status(attempt, call, response)
                if delay is None:
                    raise _error_from(response)
            time.sleep(delay)
            attempt += 1

    def _attempt(self, call: _Call[Any]) -> httpx.Response:
        request = self._http.build_request(
            call.method,
            call.path,
            params=call.params,
            json=call.json,
            content=None if call.body is None else call.body.sync_chunks(),
            headers=call.request_headers(),
        )
        response = self._http.send(request, stream=True)
        try:
            if call.download_to is None or not response.is_success:
                response.read()
            else:
                partial = _partial_path(call.download_to)
                try:
                    with partial.open("wb") as file:
                        for chunk in response.iter_bytes():
                            file.write(chunk)
                    partial.replace(call.download_to)
                finally:
                    partial.unlink(missing_ok=True)
        finally:
            response.close()
        return response

    def _run(self, plan: _Plan[T]) -> T:
        result: Any = None
        try:
            while True:
                step = plan.send(result)
                result = time.sleep(step.seconds) if isinstance(step, _Sleep) else self._send(step)
        except StopIteration as finished:
            return finished.value
        finally:
            plan.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- datasets

    def upload(self, obj: object, *, format: UploadFormat | None = None) -> DatasetOut:
        """Upload one file of arrays; the same bytes give the same dataset.

        Parameters
        ----------
        obj : array-like, torch.Tensor, path, bytes, pandas.DataFrame or pyarrow.Table
            A numpy array (or anything ``np.asarray`` takes) or a torch tensor is sent as
            ``.npy`` (never pickled; object arrays are refused). A path (str or
            ``os.PathLike``) is streamed from disk, its format taken from the suffix. A
            DataFrame or a pyarrow Table is sent as parquet: one array per column, and
            ``"__columns__"`` for its float columns side by side.
        format : {"npy", "npz", "safetensors", "parquet", "onnx", "torchscript", "pt2"}, optional
            For a path with another suffix, or raw bytes. A model file (``.onnx``,
            ``.pt2``, or a TorchScript archive with ``format="torchscript"``) is for an
            ``embed`` job; it lists no arrays.

        Returns
        -------
        DatasetOut
            The dataset's id, sha256 and arrays (name, shape, dtype).
        """
        return self._send(_upload_call(obj, format))

    def dataset(self, dataset_id: str) -> DatasetOut:
        """A dataset's record; :class:`~nnkgeo.errors.NotFoundError` when unknown."""
        return self._send(_dataset_call(dataset_id))

    def delete_dataset(self, dataset_id: str) -> None:
        """Delete a dataset; :class:`~nnkgeo.errors.ConflictError` while a job reads it."""
        return self._send(_delete_dataset_call(dataset_id))

    # -- jobs

    def submit(
        self,
        sets: JobCreate | Sequence[Mapping[str, Any] | EmbeddingSetSpec] | Mapping[str, SetInputs],
        params: AnalysisParams | Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> JobOut:
        """Submit an analysis job (validated by the service before it is queued).

        Parameters
        ----------
        sets : list of set specs, mapping, or JobCreate
            Either the API's form, ``[{"name": "layer4", "embeddings": {"dataset": ID},
            "labels": {"dataset": ID}}]``, or the shorthand ``{"layer4": (emb, labels)}``
            where each of ``emb``, ``labels`` (and an optional third, ``ids``) is a
            dataset id, a :class:`DatasetOut` or a :class:`DatasetRef` (to name an array),
            and ``labels`` may be None. Several sets are compared in the order given.
        params : AnalysisParams or dict, optional
            ``{"k": 30, "kernel": "cosine", ...}``; the service's defaults otherwise.
        idempotency_key : str, optional
            The same key and body return the first job. A random key is sent otherwise.

        Returns
        -------
        JobOut
            The job, ``queued``, or already ``succeeded`` (``cached``) for inputs and
            params analysed before.

        Raises
        ------
        ValidationProblem
            422 for invalid input (unknown dataset, k >= N, ...), naming the field.
        """
        return self._send(_submit_call(sets, params, idempotency_key))

    def job(self, job_id: str) -> JobOut:
        """A job's status and progress."""
        return self._send(_job_call(job_id))

    def jobs(self, limit: int = 20, cursor: str | None = None) -> JobList:
        """One page of the tenant's jobs, newest first; pass ``next_cursor`` on."""
        return self._send(_jobs_call(limit, cursor))

    def iter_jobs(self, *, page_size: int = 100) -> Iterator[JobOut]:
        """Every job of the tenant, newest first, fetched a page at a time."""
        cursor = None
        while True:
            page = self.jobs(limit=page_size, cursor=cursor)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def cancel(self, job_id: str) -> JobOut:
        """Cancel a job: a queued one at once, a running one at its next checkpoint.

        :class:`~nnkgeo.errors.ConflictError` once it has succeeded or failed.
        """
        return self._send(_cancel_call(job_id))

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        progress: ProgressOption = True,
        poll_interval: float = DEFAULT_POLL_INTERVAL_S,
    ) -> JobOut:
        """Poll a job until it finishes, sleeping as the service's ``Retry-After`` says.

        Parameters
        ----------
        timeout : float, optional
            Give up after this many seconds (:class:`~nnkgeo.errors.JobTimeoutError`);
            the job goes on running.
        progress : bool or text stream, default True
            Draw a progress bar on stderr, on the given stream, or (False) not at all.
        poll_interval : float, default 1
            Seconds between polls when the service sends no ``Retry-After``.

        Returns
        -------
        JobOut
            The succeeded job.

        Raises
        ------
        JobFailedError, JobCanceledError
            When the job ends otherwise; ``.job`` is its final state, ``.problem`` the
            reason.
        """
        return self._run(
            _wait_plan(job_id, timeout=timeout, progress=progress, poll_interval=poll_interval)
        )

    def report(self, job_id: str) -> Report:
        """The JSON report of a succeeded job, as the pydantic model."""
        return self._send(_report_call(job_id))

    def report_html(self, job_id: str, path: str | os.PathLike[str]) -> Path:
        """Write the report's self-contained HTML page to ``path``; returns the path."""
        return self._send(_report_html_call(job_id, path))

    def graph(self, job_id: str, set_name: str, *, kind: GraphKind = "symmetric") -> sp.csr_matrix:
        """A set's NNK graph, (N, N) CSR: ``symmetric`` (A) or ``directed`` (W, row i = theta_i)."""
        return self._send(_graph_call(job_id, set_name, kind))

    def save_graph(
        self,
        job_id: str,
        set_name: str,
        path: str | os.PathLike[str],
        *,
        kind: GraphKind = "symmetric",
    ) -> Path:
        """Stream a set's graph to ``path`` as served (``scipy.sparse.save_npz`` format)."""
        return self._send(_save_graph_call(job_id, set_name, path, kind))

    def analyze(
        self,
        embeddings: object,
        labels: object | None = None,
        *,
        name: str = "set",
        params: AnalysisParams | Mapping[str, Any] | None = None,
        wait: bool = True,
        progress: ProgressOption = True,
        timeout: float | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL_S,
    ) -> Report | JobOut:
        """Upload, submit, wait and fetch the report: the notebook one-liner.

        Parameters
        ----------
        embeddings : array-like, tensor, path or table, or a mapping of them
            Anything :meth:`upload` takes, of shape (N, d); a mapping ``{name: embeddings}``
            gives several sets (layers), compared in order, sharing the labels.
        labels : array-like, tensor, path or table, optional
            N labels (ints or strings).
        name : str, default "set"
            The set's name, when ``embeddings`` is not a mapping.
        params : AnalysisParams or dict, optional
        wait : bool, default True
            False: return the submitted job at once instead of the report.
        progress, timeout, poll_interval
            As for :meth:`wait`.

        Returns
        -------
        Report or JobOut
            The report (or, with ``wait=False``, the job).
        """
        return self._run(
            _analyze_plan(
                embeddings,
                labels,
                name=name,
                params=params,
                wait=wait,
                progress=progress,
                timeout=timeout,
                poll_interval=poll_interval,
            )
        )


class AsyncClient(_ClientBase):
    """The asynchronous twin of :class:`Client`: the same methods, as coroutines.

    Use it as ``async with AsyncClient(...) as nnk: report = await nnk.analyze(x, y)``.
    Works under asyncio and trio (through anyio, as httpx does). See :class:`Client` for
    the parameters and each method's documentation.
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT_S,
        retries: int = 5,
        backoff: float = 0.5,
    ) -> None:
        super().__init__(url, api_key, timeout=timeout, retries=retries, backoff=backoff)
        self._http = httpx.AsyncClient(
            base_url=self._settings.url,
            headers=self._settings.headers(),
            timeout=self._settings.timeout,
        )

    # -- transport: the only code that differs from Client

    async def _send(self, call: _Call[T]) -> T:
        import anyio

        attempt = 0
        while True:
            try:
                response = await self._attempt(call)
            except _RETRYABLE_TRANSPORT_ERRORS as error:
                delay = self._policy.delay_after_error(attempt)
                if delay is None:
                    raise _unreachable(self._settings, call, error) from error
            else:
                if response.is_success:
                    return call.parse(response)
                delay = self._policy.delay_after_status(attempt, call, response)
                if delay is None:
                    raise _error_from(response)
            await anyio.sleep(delay)
            attempt += 1

    async def _attempt(self, call: _Call[Any]) -> httpx.Response:
        import anyio

        request = self._http.build_request(
            call.method,
            call.path,
            params=call.params,
            json=call.json,
            content=None if call.body is None else call.body.async_chunks(),
            headers=call.request_headers(),
        )
        response = await self._http.send(request, stream=True)
        try:
            if call.download_to is None or not response.is_success:
                await response.aread()
            else:
                partial = _partial_path(call.download_to)
                try:
                    async with await anyio.open_file(partial, "wb") as file:
                        async for chunk in response.aiter_bytes():
                            await file.write(chunk)
                    partial.replace(call.download_to)
                finally:
                    partial.unlink(missing_ok=True)
        finally:
            await response.aclose()
        return response

    async def _run(self, plan: _Plan[T]) -> T:
        import anyio

        result: Any = None
        try:
            while True:
                step = plan.send(result)
                if isinstance(step, _Sleep):
                    result = await anyio.sleep(step.seconds)
                else:
                    result = await self._send(step)
        except StopIteration as finished:
            return finished.value
        finally:
            plan.close()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- the same surface as Client

    async def upload(self, obj: object, *, format: UploadFormat | None = None) -> DatasetOut:
        """See :meth:`Client.upload`."""
        return await self._send(_upload_call(obj, format))

    async def dataset(self, dataset_id: str) -> DatasetOut:
        """See :meth:`Client.dataset`."""
        return await self._send(_dataset_call(dataset_id))

    async def delete_dataset(self, dataset_id: str) -> None:
        """See :meth:`Client.delete_dataset`."""
        return await self._send(_delete_dataset_call(dataset_id))

    async def submit(
        self,
        sets: JobCreate | Sequence[Mapping[str, Any] | EmbeddingSetSpec] | Mapping[str, SetInputs],
        params: AnalysisParams | Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> JobOut:
        """See :meth:`Client.submit`."""
        return await self._send(_submit_call(sets, params, idempotency_key))

    async def job(self, job_id: str) -> JobOut:
        """See :meth:`Client.job`."""
        return await self._send(_job_call(job_id))

    async def jobs(self, limit: int = 20, cursor: str | None = None) -> JobList:
        """See :meth:`Client.jobs`."""
        return await self._send(_jobs_call(limit, cursor))

    async def iter_jobs(self, *, page_size: int = 100) -> AsyncIterator[JobOut]:
        """See :meth:`Client.iter_jobs`; use with ``async for``."""
        cursor = None
        while True:
            page = await self.jobs(limit=page_size, cursor=cursor)
            for job in page.items:
                yield job
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def cancel(self, job_id: str) -> JobOut:
        """See :meth:`Client.cancel`."""
        return await self._send(_cancel_call(job_id))

    async def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        progress: ProgressOption = True,
        poll_interval: float = DEFAULT_POLL_INTERVAL_S,
    ) -> JobOut:
        """See :meth:`Client.wait`."""
        return await self._run(
            _wait_plan(job_id, timeout=timeout, progress=progress, poll_interval=poll_interval)
        )

    async def report(self, job_id: str) -> Report:
        """See :meth:`Client.report`."""
        return await self._send(_report_call(job_id))

    async def report_html(self, job_id: str, path: str | os.PathLike[str]) -> Path:
        """See :meth:`Client.report_html`."""
        return await self._send(_report_html_call(job_id, path))

    async def graph(
        self, job_id: str, set_name: str, *, kind: GraphKind = "symmetric"
    ) -> sp.csr_matrix:
        """See :meth:`Client.graph`."""
        return await self._send(_graph_call(job_id, set_name, kind))

    async def save_graph(
        self,
        job_id: str,
        set_name: str,
        path: str | os.PathLike[str],
        *,
        kind: GraphKind = "symmetric",
    ) -> Path:
        """See :meth:`Client.save_graph`."""
        return await self._send(_save_graph_call(job_id, set_name, path, kind))

    async def analyze(
        self,
        embeddings: object,
        labels: object | None = None,
        *,
        name: str = "set",
        params: AnalysisParams | Mapping[str, Any] | None = None,
        wait: bool = True,
        progress: ProgressOption = True,
        timeout: float | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL_S,
    ) -> Report | JobOut:
        """See :meth:`Client.analyze`."""
        return await self._run(
            _analyze_plan(
                embeddings,
                labels,
                name=name,
                params=params,
                wait=wait,
                progress=progress,
                timeout=timeout,
                poll_interval=poll_interval,
            )
        )
