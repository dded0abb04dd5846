"""``pip install nnkgeo`` without extras: the client, the service commands and ``check``.

A fresh virtual environment gets the project installed from a copy of its sources (so
that the build writes nothing into the repository), with no extra. There ``nnkgeo
check`` gates a report made by the engine of this (full) install, ``nnkgeo analyze``
names the extra it needs, and no engine or server library can be imported.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from api_schemas import AnalysisParams
from workers.geometry import EmbeddingSet, analyze

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
ABSENT = ("torch", "faiss", "scipy", "sklearn", "pyarrow", "fastapi", "celery", "redis", "uvicorn")


def _package_directories() -> list[str]:
    """The top-level packages the build includes ([tool.setuptools.packages.find])."""
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["packages"]["find"]["include"]
    return sorted({pattern.split(".")[0].rstrip("*") for pattern in patterns})


def _run(*argv: str | Path, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    # The light environment's own interpreter and nothing of the repository's.
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    }
    return subprocess.run(
        [str(part) for part in argv],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def light(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ directory of a virtual environment with ``pip install nnkgeo`` alone."""
    root = tmp_path_factory.mktemp("light-install")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, source / name)
    for package in _package_directories():
        shutil.copytree(
            REPO_ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    created = _run(sys.executable, "-m", "venv", root / "venv", cwd=root)
    assert created.returncode == 0, created.stderr
    bin_dir = root / "venv" / "bin"
    installed = _run(bin_dir / "python", "-m", "pip", "install", source, cwd=root, timeout=540)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    return bin_dir


@pytest.fixture(scope="module")
def report_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(0, 1, (40, 5)), rng.normal(6, 1, (40, 5))])
    labels = np.repeat([0, 1], 40)
    result = analyze([EmbeddingSet("blobs", points, labels)], params=AnalysisParams(k=10))
    path = tmp_path_factory.mktemp("report") / "report.json"
    path.write_text(result.report.model_dump_json(indent=2))
    return path


@pytest.mark.timeout(600)
def test_a_plain_install_checks_reports_and_asks_for_the_engine_to_analyse(
    light: Path, report_file: Path, tmp_path: Path
) -> None:
    np.save(tmp_path / "x.npy", np.ones((10, 3), dtype=np.float32))

    helped = _run(light / "nnkgeo", "--help", cwd=tmp_path)
    passed = _run(light / "nnkgeo", "check", report_file, "--max-loo-error", "1", cwd=tmp_path)
    failed = _run(
        light / "nnkgeo", "check", report_file, "--max", "nnk_degree.mean=0", "--json", cwd=tmp_path
    )
    analyzed = _run(light / "nnkgeo", "analyze", "x.npy", "--out", "r.json", cwd=tmp_path)
    imports = {
        library: _run(light / "python", "-c", f"import {library}", cwd=tmp_path)
        for library in ABSENT
    }

    assert helped.returncode == 0 and "check" in helped.stdout, helped.stderr
    assert passed.returncode == 0, passed.stderr
    assert passed.stdout.startswith("PASS  blobs  loo_error.nnk_weighted = "), passed.stdout
    assert failed.returncode == 1, failed.stderr
    assert json.loads(failed.stdout)["checks"][0]["passed"] is False
    assert "nnkgeo: check failed: blobs: nnk_degree.mean" in failed.stderr
    assert analyzed.returncode == 2, analyzed.stderr
    assert analyzed.stderr.startswith(
        "nnkgeo: error: nnkgeo analyze needs the engine: pip install 'nnkgeo[engine]'"
    ), analyzed.stderr
    assert len(analyzed.stderr.splitlines()) == 1, analyzed.stderr
    assert not (tmp_path / "r.json").exists()
    importable = [library for library, completed in imports.items() if completed.returncode == 0]
    assert importable == [], f"a plain install can import {importable}"
    for completed in imports.values():
        assert "ModuleNotFoundError" in completed.stderr, completed.stderr
