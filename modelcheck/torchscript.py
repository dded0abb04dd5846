"""Check a TorchScript archive (``torch.jit.save``) before ``torch.jit.load`` runs it.

A TorchScript archive is a zip with one root directory holding the model's code as
TorchScript source (``code/__torch__/**.py``, Python syntax), its attributes pickled
(``data.pkl``, ``constants.pkl``, ``*.debug_pkl``) and raw tensor data (``data/N``).
``torch.jit.load`` compiles the code and runs any ``__setstate__`` it defines while
unpickling, so a model is code that runs at load, before any check of its graph.

This check reads the code as text: it parses every ``code/**.py`` with :mod:`ast` and
refuses every call outside :mod:`modelcheck.allowlist`, naming the op and ``file:line``.
What the serialiser writes (see the tests for real archives):

- aten operators as ``torch.<op>(...)`` and TorchScript builtins as ``torch.len``,
  ``torch.append``, ``torch.format``; prim operators as ``ops.prim.<op>(...)``;
- the model's own classes and functions by qualified name,
  ``__torch__.torch.nn.functional.relu(...)``, often through a local
  (``_0 = __torch__...; _0(...)``), and submodule calls as ``(lin).forward(x, )``;
- ``torch.jit.fork(f, x)`` as a nested ``def __forked_function():`` passed to a bare
  ``fork(...)``, and ``torch.jit.wait`` as ``torch.wait(fut)``;
- an exported ``__setstate__`` as a method of that name, called at load.

The pickles are scanned with :mod:`pickletools`, never unpickled: they may import only
tensor rebuilders, storages and the classes the code defines.
"""

from __future__ import annotations

import ast
import os
import re

from modelcheck._archive import Archive, open_archive, scan_pickle_globals
from modelcheck._tindex import CodeIndex, index_source
from modelcheck._tsource import check_source
from modelcheck.allowlist import PICKLE_GLOBALS
from modelcheck.errors import ModelRefusedError

__all__ = ["check_torchscript_archive"]

_WHAT = "a TorchScript archive (torch.jit.save)"
_FIX = "save the model with torch.jit.script or torch.jit.trace and torch.jit.save"
_PICKLE_FIX = "save the model with torch.jit.save; its attributes must be tensors and numbers"

# Entries of a TorchScript archive, under its root directory; anything else (mobile
# bytecode, legacy formats) is refused.
_ENTRIES = re.compile(
    r"^(code/[\w./-]+\.py(\.debug_pkl)?"
    r"|data\.pkl|constants\.pkl|traced_inputs\.pkl"
    r"|data/\d+|constants/\d+|traced_inputs/\d+"
    r"|version|\.data/version|byteorder|\.data/serialization_id"
    r"|extra/[^/]+)$"
)
_PICKLES = re.compile(r"^(data|constants|traced_inputs)\.pkl$|\.debug_pkl$")


def check_torchscript_archive(
    path: str | os.PathLike[str],
    *,
    max_entries: int = 10_000,
    max_code_bytes: int = 50 * 2**20,
    max_pickle_bytes: int = 100 * 2**20,
) -> None:
    """Refuse a TorchScript archive whose code or pickles reach beyond tensor operators.

    Imports no torch and unpickles nothing.

    Parameters
    ----------
    path : str or os.PathLike
        The ``torch.jit.save`` archive.
    max_entries : int
        Most zip entries allowed.
    max_code_bytes : int
        Most bytes of code text allowed, all files together.
    max_pickle_bytes : int
        Most bytes of pickles allowed, all together.

    Raises
    ------
    ModelRefusedError
        When the archive is malformed or too large; defines ``__setstate__`` or
        ``__getstate__``; calls an operator, builtin or method outside
        :mod:`modelcheck.allowlist` (``fork``/``wait`` and file operators among them);
        names a custom C++ class or operator namespace; or a pickle imports anything but
        tensors, storages and the archive's own classes. The message names the op and
        ``code/...py:line`` (or the pickle entry and byte).
    """
    archive = open_archive(path, what=_WHAT, max_entries=max_entries, fix=_FIX)
    try:
        _check_entries(archive)
        index = _check_code(archive, max_code_bytes=max_code_bytes)
        _check_pickles(archive, index, max_pickle_bytes=max_pickle_bytes)
    finally:
        archive.close()


def _check_entries(archive: Archive) -> None:
    refused = sorted(entry for entry in archive.entries if not _ENTRIES.match(entry))
    if refused:
        raise ModelRefusedError(
            f"the archive holds entries a TorchScript model does not: {refused[:4]}",
            op=refused[0],
            location=refused[0],
            fix=_FIX,
        )
    if "data.pkl" not in archive.entries or not any(
        entry.startswith("code/") and entry.endswith(".py") for entry in archive.entries
    ):
        raise ModelRefusedError(f"the file is not {_WHAT}: it has no data.pkl or code", fix=_FIX)


def _check_code(archive: Archive, *, max_code_bytes: int) -> CodeIndex:
    code = sorted(e for e in archive.entries if e.startswith("code/") and e.endswith(".py"))
    total = sum(archive.entries[entry].file_size for entry in code)
    if total > max_code_bytes:
        raise ModelRefusedError(
            f"the archive holds {total} bytes of code, more than the {max_code_bytes} allowed",
            fix="upload a smaller model",
        )
    trees: dict[str, ast.Module] = {}
    for entry in code:
        text = archive.read(entry, limit=max_code_bytes, what="code file")
        trees[entry] = _parse(entry, text)
    index = index_source(trees)
    for entry, tree in trees.items():
        check_source(entry, tree, index)
    return index


def _parse(entry: str, data: bytes) -> ast.Module:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ModelRefusedError(
            "a code file is not UTF-8 text", op=entry, location=entry, fix=_FIX
        ) from None
    try:
        return ast.parse(text, filename=entry)
    except SyntaxError as error:
        raise ModelRefusedError(
            f"a code file is not valid TorchScript source ({error.msg})",
            op=entry,
            location=f"{entry}:{error.lineno}",
            fix=_FIX,
        ) from None
    except (ValueError, RecursionError, MemoryError):
        # Null bytes, or nesting too deep for the parser.
        raise ModelRefusedError(
            "a code file cannot be parsed", op=entry, location=entry, fix=_FIX
        ) from None


def _check_pickles(archive: Archive, index: CodeIndex, *, max_pickle_bytes: int) -> None:
    pickles = sorted(entry for entry in archive.entries if _PICKLES.search(entry))
    total = sum(archive.entries[entry].file_size for entry in pickles)
    if total > max_pickle_bytes:
        raise ModelRefusedError(
            f"the archive holds {total} bytes of pickles, more than the {max_pickle_bytes} allowed",
            fix="upload a smaller model",
        )

    def allowed(qualified: str) -> bool:
        return qualified in PICKLE_GLOBALS or qualified in index.classes

    for entry in pickles:
        data = archive.read(entry, limit=max_pickle_bytes, what="pickle")
        scan_pickle_globals(data, entry=entry, allowed=allowed, fix=_PICKLE_FIX)
