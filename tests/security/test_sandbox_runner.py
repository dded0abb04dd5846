"""The model sandbox tested directly, without the service: what the child sees and does.

The embeddings a sandboxed model returns equal a direct computation (torch on the same
module, numpy on the ONNX weights); the child's environment, file descriptors and
seccomp state are read from outside, through /proc, while it runs; its limits end it
with errors that say which limit; and a host that cannot enforce the sandbox refuses.
"""

from __future__ import annotations

import os
import sysconfig
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import torch

from jobstate.errors import InvalidInputError
from tests.security import hostile_models
from workers.models.sandbox.runner import (
    ModelLimitError,
    SandboxedModel,
    SandboxPolicy,
    SandboxUnavailableError,
    sandbox_support,
)

POLICY = SandboxPolicy(memory_bytes=1024**3, cpu_seconds=20, wall_seconds=60, threads=1)
SECRETS = {
    "NNKGEO_WEBHOOK_SECRETS": "alpha:whsec_c2FuZGJveC10ZXN0LXNlY3JldC0wMTIzNDU2Nzg5",
    "AWS_SECRET_ACCESS_KEY": "sandbox-test-aws-secret",
    "NNKGEO_API_KEYS": "alpha:sandbox-test-api-key-0123456789",
}


@pytest.fixture(scope="module")
def points() -> np.ndarray:
    return (
        np.random.default_rng(3).standard_normal((50, hostile_models.N_FEATURES)).astype(np.float32)
    )


def _model(tmp_path: Path, content: bytes, fmt: str, policy: SandboxPolicy = POLICY) -> Any:
    path = tmp_path / f"model.{fmt}"
    path.write_bytes(content)
    return SandboxedModel(format=fmt, path=path, policy=policy, field="embed.model")  # type: ignore[arg-type]


def test_torchscript_penultimate_equals_the_module_computed_directly(
    tmp_path: Path, points: np.ndarray
) -> None:
    model = _model(tmp_path, hostile_models.honest_torchscript(), "torchscript")
    ((tap, embeddings),) = model.extract(points, layers="penultimate")
    reference = hostile_models._Classifier()
    with torch.no_grad():
        expected = reference.act(reference.hidden(torch.from_numpy(points))).numpy()
    assert (tap.name, tap.module, tap.where) == ("penultimate", "out", "input")
    np.testing.assert_allclose(embeddings, expected, rtol=1e-5, atol=1e-6)


def test_exported_program_layers_equal_the_module_computed_directly(
    tmp_path: Path, points: np.ndarray
) -> None:
    reference = hostile_models._Classifier().eval()
    batch = torch.export.Dim("batch")
    program = torch.export.export(
        reference, (torch.from_numpy(points[:4]),), dynamic_shapes={"x": {0: batch}}
    )
    path = tmp_path / "classifier.pt2"
    torch.export.save(program, path)
    model = _model(tmp_path, path.read_bytes(), "pt2")
    taps = model.extract(points, layers=["hidden", "act"])
    with torch.no_grad():
        hidden = reference.hidden(torch.from_numpy(points)).numpy()
    assert [tap.name for tap, _ in taps] == ["hidden", "act"]
    np.testing.assert_allclose(taps[0][1], hidden, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(taps[1][1], np.maximum(hidden, 0), rtol=1e-5, atol=1e-6)


def test_onnx_layers_equal_numpy_on_its_weights(tmp_path: Path, points: np.ndarray) -> None:
    content, weights = hostile_models.honest_onnx()
    model = _model(tmp_path, content, "onnx")
    hidden = points @ weights["w1"].T + weights["b1"]
    logits = np.maximum(hidden, 0) @ weights["w2"].T + weights["b2"]

    ((tap, penultimate),) = model.extract(points, layers="penultimate")
    assert (tap.name, tap.module, tap.where, tap.value) == (
        "penultimate",
        "fc2",
        "input",
        "activation",
    )
    np.testing.assert_allclose(penultimate, np.maximum(hidden, 0), rtol=1e-5, atol=1e-5)

    ((tap, activation),) = model.extract(points, layers="all")
    assert (tap.name, tap.module) == ("activation", "relu1")
    np.testing.assert_allclose(activation, np.maximum(hidden, 0), rtol=1e-5, atol=1e-5)

    named = model.extract(points, layers=["logits", "hidden"])
    assert [tap.name for tap, _ in named] == ["hidden", "logits"]  # graph order
    np.testing.assert_allclose(named[0][1], hidden, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(named[1][1], logits, rtol=1e-5, atol=1e-5)

    with pytest.raises(InvalidInputError, match=r"no ONNX value named 'nope'.*activation"):
        model.extract(points, layers=["nope"])


def _sandbox_child(timeout_s: float = 30) -> psutil.Process:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for child in psutil.Process().children(recursive=True):
            try:
                if any(part.endswith("child.py") for part in child.cmdline()):
                    return child
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.05)
    raise TimeoutError("no sandbox child appeared")


def test_child_has_no_secrets_no_inherited_files_and_is_confined_while_it_runs(
    tmp_path: Path, points: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    inherited = open(tmp_path / "inherited.txt", "w")  # noqa: SIM115 - open across the run
    os.set_inheritable(inherited.fileno(), True)
    policy = SandboxPolicy(memory_bytes=1024**3, cpu_seconds=8, wall_seconds=60, threads=1)
    model = _model(tmp_path, hostile_models.loops_forever(), "torchscript", policy)
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            model.extract(points, layers="penultimate")
        except BaseException as error:
            outcome["error"] = error

    runner = threading.Thread(target=run)
    runner.start()
    try:
        child = _sandbox_child()
        # Wait until it is past its imports and confined (it loops from then on).
        deadline = time.monotonic() + 30
        status = ""
        while time.monotonic() < deadline:
            status = Path(f"/proc/{child.pid}/status").read_text()
            if "Seccomp:\t2" in status:
                break
            time.sleep(0.05)
        environment = Path(f"/proc/{child.pid}/environ").read_bytes().decode()
        descriptors = {
            os.readlink(f"/proc/{child.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{child.pid}/fd")
        }
    finally:
        runner.join(timeout=60)
        inherited.close()
    assert "Seccomp:\t2" in status and "NoNewPrivs:\t1" in status, status
    for value in SECRETS.values():
        assert value not in environment
    assert "NNKGEO_" not in environment and "AWS_" not in environment
    assert str(tmp_path / "inherited.txt") not in descriptors
    assert isinstance(outcome.get("error"), ModelLimitError), outcome
    assert "CPU-time limit of 8 s" in str(outcome["error"])


def test_memory_limit_ends_a_model_that_allocates_3_gib(tmp_path: Path, points: np.ndarray) -> None:
    model = _model(tmp_path, hostile_models.allocates(3 * 1024**3), "torchscript")
    with pytest.raises(ModelLimitError, match="memory limit of 1073741824 bytes"):
        model.extract(points, layers="penultimate")


def test_wall_clock_deadline_ends_a_model_the_cpu_limit_has_not(
    tmp_path: Path, points: np.ndarray
) -> None:
    policy = SandboxPolicy(memory_bytes=1024**3, cpu_seconds=600, wall_seconds=6, threads=1)
    model = _model(tmp_path, hostile_models.loops_forever(), "torchscript", policy)
    started = time.monotonic()
    with pytest.raises(ModelLimitError, match="longer than its 6 s limit"):
        model.extract(points, layers="penultimate")
    assert time.monotonic() - started < 20


def test_refused_op_is_refused_again_inside_the_sandbox(tmp_path: Path, points: np.ndarray) -> None:
    """The worker does not trust the API's check: the child checks before it loads."""
    target = tmp_path / "planted"
    model = _model(tmp_path, hostile_models.writes_at_load(str(target)), "torchscript")
    with pytest.raises(InvalidInputError, match="__setstate__") as refused:
        model.extract(points, layers="penultimate")
    assert refused.value.field.startswith("embed.model")
    assert not target.exists()


def test_blob_store_inside_a_readable_runtime_directory_refuses_to_run(
    tmp_path: Path, points: np.ndarray
) -> None:
    policy = SandboxPolicy(
        memory_bytes=1024**3,
        cpu_seconds=20,
        wall_seconds=60,
        threads=1,
        protected_paths=(Path(sysconfig.get_paths()["purelib"]) / "nnkgeo-blobs",),
    )
    model = _model(tmp_path, hostile_models.honest_torchscript(), "torchscript", policy)
    with pytest.raises(SandboxUnavailableError, match="protected directory"):
        model.extract(points, layers="penultimate")


def test_unenforceable_sandbox_refuses_unless_the_operator_allows_it(
    tmp_path: Path, points: np.ndarray
) -> None:
    assert sandbox_support(min_landlock_abi=4, allow_unsandboxed=False).enforceable
    refused = sandbox_support(min_landlock_abi=99, allow_unsandboxed=False)
    assert not refused.enforceable and not refused.allowed
    assert "Landlock ABI" in refused.description
    policy = SandboxPolicy(
        memory_bytes=1024**3, cpu_seconds=20, wall_seconds=60, unavailable=refused.description
    )
    model = _model(tmp_path, hostile_models.honest_torchscript(), "torchscript", policy)
    with pytest.raises(SandboxUnavailableError, match="Landlock ABI"):
        model.extract(points, layers="penultimate")

    allowed = sandbox_support(min_landlock_abi=99, allow_unsandboxed=True)
    assert allowed.allowed and not allowed.enforceable
    unconfined = SandboxPolicy(memory_bytes=1024**3, cpu_seconds=20, wall_seconds=60, confine=False)
    model = _model(tmp_path, hostile_models.honest_torchscript(), "torchscript", unconfined)
    ((_, embeddings),) = model.extract(points, layers="penultimate")
    assert embeddings.shape == (len(points), 32)
