"""The API process never imports the engine's heavy libraries.

It serves uploads and reports; torch, faiss, scipy, scikit-learn, numba, umap and
onnxruntime belong to the workers, and so do nnkgeo's own worker packages (the engine, the
tasks, the page renderer). Checked in a fresh interpreter with real settings,
after the app is built, so that a lazy import made eager anywhere on the way fails here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
ENGINE_MODULES = (
    "torch",
    "faiss",
    "scipy",
    "sklearn",
    "numba",
    "umap",
    "onnxruntime",
    "workers",
    "htmlreport",
)

_PROBE = """
import json, sys
import service.main
from fastapi.testclient import TestClient
with TestClient(service.main.app) as client:
    assert client.get("/healthz").status_code == 200
    assert client.get("/openapi.json").status_code == 200
print(json.dumps(sorted(name for name in {names} if name in sys.modules)))
"""


def test_the_api_process_imports_no_engine_library(tmp_path: Path) -> None:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("NNKGEO_")}
    environment.update(
        {
            "NNKGEO_API_KEYS": "alpha:alpha-key-0123456789abcdef",
            "NNKGEO_DATA_DIR": str(tmp_path / "data"),
            # Never reached by these two routes; a real URL all the same.
            "NNKGEO_REDIS_URL": "redis://127.0.0.1:1/0",
            "PYTHONPATH": str(REPO_ROOT),
        }
    )
    completed = subprocess.run(
        [sys.executable, "-c", _PROBE.format(names=repr(ENGINE_MODULES))],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=environment,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    imported = json.loads(completed.stdout.strip().splitlines()[-1])
    assert imported == [], f"the API imported {imported}"
