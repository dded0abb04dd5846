"""Check a torch.export archive (``torch.export.save``, ``.pt2``) before torch loads it.

A ``.pt2`` archive is a zip with one root directory: the program as JSON
(``models/model.json``: ``{"graph_module": {"graph": {"nodes": [...]}, ...}}``), raw
weights and constants (``data/weights/weight_N``, described by
``*_weights_config.json``), sample inputs saved with ``torch.save``
(``data/sample_inputs/model.pt``, itself a zip with a pickle), and version files.

Each graph node names what it calls as a string: ``"torch.ops.aten.linear.default"``,
``"torch.ops.higher_order.cond"`` (its branches are nested graphs, in the node's
``as_graph`` arguments), ``"_operator.mul"`` for symbolic sizes. torch resolves that
string by attribute lookup from ``torch``, ``operator`` or ``math``, so a node could
name ``torch.os.system`` or ``_operator.call``: every target, here and in
``as_operator`` arguments, must be on the allow-list. Symbolic sizes (``expr_str``) and
shape guards (``guards_code``), which torch evaluates as Python, must be plain
arithmetic (:mod:`modelcheck._expressions`).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from modelcheck._archive import Archive, open_archive, scan_pickle_globals
from modelcheck._expressions import check_guard, check_sympy_expression
from modelcheck.allowlist import (
    HIGHER_ORDER_OPS,
    MATH_FUNCTIONS,
    OPERATOR_BUILTINS,
    PICKLE_GLOBALS,
    SYM_FUNCTIONS,
    is_allowed_aten,
    refusal_reason,
)
from modelcheck.errors import ModelRefusedError

__all__ = ["check_pt2_archive"]

_WHAT = "a torch.export archive (torch.export.save)"
_FIX = "export the model with torch.export and save it with torch.export.save"

# Entries of a plain torch.export archive, relative to its one root directory. Anything
# else (AOTInductor libraries, ExecuTorch, legacy pickled weights) is refused.
_ENTRIES = re.compile(
    r"^(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    r"|models/[^/]+\.json"
    r"|data/weights/[^/]+_weights_config\.json|data/weights/weight_[0-9]+"
    r"|data/constants/[^/]+_constants_config\.json|data/constants/tensor_[0-9]+"
    r"|data/sample_inputs/[^/]+\.pt"
    r"|extra/[^/]+)$"
)
_PAYLOAD_PREFIXES = {"weights": "weight_", "constants": "tensor_"}
# Entries of a torch.save archive (the sample inputs).
_SAVED_ENTRIES = re.compile(
    r"^(data\.pkl|data/[0-9]+|byteorder|version|\.data/version|\.format_version"
    r"|\.storage_alignment|\.data/serialization_id)$"
)
_SAMPLE_GLOBALS = frozenset(g for g in PICKLE_GLOBALS if not g.startswith("torch.jit."))
_ATEN_TARGET = re.compile(r"torch\.ops\.aten\.(\w+)\.(\w+)")
_CUSTOM_OBJECTS = ("as_custom_obj", "custom_obj", "custom_obj_values")
_VALUE_MAPS = ("tensor_values", "sym_int_values", "sym_bool_values", "sym_float_values")


def check_pt2_archive(
    path: str | os.PathLike[str],
    *,
    max_entries: int = 10_000,
    max_json_bytes: int = 100 * 2**20,
    max_pickle_bytes: int = 100 * 2**20,
) -> None:
    """Refuse a ``.pt2`` file that torch would unpickle, run natively or evaluate.

    Imports no torch and unpickles nothing.

    Parameters
    ----------
    path : str or os.PathLike
        The archive.
    max_entries : int
        Most zip entries allowed.
    max_json_bytes : int
        Most bytes of program JSON allowed, all files together.
    max_pickle_bytes : int
        Most bytes allowed for the sample inputs.

    Raises
    ------
    ModelRefusedError
        When the file is not a zip archive of the current format; holds entries other
        than a plain exported program (AOTInductor or ExecuTorch code, legacy pickled
        weights); a weight or constant is pickled or a custom object; the sample inputs
        import anything but tensors; or a graph node (nested graphs included) calls
        anything but an allow-listed aten operator, control-flow operator or
        symbolic-size helper, or a size expression or guard is not plain arithmetic.
        The message names the target and the node.
    """
    archive = open_archive(path, what=_WHAT, max_entries=max_entries, fix=_FIX)
    try:
        _check_entries(archive)
        programs = sorted(entry for entry in archive.entries if entry.startswith("models/"))
        total = sum(archive.entries[entry].file_size for entry in programs)
        if total > max_json_bytes:
            raise ModelRefusedError(
                f"the program holds {total} bytes of JSON, more than the {max_json_bytes} allowed",
                fix="upload a smaller model",
            )
        for entry in sorted(archive.entries):
            if entry.endswith("_weights_config.json"):
                _check_payload_config(archive, entry, kind="weights")
            elif entry.endswith("_constants_config.json"):
                _check_payload_config(archive, entry, kind="constants")
            elif entry.startswith("data/sample_inputs/"):
                _check_sample_inputs(archive, entry, limit=max_pickle_bytes)
        for entry in programs:
            _check_program(archive, entry, limit=max_json_bytes)
    finally:
        archive.close()


def _check_entries(archive: Archive) -> None:
    refused = sorted(entry for entry in archive.entries if not _ENTRIES.match(entry))
    if refused:
        raise ModelRefusedError(
            f"the archive holds entries other than an exported program: {refused[:4]}",
            op=refused[0],
            location=refused[0],
            fix="save it with torch.export.save, without compiled or legacy artifacts",
        )
    if not any(entry.startswith("models/") for entry in archive.entries):
        raise ModelRefusedError("the archive holds no exported program", fix=_FIX)


def _check_payload_config(archive: Archive, entry: str, *, kind: str) -> None:
    data = archive.read(entry, limit=16 * 2**20, what="payload config")
    try:
        payloads = list(json.loads(data).get("config", {}).items())
    except (ValueError, AttributeError, RecursionError):
        raise ModelRefusedError(
            f"{entry} is not a valid payload config", op=entry, location=entry, fix=_FIX
        ) from None
    prefix = _PAYLOAD_PREFIXES[kind]
    for name, payload in payloads:
        if not isinstance(payload, dict) or payload.get("use_pickle", True):
            raise ModelRefusedError(
                f"the {kind} entry {name!r} is stored pickled",
                op=str(name),
                location=entry,
                fix="export a model whose weights and constants are plain tensors",
            )
        if not str(payload.get("path_name", "")).startswith(prefix):
            raise ModelRefusedError(
                f"the {kind} entry {name!r} is a custom object",
                op=str(name),
                location=entry,
                fix="export a model whose weights and constants are plain tensors",
            )


def _check_sample_inputs(archive: Archive, entry: str, *, limit: int) -> None:
    data = archive.read(entry, limit=limit, what="sample inputs")
    inner = open_archive(
        data, what="a torch.save archive of sample inputs", max_entries=10_000, fix=_FIX
    )
    try:
        for name in sorted(inner.entries):
            where = f"{entry}:{name}"
            if not _SAVED_ENTRIES.match(name):
                raise ModelRefusedError(
                    "the sample inputs hold an entry torch.save does not write",
                    op=name,
                    location=where,
                    fix=_FIX,
                )
            if name.endswith(".pkl"):
                scan_pickle_globals(
                    inner.read(name, limit=limit, what="pickle"),
                    entry=where,
                    allowed=_SAMPLE_GLOBALS.__contains__,
                    fix="export with sample inputs that are plain tensors",
                )
    finally:
        inner.close()


def _check_program(archive: Archive, entry: str, *, limit: int) -> None:
    data = archive.read(entry, limit=limit, what="program")
    try:
        program = json.loads(data)
    except (ValueError, RecursionError):
        raise ModelRefusedError(
            f"{entry} is not valid JSON", op=entry, location=entry, fix=_FIX
        ) from None
    try:
        _GraphWalker(entry).walk(program, ())
    except RecursionError:
        raise ModelRefusedError(
            f"{entry} is nested too deeply", op=entry, location=entry, fix=_FIX
        ) from None


class _GraphWalker:
    """Visit every value of a program's JSON, checking what torch would run."""

    def __init__(self, entry: str) -> None:
        self.entry = entry

    def location(self, trail: tuple[str, ...]) -> str:
        return ", ".join((self.entry, *trail))

    def walk(self, value: Any, trail: tuple[str, ...]) -> None:
        if isinstance(value, list):
            for item in value:
                self.walk(item, trail)
            return
        if not isinstance(value, dict):
            return
        if "target" in value:
            name = value.get("name")
            trail = (*trail, f"node {name!r}") if isinstance(name, str) else trail
            self.target(value["target"], trail)
        for key, item in value.items():
            inner = trail
            if key in _VALUE_MAPS and isinstance(item, dict):
                # Sizes by value name: name the value in messages.
                for name, described in item.items():
                    self.walk(described, (*trail, f"{key} {name!r}"))
                continue
            if key == "as_operator":
                self.target(item, trail)
            elif key == "expr_str":
                check_sympy_expression(item, location=self.location(trail))
            elif key == "guards_code":
                for guard in item if isinstance(item, list) else [item]:
                    check_guard(guard, location=self.location((*trail, "guards_code")))
            elif key in _CUSTOM_OBJECTS and item:
                raise ModelRefusedError(
                    "the program uses a custom object (a native C++ class)",
                    op=key,
                    location=self.location(trail),
                    fix="export a model whose weights and constants are plain tensors",
                )
            elif key == "as_graph" and isinstance(item, dict):
                inner = (*trail, f"graph {item.get('name')!r}")
            self.walk(item, inner)

    def target(self, target: object, trail: tuple[str, ...]) -> None:
        if isinstance(target, str) and _allowed_target(target):
            return
        text = str(target)[:120]
        parts = re.split(r"[.:#]", text)
        reason = next((r for r in map(refusal_reason, reversed(parts)) if r), None)
        reason = reason or "is not on the allow-list of tensor operators"
        raise ModelRefusedError(
            f"the program calls {text}, which {reason}",
            op=text,
            location=self.location(trail),
            fix=_FIX,
        )


def _allowed_target(target: str) -> bool:
    match = _ATEN_TARGET.fullmatch(target)
    if match:
        return is_allowed_aten(match[1])
    module, _, name = target.rpartition(".")
    if module == "torch.ops.higher_order":
        return name in HIGHER_ORDER_OPS
    if module == "_operator":
        return name in OPERATOR_BUILTINS
    if module == "torch":
        return name in SYM_FUNCTIONS
    if module == "math":
        return name in MATH_FUNCTIONS
    return False
