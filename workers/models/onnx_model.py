"""ONNX models: their layers named by ONNX value names, read with onnxruntime.

An ONNX graph has no modules, only nodes and the values they produce, so layers are
named by value names (a node's output, as Netron shows it):

- ``"penultimate"``: the input of the last ``Gemm`` or ``MatMul`` node (the features
  the classifier reads);
- ``"all"``: the output of every node whose op type is in :data:`LAYER_OP_TYPES`
  (activations and global pooling: one value per layer in most exported networks);
- a list of value names.

Tapped values are added to the graph's outputs, so that onnxruntime keeps them through
its graph optimisations, and the model runs once per batch for all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jobstate.errors import InvalidInputError

__all__ = [
    "LAYER_OP_TYPES",
    "LINEAR_OP_TYPES",
    "OnnxProgram",
    "OnnxReader",
    "load_onnx",
    "resolve_onnx_layers",
]

LAYER_OP_TYPES = (
    "Relu",
    "LeakyRelu",
    "PRelu",
    "Elu",
    "Selu",
    "Celu",
    "Gelu",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
    "Softplus",
    "Mish",
    "GlobalAveragePool",
    "GlobalMaxPool",
)
"""Op types whose outputs ``layers: "all"`` reads."""

LINEAR_OP_TYPES = ("Gemm", "MatMul")
"""Op types whose last node's input is ``"penultimate"``."""

_LISTED_NAMES = 40


@dataclass(frozen=True)
class OnnxProgram:
    """A checked ONNX model, ready to run.

    Attributes
    ----------
    proto : onnx.ModelProto
        The model (external data refused by :mod:`modelcheck`).
    input_name : str
        The graph input the points are fed to (the first one that is not an initializer).
    threads : int or None
        onnxruntime's intra-op threads; None = its default.
    """

    proto: Any
    input_name: str
    threads: int | None = None


def load_onnx(
    path: str | Path, *, field: str = "model.onnx", threads: int | None = None
) -> OnnxProgram:
    """Read an ONNX model after :func:`modelcheck.check_model_file` accepted it.

    Raises
    ------
    InvalidInputError
        When the file is refused by the allow-list, or has no graph input to feed.
    """
    import onnx

    from modelcheck import ModelRefusedError, check_model_file

    try:
        check_model_file(path, fmt="onnx")
    except ModelRefusedError as error:
        raise InvalidInputError(field, str(error)) from None
    proto = onnx.load(str(path), load_external_data=False)
    initializers = {tensor.name for tensor in proto.graph.initializer}
    inputs = [value.name for value in proto.graph.input if value.name not in initializers]
    if not inputs:
        raise InvalidInputError(field, "the ONNX graph has no input to feed the points to")
    return OnnxProgram(proto=proto, input_name=inputs[0], threads=threads)


def _value_names(program: OnnxProgram) -> dict[str, tuple[int, str]]:
    """Each value a node produces: (node position, node name), in graph order."""
    produced: dict[str, tuple[int, str]] = {}
    for position, node in enumerate(program.proto.graph.node):
        for output in node.output:
            if output:
                produced[output] = (position, node.name or f"{node.op_type}_{position}")
    return produced


def resolve_onnx_layers(
    program: OnnxProgram, layers: str | Sequence[str], *, field: str = "layers"
) -> list[Any]:
    """The values to read for a layer selection, as :class:`LayerTap` in graph order.

    Raises
    ------
    InvalidInputError
        For a name that is not a value of the graph (the message lists some that are),
        or a selection that finds nothing to read.
    """
    from workers.models.extraction import PENULTIMATE, LayerTap

    nodes = list(program.proto.graph.node)
    produced = _value_names(program)
    if layers == "all":
        taps = [
            LayerTap(node.output[0], produced[node.output[0]][1], "output", position)
            for position, node in enumerate(nodes)
            if node.op_type in LAYER_OP_TYPES and node.output and node.output[0]
        ]
        if not taps:
            raise InvalidInputError(
                field,
                f"the ONNX graph has no node of the types 'all' reads ({', '.join(LAYER_OP_TYPES)})"
                "; name values instead",
            )
        return taps
    if layers == PENULTIMATE:
        linear = [
            (position, node)
            for position, node in enumerate(nodes)
            if node.op_type in LINEAR_OP_TYPES
        ]
        if not linear:
            raise InvalidInputError(
                field, "the ONNX graph has no Gemm or MatMul node whose input could be read"
            )
        position, node = linear[-1]
        name = node.name or f"{node.op_type}_{position}"
        return [LayerTap(PENULTIMATE, name, "input", position, value=node.input[0])]
    taps = []
    for name in layers:
        if name not in produced:
            listed = ", ".join(list(produced)[:_LISTED_NAMES])
            more = (
                f" (and {len(produced) - _LISTED_NAMES} more)"
                if len(produced) > _LISTED_NAMES
                else ""
            )
            raise InvalidInputError(
                field, f"no ONNX value named {name!r}; the graph's values are: {listed}{more}"
            )
        position, node_name = produced[name]
        taps.append(LayerTap(name, node_name, "output", position))
    return sorted(taps, key=lambda tap: tap.order)


class OnnxReader:
    """Reads tapped values of an ONNX model with onnxruntime, one run per batch."""

    def __init__(self, program: OnnxProgram, taps: Sequence[Any]) -> None:
        import onnx
        import onnxruntime

        model = onnx.ModelProto()
        model.CopyFrom(program.proto)
        self._names = [tap.value or tap.name for tap in taps]
        known = {
            value.name: value for value in onnx.shape_inference.infer_shapes(model).graph.value_info
        }
        present = {value.name for value in model.graph.output}
        for name in dict.fromkeys(self._names):
            if name in present or name == program.input_name:
                continue
            model.graph.output.append(known.get(name) or onnx.ValueInfoProto(name=name))
        options = onnxruntime.SessionOptions()
        if program.threads:
            options.intra_op_num_threads = program.threads
            options.inter_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(
            model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._input_name = program.input_name
        element = self._session.get_inputs()[0].type
        self._input_dtype = {"tensor(double)": np.float64, "tensor(float16)": np.float16}.get(
            element, np.float32
        )

    def __call__(self, batch: Any) -> list[object]:
        import torch

        points = np.asarray(batch.cpu().numpy(), dtype=self._input_dtype)
        fetch = [name for name in self._names if name != self._input_name]
        values = dict(zip(fetch, self._session.run(fetch, {self._input_name: points}), strict=True))
        values[self._input_name] = points
        return [
            torch.from_numpy(np.asarray(values[name], dtype=np.float32)) for name in self._names
        ]

    def close(self) -> None:
        pass
