"""Model files a hostile tenant would upload, and honest ones to compare with.

Each builder returns the bytes of a real archive written by torch (or onnx.helper): the
attacks are the ones measured against main, not imitations of them. A path an attack
writes to or reads from is baked into the model's code or attributes, as an attacker
would bake it.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

N_FEATURES = 64
N_CLASSES = 10


def _scripted_bytes(module: nn.Module) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(module), buffer)
    return buffer.getvalue()


class _Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.hidden = nn.Linear(N_FEATURES, 32)
        self.act = nn.ReLU()
        self.out = nn.Linear(32, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.hidden(x)))


def honest_torchscript() -> bytes:
    return _scripted_bytes(_Classifier())


class _WritesAtLoad(nn.Module):
    """`__setstate__` runs inside torch.jit.load, before any check of the loaded graph."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.fc = nn.Linear(N_FEATURES, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.target, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.target = state[0]
        self.training = state[1]
        torch.save(torch.ones(3), state[0])


def writes_at_load(target: str) -> bytes:
    return _scripted_bytes(_WritesAtLoad(target))


class _WritesThroughFork(nn.Module):
    """The write hides in a forked function: a walk of forward's blocks never sees it."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.fc = nn.Linear(N_FEATURES, N_CLASSES)

    def plant(self, x: torch.Tensor) -> torch.Tensor:
        torch.save(x, self.target)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        future = torch.jit.fork(self.plant, x)
        return self.fc(torch.jit.wait(future))


def writes_through_fork(target: str) -> bytes:
    return _scripted_bytes(_WritesThroughFork(target))


class _ReadsIntoEmbeddings(nn.Module):
    """Reads a file's bytes into its output, where they would surface in the report."""

    def __init__(self, source: str, size: int) -> None:
        super().__init__()
        self.source = source
        self.size = size
        self.fc = nn.Linear(N_FEATURES, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stolen = torch.from_file(self.source, False, self.size, dtype=torch.uint8)
        return self.fc(x) + stolen[: x.shape[1]].float().sum()


def reads_into_embeddings(source: str, size: int) -> bytes:
    return _scripted_bytes(_ReadsIntoEmbeddings(source, size))


class _AllocatesGigabytes(nn.Module):
    def __init__(self, n_bytes: int) -> None:
        super().__init__()
        self.n_floats = n_bytes // 4
        self.fc = nn.Linear(N_FEATURES, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ballast = torch.ones([self.n_floats])
        return self.fc(x) + ballast[-1]


def allocates(n_bytes: int) -> bytes:
    return _scripted_bytes(_AllocatesGigabytes(n_bytes))


class _LoopsForever(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(N_FEATURES, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        while bool(y.sum() > -1.0e30):
            y = y * 0.5 + 1.0
        return self.fc(y)


def loops_forever() -> bytes:
    return _scripted_bytes(_LoopsForever())


# --------------------------------------------------------------------------- ONNX


def _onnx_bytes(graph: onnx.GraphProto) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def honest_onnx(*, seed: int = 0) -> tuple[bytes, dict[str, np.ndarray]]:
    """An MLP 64 -> 32 -> 10 as Gemm, Relu, Gemm; its weights, to compute the truth."""
    rng = np.random.default_rng(seed)
    weights = {
        "w1": rng.standard_normal((32, N_FEATURES)).astype(np.float32) / 8,
        "b1": rng.standard_normal(32).astype(np.float32) / 8,
        "w2": rng.standard_normal((N_CLASSES, 32)).astype(np.float32) / 8,
        "b2": rng.standard_normal(N_CLASSES).astype(np.float32) / 8,
    }
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["input", "w1", "b1"], ["hidden"], name="fc1", transB=1),
            helper.make_node("Relu", ["hidden"], ["activation"], name="relu1"),
            helper.make_node("Gemm", ["activation", "w2", "b2"], ["logits"], name="fc2", transB=1),
        ],
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", N_FEATURES])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", N_CLASSES])],
        initializer=[numpy_helper.from_array(array, name) for name, array in weights.items()],
    )
    return _onnx_bytes(graph), weights


def onnx_reading_external_data(source: str) -> bytes:
    """A weight whose bytes onnxruntime would read from ``source`` (external data)."""
    _, weights = honest_onnx()
    stolen = numpy_helper.from_array(weights["w1"], "w1")
    stolen.ClearField("raw_data")
    stolen.data_location = TensorProto.EXTERNAL
    for key, value in (("location", source), ("offset", "0"), ("length", str(32 * 64 * 4))):
        entry = stolen.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["input", "w1", "b1"], ["hidden"], name="fc1", transB=1),
            helper.make_node("Relu", ["hidden"], ["activation"], name="relu1"),
        ],
        "reader",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", N_FEATURES])],
        [helper.make_tensor_value_info("activation", TensorProto.FLOAT, ["batch", 32])],
        initializer=[stolen, numpy_helper.from_array(weights["b1"], "b1")],
    )
    return _onnx_bytes(graph)
