"""A client reads what a newer server answers; a server still refuses what it does not know.

Answers (reports, job resources, datasets, problems) keep fields this version lacks, so
that an older client parses, checks and passes on a newer server's report without loss.
Requests refuse unknown fields, so that a typo is a 422 naming the field. The OpenAPI
document says both: ``additionalProperties: false`` on every schema a request body
reaches, ``true`` on every model an answer holds.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from api_schemas import AnalysisParams, JobCreate, JobOut, Report, ReportedParams
from nnkgeo.cli import main as nnkgeo_main
from nnkgeo.client import Client
from workers.geometry import EmbeddingSet, analyze

REPO_ROOT = Path(__file__).resolve().parents[2]
PARAMS = AnalysisParams(k=8, device="cpu")


@pytest.fixture(scope="module")
def report_json() -> dict[str, Any]:
    """A real report of two labelled sets, as this version's server answers it."""
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 3, 90)
    points = (rng.standard_normal((3, 6))[labels] + rng.standard_normal((90, 6))).astype(np.float32)
    sets = [EmbeddingSet("early", points, labels), EmbeddingSet("late", 2 * points + 1, labels)]
    return analyze(sets, params=PARAMS, job_id="job_newer").report.model_dump(mode="json")


def _newer(report: dict[str, Any]) -> dict[str, Any]:
    """The report as a newer server might answer it: a new field at every level."""
    newer = copy.deepcopy(report)
    newer["provenance"] = {"server": "nnkgeo/9.0", "region": "eu"}
    newer["params"]["spectral_norm"] = "l2"
    first = newer["sets"][0]
    first["curvature"] = 0.25
    first["graph"]["n_components"] = 1
    first["loo_error"]["svm_weighted"] = 0.125
    first["nnk_degree"]["std"] = 1.5
    first["per_class"][0]["margin"] = 0.5
    first["suspects"][0]["distance"] = 0.75
    first["intrinsic_dimension"]["mada"] = 4.0
    newer["comparison"]["baseline"] = "early"
    return newer


# --------------------------------------------------------------------------- reports


def test_report_from_a_newer_server_keeps_every_unknown_field(
    report_json: dict[str, Any],
) -> None:
    newer = _newer(report_json)

    report = Report.model_validate(newer)

    first = report.sets[0]
    assert report.model_extra == {"provenance": {"server": "nnkgeo/9.0", "region": "eu"}}
    assert report.params.model_extra == {"spectral_norm": "l2"}
    assert first.model_extra == {"curvature": 0.25}
    assert first.graph.model_extra == {"n_components": 1}
    assert first.loo_error is not None and first.loo_error.model_extra == {"svm_weighted": 0.125}
    assert first.nnk_degree.model_extra == {"std": 1.5}
    assert first.per_class[0].model_extra == {"margin": 0.5}
    assert first.suspects[0].model_extra == {"distance": 0.75}
    assert first.intrinsic_dimension.model_extra == {"mada": 4.0}
    assert report.comparison is not None and report.comparison.model_extra == {"baseline": "early"}
    assert json.loads(report.model_dump_json()) == newer


def test_reported_params_this_version_knows_parse_as_runnable_params(
    report_json: dict[str, Any],
) -> None:
    known = Report.model_validate_json(json.dumps(report_json))
    newer = Report.model_validate(_newer(report_json))

    assert type(known.params) is AnalysisParams
    assert known.params == PARAMS
    assert type(newer.params) is ReportedParams
    assert newer.params.k == PARAMS.k


def test_report_fields_keep_their_checks(report_json: dict[str, Any]) -> None:
    broken = _newer(report_json)
    broken["params"]["k"] = 0
    broken["sets"][0]["n_points"] = "many"

    with pytest.raises(ValidationError) as refused:
        Report.model_validate(broken)

    locations = {error["loc"] for error in refused.value.errors()}
    assert locations == {("params", "k"), ("sets", 0, "n_points")}


def test_nnkgeo_check_accepts_a_report_from_a_newer_server(
    report_json: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "newer-report.json"
    path.write_text(json.dumps(_newer(report_json)))

    status = nnkgeo_main(["check", str(path), "--max-loo-error", "1", "--json"])

    outcome = json.loads(capsys.readouterr().out)
    assert status == 0
    assert outcome["passed"] is True
    assert {check["set"] for check in outcome["checks"]} == {"early", "late"}


# --------------------------------------------------------------------------- requests


def _job_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "sets": [{"name": "layer4", "embeddings": {"dataset": "ds_1"}}],
        "params": {"k": 10},
    }
    body.update(changes)
    return body


@pytest.mark.parametrize(
    ("body", "location"),
    [
        (_job_body(priority="high"), ("priority",)),
        (_job_body(params={"k": 10, "neighbours": 5}), ("params", "neighbours")),
        (
            _job_body(sets=[{"name": "a", "embeddings": {"dataset": "ds_1"}, "weight": 2}]),
            ("sets", 0, "weight"),
        ),
        (
            _job_body(sets=[{"name": "a", "embeddings": {"dataset": "ds_1", "column": "x"}}]),
            ("sets", 0, "embeddings", "column"),
        ),
    ],
)
def test_job_create_still_refuses_unknown_fields(body: dict[str, Any], location: tuple) -> None:
    with pytest.raises(ValidationError) as refused:
        JobCreate.model_validate(body)

    assert [(error["type"], error["loc"]) for error in refused.value.errors()] == [
        ("extra_forbidden", location)
    ]


def test_analysis_params_refuse_what_reported_params_keep() -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        AnalysisParams.model_validate({"k": 10, "spectral_norm": "l2"})
    assert ReportedParams.model_validate({"k": 10, "spectral_norm": "l2"}).model_extra == {
        "spectral_norm": "l2"
    }


def _schemas_reached(node: Any, components: dict[str, Any], seen: set[str]) -> set[str]:
    """Names of the component schemas ``node`` refers to, transitively."""
    if isinstance(node, dict):
        reference = node.get("$ref")
        if isinstance(reference, str) and reference.startswith("#/components/schemas/"):
            name = reference.rsplit("/", 1)[-1]
            if name not in seen:
                seen.add(name)
                _schemas_reached(components[name], components, seen)
        for value in node.values():
            _schemas_reached(value, components, seen)
    elif isinstance(node, list):
        for value in node:
            _schemas_reached(value, components, seen)
    return seen


def _openapi_document(tmp_path: Path) -> dict[str, Any]:
    """The API's OpenAPI document, from a fresh interpreter (importing service.main builds
    the app from the environment's settings, which this process must not cache)."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("NNKGEO_")}
    environment.update(
        {
            "NNKGEO_API_KEYS": "alpha:alpha-key-0123456789abcdef",
            "NNKGEO_DATA_DIR": str(tmp_path / "data"),
            "NNKGEO_REDIS_URL": "redis://127.0.0.1:1/0",
            "PYTHONPATH": str(REPO_ROOT),
        }
    )
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, service.main; print(json.dumps(service.main.app.openapi()))",
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=environment,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_openapi_says_requests_forbid_and_answers_allow_unknown_fields(tmp_path: Path) -> None:
    document = _openapi_document(tmp_path)
    components = document["components"]["schemas"]
    operations = [
        operation for path_item in document["paths"].values() for operation in path_item.values()
    ]
    requests: set[str] = set()
    answers: set[str] = set()
    for operation in operations:
        _schemas_reached(operation.get("requestBody", {}), components, requests)
        _schemas_reached(operation.get("responses", {}), components, answers)
    request_models = {name for name in requests if "properties" in components[name]}
    answer_models = {name for name in answers if "properties" in components[name]}

    assert {"JobCreate", "AnalysisParams", "EmbeddingSetSpec", "DatasetRef"} <= request_models
    assert {"Report", "ReportedParams", "SetReport", "JobOut", "DatasetOut"} <= answer_models
    assert not request_models & answer_models
    assert {
        name: components[name].get("additionalProperties") for name in request_models
    } == dict.fromkeys(request_models, False)
    assert {
        name: components[name].get("additionalProperties") for name in answer_models
    } == dict.fromkeys(answer_models, True)


# --------------------------------------------------------------------------- the client


class _NewerServer:
    """A real HTTP server in a thread, answering as a newer nnkgeo would: with new fields."""

    def __init__(self, answers: dict[str, dict[str, Any]]) -> None:
        self.answers = answers
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps(server.answers[self.path]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.http.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> _NewerServer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.http.shutdown()
        self.http.server_close()
        self.thread.join(timeout=5)


def _newer_job_resource(job_id: str) -> dict[str, Any]:
    links = {
        "self": f"/v1/jobs/{job_id}",
        "report": f"/v1/jobs/{job_id}/report",
        "report_html": f"/v1/jobs/{job_id}/report.html",
        "cancel": f"/v1/jobs/{job_id}/cancel",
        "events": f"/v1/jobs/{job_id}/events",
    }
    return {
        "id": job_id,
        "status": "succeeded",
        "progress": {"stage": "done", "fraction": 1.0, "eta_s": 0},
        "created_at": "2025-01-01T00:00:00Z",
        "finished_at": "2025-01-01T00:00:05Z",
        "links": links,
        "queue": "gpu",
    }


@pytest.fixture
def newer_server(report_json: dict[str, Any]) -> Iterator[_NewerServer]:
    answers = {
        "/v1/jobs/job_newer": _newer_job_resource("job_newer"),
        "/v1/jobs/job_newer/report": _newer(report_json),
    }
    with _NewerServer(answers) as server:
        yield server


def test_client_reads_a_newer_servers_job_resource(newer_server: _NewerServer) -> None:
    with Client(newer_server.url, "key", retries=0) as client:
        job = client.job("job_newer")
        waited = client.wait("job_newer", progress=False, timeout=5)

    assert isinstance(job, JobOut)
    assert job.model_extra == {"queue": "gpu"}
    assert job.progress.model_extra == {"eta_s": 0}
    assert job.links.model_extra == {"events": "/v1/jobs/job_newer/events"}
    assert waited == job


def test_client_reads_a_newer_servers_report(
    newer_server: _NewerServer, report_json: dict[str, Any]
) -> None:
    with Client(newer_server.url, "key", retries=0) as client:
        report = client.report("job_newer")

    assert json.loads(report.model_dump_json()) == _newer(report_json)
