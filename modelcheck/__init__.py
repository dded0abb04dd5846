"""Check uploaded model files before anything loads them.

Uploaded models are code: ``torch.jit.load`` runs a TorchScript ``__setstate__`` while
loading, ``torch.export.load`` evaluates symbolic sizes as Python, and any of them may
call operators that read files or start threads. These checks read a model file as
data (zip entries, source text, JSON, protobuf), unpickle nothing, import no torch, and
refuse anything outside :mod:`modelcheck.allowlist` with a
:class:`~modelcheck.errors.ModelRefusedError` naming the op and where it is.

The API process runs :func:`check_model_file` at upload; the worker runs it again inside
its sandbox before loading.
"""

from __future__ import annotations

import os

from modelcheck.errors import ModelRefusedError
from modelcheck.pt2 import check_pt2_archive
from modelcheck.torchscript import check_torchscript_archive

__all__ = [
    "FORMATS",
    "ModelRefusedError",
    "check_model_file",
    "check_onnx_model",
    "check_pt2_archive",
    "check_torchscript_archive",
]

#: The formats :func:`check_model_file` knows.
FORMATS = ("torchscript", "pt2", "onnx")


def check_onnx_model(path: str | os.PathLike[str], *, max_bytes: int = 2**31 - 1) -> None:
    """See :func:`modelcheck.onnx_check.check_onnx_model` (imports ``onnx`` on first use)."""
    from modelcheck.onnx_check import check_onnx_model as check

    check(path, max_bytes=max_bytes)


def check_model_file(path: str | os.PathLike[str], *, fmt: str) -> None:
    """Refuse a model file that reaches beyond tensor operators, before loading it.

    Parameters
    ----------
    path : str or os.PathLike
        The uploaded file.
    fmt : {"torchscript", "pt2", "onnx"}
        What it claims to be: a ``torch.jit.save`` archive, a ``torch.export.save``
        archive, or an ONNX model.

    Raises
    ------
    ModelRefusedError
        When the file is refused; the message names the op and location.
    ValueError
        For an unknown ``fmt``.
    """
    if fmt == "torchscript":
        check_torchscript_archive(path)
    elif fmt == "pt2":
        check_pt2_archive(path)
    elif fmt == "onnx":
        check_onnx_model(path)
    else:
        raise ValueError(f"unknown model format {fmt!r}; expected one of {FORMATS}")
