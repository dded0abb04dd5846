"""Load the models a job names, without unpickling anything a user wrote.

Three kinds of file arrive from users, and each is read so that no Python object of
their choosing is ever built:

- safetensors weights for a built-in family: ``safetensors.torch.load_file`` (raw
  tensors, no pickle), checked key by key and shape by shape before
  ``load_state_dict(strict=True)``;
- TorchScript archives: ``torch.jit.load``, whose unpickler builds only TorchScript
  types and tensors, never Python objects;
- torch.export programs (``.pt2``): ``torch.export.load`` unpickles pickled weights and
  constants with ``weights_only=False``, loads AOTInductor shared libraries, and
  falls back to a legacy format it unpickles too. So the archive is checked first
  (:func:`check_pt2_archive`): only the entries of a plain program are allowed, no
  entry may be pickled (sample inputs must load with ``weights_only=True``, which
  keeps torch from retrying without it), and after loading every call in the graph
  must be a registered operator (:func:`check_exported_graph`): a deserialised graph
  may otherwise call any attribute reachable from ``torch``, ``math`` or ``operator``.

What a model does when it runs is still the user's code, restricted to torch's
operators; the few operators that touch files are refused. Run workers that execute
uploaded models without secrets or write access beyond their scratch space.

Every failure is an :class:`~workers.geometry.errors.InvalidInputError` whose ``field``
names the reference (``"model.weights"``, ``"model.torchscript"``, ...).
"""

from __future__ import annotations

import io
import json
import operator
import os
import re
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from api_schemas.models import CNNModel, ExportedModel, MLPModel, ModelSpec, TorchScriptModel
from workers.geometry.errors import InvalidInputError
from workers.models.families import build_family_model

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

ModelKind = Literal["eager", "torchscript", "exported"]
FILE_ACCESS_OPERATORS = frozenset({"aten::from_file", "aten::save", "debugprims::load_tensor"})
_ERROR_CHARS = 300

# Entries of a plain torch.export archive, relative to its one root directory. Anything
# else (AOTInductor libraries, ExecuTorch, legacy pickled weights) is refused.
_PT2_ALLOWED_ENTRIES = re.compile(
    r"^(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    r"|models/[^/]+\.json"
    r"|data/weights/[^/]+_weights_config\.json|data/weights/weight_[0-9]+"
    r"|data/constants/[^/]+_constants_config\.json|data/constants/tensor_[0-9]+"
    r"|data/sample_inputs/[^/]+\.pt"
    r"|extra/[^/]+)$"
)
_PT2_PAYLOAD_PREFIXES = {"weights": "weight_", "constants": "tensor_"}


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to embed with, and how its layers can be read.

    Attributes
    ----------
    kind : {"eager", "torchscript", "exported"}
        ``"eager"`` and ``"exported"`` (unflattened) are ``nn.Module`` trees read with
        forward hooks; ``"torchscript"`` is read by adding outputs to its graph.
    module : torch.nn.Module
        The model (for ``"exported"``, ``torch.export.unflatten`` of the program).
    module_types : dict of str to str
        Class name of each named submodule (``"Linear"``, ``"Conv2d"``), used to find
        the last linear layer for ``"penultimate"``.
    """

    kind: ModelKind
    module: nn.Module
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


def load_torchscript(
    path: str | os.PathLike[str], *, field: str = "model.torchscript"
) -> torch.jit.ScriptModule:
    """Load a TorchScript archive onto the CPU.

    Raises
    ------
    InvalidInputError
        When the file is not a TorchScript archive, has no ``forward``, or its forward
        pass calls an operator that reads or writes files.
    """
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


def _pt2_root_and_entries(archive: zipfile.ZipFile, *, field: str) -> tuple[str, list[str]]:
    names = [info.filename for info in archive.infolist() if not info.is_dir()]
    roots = {name.split("/", 1)[0] for name in names}
    if len(roots) != 1 or any("/" not in name for name in names):
        raise InvalidInputError(
            field, "not a torch.export archive: its files must lie under one root directory"
        )
    root = roots.pop()
    return root, [name[len(root) + 1 :] for name in names]


def _check_payload_config(archive: zipfile.ZipFile, entry: str, *, kind: str, field: str) -> None:
    try:
        config = json.loads(archive.read(entry)).get("config", {})
        payloads = list(config.items())
    except (ValueError, AttributeError):
        raise InvalidInputError(field, f"{entry} is not a valid payload config") from None
    prefix = _PT2_PAYLOAD_PREFIXES[kind]
    for name, payload in payloads:
        if not isinstance(payload, dict) or payload.get("use_pickle", True):
            raise InvalidInputError(
                field,
                f"{kind} {name!r} is stored pickled, which is refused; export a model whose "
                "weights and constants are plain tensors",
            )
        if not str(payload.get("path_name", "")).startswith(prefix):
            raise InvalidInputError(
                field, f"{kind} {name!r} is a custom object, which is refused (plain tensors only)"
            )


def check_pt2_archive(path: str | os.PathLike[str], *, field: str = "model.exported") -> None:
    """Refuse a ``.pt2`` file that ``torch.export.load`` would unpickle or run natively.

    Parameters
    ----------
    path : str or os.PathLike
        The archive.
    field : str
        Dotted name of the reference, for error messages.

    Raises
    ------
    InvalidInputError
        When the file is not a zip archive of the current format, holds entries other
        than a plain exported program (AOTInductor or ExecuTorch code, legacy pickled
        weights), or any weight or constant is pickled or a custom object, or its sample
        inputs do not load with ``torch.load(..., weights_only=True)``.
    """
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise InvalidInputError(
            field, f"not a torch.export archive (torch.export.save): {_short(error)}"
        ) from None
    with archive:
        root, entries = _pt2_root_and_entries(archive, field=field)
        refused = [entry for entry in entries if not _PT2_ALLOWED_ENTRIES.match(entry)]
        if refused:
            raise InvalidInputError(
                field,
                f"the archive holds entries other than an exported program: {refused[:4]}; "
                "save it with torch.export.save, without compiled or legacy artifacts",
            )
        if not any(entry.startswith("models/") for entry in entries):
            raise InvalidInputError(field, "the archive holds no exported program")
        for entry in entries:
            full_name = f"{root}/{entry}"
            if entry.endswith("_weights_config.json"):
                _check_payload_config(archive, full_name, kind="weights", field=field)
            elif entry.endswith("_constants_config.json"):
                _check_payload_config(archive, full_name, kind="constants", field=field)
            elif entry.startswith("data/sample_inputs/"):
                try:
                    torch.load(io.BytesIO(archive.read(full_name)), weights_only=True)
                except Exception as error:
                    raise InvalidInputError(
                        field, f"the sample inputs are not plain tensors: {_short(error)}"
                    ) from None


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


def _unflattened(program: torch.export.ExportedProgram, *, field: str) -> LoadedModel:
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


def _torchscript_model(module: torch.jit.ScriptModule) -> LoadedModel:
    return LoadedModel(
        kind="torchscript",
        module=module,
        module_types={
            name: getattr(sub, "original_name", type(sub).__name__)
            for name, sub in module.named_modules()
            if name
        },
    )


def load_model(
    spec: ModelSpec,
    *,
    locate_upload: Callable[[str], Path],
    input_shape: Sequence[int],
    n_classes: int,
    field: str = "model",
) -> LoadedModel:
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

    Returns
    -------
    LoadedModel

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
    if isinstance(spec, TorchScriptModel):
        module = load_torchscript(
            locate_upload(spec.torchscript.dataset), field=f"{field}.torchscript"
        )
        return _torchscript_model(module.eval())
    if isinstance(spec, ExportedModel):
        program = load_exported(locate_upload(spec.exported.dataset), field=f"{field}.exported")
        return _unflattened(program, field=f"{field}.exported")
    raise InvalidInputError(field, f"unknown model reference {type(spec).__name__}")
