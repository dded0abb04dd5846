"""The CPU path imports no torch: deciding the device, the engine, and ``nnkgeo analyze``.

Each check runs in a fresh interpreter (this test process has torch loaded by other
tests) and reports which torch modules the run left in ``sys.modules``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.unit.fresh_interpreter import run_json

pytest.importorskip("numba")

_ENGINE = """
import json, sys
import numpy as np
from api_schemas import AnalysisParams
from workers.geometry import EmbeddingSet, analyze
from workers.geometry.analysis import resolve_device

rng = np.random.default_rng(0)
points = rng.standard_normal((300, 12)).astype(np.float32)
points[200:210] = points[:10]
labels = np.arange(300) % 3
devices = [resolve_device(device)[0] for device in ("auto", "cpu")]
for params in (
    AnalysisParams(k=10, device="auto"),
    AnalysisParams(k=10, device="cpu", kernel="gaussian", ignore_identical=True),
):
    result = analyze([EmbeddingSet("s", points, labels=labels)], params=params)
    assert result.report.sets[0].nnk_degree.mean > 0
print(json.dumps({
    "devices": devices,
    "torch": sorted(name for name in sys.modules if name.split(".")[0] == "torch"),
}))
"""

_CLI = """
import json, sys
from nnkgeo.cli import main
code = main(sys.argv[1:])
print(json.dumps({
    "code": code,
    "torch": sorted(name for name in sys.modules if name.split(".")[0] == "torch"),
}))
"""


def _run(code: str, *args: str) -> dict:
    return run_json(code, *args, timeout=600)


@pytest.mark.skipif(Path("/dev/nvidiactl").exists(), reason="a GPU driver: auto may pick it")
def test_analysing_on_the_cpu_imports_no_torch():
    outcome = _run(_ENGINE)
    assert outcome["devices"] == ["cpu", "cpu"]
    assert outcome["torch"] == []


@pytest.mark.skipif(Path("/dev/nvidiactl").exists(), reason="a GPU driver: auto may pick it")
def test_nnkgeo_analyze_imports_no_torch(tmp_path):
    rng = np.random.default_rng(1)
    np.save(tmp_path / "points.npy", rng.standard_normal((200, 8)).astype(np.float32))
    np.save(tmp_path / "labels.npy", np.arange(200) % 4)
    outcome = _run(
        _CLI,
        "analyze",
        str(tmp_path / "points.npy"),
        "--labels",
        str(tmp_path / "labels.npy"),
        "--k",
        "8",
        "--quiet",
        "--out",
        str(tmp_path / "report.json"),
    )
    assert outcome["code"] == 0
    assert json.loads((tmp_path / "report.json").read_text())["sets"][0]["n_points"] == 200
    assert outcome["torch"] == []


_WORKER = """
import json, sys
import workers.celery_app, workers.model_jobs, workers.outcomes, workers.sharded, workers.single
from workers.models import PathNotAllowedError
print(json.dumps({
    "torch": sorted(name for name in sys.modules if name.split(".")[0] == "torch"),
}))
"""


def test_the_worker_loads_torch_only_for_model_jobs():
    # A CPU worker that runs only analysis jobs should not pay torch's start-up and memory.
    assert _run(_WORKER)["torch"] == []
    loaded = _run(_WORKER.replace("PathNotAllowedError", "run_study"))["torch"]
    assert "torch" in loaded


def test_the_torch_solver_path_still_runs_on_the_cpu(monkeypatch):
    # Without numba (or for the "authors" solver) the CPU path is torch's, as before.
    pytest.importorskip("torch")
    from api_schemas import AnalysisParams
    from workers.geometry import nnk_solve
    from workers.geometry.analysis import build_nnk_graph

    rng = np.random.default_rng(2)
    points = rng.standard_normal((400, 24)).astype(np.float32)
    params = AnalysisParams(k=15)
    compiled = build_nnk_graph(points, params=params)
    monkeypatch.setattr(nnk_solve, "compiled_kernel", lambda: None)
    batched = build_nnk_graph(points, params=params)
    np.testing.assert_array_equal(compiled.candidate_indices, batched.candidate_indices)
    np.testing.assert_array_equal(compiled.weights > 0, batched.weights > 0)
    np.testing.assert_allclose(compiled.weights, batched.weights, rtol=0, atol=1e-9)
    np.testing.assert_allclose(compiled.query_kernel, batched.query_kernel, rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        compiled.reconstruction_error, batched.reconstruction_error, rtol=0, atol=1e-12
    )
