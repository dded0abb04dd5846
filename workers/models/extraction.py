"""Read a model's hidden representations, layer by layer, in batches.

Layers are named as ``named_modules`` names them (``"hidden2"``, ``"layer4.1"``), or
selected as a group:

- ``"all"``: the output of every direct child of the model that runs in its forward
  pass, in the order the children are first called. Direct children, not leaves: for a
  torchvision ResNet that is ``conv1 ... layer4, avgpool, fc``, for an ``nn.Sequential``
  (whose children are its leaves) every layer, and for the built-in families every
  block and the logits. A module called twice in one pass gives its last call's value.
- ``"penultimate"``: the input of the last ``Linear`` module called (the features the
  classifier reads), or, in a model without one, the input of the last direct child.

Layers come back in depth order (the order of their first call), whatever order they
were asked for in. Outputs with more than two dimensions are taken as convolutional maps
(N x C x ...) and reduced per ``pooling``: ``"avg"`` (global average over the dimensions
after C), ``"max"``, or ``"flatten"``.

Eager models and unflattened torch.export programs are read with forward hooks; ONNX
models (:mod:`workers.models.onnx_model`) name their layers by value names instead.
TorchScript modules take no Python hooks, so their forward graph is copied with the
tapped values added to its outputs; only direct children can be tapped that way, and
only where they are called outside loops and branches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch
from torch import nn

from jobstate.errors import InvalidInputError
from jobstate.memory_budget import is_allocation_failure
from workers.models.loading import LoadedModel

__all__ = [
    "LayerTap",
    "extract_embeddings",
    "pool_features",
    "resolve_device",
    "resolve_layers",
]

PENULTIMATE = "penultimate"
_LISTED_NAMES = 40


@dataclass(frozen=True)
class LayerTap:
    """One value to read from a forward pass.

    Attributes
    ----------
    name : str
        The embedding set's name: the module name, or ``"penultimate"``.
    module : str
        The module whose input or output is read.
    where : {"output", "input"}
        Its output, or its first positional input.
    order : int
        Position of the module's first call in the forward pass (depth order).
    value : str or None
        For an ONNX model, the value read when it is not ``name`` (``"penultimate"``).
    """

    name: str
    module: str
    where: Literal["output", "input"]
    order: int
    value: str | None = None


def resolve_device(requested: str) -> str:
    """``"auto"`` is the GPU when there is one; ``"cuda"`` without one falls back to CPU."""
    if requested in ("auto", "cuda"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def pool_features(values: torch.Tensor, *, pooling: str) -> torch.Tensor:
    """A layer's value as one float vector per point, shape (N, d).

    Parameters
    ----------
    values : torch.Tensor
        Shape (N,), (N, d) or (N, C, ...) for convolutional maps.
    pooling : {"avg", "flatten", "max"}
        How maps are reduced: mean or max over the dimensions after C, or flattened.
    """
    values = values.detach().float()
    if values.ndim == 1:
        return values[:, None]
    if values.ndim == 2:
        return values
    if pooling == "flatten":
        return values.flatten(1)
    spatial = tuple(range(2, values.ndim))
    if pooling == "avg":
        return values.mean(dim=spatial)
    if pooling == "max":
        return values.amax(dim=spatial)
    raise InvalidInputError("pooling", f"pooling is 'avg', 'flatten' or 'max', not {pooling!r}")


# --------------------------------------------------------------------------- call order


def _hook_call_order(module: nn.Module, sample: torch.Tensor) -> tuple[list[str], list[str]]:
    """Module names in the order of their first and of their last call, from one pass."""
    calls: list[str] = []
    handles = [
        sub.register_forward_pre_hook(lambda _module, _inputs, name=name: calls.append(name))
        for name, sub in module.named_modules()
        if name
    ]
    try:
        with torch.inference_mode():
            module(sample)
    finally:
        for handle in handles:
            handle.remove()
    first = list(dict.fromkeys(calls))
    last = list(dict.fromkeys(reversed(calls)))[::-1]
    return first, last


def _script_child_calls(graph: torch._C.Graph) -> list[tuple[str, torch._C.Node]]:
    """``(child name, call node)`` for each ``self.child(...)`` in a forward graph's top block."""
    self_value = next(iter(graph.inputs()))
    calls = []
    for node in graph.nodes():
        if node.kind() != "prim::CallMethod" or node.s("name") != "forward":
            continue
        owner = next(iter(node.inputs())).node()
        if (
            owner.kind() == "prim::GetAttr"
            and next(iter(owner.inputs())).unique() == self_value.unique()
        ):
            calls.append((owner.s("name"), node))
    return calls


def _call_order(model: LoadedModel, sample: torch.Tensor) -> tuple[list[str], list[str]]:
    if model.kind == "torchscript":
        names = [name for name, _ in _script_child_calls(model.module.forward.graph)]
        return list(dict.fromkeys(names)), list(dict.fromkeys(reversed(names)))[::-1]
    return _hook_call_order(model.module, sample)


def _direct_children(called: Sequence[str]) -> list[str]:
    return [name for name in called if "." not in name]


def resolve_layers(
    model: LoadedModel,
    layers: str | Sequence[str],
    *,
    sample: torch.Tensor,
    field: str = "layers",
) -> list[LayerTap]:
    """The values to read for a layer selection, in depth order.

    Parameters
    ----------
    model : LoadedModel
    layers : "all", "penultimate" or sequence of str
    sample : torch.Tensor
        A few input points, run once to see which modules are called and in what order
        (not used for TorchScript, whose order is read from its graph).
    field : str
        Dotted name of the selection, for error messages.

    Returns
    -------
    list of LayerTap

    Raises
    ------
    InvalidInputError
        For a name that is not a module of the model (the message lists the names that
        are), a module not called in the forward pass, or a model with nothing to read.
    """
    if model.kind == "onnx":
        from workers.models.onnx_model import resolve_onnx_layers

        return resolve_onnx_layers(model.module, layers, field=field)
    first_calls, last_calls = _call_order(model, sample)
    order = {name: position for position, name in enumerate(first_calls)}
    if layers == "all":
        children = _direct_children(first_calls)
        if not children:
            raise InvalidInputError(field, "the model calls no child module; name layers instead")
        return [LayerTap(name, name, "output", order[name]) for name in children]
    if layers == PENULTIMATE:
        linears = [name for name in last_calls if model.module_types.get(name) == "Linear"]
        if model.kind == "torchscript" or not linears:
            linears = [
                name
                for name in _direct_children(last_calls)
                if model.module_types.get(name) == "Linear"
            ]
        candidates = linears or _direct_children(last_calls)
        if not candidates:
            raise InvalidInputError(field, "the model has no layer whose input could be read")
        module = candidates[-1]
        return [LayerTap(PENULTIMATE, module, "input", order[module])]
    available = (
        _direct_children(first_calls)
        if model.kind == "torchscript"
        else [name for name, _ in model.module.named_modules() if name]
    )
    taps = []
    for name in layers:
        if name not in available:
            listed = ", ".join(available[:_LISTED_NAMES])
            more = (
                f" (and {len(available) - _LISTED_NAMES} more)"
                if len(available) > _LISTED_NAMES
                else ""
            )
            hint = (
                "; a TorchScript model exposes only the direct children its forward calls"
                if model.kind == "torchscript"
                else ""
            )
            raise InvalidInputError(
                field, f"no layer named {name!r}; the model's layers are: {listed}{more}{hint}"
            )
        if name not in order:
            raise InvalidInputError(field, f"layer {name!r} is not called in the forward pass")
        taps.append(LayerTap(name, name, "output", order[name]))
    return sorted(taps, key=lambda tap: tap.order)


# --------------------------------------------------------------------------- reading


class _Reader(Protocol):
    def __call__(self, batch: torch.Tensor) -> list[object]: ...

    def close(self) -> None: ...


class _HookReader:
    """Reads tapped values of an ``nn.Module`` with forward hooks."""

    def __init__(self, module: nn.Module, taps: Sequence[LayerTap]) -> None:
        self._module = module
        self._values: dict[int, object] = {}
        modules = dict(module.named_modules())
        self._handles = [
            modules[tap.module].register_forward_hook(self._recorder(index, tap.where))
            for index, tap in enumerate(taps)
        ]

    def _recorder(self, index: int, where: str) -> Callable[..., None]:
        def record(_module: nn.Module, inputs: tuple, output: object) -> None:
            self._values[index] = (inputs[0] if inputs else None) if where == "input" else output

        return record

    def __call__(self, batch: torch.Tensor) -> list[object]:
        self._values.clear()
        self._module(batch)
        return [self._values.get(index) for index in range(len(self._handles))]

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


class _ScriptReader:
    """Reads tapped values of a TorchScript module through extra graph outputs."""

    def __init__(self, module: torch.jit.ScriptModule, taps: Sequence[LayerTap]) -> None:
        graph = module.forward.graph.copy()
        last_calls = dict(_script_child_calls(graph))  # a later call of a child replaces it
        tapped = []
        for tap in taps:
            node = last_calls[tap.module]
            tapped.append(list(node.inputs())[1] if tap.where == "input" else node.output())
        returned = list(graph.return_node().inputs())
        bundle = graph.create("prim::TupleConstruct", returned + tapped)
        bundle.insertBefore(graph.return_node())
        bundle.output().setType(torch._C.TupleType([value.type() for value in returned + tapped]))
        for position in reversed(range(len(returned))):
            graph.eraseOutput(position)
        graph.registerOutput(bundle.output())
        self._n_returned = len(returned)
        self._owner = module._c
        self._function = torch._C._create_function_from_graph("forward_with_taps", graph)

    def __call__(self, batch: torch.Tensor) -> list[object]:
        values = self._function(self._owner, batch)
        return list(values[self._n_returned :])

    def close(self) -> None:
        pass


def _as_features(
    value: object, tap: LayerTap, *, pooling: str, n_points: int, field: str
) -> np.ndarray:
    what = "input" if tap.where == "input" else "output"
    if value is None:
        raise InvalidInputError(
            field, f"layer {tap.module!r} was not called for every batch (a branch?)"
        )
    if not isinstance(value, torch.Tensor):
        raise InvalidInputError(
            field,
            f"the {what} of layer {tap.module!r} is a {type(value).__name__}, not a tensor; "
            "choose a submodule that returns one",
        )
    if value.ndim == 0 or value.shape[0] != n_points:
        raise InvalidInputError(
            field,
            f"the {what} of layer {tap.module!r} has shape {tuple(value.shape)}, which does "
            f"not hold one row per input point ({n_points})",
        )
    return pool_features(value, pooling=pooling).cpu().numpy()


def _reader(model: LoadedModel, module: object, taps: Sequence[LayerTap]) -> _Reader:
    if model.kind == "onnx":
        from workers.models.onnx_model import OnnxReader

        return OnnxReader(module, taps)  # type: ignore[arg-type]
    if model.kind == "torchscript":
        return _ScriptReader(module, taps)  # type: ignore[arg-type]
    return _HookReader(module, taps)  # type: ignore[arg-type]


def extract_embeddings(
    model: LoadedModel,
    inputs: np.ndarray,
    *,
    layers: str | Sequence[str],
    pooling: str = "avg",
    batch_size: int = 256,
    device: str = "cpu",
    progress: Callable[[float], None] | None = None,
    field: str = "layers",
) -> list[tuple[LayerTap, np.ndarray]]:
    """Embeddings of ``inputs`` at each selected layer, in depth order.

    Parameters
    ----------
    model : LoadedModel
        Moved to ``device``; run in inference mode (a built-in family should already
        be in eval mode; TorchScript and exported programs run as they were saved).
    inputs : numpy.ndarray
        float32, shape (N, ...) as the model expects.
    layers : "all", "penultimate" or sequence of str
        See the module docstring.
    pooling : {"avg", "flatten", "max"}
        Reduction of convolutional maps.
    batch_size : int
        Points per forward pass.
    device : {"cpu", "cuda", "auto"}
        Where to run.
    progress : callable, optional
        ``progress(fraction)`` after each batch; may raise to cancel.
    field : str
        Dotted name of the selection, for error messages.

    Returns
    -------
    list of (LayerTap, numpy.ndarray)
        One float32 array of shape (N, d) per tap.

    Raises
    ------
    InvalidInputError
        For an unknown layer (the message lists the available ones), a layer whose value
        is not a tensor with one row per point, or a model that fails on the inputs.
    """
    device = "cpu" if model.kind == "onnx" else resolve_device(device)
    module = model.module if model.kind == "onnx" else model.module.to(device)
    n_points = int(inputs.shape[0])
    if n_points == 0:
        raise InvalidInputError("dataset", "there are no points to embed")
    batch_size = max(1, int(batch_size))

    def batch_at(start: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(inputs[start : start + batch_size])).to(device)

    try:
        taps = resolve_layers(model, layers, sample=batch_at(0), field=field)
    except (InvalidInputError, MemoryError):
        raise
    except Exception as error:
        raise _model_failure(error, inputs) from None
    reader = _reader(model, module, taps)
    blocks: list[list[np.ndarray]] = [[] for _ in taps]
    try:
        with torch.inference_mode():
            for start in range(0, n_points, batch_size):
                batch = batch_at(start)
                try:
                    values = reader(batch)
                except MemoryError:
                    raise
                except Exception as error:
                    raise _model_failure(error, inputs) from None
                for index, (tap, value) in enumerate(zip(taps, values, strict=True)):
                    blocks[index].append(
                        _as_features(
                            value, tap, pooling=pooling, n_points=batch.shape[0], field=field
                        )
                    )
                if progress is not None:
                    progress(min(1.0, (start + batch.shape[0]) / n_points))
    finally:
        reader.close()
    return [
        (tap, np.ascontiguousarray(np.concatenate(parts), dtype=np.float32))
        for tap, parts in zip(taps, blocks, strict=True)
    ]


def _model_failure(error: Exception, inputs: np.ndarray) -> Exception:
    """The error to raise for a model that failed: a MemoryError when it ran out of
    memory (torch and onnxruntime raise RuntimeErrors), else an InvalidInputError."""
    text = " ".join(str(error).split())
    if is_allocation_failure(error):
        return MemoryError(f"the model could not allocate memory: {text[-300:]}")
    message = text[:300] or type(error).__name__
    return InvalidInputError(
        "model",
        f"the model failed on inputs of shape {tuple(inputs.shape[1:])} per point: {message}",
    )
