"""Load the models a job names, without unpickling anything a user wrote.

Four kinds of file arrive from users, and each is read so that no Python object of
their choosing is ever built:

- safetensors weights for a built-in family: ``safetensors.torch.load_file`` (raw
  tensors, no pickle), checked key by key and shape by shape before
  ``load_state_dict(strict=True)``;
- TorchScript archives, torch.export programs (``.pt2``) and ONNX models are code. Each
  is first read as data against the op allow-list (:mod:`modelcheck`): TorchScript
  runs a module's ``__setstate__`` inside ``torch.jit.load`` and hides forked functions
  from a walk of its graph; ``torch.export.load`` unpickles pickled payloads, loads
  AOTInductor libraries and evaluates symbolic sizes with ``eval``. Only then is it
  loaded: ``torch.jit.load`` (and its forward graph, forked functions included, walked
  for file operators again), ``torch.export.load`` (and every call in the graph checked
  to be a registered operator, :func:`check_exported_graph`), or onnxruntime.

In the service these loaders run only inside the model sandbox
(:mod:`workers.models.sandbox`); :func:`load_model` hands back a
:class:`~workers.models.sandbox.runner.SandboxedModel` there instead of loading.

Every failure is an :class:`~jobstate.errors.InvalidInputError` whose ``field``
names the reference (``"model.weights"``, ``"model.torchscript"``, ...).
"""

from __future__ import annotations

import operator
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from api_schemas.models import (
    CNNModel,
    ExportedModel,
    MLPModel,
    ModelSpec,
    OnnxModel,
    TorchScriptModel,
)
from jobstate.errors import InvalidInputError
from workers.models.families import build_family_model
from workers.models.sandbox.runner import ModelFormat, SandboxedModel, SandboxPolicy

__all__ = [
    "FILE_ACCESS_OPERATORS",
    "LoadedModel",
    "check_exported_graph",
    "check_pt2_archive",
    "load_exported",
    "load_model",
    "load_torchscript",
    "load_weights",
]

ModelKind = Literal["eager", "torchscript", "exported", "onnx"]
FILE_ACCESS_OPERATORS = frozenset({"aten::from_file", "aten::save", "debugprims::load_tensor"})
_ERROR_CHARS = 300


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to embed with, and how its layers can be read.

    Attributes
    ----------
    kind : {"eager", "torchscript", "exported", "onnx"}
        ``"eager"`` and ``"exported"`` (unflattened) are ``nn.Module`` trees read with
        forward hooks; ``"torchscript"`` and ``"onnx"`` are read by adding outputs to
        their graphs.
    module : torch.nn.Module or OnnxProgram
        The model (for ``"exported"``, ``torch.export.unflatten`` of the program; for
        ``"onnx"``, a :class:`~workers.models.onnx_model.OnnxProgram`).
    module_types : dict of str to str
        Class name of each named submodule (``"Linear"``, ``"Conv2d"``), used to find
        the last linear layer for ``"penultimate"``.
    """

    kind: ModelKind
    module: Any
    module_types: dict[str, str] = field(default_factory=dict)


def _short(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= _ERROR_CHARS else text[: _ERROR_CHARS - 3] + "..."


# --------------------------------------------------------------------------- weights


def load_weights(
    model: nn.Module, path: str | os.PathLike[str], *, field: str = "model.weights"
) -> None:
    """Load a safetensors state dict into ``model``, refusing anything that does not fit.

    Parameters
    ----------
    model : torch.nn.Module
        The architecture the weights are for.
    path : str or os.PathLike
        A safetensors file.
    field : str
        Dotted name of the reference, for error messages.

    Raises
    ------
    InvalidInputError
        When the file is not safetensors, or its tensors do not match the model's
        state dict exactly: the message lists missing and unexpected keys and the
        first shape mismatches.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(os.fspath(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise InvalidInputError(
            field, f"not a readable safetensors file: {_short(error)}"
        ) from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{name}: file {tuple(state[name].shape)}, model {tuple(tensor.shape)}"
        for name, tensor in expected.items()
        if name in state and state[name].shape != tensor.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(
            f"unexpected {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}"
        )
    if mismatched:
        problems.append(f"shape mismatch {'; '.join(mismatched[:4])}")
    if problems:
        raise InvalidInputError(
            field, "the weights do not fit the architecture: " + "; ".join(problems)
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise InvalidInputError(field, f"the weights do not fit: {_short(error)}") from None


# --------------------------------------------------------------------------- TorchScript


def _graph_operator_names(graph: torch._C.Graph) -> Iterator[str]:
    for node in graph.nodes():
        yield node.kind()
        for block in node.blocks():
            yield from _graph_operator_names(block)  # type: ignore[arg-type]
        # A forked function's body is a graph attribute of its prim::fork node, not a block.
        for name in node.attributeNames():
            if node.kindOf(name) == "g":
                yield from _graph_operator_names(node.g(name))


def _refuse_unless_allowed(path: str | os.PathLike[str], *, fmt: str, field: str) -> None:
    from modelcheck import ModelRefusedError, check_model_file

    try:
        check_model_file(path, fmt=fmt)
    except ModelRefusedError as error:
        raise InvalidInputError(field, str(error)) from None


def load_torchscript(
    path: str | os.PathLike[str], *, field: str = "model.torchscript"
) -> torch.jit.ScriptModule:
    """Load a TorchScript archive onto the CPU.

    The archive is read as data against the op allow-list first
    (:func:`modelcheck.check_model_file`): ``torch.jit.load`` runs a module's
    ``__setstate__`` before anything else could look at it.

    Raises
    ------
    InvalidInputError
        When the file is refused by the allow-list, is not a TorchScript archive, has no
        ``forward``, or its forward pass (forked functions included) calls an operator
        that reads or writes files.
    """
    _refuse_unless_allowed(path, fmt="torchscript", field=field)
    try:
        with warnings.catch_warnings():
            # TorchScript is deprecated in torch 2.13 but is still how most users ship a
            # whole model; the warning would repeat on every job.
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(os.fspath(path), map_location="cpu")
    except Exception as error:  # torch raises RuntimeError, ValueError, and more
        raise InvalidInputError(
            field, f"not a loadable TorchScript archive (torch.jit.save): {_short(error)}"
        ) from None
    try:
        graph = module.forward.graph.copy()
    except (AttributeError, RuntimeError):
        raise InvalidInputError(field, "the TorchScript module has no forward method") from None
    torch._C._jit_pass_inline(graph)
    refused = sorted(set(_graph_operator_names(graph)) & FILE_ACCESS_OPERATORS)
    if refused:
        raise InvalidInputError(field, f"the model calls operators that touch files: {refused}")
    return module


# --------------------------------------------------------------------------- torch.export


def check_pt2_archive(path: str | os.PathLike[str], *, field: str = "model.exported") -> None:
    """Refuse a ``.pt2`` file that ``torch.export.load`` would unpickle, evaluate or run
    natively, reading it as data (:func:`modelcheck.check_pt2_archive`).

    ``torch.export.load`` unpickles pickled weights, loads AOTInductor libraries, and
    evaluates every symbolic size with ``sympy.sympify`` (that is, ``eval``): the archive
    must hold only a plain program whose nodes call allow-listed operators and whose
    sizes are arithmetic.

    Raises
    ------
    InvalidInputError
        With ``field``, naming what was refused and where.
    """
    _refuse_unless_allowed(path, fmt="pt2", field=field)


def _is_allowed_call(target: object) -> bool:
    if isinstance(target, torch._ops.OpOverload):
        return target._schema.name not in FILE_ACCESS_OPERATORS
    if isinstance(target, torch._ops.HigherOrderOperator):
        return True
    module = getattr(target, "__module__", None)
    if module in ("_operator", "operator"):
        return getattr(operator, getattr(target, "__name__", ""), None) is target
    # Symbolic-shape helpers (torch.sym_max, math.ceil, ...) appear with dynamic shapes.
    symbolic = module == "torch" and getattr(target, "__name__", "").startswith("sym_")
    return module == "math" or symbolic


def check_exported_graph(program: torch.export.ExportedProgram, *, field: str) -> None:
    """Refuse a program whose graph calls anything but registered operators.

    A deserialised graph node may name any callable reachable as an attribute of
    ``torch``, ``math`` or ``operator`` (``torch.os.system`` among them): only torch
    operators, higher-order operators, ``operator`` builtins and symbolic-shape helpers
    are allowed, and no operator that reads or writes files.
    """
    for graph_module in program.graph_module.modules():
        graph = getattr(graph_module, "graph", None)
        if graph is None:
            continue
        for node in graph.nodes:
            if node.op == "call_function" and not _is_allowed_call(node.target):
                raise InvalidInputError(
                    field,
                    f"the program calls {getattr(node.target, '__name__', node.target)!r}, "
                    "which is not a torch operator; only exported torch operators are run",
                )


def _exported_module_types(program: torch.export.ExportedProgram) -> dict[str, str]:
    types: dict[str, str] = {}
    for node in program.graph.nodes:
        for path, module_type in (node.meta.get("nn_module_stack") or {}).values():
            name = path.removeprefix("L['self'].")
            type_name = module_type if isinstance(module_type, str) else module_type.__name__
            types.setdefault(name, type_name.rsplit(".", 1)[-1])
    return types


def load_exported(
    path: str | os.PathLike[str], *, field: str = "model.exported"
) -> torch.export.ExportedProgram:
    """Load a torch.export program after :func:`check_pt2_archive`, then check its graph."""
    check_pt2_archive(path, field=field)
    try:
        with open(path, "rb") as stream, warnings.catch_warnings():
            # torch's own deprecated treespec check, raised while it reads the program.
            warnings.simplefilter("ignore", FutureWarning)
            program = torch.export.load(stream)
    except Exception as error:  # deserialisation raises many types
        raise InvalidInputError(
            field, f"not a loadable torch.export program: {_short(error)}"
        ) from None
    check_exported_graph(program, field=field)
    return program


def exported_model(program: torch.export.ExportedProgram, *, field: str) -> LoadedModel:
    """Unflatten a loaded torch.export program into a module tree for extraction."""
    try:
        with warnings.catch_warnings():
            # torch's own deprecated treespec check, raised while copying the program.
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.export.unflatten(program)
    except Exception as error:
        raise InvalidInputError(
            field, f"cannot restore the program's module tree: {_short(error)}"
        ) from None
    return LoadedModel(kind="exported", module=module, module_types=_exported_module_types(program))


# --------------------------------------------------------------------------- any model


def eager_model(module: nn.Module) -> LoadedModel:
    """Wrap a Python ``nn.Module`` (a built-in family) for extraction."""
    return LoadedModel(
        kind="eager",
        module=module,
        module_types={name: type(sub).__name__ for name, sub in module.named_modules() if name},
    )


def torchscript_model(module: torch.jit.ScriptModule) -> LoadedModel:
    """Wrap a loaded TorchScript module for extraction."""
    return LoadedModel(
        kind="torchscript",
        module=module,
        module_types={
            name: getattr(sub, "original_name", type(sub).__name__)
            for name, sub in module.named_modules()
            if name
        },
    )


def onnx_model(
    path: str | os.PathLike[str], *, field: str, threads: int | None = None
) -> LoadedModel:
    """An ONNX model, checked against the allow-list, for extraction with onnxruntime."""
    from workers.models.onnx_model import load_onnx

    return LoadedModel(kind="onnx", module=load_onnx(path, field=field, threads=threads))


def _uploaded_model_file(spec: ModelSpec) -> tuple[str, ModelFormat, str] | None:
    """(reference key, file format, upload id) of a model that is uploaded code."""
    if isinstance(spec, TorchScriptModel):
        return "torchscript", "torchscript", spec.torchscript.dataset
    if isinstance(spec, ExportedModel):
        return "exported", "pt2", spec.exported.dataset
    if isinstance(spec, OnnxModel):
        return "onnx", "onnx", spec.onnx.dataset
    return None


def load_model(
    spec: ModelSpec,
    *,
    locate_upload: Callable[[str], Path],
    input_shape: Sequence[int],
    n_classes: int,
    field: str = "model",
    sandbox: SandboxPolicy | None = None,
) -> LoadedModel | SandboxedModel:
    """The model a :data:`~api_schemas.models.ModelSpec` names, on the CPU, in eval mode.

    Parameters
    ----------
    spec : ModelSpec
    locate_upload : callable
        Maps an uploaded dataset id to the path of its file.
    input_shape : sequence of int
        Shape of one input point (sizes a built-in family).
    n_classes : int
        Number of classes (sizes a built-in family's classifier).
    field : str
        Dotted name of the reference, for error messages.
    sandbox : SandboxPolicy, optional
        When given (the service always gives one), an uploaded model (TorchScript,
        torch.export, ONNX) is not loaded here: it comes back as a
        :class:`~workers.models.sandbox.runner.SandboxedModel`, loaded and run only in a
        confined child process. Without one it is loaded into this process, after the
        same allow-list check: for a user's own models on their own machine.

    Returns
    -------
    LoadedModel or SandboxedModel

    Raises
    ------
    InvalidInputError
        For a family without weights (an embedding of untrained weights is rarely what
        was meant; a study trains its own), and every loading failure above.
    """
    if isinstance(spec, MLPModel | CNNModel):
        if spec.weights is None:
            raise InvalidInputError(
                f"{field}.weights",
                f"a {spec.family} to embed with needs trained weights (a safetensors upload); "
                "to train models, submit a study",
            )
        module = build_family_model(spec, input_shape=input_shape, n_classes=n_classes, field=field)
        load_weights(module, locate_upload(spec.weights.dataset), field=f"{field}.weights")
        return eager_model(module.eval())
    uploaded = _uploaded_model_file(spec)
    if uploaded is not None and sandbox is not None:
        key, model_format, upload_id = uploaded
        return SandboxedModel(
            format=model_format,
            path=locate_upload(upload_id),
            policy=sandbox,
            field=f"{field}.{key}",
        )
    if isinstance(spec, TorchScriptModel):
        module = load_torchscript(
            locate_upload(spec.torchscript.dataset), field=f"{field}.torchscript"
        )
        return torchscript_model(module.eval())
    if isinstance(spec, ExportedModel):
        program = load_exported(locate_upload(spec.exported.dataset), field=f"{field}.exported")
        return exported_model(program, field=f"{field}.exported")
    if isinstance(spec, OnnxModel):
        return onnx_model(locate_upload(spec.onnx.dataset), field=f"{field}.onnx")
    raise InvalidInputError(field, f"unknown model reference {type(spec).__name__}")
