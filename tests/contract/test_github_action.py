"""action.yml, the GitHub Actions gate: its steps' commands run here, as a runner would.

A composite action's ``run:`` steps are bash scripts (``bash --noprofile --norc -eo
pipefail``) whose ``env:`` values are expressions; the runner substitutes ``${{ inputs.* }}``
and ``${{ github.action_path }}`` and runs the script. The tests do the same with this
checkout as the action path: the check step runs the repository's ``nnkgeo check`` on a
real report, and the install step runs the real pip, in ``--dry-run`` mode, on a copy of
the sources (a real install is `test_light_install`'s job).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from api_schemas import AnalysisParams
from workers.geometry import EmbeddingSet, analyze

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(sys.executable).parent  # this environment's python and nnkgeo
EXPRESSION = re.compile(r"\$\{\{\s*([^}]*?)\s*\}\}")


@pytest.fixture(scope="module")
def action() -> dict[str, Any]:
    return yaml.safe_load((REPO_ROOT / "action.yml").read_text())


@pytest.fixture(scope="module")
def report_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two labelled blobs, analysed by the engine (LOO errors under 0.1, NNK degree ~4)."""
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(0, 1, (40, 5)), rng.normal(8, 1, (40, 5))])
    labels = np.repeat([0, 1], 40)
    result = analyze([EmbeddingSet("blobs", points, labels)], params=AnalysisParams(k=10))
    path = tmp_path_factory.mktemp("report") / "report.json"
    path.write_text(result.report.model_dump_json(indent=2))
    return path


def _step(action: dict[str, Any], name: str) -> dict[str, Any]:
    (step,) = [step for step in action["runs"]["steps"] if step.get("name") == name]
    return step


def _substitute(value: str, inputs: dict[str, str], action_path: Path) -> str:
    def evaluate(match: re.Match[str]) -> str:
        expression = match.group(1)
        if expression.startswith("inputs."):
            return inputs[expression.removeprefix("inputs.")]
        if expression == "github.action_path":
            return str(action_path)
        raise AssertionError(f"an expression the test does not know: {expression}")

    return EXPRESSION.sub(evaluate, value)


def _run_step(
    action: dict[str, Any],
    name: str,
    *,
    cwd: Path,
    action_path: Path = REPO_ROOT,
    extra_env: dict[str, str] | None = None,
    **given: str,
) -> subprocess.CompletedProcess[str]:
    """Run one step's script with the inputs given (the others at their defaults).

    ``bash -x`` traces each command with its arguments on stderr, as the runner's log
    shows them.
    """
    declared = action["inputs"]
    unknown = {key.replace("_", "-") for key in given} - set(declared)
    assert not unknown, unknown
    inputs = {key: str(spec.get("default", "")) for key, spec in declared.items()}
    inputs.update({key.replace("_", "-"): value for key, value in given.items()})
    step = _step(action, name)
    assert step["shell"] == "bash"
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("NNKGEO_", "INPUT_", "PIP_"))
    }
    environment["PATH"] = f"{BIN_DIR}{os.pathsep}{environment.get('PATH', '')}"
    environment.update(
        {key: _substitute(str(value), inputs, action_path) for key, value in step["env"].items()}
    )
    environment.update(extra_env or {})
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-x", "-eo", "pipefail", "-c", step["run"]],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _traced_nnkgeo(completed: subprocess.CompletedProcess[str]) -> str:
    """The nnkgeo command line the step ran, as bash -x printed it."""
    (line,) = [line for line in completed.stderr.splitlines() if line.startswith("+ nnkgeo ")]
    return line.removeprefix("+ ")


def test_the_action_is_composite_and_every_input_is_declared_used_and_kept_out_of_scripts(
    action,
) -> None:
    assert action["runs"]["using"] == "composite"
    steps = action["runs"]["steps"]
    assert steps[0]["uses"].startswith("actions/setup-python@")
    assert steps[0]["with"]["python-version"] == "${{ inputs.python-version }}"
    referenced = set()
    for step in steps:
        # Expressions spliced into a script would let an input inject commands.
        assert "${{" not in step.get("run", ""), step["name"]
        values = [*step.get("env", {}).values(), *step.get("with", {}).values()]
        for value in values:
            for expression in EXPRESSION.findall(str(value)):
                if expression.startswith("inputs."):
                    referenced.add(expression.removeprefix("inputs."))
    assert referenced == set(action["inputs"])
    assert action["inputs"]["metric"]["default"] == "nnk_weighted"
    # The default Python is one the package supports.
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    lowest = tuple(int(part) for part in project["requires-python"].removeprefix(">=").split("."))
    default = tuple(int(part) for part in action["inputs"]["python-version"]["default"].split("."))
    assert default >= lowest


def test_the_check_step_passes_a_report_that_meets_its_thresholds(
    action, report_file, tmp_path
) -> None:
    completed = _run_step(
        action,
        "nnkgeo check",
        cwd=report_file.parent,
        report=report_file.name,  # relative to the workspace, as users write it
        max_loo_error="0.1",
        min_pure_patch="0.8",
        max="nnk_degree.mean=100\n\nreconstruction_error.mean=1\n",
        min="homogeneity.nnk_mean=0.9",
        sets="blobs",
    )

    assert completed.returncode == 0, completed.stderr
    assert _traced_nnkgeo(completed) == (
        "nnkgeo check report.json --max-loo-error 0.1 --metric nnk_weighted "
        "--min-pure-patch 0.8 --max nnk_degree.mean=100 --max reconstruction_error.mean=1 "
        "--min homogeneity.nnk_mean=0.9 --set blobs"
    )
    verdicts = [line for line in completed.stdout.splitlines() if line.strip()]
    assert len(verdicts) == 5 and all(line.startswith("PASS  blobs  ") for line in verdicts)


def test_the_check_step_fails_the_workflow_when_a_threshold_is_missed(
    action, report_file, tmp_path
) -> None:
    report = json.loads(report_file.read_text())
    degree = report["sets"][0]["nnk_degree"]["mean"]
    assert degree > 1

    completed = _run_step(
        action,
        "nnkgeo check",
        cwd=tmp_path,
        report=str(report_file),
        max=f"nnk_degree.mean={degree / 2}",
        max_loo_error="0.1",
        metric="knn_weighted",
    )

    assert completed.returncode == 1, completed.stderr
    assert f"FAIL  blobs  nnk_degree.mean = {degree:.4g}" in completed.stdout
    assert "PASS  blobs  loo_error.knn_weighted" in completed.stdout
    assert "nnkgeo: check failed: blobs: nnk_degree.mean" in completed.stderr


def test_the_check_step_passes_optional_flags_only_when_given(action, report_file) -> None:
    """Empty inputs add nothing; max-drift, url and the key reach nnkgeo when given, the
    key through the environment only."""
    completed = _run_step(
        action,
        "nnkgeo check",
        cwd=report_file.parent,
        report=report_file.name,
        max_drift="0.25",
        url="http://127.0.0.1:9",
        api_key="secret-key-0123456789",
        max="nnk_degree.mean=100",
    )

    assert _traced_nnkgeo(completed) == (
        "nnkgeo check report.json --url http://127.0.0.1:9 --max-drift 0.25 "
        "--max nnk_degree.mean=100"
    )
    assert "export NNKGEO_API_KEY=secret-key-0123456789" in completed.stderr
    assert "secret-key" not in _traced_nnkgeo(completed)
    # A report of sets has no drift section to bound: a usage answer (2), naming the flag.
    assert completed.returncode == 2, completed.stderr
    assert "--max-drift" in completed.stderr.splitlines()[-1]


def test_the_check_step_without_a_threshold_is_a_usage_error(action, report_file) -> None:
    completed = _run_step(action, "nnkgeo check", cwd=report_file.parent, report="report.json")

    assert _traced_nnkgeo(completed) == "nnkgeo check report.json"
    assert completed.returncode == 2
    assert "no threshold given" in completed.stderr


@pytest.fixture(scope="module")
def action_checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of what the runner checks out for the action: the sources, no build output."""
    root = tmp_path_factory.mktemp("action") / "nnkgeo"
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["packages"]["find"]["include"]
    root.mkdir()
    for name in ("pyproject.toml", "README.md", "action.yml"):
        shutil.copy2(REPO_ROOT / name, root / name)
    for package in sorted({pattern.split(".")[0].rstrip("*") for pattern in patterns}):
        shutil.copytree(
            REPO_ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    return root


def _dry_run_environment(tmp_path: Path) -> dict[str, str]:
    """pip's own options, by environment: resolve and report, install nothing, fetch nothing."""
    return {
        "PIP_DRY_RUN": "1",
        "PIP_NO_DEPS": "1",
        # This environment has nnkgeo installed already: resolve as on a fresh runner.
        "PIP_IGNORE_INSTALLED": "1",
        "PIP_NO_INDEX": "1",
        # The build backend this environment already has (setuptools), not a download.
        "PIP_NO_BUILD_ISOLATION": "0",  # pip reads "0" here as --no-build-isolation
        "PIP_REPORT": str(tmp_path / "pip-report.json"),
    }


def test_the_install_step_installs_the_actions_own_checkout_without_extras(
    action, action_checkout, tmp_path
) -> None:
    completed = _run_step(
        action,
        "Install the nnkgeo client (no engine, no server)",
        cwd=tmp_path,
        action_path=action_checkout,
        extra_env=_dry_run_environment(tmp_path),
    )

    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    assert f"+ python -m pip install --disable-pip-version-check --quiet {action_checkout}" in (
        completed.stderr
    )
    (installed,) = json.loads((tmp_path / "pip-report.json").read_text())["install"]
    assert installed["metadata"]["name"] == "nnkgeo"
    assert installed["requested"] is True
    # The light client: no extra asked for, so no engine and no server.
    assert not installed.get("requested_extras")
    assert installed["download_info"]["url"] == action_checkout.as_uri()


def test_the_install_step_takes_a_release_or_a_source_when_given(
    action, action_checkout, tmp_path
) -> None:
    release = _run_step(
        action,
        "Install the nnkgeo client (no engine, no server)",
        cwd=tmp_path,
        action_path=action_checkout,
        extra_env=_dry_run_environment(tmp_path),
        nnkgeo_version="0.1.0",
    )
    # No index here: pip looked for exactly that release, and said so.
    assert "+ python -m pip install --disable-pip-version-check --quiet nnkgeo==0.1.0" in (
        release.stderr
    )
    assert release.returncode != 0
    assert "nnkgeo==0.1.0" in release.stderr

    source = _run_step(
        action,
        "Install the nnkgeo client (no engine, no server)",
        cwd=tmp_path,
        action_path=tmp_path / "not-used",
        extra_env=_dry_run_environment(tmp_path),
        nnkgeo_version="0.1.0",
        nnkgeo_source=str(action_checkout),
    )
    assert source.returncode == 0, source.stderr[-2000:]
    (installed,) = json.loads((tmp_path / "pip-report.json").read_text())["install"]
    assert installed["download_info"]["url"] == action_checkout.as_uri()
