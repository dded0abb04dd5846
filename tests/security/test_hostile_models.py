"""Hostile model files against the real stack: nothing written, nothing leaked, limits hold.

Each attack is one measured against main: a TorchScript `__setstate__` that writes at
load, a write hidden behind `torch.jit.fork`, a read whose bytes would surface in an
embed report, a torch.export program and an ONNX model that reach for files. Each is
refused at upload (422 naming the op) or fails its job in the sandbox, and the files it
aimed at are untouched. A model that allocates 3 GiB or loops forever fails its job on
its own limit, and the worker goes on serving.
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from torch import nn

from jobstate.blobs import BlobStore
from tests.integration.helpers import (
    assert_problem,
    npy_bytes,
    submit,
    upload,
    wait_for_status,
)
from tests.integration.stack import ServiceStack
from tests.security import hostile_models
from tests.security.conftest import MODEL_CPU_SECONDS, SOFT_TIME_LIMIT_S

pytestmark = pytest.mark.integration

JOB_TIMEOUT_S = SOFT_TIME_LIMIT_S + 30


def _embed(client: httpx.Client, model: dict[str, Any], data: str, **extra: Any) -> dict:
    body = {
        "embed": {
            "model": model,
            "dataset": {"dataset": data, "inputs": "inputs", "labels": "labels"},
            "layers": "penultimate",
            **extra,
        },
        "params": {"k": 10},
    }
    response = submit(client, body)
    assert response.status_code == 202, response.text
    return wait_for_status(client, response.json()["id"], timeout_s=JOB_TIMEOUT_S)


def _refused_at_upload(client: httpx.Client, content: bytes, fmt: str, *, names: str) -> str:
    problem = assert_problem(upload(client, content, fmt=fmt), 422, field="file")
    detail = json.dumps(problem)
    assert names in detail, detail
    return detail


def test_setstate_that_writes_at_load_is_refused_at_upload_and_writes_nothing(
    tenant: httpx.Client, security_stack: ServiceStack
) -> None:
    target = security_stack.data_dir / "planted-by-setstate"
    detail = _refused_at_upload(
        tenant, hostile_models.writes_at_load(str(target)), "torchscript", names="__setstate__"
    )
    assert ".py:" in detail, "the problem names the line"
    assert not target.exists()


def test_write_hidden_behind_fork_is_refused_at_upload_and_writes_nothing(
    tenant: httpx.Client, security_stack: ServiceStack
) -> None:
    target = security_stack.data_dir / "planted-by-fork"
    _refused_at_upload(
        tenant, hostile_models.writes_through_fork(str(target)), "torchscript", names="fork"
    )
    assert not target.exists()


def test_read_of_another_tenants_blob_is_refused_and_its_bytes_never_surface(
    tenant: httpx.Client, security_stack: ServiceStack
) -> None:
    secret = np.frombuffer(b"another tenant's embeddings!".ljust(64, b"."), dtype=np.uint8)
    with security_stack.client("beta") as other:
        stored = upload(other, npy_bytes(secret), fmt="npy")
    assert stored.status_code in (200, 201), stored.text
    blob = BlobStore(security_stack.data_dir).path_of(stored.json()["sha256"])
    assert blob is not None and blob.is_file()
    detail = _refused_at_upload(
        tenant,
        hostile_models.reads_into_embeddings(str(blob), 64),
        "torchscript",
        names="from_file",
    )
    assert "another tenant" not in detail


def test_exported_program_that_calls_a_file_op_is_refused_at_upload(
    tenant: httpx.Client, tmp_path: Path
) -> None:
    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(hostile_models.N_FEATURES, hostile_models.N_CLASSES)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.fc(x))

    program = torch.export.export(Tiny(), (torch.zeros(2, hostile_models.N_FEATURES),))
    path = tmp_path / "tiny.pt2"
    torch.export.save(program, path)
    # torch refuses to export from_file; an attacker edits the saved graph instead.
    with zipfile.ZipFile(path) as source:
        entries = {info.filename: source.read(info.filename) for info in source.infolist()}
    model_json = next(name for name in entries if "/models/" in name and name.endswith(".json"))
    text = entries[model_json].decode()
    assert "torch.ops.aten.relu.default" in text
    entries[model_json] = text.replace(
        "torch.ops.aten.relu.default", "torch.ops.aten.from_file.default"
    ).encode()
    hostile = io.BytesIO()
    with zipfile.ZipFile(hostile, "w") as target:
        for name, content in entries.items():
            target.writestr(name, content)
    _refused_at_upload(tenant, hostile.getvalue(), "pt2", names="from_file")


def test_onnx_model_whose_weights_name_a_file_is_refused_at_upload(
    tenant: httpx.Client, security_stack: ServiceStack
) -> None:
    secret_file = security_stack.root / "redis.log"
    _refused_at_upload(
        tenant,
        hostile_models.onnx_reading_external_data(str(secret_file)),
        "onnx",
        names="external",
    )


def test_honest_onnx_model_embeds_as_numpy_computes_it(
    tenant: httpx.Client, digits_upload: str
) -> None:
    content, weights = hostile_models.honest_onnx()
    response = upload(tenant, content, fmt="onnx")
    assert response.status_code in (200, 201), response.text
    assert response.json()["format"] == "onnx" and response.json()["arrays"] == []
    job = _embed(tenant, {"onnx": {"dataset": response.json()["id"]}}, digits_upload)
    assert job["status"] == "succeeded", job
    report = tenant.get(f"/v1/jobs/{job['id']}/report").json()
    (penultimate,) = report["sets"]
    assert penultimate["name"] == "penultimate"
    assert penultimate["dim"] == 32
    # The graph of that set is built on relu(x W1' + b1): check its size against numpy.
    from sklearn.datasets import load_digits

    inputs = load_digits().data[:300].astype(np.float32)
    features = np.maximum(inputs @ weights["w1"].T + weights["b1"], 0)
    assert penultimate["n_points"] == int(features.any(axis=1).sum())


def test_model_that_allocates_3_gib_fails_on_its_memory_limit(
    tenant: httpx.Client, digits_upload: str
) -> None:
    response = upload(tenant, hostile_models.allocates(3 * 1024**3), fmt="torchscript")
    assert response.status_code in (200, 201), response.text
    job = _embed(tenant, {"torchscript": {"dataset": response.json()["id"]}}, digits_upload)
    assert job["status"] == "failed", job
    assert job["error"]["status"] == 422
    assert "memory" in job["error"]["detail"], job["error"]
    assert job["error"]["errors"][0]["field"].startswith("embed.model")


def test_looping_model_fails_on_its_cpu_limit_within_the_time_budget(
    tenant: httpx.Client, digits_upload: str
) -> None:
    response = upload(tenant, hostile_models.loops_forever(), fmt="torchscript")
    assert response.status_code in (200, 201), response.text
    started = time.monotonic()
    job = _embed(tenant, {"torchscript": {"dataset": response.json()["id"]}}, digits_upload)
    elapsed = time.monotonic() - started
    assert job["status"] == "failed", job
    assert "CPU-time limit" in job["error"]["detail"], job["error"]
    assert f"{MODEL_CPU_SECONDS} s" in job["error"]["detail"]
    assert elapsed < SOFT_TIME_LIMIT_S


def test_worker_serves_honest_jobs_after_the_attacks(
    tenant: httpx.Client, digits_upload: str
) -> None:
    response = upload(tenant, hostile_models.honest_torchscript(), fmt="torchscript")
    job = _embed(tenant, {"torchscript": {"dataset": response.json()["id"]}}, digits_upload)
    assert job["status"] == "succeeded", job


def test_worker_that_cannot_enforce_the_sandbox_refuses_uploaded_models(
    security_stack: ServiceStack, tenant: httpx.Client, digits_upload: str
) -> None:
    """Forced by asking for a Landlock ABI this kernel lacks; the built-in families, which
    are not code, still run."""
    response = upload(tenant, hostile_models.honest_torchscript(), fmt="torchscript")
    model = {"torchscript": {"dataset": response.json()["id"]}}
    security_stack.kill_worker()
    node = security_stack.start_worker(NNKGEO_SANDBOX_MIN_LANDLOCK_ABI="99")
    try:
        security_stack.wait_ready(worker=node)
        job = _embed(tenant, model, digits_upload, batch_size=128)
        assert job["status"] == "failed", job
        assert job["error"]["status"] == 503
        assert job["error"]["type"].endswith("sandbox-unavailable")
        assert "Landlock ABI" in job["error"]["detail"]
        assert "NOT enforceable" in security_stack.worker.log_tail(200)
    finally:
        security_stack.kill_worker()
        security_stack.restart_worker()
