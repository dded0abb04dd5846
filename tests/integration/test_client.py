"""The Python client (`nnkgeo.client`) against the real service: Redis, worker and API.

Every method is called over real HTTP; the report and graphs it returns are checked
against the in-process engine on the same arrays. Retries are checked through a small
real HTTP server that misbehaves as scripted before forwarding to the API.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp

from api_schemas import AnalysisParams, JobOut, JobStatus, Report
from nnkgeo.client import AsyncClient, Client
from nnkgeo.errors import (
    AuthenticationError,
    ConflictError,
    JobCanceledError,
    JobFailedError,
    JobTimeoutError,
    NotFoundError,
    ServerError,
    ServiceUnreachableError,
    UsageError,
    ValidationProblem,
)
from tests.integration.helpers import comparable, npy_bytes, upload_array
from tests.integration.stack import REPO_ROOT, TENANT_KEYS, ServiceStack, free_port
from workers.geometry import Analysis, EmbeddingSet, analyze

pytestmark = pytest.mark.integration

PARAMS = {"k": 30}
ALPHA_KEY = TENANT_KEYS["alpha"]


@pytest.fixture(scope="module")
def nnk(stack: ServiceStack) -> Iterator[Client]:
    with Client(stack.base_url, ALPHA_KEY) as client:
        yield client


@pytest.fixture(scope="module")
def in_process(digits: tuple[np.ndarray, np.ndarray]) -> Analysis:
    embeddings, labels = digits
    return analyze([EmbeddingSet("digits", embeddings, labels)], params=AnalysisParams(**PARAMS))


@pytest.fixture(scope="module")
def analyzed(nnk: Client, digits: tuple[np.ndarray, np.ndarray]) -> tuple[Report, str]:
    """The digits report through `Client.analyze`, and the progress it drew."""
    embeddings, labels = digits
    progress = io.StringIO()
    report = nnk.analyze(embeddings, labels, name="digits", params=PARAMS, progress=progress)
    assert isinstance(report, Report)
    return report, progress.getvalue()


class _TerminalStream(io.StringIO):
    """A captured stream that says it is a terminal, as rich checks."""

    def isatty(self) -> bool:
        return True


def _unique_params(**params: object) -> dict[str, object]:
    """Params no earlier job used (a new seed), so the answer cannot come from the cache."""
    return {**params, "seed": time.monotonic_ns() % 2**31}


# --------------------------------------------------------------------------- configuration


def test_importing_the_client_loads_no_server_or_numeric_dependencies() -> None:
    heavy = (
        *("torch", "fastapi", "celery", "faiss", "numpy", "scipy", "pyarrow", "redis"),
        # nnkgeo's own server-side packages: the client is on api_schemas alone.
        *("service", "jobstate", "workers", "arrayfiles", "htmlreport"),
    )
    probe = (
        "import sys, nnkgeo.client, nnkgeo.errors, nnkgeo.cli.remote; "
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )

    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )

    assert loaded.stdout.strip() == "[]"


def test_client_reads_url_and_key_from_the_environment(
    stack: ServiceStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NNKGEO_URL", stack.base_url)
    monkeypatch.setenv("NNKGEO_API_KEY", ALPHA_KEY)
    with Client() as client:
        assert client.url == stack.base_url
        assert client.jobs(limit=1).items is not None
        assert ALPHA_KEY not in repr(client)

    monkeypatch.delenv("NNKGEO_URL")
    with pytest.raises(UsageError, match="NNKGEO_URL"):
        Client()


# --------------------------------------------------------------------------- uploads


def test_numpy_upload_sends_the_file_np_save_writes(
    nnk: Client, alpha: httpx.Client, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    embeddings, _ = digits

    dataset = nnk.upload(embeddings)

    assert dataset.sha256 == hashlib.sha256(npy_bytes(embeddings)).hexdigest()
    assert dataset.id == upload_array(alpha, embeddings)
    assert dataset.format == "npy"
    assert [(a.name, a.shape, a.dtype) for a in dataset.arrays] == [
        ("array", [1797, 64], "float32")
    ]
    assert nnk.dataset(dataset.id) == dataset


def test_torch_tensor_uploads_as_its_array(
    nnk: Client, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    torch = pytest.importorskip("torch")
    embeddings, _ = digits
    tensor = torch.from_numpy(embeddings).requires_grad_(True)

    assert nnk.upload(tensor).id == nnk.upload(embeddings).id


def test_file_path_is_streamed_with_the_format_of_its_suffix(
    nnk: Client, tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    embeddings, labels = digits
    npz = tmp_path / "digits.npz"
    np.savez(npz, embeddings=embeddings, labels=labels)
    npy = tmp_path / "digits.npy"
    np.save(npy, embeddings)
    odd = tmp_path / "digits.bin"
    odd.write_bytes(npy.read_bytes())

    from_npz = nnk.upload(npz)
    from_npy = nnk.upload(str(npy))
    named = nnk.upload(odd, format="npy")

    assert from_npz.format == "npz"
    assert {a.name: a.shape for a in from_npz.arrays} == {
        "embeddings": [1797, 64],
        "labels": [1797],
    }
    assert from_npz.size_bytes == npz.stat().st_size
    assert from_npy.id == named.id == nnk.upload(embeddings).id
    with pytest.raises(UsageError, match="suffix"):
        nnk.upload(odd)
    with pytest.raises(UsageError, match="no such file"):
        nnk.upload(tmp_path / "missing.npy")


def test_model_files_upload_by_suffix_or_format_and_list_no_arrays(
    nnk: Client, tmp_path: Path
) -> None:
    from tests.security import hostile_models

    onnx_path = tmp_path / "mlp.onnx"
    onnx_path.write_bytes(hostile_models.honest_onnx()[0])
    scripted = tmp_path / "mlp.pt"
    scripted.write_bytes(hostile_models.honest_torchscript())

    from_onnx = nnk.upload(onnx_path)
    from_script = nnk.upload(scripted, format="torchscript")

    assert (from_onnx.format, from_onnx.arrays) == ("onnx", [])
    assert (from_script.format, from_script.arrays) == ("torchscript", [])
    with pytest.raises(UsageError, match="torchscript"):
        nnk.upload(scripted)
    with pytest.raises(UsageError, match="format must be one of"):
        nnk.upload(scripted, format="keras")  # type: ignore[arg-type]


def test_pyarrow_table_uploads_as_parquet(
    nnk: Client, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    embeddings, labels = digits
    columns = {f"x{j}": embeddings[:, j] for j in range(4)}
    table = pa.table({**columns, "label": labels})

    dataset = nnk.upload(table)

    assert dataset.format == "parquet"
    shapes = {a.name: a.shape for a in dataset.arrays}
    assert shapes["__columns__"] == [1797, 4]
    assert shapes["label"] == [1797]


def test_pandas_dataframe_uploads_as_parquet(
    nnk: Client, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    pd = pytest.importorskip("pandas")
    embeddings, labels = digits
    frame = pd.DataFrame({"x0": embeddings[:, 0], "x1": embeddings[:, 1], "label": labels})

    dataset = nnk.upload(frame)

    assert dataset.format == "parquet"
    assert {a.name: a.shape for a in dataset.arrays}["__columns__"] == [1797, 2]


def test_object_arrays_are_refused_before_sending(nnk: Client) -> None:
    with pytest.raises(UsageError, match="pickl"):
        nnk.upload(np.array([{"a": 1}, None], dtype=object))


def test_dataset_can_be_read_and_deleted(nnk: Client) -> None:
    points = np.random.default_rng(21).standard_normal((40, 3)).astype(np.float32)
    dataset = nnk.upload(points)

    assert nnk.dataset(dataset.id).sha256 == dataset.sha256
    nnk.delete_dataset(dataset.id)

    with pytest.raises(NotFoundError) as raised:
        nnk.dataset(dataset.id)
    assert raised.value.status == 404
    assert raised.value.problem.status == 404


# --------------------------------------------------------------------------- jobs and results


def test_analyze_report_equals_the_in_process_engine(
    analyzed: tuple[Report, str], in_process: Analysis
) -> None:
    report, _ = analyzed

    assert report.job_id is not None
    assert comparable(report.model_dump(mode="json")) == comparable(
        in_process.report.model_dump(mode="json")
    )


def test_analyze_draws_progress_until_the_job_succeeds(analyzed: tuple[Report, str]) -> None:
    _, progress = analyzed
    lines = progress.splitlines()

    assert lines, "no progress was drawn"
    assert lines[-1].startswith("job_")
    assert "succeeded" in lines[-1]
    assert "100%" in lines[-1]


def test_analyze_without_waiting_returns_the_submitted_job(
    nnk: Client, digits: tuple[np.ndarray, np.ndarray], analyzed: tuple[Report, str]
) -> None:
    report, _ = analyzed

    job = nnk.analyze(*digits, name="digits", params=PARAMS, wait=False)

    assert isinstance(job, JobOut)
    assert job.id != report.job_id
    assert nnk.report(nnk.wait(job.id, progress=False).id) == report


def test_submit_and_wait_draw_a_text_bar_on_a_captured_stream(
    nnk: Client, alpha_digits: tuple[str, str]
) -> None:
    job = nnk.submit({"digits": alpha_digits}, _unique_params(k=12))
    progress = io.StringIO()

    finished = nnk.wait(job.id, progress=progress)

    assert finished.status is JobStatus.succeeded
    assert finished.id == job.id
    lines = progress.getvalue().splitlines()
    assert all(line.startswith(job.id) for line in lines)
    assert "[########################] 100%" in lines[-1]


def test_wait_draws_a_rich_bar_on_a_terminal(nnk: Client, alpha_digits: tuple[str, str]) -> None:
    pytest.importorskip("rich")
    job = nnk.submit({"digits": alpha_digits}, _unique_params(k=13))
    terminal = _TerminalStream()

    nnk.wait(job.id, progress=terminal)

    drawn = terminal.getvalue()
    assert job.id in drawn
    assert "succeeded" in drawn
    assert "\x1b[" in drawn  # rich's own drawing, not the text bar


@pytest.mark.parametrize("kind", ["symmetric", "directed"])
def test_graph_equals_the_in_process_graph(
    nnk: Client,
    analyzed: tuple[Report, str],
    in_process: Analysis,
    kind: str,
    tmp_path: Path,
) -> None:
    report, _ = analyzed
    expected = getattr(in_process.sets["digits"], kind)

    served = nnk.graph(report.job_id, "digits", kind=kind)
    saved = nnk.save_graph(report.job_id, "digits", tmp_path / "graph.npz", kind=kind)

    assert isinstance(served, sp.csr_matrix)
    assert served.shape == expected.shape == (1797, 1797)
    assert abs(served - expected).max() < 1e-12
    assert abs(sp.load_npz(saved) - expected).max() < 1e-12
    assert [p.name for p in tmp_path.iterdir()] == ["graph.npz"]  # no partial file left


def test_report_html_is_written_to_the_file(
    nnk: Client, analyzed: tuple[Report, str], tmp_path: Path
) -> None:
    report, _ = analyzed

    path = nnk.report_html(report.job_id, tmp_path / "report.html")

    page = path.read_text()
    assert page.lstrip().lower().startswith("<!doctype html")
    assert "digits" in page


def test_report_fetched_by_job_id_is_the_analyzed_report(
    nnk: Client, analyzed: tuple[Report, str]
) -> None:
    report, _ = analyzed

    assert nnk.report(report.job_id) == report
    assert nnk.job(report.job_id).status is JobStatus.succeeded


def test_jobs_pages_cover_every_job_newest_first(
    nnk: Client, alpha_digits: tuple[str, str]
) -> None:
    # Cached jobs (the digits with k=30 were analysed above): new records at no cost.
    submitted = [nnk.submit({"digits": alpha_digits}, PARAMS).id for _ in range(3)]

    paged, cursor = [], None
    while True:
        page = nnk.jobs(limit=2, cursor=cursor)
        assert len(page.items) <= 2
        paged.extend(job.id for job in page.items)
        cursor = page.next_cursor
        if cursor is None:
            break

    assert paged[:3] == submitted[::-1]
    assert len(set(paged)) == len(paged)
    assert [job.id for job in nnk.iter_jobs(page_size=2)] == paged
    assert [job.id for job in nnk.jobs(limit=100).items] == paged[:100]


def test_shorthand_sets_send_the_same_body_as_the_api_form(
    nnk: Client, alpha_digits: tuple[str, str]
) -> None:
    embeddings, labels = alpha_digits
    key = f"same-body-{time.monotonic_ns()}"
    api_form = [
        {"name": "digits", "embeddings": {"dataset": embeddings}, "labels": {"dataset": labels}}
    ]

    first = nnk.submit({"digits": (embeddings, labels)}, PARAMS, idempotency_key=key)
    again = nnk.submit(api_form, AnalysisParams(**PARAMS), idempotency_key=key)

    assert again.id == first.id
    with pytest.raises(ValidationProblem, match="Idempotency-Key"):
        nnk.submit({"digits": (embeddings, None)}, PARAMS, idempotency_key=key)


def test_wait_timeout_then_cancel_ends_the_job_canceled(
    nnk: Client, long_running_embeddings: str
) -> None:
    job = nnk.submit({"busy": long_running_embeddings}, _unique_params(k=50))

    with pytest.raises(JobTimeoutError) as timed_out:
        nnk.wait(job.id, timeout=0.3, progress=False)
    canceled = nnk.cancel(job.id)

    assert timed_out.value.job.status in (JobStatus.queued, JobStatus.running)
    assert canceled.status in (JobStatus.running, JobStatus.canceled)
    with pytest.raises(JobCanceledError) as ended:
        nnk.wait(job.id, timeout=30, progress=False)
    assert ended.value.job.status is JobStatus.canceled
    with pytest.raises(ConflictError) as no_report:
        nnk.report(job.id)
    assert no_report.value.status == 409


def test_service_refusals_raise_typed_errors_with_the_problem(
    stack: ServiceStack, nnk: Client, alpha_digits: tuple[str, str], analyzed: tuple[Report, str]
) -> None:
    report, _ = analyzed
    few_points = nnk.upload(np.random.default_rng(5).standard_normal((40, 3)).astype(np.float32))
    with (
        Client(stack.base_url, "not-a-key-0123456789abcdef") as stranger,
        pytest.raises(AuthenticationError) as unauthorized,
    ):
        stranger.jobs()
    with pytest.raises(NotFoundError) as unknown:
        nnk.job("job_does_not_exist")
    with pytest.raises(ValidationProblem) as too_many_neighbours:
        nnk.submit({"few": few_points}, {"k": 40})
    with pytest.raises(ConflictError):
        nnk.cancel(report.job_id)
    with pytest.raises(NotFoundError):
        nnk.graph(report.job_id, "no-such-set")

    assert unauthorized.value.status == unauthorized.value.problem.status == 401
    assert unknown.value.problem.detail
    assert too_many_neighbours.value.status == 422
    assert "params.k" in too_many_neighbours.value.field_errors


def test_invalid_params_are_refused_before_sending(
    nnk: Client, alpha_digits: tuple[str, str]
) -> None:
    with pytest.raises(ValidationProblem) as refused:
        nnk.submit({"digits": alpha_digits}, {"k": 0, "kernal": "cosine"})

    assert refused.value.status == 422
    assert set(refused.value.field_errors) == {"params.k", "params.kernal"}


def test_failed_job_raises_job_failed_with_the_jobs_problem(
    nnk: Client, stack: ServiceStack
) -> None:
    points = np.random.default_rng(31).standard_normal((100, 8)).astype(np.float32)
    dataset = nnk.upload(points)
    # The blob is lost behind the service's back: the job is accepted, then fails.
    (stack.data_dir / "blobs" / dataset.sha256[:2] / dataset.sha256).unlink()
    job = nnk.submit({"lost": dataset.id}, {"k": 5})

    with pytest.raises(JobFailedError) as failed:
        nnk.wait(job.id, timeout=30, progress=False)

    assert failed.value.job.status is JobStatus.failed
    assert failed.value.status == 422
    assert "sets[lost].embeddings" in failed.value.field_errors


# --------------------------------------------------------------------------- retries


class _ScriptedProxy:
    """A real HTTP server in a thread: misbehaves as scripted, then forwards to the API.

    Each request takes the next action of the script: ``"503"`` (Service Unavailable
    with ``Retry-After``), ``"drop"`` (close the connection without answering) or, once
    the script is spent, ``"forward"``.
    """

    def __init__(self, upstream: str, script: list[str], *, retry_after: str = "1") -> None:
        self.upstream = upstream
        self.script = list(script)
        self.retry_after = retry_after
        self.arrivals: list[float] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                proxy.handle(self)

            def do_POST(self) -> None:
                proxy.handle(self)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> _ScriptedProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        self.arrivals.append(time.monotonic())
        action = self.script.pop(0) if self.script else "forward"
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        if action == "drop":
            request.close_connection = True
            return
        if action == "503":
            problem = {"type": "about:blank", "title": "Service Unavailable", "status": 503}
            self._answer(
                request,
                503,
                json.dumps(problem).encode(),
                {"Content-Type": "application/problem+json", "Retry-After": self.retry_after},
            )
            return
        forwarded = httpx.request(
            request.command,
            self.upstream + request.path,
            content=body,
            headers={
                name: value
                for name, value in request.headers.items()
                if name.lower() in ("authorization", "content-type", "idempotency-key")
            },
        )
        self._answer(
            request,
            forwarded.status_code,
            forwarded.content,
            {"Content-Type": forwarded.headers.get("content-type", "application/json")},
        )

    @staticmethod
    def _answer(
        request: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str]
    ) -> None:
        request.send_response(status)
        for name, value in headers.items():
            request.send_header(name, value)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)


def test_503_with_retry_after_is_retried_after_the_time_it_names(
    stack: ServiceStack, nnk: Client, analyzed: tuple[Report, str]
) -> None:
    report, _ = analyzed
    with (
        _ScriptedProxy(stack.base_url, ["503", "503"]) as proxy,
        Client(proxy.url, ALPHA_KEY, backoff=0.01) as client,
    ):
        job = client.job(report.job_id)

    assert job == nnk.job(report.job_id)
    assert len(proxy.arrivals) == 3
    gaps = np.diff(proxy.arrivals)
    assert all(gap >= 0.95 for gap in gaps), gaps  # Retry-After: 1, not the 0.01 s backoff


def test_dropped_connection_is_retried_and_the_submit_starts_one_job(
    stack: ServiceStack, nnk: Client, alpha_digits: tuple[str, str]
) -> None:
    with (
        _ScriptedProxy(stack.base_url, ["drop"]) as proxy,
        Client(proxy.url, ALPHA_KEY, backoff=0.01) as client,
    ):
        job = client.submit({"digits": alpha_digits}, PARAMS)

    assert len(proxy.arrivals) == 2
    assert nnk.jobs(limit=1).items[0].id == job.id


def test_retries_give_up_with_the_last_answers_problem(stack: ServiceStack) -> None:
    with (
        _ScriptedProxy(stack.base_url, ["503"] * 5, retry_after="0") as proxy,
        Client(proxy.url, ALPHA_KEY, retries=2) as client,
        pytest.raises(ServerError) as unavailable,
    ):
        client.jobs()

    assert len(proxy.arrivals) == 3
    assert unavailable.value.status == 503
    assert unavailable.value.problem.title == "Service Unavailable"


def test_a_refused_connection_raises_at_once_advising_the_url() -> None:
    started = time.monotonic()
    with (
        Client(f"http://127.0.0.1:{free_port()}", ALPHA_KEY) as client,
        pytest.raises(ServiceUnreachableError) as unreachable,
    ):
        client.jobs()

    # Not after 5 retries of growing backoff (about 13 s): nothing listens there.
    assert time.monotonic() - started < 1.0
    assert str(unreachable.value).endswith("is the service running there? Check url= or NNKGEO_URL")


def test_a_refused_connection_once_the_service_answered_is_retried_saying_so(
    stack: ServiceStack, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = _ScriptedProxy(stack.base_url, [])
    with Client(proxy.url, ALPHA_KEY, retries=2, backoff=1.5) as client:
        with proxy:
            answered = client.jobs(limit=1)
        # The proxy answered, then its port closed, as a service that restarts.
        started = time.monotonic()
        with (
            caplog.at_level(logging.WARNING, logger="nnkgeo.client"),
            pytest.raises(ServiceUnreachableError, match="after 3 attempts") as unreachable,
        ):
            client.jobs(limit=1)

    assert answered.items
    # Two retries, after 0.75-1.5 s and 1.5-3 s: the second is said, as it passes 2 s.
    assert 2.25 <= time.monotonic() - started < 6
    notices = [record.getMessage() for record in caplog.records]
    assert notices and all(
        notice.startswith("GET /v1/jobs: ConnectError: ") and "of 3)" in notice
        for notice in notices
    ), notices
    assert "Check url= or NNKGEO_URL" in str(unreachable.value)


# --------------------------------------------------------------------------- async


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_async_client_round_trip(
    stack: ServiceStack,
    digits: tuple[np.ndarray, np.ndarray],
    in_process: Analysis,
    analyzed: tuple[Report, str],
    tmp_path: Path,
) -> None:
    embeddings, labels = digits
    async with AsyncClient(stack.base_url, ALPHA_KEY) as client:
        embeddings_dataset = await client.upload(embeddings)
        labels_dataset = await client.upload(labels)
        job = await client.submit(
            {"digits": (embeddings_dataset, labels_dataset)}, AnalysisParams(**PARAMS)
        )
        finished = await client.wait(job.id, progress=False, timeout=60)
        report = await client.report(finished.id)
        graph = await client.graph(finished.id, "digits", kind="directed")
        saved = await client.save_graph(finished.id, "digits", tmp_path / "A.npz")
        html = await client.report_html(finished.id, tmp_path / "report.html")
        page = await client.jobs(limit=1)
        every_job = [listed.id async for listed in client.iter_jobs(page_size=50)]
        same_dataset = await client.dataset(embeddings_dataset.id)
        analyzed_again = await client.analyze(
            embeddings, labels, name="digits", params=PARAMS, progress=False
        )
        with pytest.raises(NotFoundError):
            await client.job("job_does_not_exist")
        with pytest.raises(ConflictError):
            await client.cancel(finished.id)

    expected = in_process.report.model_dump(mode="json")
    assert finished.status is JobStatus.succeeded
    assert comparable(report.model_dump(mode="json")) == comparable(expected)
    assert comparable(analyzed_again.model_dump(mode="json")) == comparable(expected)
    assert abs(graph - in_process.sets["digits"].directed).max() < 1e-12
    assert abs(sp.load_npz(saved) - in_process.sets["digits"].symmetric).max() < 1e-12
    assert html.read_text().lstrip().lower().startswith("<!doctype html")
    assert page.items[0].id == every_job[0]
    assert job.id in every_job
    assert same_dataset == embeddings_dataset
