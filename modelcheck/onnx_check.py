"""Check an ONNX model before a runtime loads it.

An ONNX model is a protobuf graph of operators. Three things in one reach beyond
tensors: tensors stored as external data (they name files the runtime reads),
operators of other domains (custom-op libraries, native code), and ops outside the
standard tensor set. Subgraphs (``If``/``Loop``/``Scan`` attributes), model-local
functions and training graphs are checked the same way. Uses the ``onnx`` package,
never torch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import onnx

from modelcheck.allowlist import ONNX_OPS, refusal_reason
from modelcheck.errors import ModelRefusedError

__all__ = ["check_onnx_model"]

_FIX = "export the model to ONNX with standard operators and its weights inside the file"
_DEFAULT_DOMAINS = ("", "ai.onnx")


def check_onnx_model(path: str | os.PathLike[str], *, max_bytes: int = 2**31 - 1) -> None:
    """Refuse an ONNX model that reads files, loads custom operators or leaves the op set.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.onnx`` file.
    max_bytes : int
        Largest file allowed (protobuf cannot hold 2 GiB anyway).

    Raises
    ------
    ModelRefusedError
        When the file is too large or not an ONNX model; a tensor is stored as external
        data; a node's domain is not the default one (unless it calls a function the
        model defines, whose body is then checked); an op is not on the allow-list
        (subgraphs and functions included); or ``onnx.checker`` rejects the model. The
        message names the op type and node.
    """
    try:
        size = os.path.getsize(path)
    except OSError as error:
        raise ModelRefusedError(f"the file cannot be read ({error})", fix=_FIX) from None
    if size > max_bytes:
        raise ModelRefusedError(
            f"the file holds {size} bytes, more than the {max_bytes} allowed",
            fix="upload a smaller model",
        )
    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except Exception as error:  # protobuf raises DecodeError, and more
        raise ModelRefusedError(
            f"the file is not an ONNX model ({type(error).__name__})", fix=_FIX
        ) from None
    functions = {(function.domain, function.name): function for function in model.functions}
    graphs = [("graph", model.graph)]
    graphs += [
        (f"training graph {i}", info.algorithm) for i, info in enumerate(model.training_info)
    ]
    graphs += [
        (f"training initialisation {i}", info.initialization)
        for i, info in enumerate(model.training_info)
    ]
    checker = _Checker(functions)
    for where, graph in graphs:
        checker.graph(graph, where)
    for function in model.functions:
        checker.nodes(function.node, f"function {function.domain}:{function.name}")
    try:
        onnx.checker.check_model(model, full_check=False)
    except (onnx.checker.ValidationError, ValueError) as error:
        message = " ".join(str(error).split())[:200]
        raise ModelRefusedError(
            f"the ONNX checker rejects the model ({message})", fix=_FIX
        ) from None


class _Checker:
    def __init__(self, functions: dict[tuple[str, str], onnx.FunctionProto]) -> None:
        self.functions = functions

    def graph(self, graph: onnx.GraphProto, where: str) -> None:
        for tensor in _graph_tensors(graph):
            self.tensor(tensor, f"{where}, initializer {tensor.name!r}")
        self.nodes(graph.node, where)

    def nodes(self, nodes: Iterable[onnx.NodeProto], where: str) -> None:
        for node in nodes:
            location = f"{where}, node {node.name or '(unnamed)'!r}"
            self.op(node, location)
            for attribute in node.attribute:
                for tensor in _attribute_tensors(attribute):
                    self.tensor(tensor, f"{location}, attribute {attribute.name!r}")
                for graph in _attribute_graphs(attribute):
                    self.graph(graph, f"{location}, subgraph {attribute.name!r}")

    def op(self, node: onnx.NodeProto, location: str) -> None:
        op_type = node.op_type
        if node.domain not in _DEFAULT_DOMAINS:
            # A model-local function: its body is checked once, with the model's
            # functions (nested calls stay within the model).
            if (node.domain, op_type) in self.functions:
                return
            raise ModelRefusedError(
                f"node of op type {op_type} is from the domain {node.domain!r}, a custom "
                "operator library the runtime would load",
                op=f"{node.domain}:{op_type}",
                location=location,
                fix=_FIX,
            )
        if op_type in ONNX_OPS:
            return
        reason = refusal_reason(op_type) or "is not on the allow-list of ONNX tensor operators"
        raise ModelRefusedError(
            f"the model calls the ONNX op {op_type}, which {reason}",
            op=op_type,
            location=location,
            fix=_FIX,
        )

    def tensor(self, tensor: onnx.TensorProto, location: str) -> None:
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
            files = [entry.value for entry in tensor.external_data if entry.key == "location"]
            raise ModelRefusedError(
                f"the tensor {tensor.name!r} is stored as external data, which names files "
                f"for the runtime to read ({files[:1] or 'no location'})",
                op="external_data",
                location=location,
                fix=_FIX,
            )


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices


def _attribute_tensors(attribute: onnx.AttributeProto) -> Iterator[onnx.TensorProto]:
    if attribute.HasField("t"):
        yield attribute.t
    yield from attribute.tensors
    for sparse in [
        *([attribute.sparse_tensor] if attribute.HasField("sparse_tensor") else []),
        *attribute.sparse_tensors,
    ]:
        yield sparse.values
        yield sparse.indices


def _attribute_graphs(attribute: onnx.AttributeProto) -> Iterator[onnx.GraphProto]:
    if attribute.HasField("g"):
        yield attribute.g
    yield from attribute.graphs
