"""What the ``nnkgeo`` command says when it stops, and with which exit status.

Without a service: these are the refusals made before anything is sent (a missing URL,
a file of unknown format), and the mapping of the client's errors to exit statuses. The
same commands against the real service are in tests/integration/test_cli_exit_codes.py.
"""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from api_schemas import JobOut, Problem
from nnkgeo.cli import main
from nnkgeo.cli.outcome import EXIT_FAILED, EXIT_USAGE, exit_status
from nnkgeo.client import Client
from nnkgeo.client.progress import progress_display
from nnkgeo.errors import (
    JobCanceledError,
    JobTimeoutError,
    ServiceUnreachableError,
    UsageError,
    ValidationProblem,
    error_for_problem,
)


def _job(status: str, stage: str, fraction: float) -> JobOut:
    return JobOut.model_validate(
        {
            "id": "job_1",
            "status": status,
            "progress": {"stage": stage, "fraction": fraction},
            "created_at": "2025-01-01T00:00:00Z",
            "links": {
                "self": "/v1/jobs/job_1",
                "report": "/v1/jobs/job_1/report",
                "report_html": "/v1/jobs/job_1/report.html",
                "cancel": "/v1/jobs/job_1/cancel",
            },
        }
    )


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    try:
        status = main(list(argv))
    except SystemExit as exit_:
        status = int(exit_.code or 0)
    return status, capsys.readouterr().err


# --------------------------------------------------------------------------- exit statuses


def test_client_timeouts_and_unreachable_services_exit_1_though_they_are_oserrors() -> None:
    job = _job("queued", "queued", 0.0)
    timed_out = JobTimeoutError("job job_1 is still queued after 1 s", job=job)
    unreachable = ServiceUnreachableError("cannot connect")

    # The cause of the wrong statuses: both are OSError subclasses, as local I/O errors.
    assert isinstance(timed_out, OSError) and isinstance(unreachable, OSError)
    assert exit_status(timed_out) == exit_status(unreachable) == EXIT_FAILED
    assert exit_status(JobCanceledError(job, Problem(title="x", status=409))) == EXIT_FAILED
    assert exit_status(error_for_problem(Problem(title="Bad Gateway", status=502))) == EXIT_FAILED
    assert exit_status(error_for_problem(Problem(title="Not Found", status=404))) == EXIT_USAGE
    assert exit_status(UsageError("no URL")) == EXIT_USAGE
    assert exit_status(PermissionError(13, "denied")) == EXIT_USAGE


# --------------------------------------------------------------------------- advice


def test_a_missing_url_is_advised_as_a_flag_to_the_command_and_an_argument_in_python(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NNKGEO_URL", raising=False)

    status, stderr = _run(capsys, "jobs")
    with pytest.raises(UsageError) as in_python:
        Client()

    assert status == 2
    assert stderr.startswith("nnkgeo: error: no nnkgeo service URL; pass --url URL or set")
    assert "url=" not in stderr
    assert "pass url=... or set NNKGEO_URL" in str(in_python.value)


def test_an_upload_of_unknown_suffix_is_advised_as_the_format_flag(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    weird = tmp_path / "points.bin"
    weird.write_bytes(b"\x00" * 16)

    # Refused before anything is sent: no service listens on port 9.
    status, stderr = _run(capsys, "upload", str(weird), "--url", "http://127.0.0.1:9")
    with Client("http://127.0.0.1:9") as client, pytest.raises(UsageError) as in_python:
        client.upload(weird)

    assert status == 2
    assert "pass --format npy|npz|safetensors|parquet|torchscript|pt2|onnx" in stderr
    assert "format=" not in stderr
    assert "pass format='npy'|" in str(in_python.value)


def test_a_csv_upload_is_refused_with_a_conversion_command_that_works(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    points = np.random.default_rng(4).standard_normal((6, 3))
    np.savetxt(tmp_path / "points.csv", points, delimiter=",")

    status, stderr = _run(
        capsys, "upload", str(tmp_path / "points.csv"), "--url", "http://127.0.0.1:9"
    )
    with Client("http://127.0.0.1:9") as client, pytest.raises(UsageError) as in_python:
        client.upload(tmp_path / "points.csv")

    assert status == 2
    (line,) = stderr.splitlines()
    assert line.startswith("nnkgeo: error: points.csv: CSV is not supported")
    command = line.split("convert it first: ", 1)[1]
    assert command.startswith('python -c "')
    converted = subprocess.run(
        ["bash", "-c", sys.executable + command.removeprefix("python")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert converted.returncode == 0, converted.stderr
    assert np.allclose(np.load(tmp_path / "points.npy"), points)
    assert "upload(np.loadtxt('points.csv', delimiter=','))" in str(in_python.value)


def test_analyze_of_unknown_suffix_says_which_files_it_reads_not_a_format_argument(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    points = tmp_path / "points.bin"
    np.save(tmp_path / "points.npy", np.ones((10, 2), np.float32))
    (tmp_path / "points.npy").rename(points)

    status, stderr = _run(capsys, "analyze", str(points), "--out", str(tmp_path / "r.json"))

    assert status == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nnkgeo: error: embeddings ")
    assert ".npy, .npz, .safetensors and .parquet" in lines[0]
    assert "format=" not in lines[0] and "--format" not in lines[0]


def test_service_advice_for_http_callers_is_said_in_each_callers_terms() -> None:
    refused = error_for_problem(
        Problem(
            title="Unprocessable Content",
            status=422,
            detail="sets[a].embeddings: no dataset ds_1; upload it with POST /v1/datasets",
            errors=[
                {
                    "field": "sets[a].embeddings",
                    "message": "no dataset ds_1; upload it with POST /v1/datasets",
                }
            ],
        )
    )
    no_key = error_for_problem(
        Problem(
            title="Unauthorized",
            status=401,
            detail="Send your API key as `Authorization: Bearer <key>`.",
        )
    )

    assert refused.message_for("cli") == (
        "422 Unprocessable Content: sets[a].embeddings: no dataset ds_1; "
        "upload it with `nnkgeo upload FILE`"
    )
    assert str(refused).endswith("upload it with Client.upload")
    assert "pass --api-key KEY or set NNKGEO_API_KEY" in no_key.message_for("cli")
    assert "pass api_key=... or set NNKGEO_API_KEY" in str(no_key)
    # The problem itself keeps the service's words.
    assert refused.problem.detail and "POST /v1/datasets" in refused.problem.detail


def test_a_field_error_already_in_the_detail_is_said_once() -> None:
    message = "must be smaller than the number of points (20)"
    refused = ValidationProblem(
        Problem(
            title="Unprocessable Content",
            status=422,
            detail=f"params.k: {message}",
            errors=[{"field": "params.k", "message": message}, {"field": "sets", "message": "!"}],
        )
    )

    assert str(refused).count(message) == 1
    assert str(refused).endswith("; sets: !")  # one the detail left out is still said


def test_a_canceled_job_is_said_to_be_canceled_not_a_409() -> None:
    canceled = JobCanceledError(
        _job("canceled", "canceled", 0.3), Problem(title="Job canceled", status=409)
    )

    assert canceled.message_for("cli") == str(canceled) == "job job_1 was canceled"


# --------------------------------------------------------------------------- progress


def test_the_progress_line_says_a_status_once_when_the_stage_repeats_it() -> None:
    log = io.StringIO()
    display = progress_display(log, "job_1")

    for job in (
        _job("queued", "queued", 0.0),
        _job("running", "knn", 0.2),
        _job("succeeded", "succeeded", 1.0),
    ):
        display.update(job)
    display.close()

    lines = log.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("job_1 queued    [") and lines[0].count("queued") == 1
    assert "  20% knn (" in lines[1]
    assert lines[2].count("succeeded") == 1 and "] 100% (" in lines[2]


def test_client_warnings_are_printed_as_nnkgeo_lines_once(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from nnkgeo.cli.outcome import print_client_warnings

    client_logger = logging.getLogger("nnkgeo.client")
    monkeypatch.setattr(client_logger, "handlers", [])

    print_client_warnings()
    print_client_warnings()
    client_logger.warning("GET /v1/jobs: the service answered 503; retrying in %.1f s", 5.0)

    assert capsys.readouterr().err == (
        "nnkgeo: GET /v1/jobs: the service answered 503; retrying in 5.0 s\n"
    )
