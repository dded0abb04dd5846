"""The service subcommands of ``nnkgeo`` (`nnkgeo.cli.remote`) against the real service.

Commands run in-process through the same parser users get (``nnkgeo.cli.main``), with
their stdout, stderr and exit status checked; one test runs ``python -m nnkgeo`` in a
subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from api_schemas import DatasetOut, JobList, JobOut, Report
from nnkgeo.cli import main
from nnkgeo.client import Client
from tests.integration.stack import REPO_ROOT, TENANT_KEYS, ServiceStack

pytestmark = pytest.mark.integration

ALPHA_KEY = TENANT_KEYS["alpha"]


@dataclass(frozen=True)
class Outcome:
    status: int
    stdout: str
    stderr: str

    def json(self) -> object:
        return json.loads(self.stdout)


@pytest.fixture(scope="module")
def connection(stack: ServiceStack) -> list[str]:
    return ["--url", stack.base_url, "--api-key", ALPHA_KEY]


@pytest.fixture
def nnkgeo(capsys: pytest.CaptureFixture[str]):
    """Run ``nnkgeo ARGS...`` in-process; returns its exit status and output."""

    def run(*argv: str) -> Outcome:
        capsys.readouterr()
        try:
            status = main(list(argv))
        except SystemExit as exit_:  # argparse refusing the command line
            status = int(exit_.code or 0)
        captured = capsys.readouterr()
        return Outcome(status, captured.out, captured.err)

    return run


@pytest.fixture(scope="module")
def client(stack: ServiceStack) -> Iterator[Client]:
    with Client(stack.base_url, ALPHA_KEY) as nnk:
        yield nnk


@pytest.fixture(scope="module")
def digits_files(
    tmp_path_factory: pytest.TempPathFactory, digits: tuple[np.ndarray, np.ndarray]
) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("digits")
    embeddings, labels = digits
    np.save(folder / "embeddings.npy", embeddings)
    np.save(folder / "labels.npy", labels)
    return folder / "embeddings.npy", folder / "labels.npy"


@pytest.fixture(scope="module")
def digits_report(
    client: Client, digits: tuple[np.ndarray, np.ndarray], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A local report.json of the digits (k=30: computed once per session, then cached)."""
    report = client.analyze(*digits, name="digits", params={"k": 30}, progress=False)
    path = tmp_path_factory.mktemp("reports") / "report.json"
    path.write_text(report.model_dump_json(indent=2))
    return path


def _seed() -> str:
    """A seed no earlier job used, so that a job is computed rather than cached."""
    return str(time.monotonic_ns() % 2**31)


def _one_error_line(outcome: Outcome) -> str:
    lines = outcome.stderr.strip().splitlines()
    assert len(lines) == 1, outcome.stderr
    assert lines[0].startswith("nnkgeo: error: "), lines[0]
    return lines[0]


# --------------------------------------------------------------------------- upload


def test_upload_prints_the_dataset_for_people_and_json_for_scripts(
    nnkgeo, connection: list[str], digits_files: tuple[Path, Path]
) -> None:
    embeddings, _ = digits_files

    human = nnkgeo("upload", str(embeddings), *connection)
    as_json = nnkgeo("upload", str(embeddings), "--json", *connection)
    only_id = nnkgeo("upload", str(embeddings), "-q", *connection)

    assert human.status == as_json.status == only_id.status == 0
    dataset = DatasetOut.model_validate(as_json.json())
    assert human.stdout.startswith(dataset.id)
    assert "array: float32 [1797, 64]" in human.stdout
    assert only_id.stdout.strip() == dataset.id


# --------------------------------------------------------------------------- a job's life


def test_submit_wait_status_report_and_graph(
    nnkgeo,
    connection: list[str],
    digits_files: tuple[Path, Path],
    client: Client,
    tmp_path: Path,
) -> None:
    embeddings = nnkgeo("upload", str(digits_files[0]), "-q", *connection).stdout.strip()
    labels = nnkgeo("upload", str(digits_files[1]), "-q", *connection).stdout.strip()
    seed = _seed()

    submitted = nnkgeo(
        "submit",
        "--set",
        f"digits={embeddings}:{labels}",
        "--params-json",
        json.dumps({"k": 10, "seed": int(seed)}),
        "--k",
        "30",
        "-q",
        *connection,
    )
    job_id = submitted.stdout.strip()
    waited = nnkgeo("wait", job_id, "--json", *connection)
    status = nnkgeo("status", job_id, *connection)
    report = nnkgeo(
        "report",
        job_id,
        "--out",
        str(tmp_path / "report.json"),
        "--html",
        str(tmp_path / "report.html"),
        *connection,
    )
    graph = nnkgeo(
        "graph",
        job_id,
        "digits",
        "--kind",
        "directed",
        "--out",
        str(tmp_path / "W.npz"),
        *connection,
    )

    assert submitted.status == 0, submitted.stderr
    assert job_id.startswith("job_")
    assert waited.status == 0, waited.stderr
    assert JobOut.model_validate(waited.json()).status == "succeeded"
    assert job_id in waited.stderr and "100%" in waited.stderr  # the progress bar
    assert status.status == 0
    assert status.stdout.startswith(f"{job_id}  succeeded")
    assert report.status == 0
    assert report.stdout.startswith("digits: N=1797 d=64 NNK degree")
    written = Report.model_validate_json((tmp_path / "report.json").read_text())
    assert written == client.report(job_id)
    assert (written.params.k, written.params.seed) == (30, int(seed))  # the flag wins
    assert "<html" in (tmp_path / "report.html").read_text().lower()
    assert graph.status == 0
    assert "directed graph of set digits" in graph.stdout
    assert (
        abs(sp.load_npz(tmp_path / "W.npz") - client.graph(job_id, "digits", kind="directed")).max()
        == 0
    )


def test_submit_wait_prints_the_finished_job(
    nnkgeo, connection: list[str], client: Client, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    embeddings, labels = (client.upload(array).id for array in digits)

    done = nnkgeo(
        "submit",
        "--set",
        f"digits={embeddings}:{labels}",
        "--k",
        "11",
        "--seed",
        _seed(),
        "--wait",
        "--no-progress",
        "--json",
        *connection,
    )

    assert done.status == 0, done.stderr
    assert JobOut.model_validate(done.json()).status == "succeeded"
    assert done.stderr == ""


def test_jobs_lists_newest_first_one_page_at_a_time(
    nnkgeo, connection: list[str], digits_report: Path
) -> None:
    first_page = nnkgeo("jobs", "--limit", "1", "--json", *connection)
    page = JobList.model_validate(first_page.json())
    second_page = nnkgeo(
        "jobs", "--limit", "1", "--cursor", page.next_cursor, "--json", *connection
    )
    every_job = nnkgeo("jobs", "--all", "--json", *connection)
    human = nnkgeo("jobs", "--limit", "2", *connection)

    assert first_page.status == second_page.status == every_job.status == human.status == 0
    ids = [job["id"] for job in every_job.json()["items"]]
    assert ids[:2] == [page.items[0].id, second_page.json()["items"][0]["id"]]
    assert [line.split()[0] for line in human.stdout.splitlines()] == ids[:2]
    assert "nnkgeo jobs --cursor" in human.stderr


def test_cancel_then_wait_exits_1_saying_the_job_was_canceled(
    nnkgeo, connection: list[str], long_running_embeddings: str
) -> None:
    job_id = nnkgeo(
        "submit",
        "--set",
        f"busy={long_running_embeddings}",
        "--k",
        "50",
        "--seed",
        _seed(),
        "-q",
        *connection,
    ).stdout.strip()

    canceled = nnkgeo("cancel", job_id, *connection)
    waited = nnkgeo("wait", job_id, "--timeout", "30", "--no-progress", *connection)

    assert canceled.status == 0
    assert canceled.stdout.startswith(job_id)
    assert waited.status == 1
    assert _one_error_line(waited) == f"nnkgeo: error: job {job_id} was canceled"


def test_wait_on_a_failed_job_exits_1_naming_the_problem(
    nnkgeo, connection: list[str], stack: ServiceStack, tmp_path: Path
) -> None:
    points = tmp_path / "points.npy"
    np.save(points, np.random.default_rng(41).standard_normal((100, 8)).astype(np.float32))
    dataset = DatasetOut.model_validate(nnkgeo("upload", str(points), "--json", *connection).json())
    # The blob is lost behind the service's back: the job is accepted, then fails.
    (stack.data_dir / "blobs" / dataset.sha256[:2] / dataset.sha256).unlink()

    failed = nnkgeo(
        "submit",
        "--set",
        f"lost={dataset.id}",
        "--k",
        "5",
        "--wait",
        "--json",
        "--no-progress",
        *connection,
    )

    assert failed.status == 1
    job = JobOut.model_validate(failed.json())
    assert job.status == "failed"
    error_line = _one_error_line(failed)
    assert error_line.startswith(f"nnkgeo: error: job {job.id} failed: ")
    assert "sets[lost].embeddings" in error_line
    assert job.error is not None and job.error.errors
    # Each field's message once, though the job's problem has it in its detail too.
    for field_error in job.error.errors:
        assert error_line.count(field_error.message) == 1, error_line


# --------------------------------------------------------------------------- refusals


def test_refusals_exit_2_with_one_line(
    nnkgeo,
    connection: list[str],
    stack: ServiceStack,
    monkeypatch: pytest.MonkeyPatch,
    client: Client,
) -> None:
    monkeypatch.delenv("NNKGEO_URL", raising=False)
    few = client.upload(np.random.default_rng(3).standard_normal((20, 3)).astype(np.float32))

    unknown_job = nnkgeo("status", "job_does_not_exist", *connection)
    wrong_key = nnkgeo("jobs", "--url", stack.base_url, "--api-key", "wrong-key-0123456789abcdef")
    bad_set = nnkgeo("submit", "--set", "no-equals-sign", *connection)
    bad_json = nnkgeo("submit", "--set", f"s={few.id}", "--params-json", "{k: 3}", *connection)
    unknown_param = nnkgeo(
        "submit", "--set", f"s={few.id}", "--params-json", '{"kk": 3}', *connection
    )
    too_many_neighbours = nnkgeo("submit", "--set", f"s={few.id}", "--k", "20", *connection)
    no_url = nnkgeo("jobs")
    missing_file = nnkgeo("upload", "/nonexistent/emb.npy", *connection)

    for outcome in (
        unknown_job,
        wrong_key,
        bad_set,
        bad_json,
        unknown_param,
        too_many_neighbours,
        no_url,
        missing_file,
    ):
        assert outcome.status == 2, outcome
        _one_error_line(outcome)
    assert "404" in unknown_job.stderr
    assert "401" in wrong_key.stderr
    assert "NAME=EMB" in bad_set.stderr
    assert "params.kk" in unknown_param.stderr
    assert "params.k" in too_many_neighbours.stderr
    assert "NNKGEO_URL" in no_url.stderr
    assert "no such file" in missing_file.stderr


# --------------------------------------------------------------------------- check


def test_check_passes_a_report_within_its_thresholds(nnkgeo, digits_report: Path) -> None:
    outcome = nnkgeo(
        "check",
        str(digits_report),
        "--max-loo-error",
        "0.2",
        "--min-pure-patch",
        "0.5",
        "--min",
        "homogeneity.nnk_mean=0.5",
        "--json",
    )

    assert outcome.status == 0, outcome
    verdicts = outcome.json()
    assert verdicts["passed"] is True
    assert [check["metric"] for check in verdicts["checks"]] == [
        "loo_error.nnk_weighted",
        "homogeneity.pure_patch_fraction",
        "homogeneity.nnk_mean",
    ]


def test_check_fails_naming_the_set_and_metric_that_miss(nnkgeo, digits_report: Path) -> None:
    outcome = nnkgeo(
        "check",
        str(digits_report),
        "--max-loo-error",
        "0.0001",
        "--metric",
        "knn_unweighted",
        "--min-pure-patch",
        "0.5",
    )

    assert outcome.status == 1
    lines = outcome.stdout.splitlines()
    assert lines[0].startswith("FAIL  digits  loo_error.knn_unweighted = ")
    assert lines[1].startswith("PASS  digits  homogeneity.pure_patch_fraction = ")
    assert "check failed: digits: loo_error.knn_unweighted" in outcome.stderr


def test_check_reads_the_report_of_a_job_on_the_service(
    nnkgeo, connection: list[str], digits_report: Path
) -> None:
    job_id = Report.model_validate_json(digits_report.read_text()).job_id

    passing = nnkgeo("check", "--job", job_id, "--max-loo-error", "0.2", *connection)
    failing = nnkgeo("check", "--job", job_id, "--max", "nnk_degree.mean=1", *connection)

    assert passing.status == 0, passing
    assert failing.status == 1
    assert "FAIL  digits  nnk_degree.mean" in failing.stdout


def test_check_exits_2_when_it_cannot_evaluate(nnkgeo, digits_report: Path, tmp_path: Path) -> None:
    unlabelled = json.loads(digits_report.read_text())
    unlabelled["sets"][0]["loo_error"] = None
    (tmp_path / "unlabelled.json").write_text(json.dumps(unlabelled))
    (tmp_path / "other.json").write_text('{"not": "a report"}')

    no_threshold = nnkgeo("check", str(digits_report))
    unknown_set = nnkgeo("check", str(digits_report), "--set", "layer9", "--max-loo-error", "1")
    no_labels = nnkgeo("check", str(tmp_path / "unlabelled.json"), "--max-loo-error", "1")
    not_a_report = nnkgeo("check", str(tmp_path / "other.json"), "--max-loo-error", "1")
    not_a_number = nnkgeo("check", str(digits_report), "--max", "regime=1")
    missing = nnkgeo("check", str(tmp_path / "missing.json"), "--max-loo-error", "1")

    for outcome in (no_threshold, unknown_set, no_labels, not_a_report, not_a_number, missing):
        assert outcome.status == 2, outcome
        _one_error_line(outcome)
    assert "layer9" in unknown_set.stderr
    assert "no labels" in no_labels.stderr
    assert "not an nnkgeo report" in not_a_report.stderr


# --------------------------------------------------------------------------- entry point


def test_the_nnkgeo_command_runs_them_with_the_environments_settings(
    stack: ServiceStack, digits_report: Path
) -> None:
    job_id = Report.model_validate_json(digits_report.read_text()).job_id
    environment = {
        **os.environ,
        "NNKGEO_URL": stack.base_url,
        "NNKGEO_API_KEY": ALPHA_KEY,
        "PYTHONPATH": str(REPO_ROOT),
    }

    status = subprocess.run(
        [sys.executable, "-m", "nnkgeo", "status", job_id, "--json"],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert status.returncode == 0, status.stderr
    assert JobOut.model_validate_json(status.stdout).id == job_id
