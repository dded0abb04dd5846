"""The analysis flags are generated from `AnalysisParams`: they follow its fields.

Local commands show and apply the model's defaults; remote ``submit`` sends only the
flags given (checked on the wire, against a stand-in for the service), so that the
service decides the rest.
"""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, get_args, get_origin

import pytest
from pydantic import Field

from api_schemas import AnalysisParams, JobOut
from nnkgeo.cli import main, param_flags
from nnkgeo.cli.entry import build_parser
from nnkgeo.cli.param_flags import add_analysis_flags, field_choices, given_analysis_params

API_KEY = "unit-test-key-0123456789"


def _subcommand(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    commands = next(
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    )
    return commands.choices[name]


def _option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action:
    return next(action for action in parser._actions if flag in action.option_strings)


def test_a_changed_default_changes_the_help_and_the_parsed_value() -> None:
    class Changed(AnalysisParams):
        k: int = Field(7, ge=1, le=1024, description="Number of kNN candidates per point.")
        kernel: Literal["cosine", "gaussian", "laplace"] = Field("gaussian", description="K.")

    parser = argparse.ArgumentParser()
    add_analysis_flags(parser, with_defaults=True, model=Changed)
    assert "(default: 7)" in parser.format_help()
    parsed = given_analysis_params(parser.parse_args([]), model=Changed)
    assert parsed["k"] == 7 and parsed["kernel"] == "gaussian"
    assert _option(parser, "--kernel").choices == ["cosine", "gaussian", "laplace"]


def test_local_analyze_offers_every_field_with_its_choices_and_default() -> None:
    analyze = _subcommand("analyze")
    for name, field in AnalysisParams.model_fields.items():
        option = _option(analyze, "--" + name.replace("_", "-"))
        assert option.default == field.default, name
        if option.choices is not None:
            # A list field (baselines) offers the choices of its items.
            choices = get_args(field.annotation)
            if get_origin(field.annotation) is list:
                choices = get_args(choices[0])
            assert list(option.choices) == list(choices), name
    parsed = analyze.parse_args(["emb.npy", "--out", "r.json"])
    assert AnalysisParams(**given_analysis_params(parsed)) == AnalysisParams()


def test_remote_submit_sends_only_the_flags_given() -> None:
    submit = _subcommand("submit")
    parsed = submit.parse_args(["--set", "s=ds_x", "--k", "7", "--no-ignore-identical"])
    assert given_analysis_params(parsed) == {"k": 7, "ignore_identical": False}
    assert given_analysis_params(submit.parse_args(["--set", "s=ds_x"])) == {}


def test_a_study_keeps_its_own_seed_and_device() -> None:
    study = _subcommand("study")
    parsed = study.parse_args(
        ["--dataset", "digits", "--out", "r.json", "--seed", "3", "--k", "12"]
    )
    assert parsed.seed == 3 and parsed.device == "cpu" and parsed.k == 12
    assert "training" in _option(study, "--device").help


def test_a_study_takes_its_device_choices_from_the_model() -> None:
    device = _option(_subcommand("study"), "--device")
    assert list(device.choices) == field_choices("device")
    assert field_choices("device") == list(
        get_args(AnalysisParams.model_fields["device"].annotation)
    )
    with pytest.raises(TypeError, match="not a choice"):
        field_choices("k")


class _ChangedDefaults(AnalysisParams):
    k: int = Field(7, ge=1, le=1024, description="Number of kNN candidates per point.")


def test_a_changed_model_default_shows_in_the_local_help_and_never_in_submit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(param_flags, "AnalysisParams", _ChangedDefaults)

    analyze, submit = _subcommand("analyze"), _subcommand("submit")

    assert "--k K Number of kNN candidates per point (default: 7)" in _flat_help(analyze)
    assert given_analysis_params(analyze.parse_args(["emb.npy", "--out", "r.json"]))["k"] == 7
    assert "(default: 7)" not in _flat_help(submit)
    assert "(default: the service's)" in _flat_help(submit)
    assert given_analysis_params(submit.parse_args(["--set", "s=ds_x"])) == {}


def _flat_help(parser: argparse.ArgumentParser) -> str:
    return " ".join(parser.format_help().split())


class _JobsEndpoint(BaseHTTPRequestHandler):
    """POST /v1/jobs of a stand-in service: records each body, answers a queued job."""

    bodies: list[dict[str, Any]]

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.bodies.append(body)
        job = JobOut.model_validate(
            {
                "id": "job_unit",
                "status": "queued",
                "progress": {"stage": "queued", "fraction": 0.0},
                "created_at": datetime.now(UTC),
                "links": {
                    "self": "/v1/jobs/job_unit",
                    "report": "/v1/jobs/job_unit/report",
                    "report_html": "/v1/jobs/job_unit/report.html",
                    "cancel": "/v1/jobs/job_unit/cancel",
                },
            }
        )
        answer = job.model_dump_json().encode()
        self.send_response(202)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def service() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """The URL of a stand-in service, and the job bodies it received."""
    bodies: list[dict[str, Any]] = []
    handler = type("Recording", (_JobsEndpoint,), {"bodies": bodies})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", bodies
    finally:
        server.shutdown()
        server.server_close()


def test_submit_sends_no_params_but_the_flags_given(
    service: tuple[str, list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, bodies = service
    monkeypatch.setattr(param_flags, "AnalysisParams", _ChangedDefaults)
    connection = ["--url", url, "--api-key", API_KEY, "-q"]

    assert main(["submit", "--set", "s=ds_x", *connection]) == 0
    assert main(["submit", "--set", "s=ds_x", "--kernel", "gaussian", *connection]) == 0

    assert [body["params"] for body in bodies] == [{}, {"kernel": "gaussian"}]
    assert bodies[0]["sets"] == [{"name": "s", "embeddings": {"dataset": "ds_x"}}]
    assert capsys.readouterr().out.split() == ["job_unit", "job_unit"]
