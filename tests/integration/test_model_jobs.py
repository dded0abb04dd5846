"""Jobs that embed for you: a study and an embed job through the real stack.

Their reports equal the in-process engine (`workers.models` + `analyze`) on the same
spec, and every bad reference is a 4xx problem naming it, at submission when the API
can tell without torch, else as the failed job's error.

The module runs its own stack: single-threaded workers (training is then bit for bit
the in-process one), time limits long enough to train, and an allow-listed data root.
"""

from __future__ import annotations

import io
import time
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from safetensors.numpy import save as safetensors_bytes
from sklearn.datasets import load_digits

from api_schemas import AnalysisParams
from api_schemas.models import EmbedSpec, MLPModel, StudySpec
from service.model_jobs import family_layer_names
from tests.integration.helpers import (
    assert_problem,
    comparable,
    npz_bytes,
    submit,
    upload,
    wait_for_status,
)
from tests.integration.stack import ServiceStack
from workers.geometry import analyze
from workers.models import build_family_model, embed_sets, load_dataset, load_model, run_study
from workers.models.study_report import add_study_section

pytestmark = pytest.mark.integration

STUDY_PARAMS = {"k": 10, "device": "cpu"}
STUDY = {
    "kind": "width",
    "dataset": {"builtin": "digits", "split": {"test_fraction": 0.25, "seed": 0}},
    "model": {"family": "mlp", "depth": 2, "widths": [64, 16]},  # the study sorts them
    # Both widths fit digits' training set well within this (tests/unit/test_study.py).
    "train": {"max_epochs": 200, "seed": 0, "lr": 3e-3, "batch_size": 64},
    "layers": "penultimate",
}
EMBED_POINTS = 600
JOB_TIMEOUT_S = 180


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data-root")


@pytest.fixture(scope="module")
def model_stack(
    tmp_path_factory: pytest.TempPathFactory, data_root: Path
) -> Iterator[ServiceStack]:
    stack = ServiceStack(
        tmp_path_factory.mktemp("model-stack"),
        settings={
            "NNKGEO_WORKER_THREADS": "1",
            "NNKGEO_TASK_SOFT_TIME_LIMIT_S": "300",
            "NNKGEO_TASK_TIME_LIMIT_S": "320",
            "NNKGEO_VISIBILITY_TIMEOUT_S": "340",
            "NNKGEO_DATA_ROOTS": str(data_root),
        },
    )
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def client(model_stack: ServiceStack) -> Iterator[httpx.Client]:
    with model_stack.client("alpha") as alpha:
        yield alpha


@pytest.fixture(scope="module")
def other_tenant(model_stack: ServiceStack) -> Iterator[httpx.Client]:
    with model_stack.client("beta") as beta:
        yield beta


@pytest.fixture(autouse=True, scope="module")
def single_threaded_torch() -> Iterator[None]:
    # As the stack's workers (NNKGEO_WORKER_THREADS=1): training is then bit-identical.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _finished(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = submit(client, body)
    assert response.status_code == 202, response.text
    return wait_for_status(client, response.json()["id"], timeout_s=JOB_TIMEOUT_S)


def _uploaded(client: httpx.Client, content: bytes, fmt: str) -> dict[str, Any]:
    response = upload(client, content, fmt=fmt)
    assert response.status_code in (200, 201), response.text
    return response.json()


def _report(client: httpx.Client, job: dict[str, Any]) -> dict[str, Any]:
    assert job["status"] == "succeeded", job
    response = client.get(job["links"]["report"])
    assert response.status_code == 200, response.text
    return response.json()


def _failure(job: dict[str, Any], status: int, field: str) -> dict[str, Any]:
    """The failed job's error is a problem of this status naming `field`."""
    assert job["status"] == "failed", job
    error = job["error"]
    assert error["status"] == status, error
    assert any(field in item["field"] for item in error.get("errors") or []), error
    return error


# --------------------------------------------------------------------------- study


@pytest.fixture(scope="module")
def study_job(client: httpx.Client) -> dict[str, Any]:
    return _finished(client, {"study": STUDY, "params": STUDY_PARAMS})


def test_study_report_equals_the_in_process_study(
    client: httpx.Client, study_job: dict[str, Any]
) -> None:
    served = _report(client, study_job)
    spec = StudySpec.model_validate(STUDY)
    params = AnalysisParams(**STUDY_PARAMS)
    sets = run_study(spec, dataset=load_dataset(spec.dataset), params=params, device="cpu")
    analysis = add_study_section(analyze(sets, params=params, n_threads=1), sets, params=params)
    expected = analysis.report.model_dump(mode="json")

    assert comparable(served) == comparable(expected)
    assert [entry["name"] for entry in served["sets"]] == ["mlp-d2-w16", "mlp-d2-w64"]
    for entry in served["sets"]:
        assert entry["extra"]["fitted"] == 1
        assert entry["extra"]["train_accuracy"] == 1.0
        assert {"parameters", "epochs", "test_accuracy"} <= set(entry["extra"])
    assert served["comparison"]["series"]["extra.parameters"] == [1482, 8970]


def test_identical_study_is_answered_from_the_cache(
    client: httpx.Client, study_job: dict[str, Any]
) -> None:
    response = submit(client, {"study": STUDY, "params": STUDY_PARAMS})

    assert response.status_code == 202, response.text
    again = response.json()
    assert again["status"] == "succeeded"
    assert again["cached"] is True
    assert client.get(again["links"]["report"]).json()["sets"] == _report(client, study_job)["sets"]


def test_study_reports_training_progress_and_stops_when_canceled(client: httpx.Client) -> None:
    body = {"study": {**STUDY, "train": {**STUDY["train"], "seed": 1}}, "params": STUDY_PARAMS}
    response = submit(client, body)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["cached"] is False
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not job["progress"]["stage"].startswith("train:") and time.monotonic() < deadline:
        time.sleep(0.05)
        job = client.get(job["links"]["self"]).json()
    assert job["progress"]["stage"] == "train:mlp-d2-w16", job

    assert client.post(job["links"]["cancel"]).status_code == 202

    assert wait_for_status(client, job["id"], timeout_s=30)["status"] == "canceled"


# --------------------------------------------------------------------------- embed


@pytest.fixture(scope="module")
def scripted_model() -> bytes:
    torch.manual_seed(3)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 16),
        torch.nn.Tanh(),
        torch.nn.Linear(16, 10),
    )
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # Deprecated in torch 2.13, and still how most users ship a whole model.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(model.eval()), buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def digits_npz() -> bytes:
    digits = load_digits()
    return npz_bytes(
        inputs=(digits.data[:EMBED_POINTS] / 16.0).astype(np.float32),
        labels=digits.target[:EMBED_POINTS].astype(np.int64),
    )


@pytest.fixture(scope="module")
def uploads(client: httpx.Client, scripted_model: bytes, digits_npz: bytes) -> dict[str, str]:
    return {
        "model": _uploaded(client, scripted_model, "torchscript")["id"],
        "data": _uploaded(client, digits_npz, "npz")["id"],
    }


def _embed_body(uploads: dict[str, str], **overrides: Any) -> dict[str, Any]:
    embed = {
        "dataset": {"dataset": uploads["data"]},
        "model": {"torchscript": {"dataset": uploads["model"]}},
        "layers": "all",
        **overrides,
    }
    return {"embed": embed, "params": {"k": 10, "device": "cpu"}}


def test_model_upload_is_described_as_a_model_with_no_arrays(
    client: httpx.Client, scripted_model: bytes
) -> None:
    described = _uploaded(client, scripted_model, "torchscript")

    assert described["format"] == "torchscript"
    assert described["arrays"] == []


def test_embed_job_with_uploaded_torchscript_equals_in_process_embedding(
    client: httpx.Client,
    uploads: dict[str, str],
    scripted_model: bytes,
    digits_npz: bytes,
    tmp_path: Path,
) -> None:
    body = _embed_body(uploads)
    served = _report(client, _finished(client, body))

    (tmp_path / "model").write_bytes(scripted_model)
    (tmp_path / "data").write_bytes(digits_npz)
    files = {uploads["model"]: tmp_path / "model", uploads["data"]: tmp_path / "data"}
    spec = EmbedSpec.model_validate(body["embed"])
    params = AnalysisParams(**body["params"])
    dataset = load_dataset(spec.dataset, locate_upload=files.__getitem__)
    model = load_model(
        spec.model,
        locate_upload=files.__getitem__,
        input_shape=dataset.inputs.shape[1:],
        n_classes=int(dataset.classes.size),
    )
    sets = embed_sets(spec, model=model, dataset=dataset, params=params, device="cpu")
    expected = analyze(sets, params=params, n_threads=1).report.model_dump(mode="json")

    assert [entry["name"] for entry in served["sets"]] == ["0", "1", "2", "3", "4"]
    assert comparable(served) == comparable(expected)


# --------------------------------------------------------------------------- bad references


def test_unknown_architecture_is_refused_at_submission(
    client: httpx.Client, uploads: dict[str, str]
) -> None:
    body = _embed_body(uploads, model={"family": "resnet", "depth": 2})

    assert_problem(submit(client, body), 422, field="embed.model")


def test_family_without_weights_is_refused_at_submission(
    client: httpx.Client, uploads: dict[str, str]
) -> None:
    body = _embed_body(uploads, model={"family": "mlp", "depth": 1, "width": 8})

    assert_problem(submit(client, body), 422, field="embed.model.weights")


def test_weights_that_do_not_fit_fail_the_job_naming_the_weights(
    client: httpx.Client, uploads: dict[str, str]
) -> None:
    spec = MLPModel(family="mlp", depth=1, width=8)
    state = build_family_model(spec, input_shape=(64,), n_classes=10).state_dict()
    wrong = {name: np.zeros((3, *tensor.shape[1:]), np.float32) for name, tensor in state.items()}
    weights = _uploaded(client, safetensors_bytes(wrong), "safetensors")["id"]
    model = {**spec.model_dump(mode="json", exclude_none=True), "weights": {"dataset": weights}}

    job = _finished(client, _embed_body(uploads, model=model))

    error = _failure(job, 422, "embed.model.weights")
    assert "do not fit" in error["detail"]


def test_weights_that_fit_embed_like_the_in_process_model(
    client: httpx.Client, uploads: dict[str, str]
) -> None:
    spec = MLPModel(family="mlp", depth=1, width=8)
    torch.manual_seed(0)
    state = build_family_model(spec, input_shape=(64,), n_classes=10).state_dict()
    weights = _uploaded(
        client, safetensors_bytes({k: v.numpy() for k, v in state.items()}), "safetensors"
    )["id"]
    model = {**spec.model_dump(mode="json", exclude_none=True), "weights": {"dataset": weights}}

    served = _report(
        client, _finished(client, _embed_body(uploads, model=model, layers=["hidden1"]))
    )

    assert [entry["name"] for entry in served["sets"]] == ["hidden1"]
    assert served["sets"][0]["dim"] == 8


def test_path_outside_the_data_roots_is_forbidden_at_submission(
    client: httpx.Client, data_root: Path
) -> None:
    for outside in ("/etc", f"{data_root}/../elsewhere"):
        body = {"study": {**STUDY, "dataset": {"path": outside}}, "params": STUDY_PARAMS}

        problem = assert_problem(submit(client, body), 403, field="study.dataset.path")

        assert "outside the allow-listed" in problem["detail"]


def test_missing_folder_inside_the_roots_fails_the_job_not_the_submission(
    client: httpx.Client, data_root: Path
) -> None:
    body = {"study": {**STUDY, "dataset": {"path": f"{data_root}/absent"}}, "params": STUDY_PARAMS}

    _failure(_finished(client, body), 422, "study.dataset.path")


def test_torchscript_that_is_not_torchscript_source_is_refused_at_upload(
    client: httpx.Client,
) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x04garbage, not a pickle")
        archive.writestr("archive/code/__torch__/model.py", b"class Garbage:\n")
        archive.writestr("archive/version", b"3\n")
    problem = assert_problem(
        upload(client, buffer.getvalue(), fmt="torchscript"), 422, field="file"
    )
    assert "code/__torch__/model.py:1" in problem["detail"]


def test_torchscript_that_passes_the_check_but_fails_to_load_fails_the_job_naming_the_model(
    client: httpx.Client, uploads: dict[str, str], scripted_model: bytes
) -> None:
    """Its tensors' storage is missing: read as data it is fine, torch cannot load it."""
    truncated = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(scripted_model)) as source,
        zipfile.ZipFile(truncated, "w") as archive,
    ):
        for info in source.infolist():
            if "/data/" not in info.filename:
                archive.writestr(info.filename, source.read(info.filename))
    broken = _uploaded(client, truncated.getvalue(), "torchscript")["id"]

    job = _finished(client, _embed_body(uploads, model={"torchscript": {"dataset": broken}}))

    _failure(job, 422, "embed.model.torchscript")


def test_model_upload_that_is_not_an_archive_is_refused_at_upload(client: httpx.Client) -> None:
    for fmt in ("torchscript", "pt2"):
        assert_problem(upload(client, b"not a zip archive at all", fmt=fmt), 422, field="file")


def test_unknown_layer_of_an_uploaded_model_fails_the_job_listing_the_layers(
    client: httpx.Client, uploads: dict[str, str]
) -> None:
    job = _finished(client, _embed_body(uploads, layers=["classifier"]))

    error = _failure(job, 422, "embed.layers")
    assert "no layer named 'classifier'" in error["detail"]
    assert "0, 1, 2, 3, 4" in error["detail"]


def test_unknown_layer_of_a_built_in_family_is_refused_at_submission(
    client: httpx.Client,
) -> None:
    body = {"study": {**STUDY, "layers": ["hidden9"]}, "params": STUDY_PARAMS}

    problem = assert_problem(submit(client, body), 422, field="study.layers")

    assert "hidden1, hidden1.0, hidden1.1, hidden2" in problem["detail"]


def test_uploads_are_checked_for_existence_format_arrays_and_tenant(
    client: httpx.Client, other_tenant: httpx.Client, uploads: dict[str, str]
) -> None:
    missing = _embed_body(uploads, dataset={"dataset": "ds_" + "0" * 32})
    assert_problem(submit(client, missing), 422, field="embed.dataset.dataset")

    model_as_data = _embed_body(uploads, dataset={"dataset": uploads["model"]})
    assert_problem(submit(client, model_as_data), 422, field="embed.dataset.dataset")

    data_as_model = _embed_body(uploads, model={"torchscript": {"dataset": uploads["data"]}})
    assert_problem(submit(client, data_as_model), 422, field="embed.model.torchscript.dataset")

    wrong_array = _embed_body(uploads, dataset={"dataset": uploads["data"], "inputs": "pixels"})
    problem = assert_problem(submit(client, wrong_array), 422, field="embed.dataset.inputs")
    assert "inputs, labels" in problem["detail"]

    # Another tenant cannot name alpha's uploads, even by their ids.
    assert_problem(submit(other_tenant, _embed_body(uploads)), 422, field="embed.dataset.dataset")


def test_cnn_on_vectors_is_refused_at_submission(client: httpx.Client) -> None:
    study = {
        **STUDY,
        "dataset": {"builtin": "digits", "layout": "vectors"},
        "model": {"family": "cnn", "width_multipliers": [0.5]},
    }

    assert_problem(submit(client, {"study": study}), 422, field="study.model.family")


# --------------------------------------------------------------------------- without a stack


@pytest.mark.parametrize(
    "spec",
    [
        MLPModel(family="mlp", depth=3, width=4),
        {"family": "cnn", "width_multiplier": 0.25},
    ],
)
def test_layer_names_checked_at_submission_are_the_family_modules(spec: Any) -> None:
    from api_schemas.models import CNNModel

    model = spec if isinstance(spec, MLPModel) else CNNModel.model_validate(spec)
    module = build_family_model(model, input_shape=(1, 8, 8), n_classes=10)

    assert family_layer_names(model) == [name for name, _ in module.named_modules() if name]
