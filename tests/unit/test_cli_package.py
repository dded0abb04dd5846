"""The ``nnkgeo`` command line without the engine: what a plain ``pip install nnkgeo`` runs.

The help, the service commands and ``nnkgeo check`` load no engine library; ``analyze``
and ``study`` name the extra to install when the engine's libraries are missing (here
hidden from a subprocess; tests/contract/test_light_install.py checks a real install).
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from api_schemas import AnalysisParams
from nnkgeo.cli.local import ENGINE_INSTALL, ENGINE_LIBRARIES
from workers.geometry import EmbeddingSet, analyze

ROOT = Path(__file__).resolve().parents[2]
HIDDEN = sorted(ENGINE_LIBRARIES - {"numpy"})  # numpy comes with the client

# Runs nnkgeo with the engine's libraries (less numpy) unimportable, as without the extra.
_WITHOUT_ENGINE = """
import sys
from importlib.abc import MetaPathFinder

class Uninstalled(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {hidden!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Uninstalled())
from nnkgeo.cli import main
status = main(sys.argv[1:])
heavy = ("workers", "arrayfiles", "htmlreport", "service", "jobstate", "fastapi", "celery")
print("loaded:", sorted(name for name in heavy if name in sys.modules), file=sys.stderr)
sys.exit(status)
"""


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_the_engine_libraries_are_what_the_engine_extra_installs() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    extra = {_requirement_name(requirement) for requirement in extras["engine"]}
    providers = importlib.metadata.packages_distributions()

    installed_by = {
        name: {dist.lower().replace("_", "-") for dist in providers[name]}
        for name in ENGINE_LIBRARIES
    }

    assert all(dists & extra for dists in installed_by.values()), (installed_by, extra)
    assert set().union(*installed_by.values()) >= extra, (installed_by, extra)


def _without_engine(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT_ENGINE.format(hidden=HIDDEN), *argv],
        cwd=cwd,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def report_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A report of two labelled blobs, from the engine in this (full) install."""
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(0, 1, (40, 5)), rng.normal(6, 1, (40, 5))])
    labels = np.repeat([0, 1], 40)
    result = analyze([EmbeddingSet("blobs", points, labels)], params=AnalysisParams(k=10))
    path = tmp_path_factory.mktemp("report") / "report.json"
    path.write_text(result.report.model_dump_json())
    return path


def test_analyze_and_study_name_the_extra_to_install(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.ones((10, 3), dtype=np.float32))

    analyzed = _without_engine("analyze", "x.npy", "--out", "r.json", cwd=tmp_path)
    studied = _without_engine(
        "study", "--dataset", "digits", "--widths", "8", "--out", "r.json", cwd=tmp_path
    )

    for command, completed in (("analyze", analyzed), ("study", studied)):
        assert completed.returncode == 2, completed.stderr
        error = completed.stderr.splitlines()[0]
        assert error.startswith(f"nnkgeo: error: nnkgeo {command} needs the engine: "), error
        assert ENGINE_INSTALL == "pip install 'nnkgeo[engine]'" and ENGINE_INSTALL in error
        assert re.search(r"\((\w+) is not installed\)$", error).group(1) in HIDDEN
    assert not (tmp_path / "r.json").exists()


def test_help_and_check_work_without_the_engine_and_load_none_of_it(
    report_file: Path, tmp_path: Path
) -> None:
    helped = _without_engine("--help", cwd=tmp_path)
    passed = _without_engine("check", str(report_file), "--max-loo-error", "1", cwd=tmp_path)
    failed = _without_engine(
        "check", str(report_file), "--max", "nnk_degree.mean=0", "--json", cwd=tmp_path
    )

    assert helped.returncode == 0 and "analyze" in helped.stdout and "check" in helped.stdout
    assert passed.returncode == 0, passed.stderr
    assert passed.stdout.startswith("PASS  blobs  loo_error.nnk_weighted = ")
    assert failed.returncode == 1, failed.stderr
    assert json.loads(failed.stdout)["passed"] is False
    for completed in (passed, failed):
        assert completed.stderr.splitlines()[-1] == "loaded: []", completed.stderr
