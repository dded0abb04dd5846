"""Zip archives and pickles, read without trusting them and without unpickling."""

from __future__ import annotations

import io
import os
import pickletools
import zipfile
from collections.abc import Callable
from dataclasses import dataclass

from modelcheck.errors import ModelRefusedError

__all__ = ["Archive", "open_archive", "scan_pickle_globals"]

_LOCAL_HEADER = b"PK\x03\x04"

# Opcodes that leave the two topmost stack items as they were, or push a string: the
# only ones between the pushes of a module and a name and the STACK_GLOBAL that reads
# them which still let us say what it imports.
_STRING_PUSHES = frozenset(
    {
        "STRING",
        "BINSTRING",
        "SHORT_BINSTRING",
        "UNICODE",
        "SHORT_BINUNICODE",
        "BINUNICODE",
        "BINUNICODE8",
    }
)
_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_MEMO_GETS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_NEUTRAL = frozenset({"PROTO", "FRAME"})


@dataclass
class Archive:
    """An open zip archive whose entries all lie under one root directory.

    Attributes
    ----------
    zip : zipfile.ZipFile
    root : str
        The root directory (``"model"`` for ``model/data.pkl``).
    entries : dict of str to zipfile.ZipInfo
        Each file by its name under the root (``"data.pkl"``).
    """

    zip: zipfile.ZipFile
    root: str
    entries: dict[str, zipfile.ZipInfo]

    def read(self, entry: str, *, limit: int, what: str) -> bytes:
        """The bytes of ``entry``, refusing one declared larger than ``limit``."""
        info = self.entries[entry]
        if info.file_size > limit:
            raise ModelRefusedError(
                f"{what} {entry} holds {info.file_size} bytes, more than the {limit} allowed",
                op=entry,
                location=entry,
                fix="upload a smaller model",
            )
        try:
            # zipfile stops at the declared size, so a lying header cannot inflate this.
            return self.zip.read(info)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
            raise ModelRefusedError(
                f"entry {entry} cannot be read ({error})", op=entry, location=entry
            ) from None

    def close(self) -> None:
        """Close the zip file."""
        self.zip.close()


def open_archive(
    source: str | os.PathLike[str] | bytes, *, what: str, max_entries: int, fix: str
) -> Archive:
    """Open a zip archive as torch writes them, refusing anything ambiguous.

    Refused: a file that does not begin with a zip entry (data before it could be read
    differently by torch's own zip reader), an archive comment, more than
    ``max_entries`` entries, duplicate names (torch and Python may read different
    ones), absolute or ``..`` paths, and files outside a single root directory.

    Parameters
    ----------
    source : str, os.PathLike or bytes
        A path, or the bytes of an archive nested in another.
    what : str
        What the archive should be, for messages (``"a TorchScript archive"``).
    max_entries : int
    fix : str
        How to make a valid one, for messages.

    Returns
    -------
    Archive
    """
    try:
        if isinstance(source, bytes):
            head, stream = source[:4], io.BytesIO(source)
            archive = zipfile.ZipFile(stream)
        else:
            with open(source, "rb") as handle:
                head = handle.read(4)
            archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        raise ModelRefusedError(f"the file is not {what} ({error})", fix=fix) from None
    try:
        return _index(archive, head, what=what, max_entries=max_entries, fix=fix)
    except BaseException:
        archive.close()
        raise


def _index(
    archive: zipfile.ZipFile, head: bytes, *, what: str, max_entries: int, fix: str
) -> Archive:
    infos = archive.infolist()
    if head != _LOCAL_HEADER or archive.comment or (infos and infos[0].header_offset != 0):
        raise ModelRefusedError(
            f"the file is not {what}: it holds data before its first zip entry or a comment",
            fix=fix,
        )
    if len(infos) > max_entries:
        raise ModelRefusedError(
            f"the archive holds {len(infos)} entries, more than the {max_entries} allowed",
            fix="upload a smaller model",
        )
    names = [info.filename for info in infos]
    if len(set(names)) != len(names):
        duplicate = next(name for name in names if names.count(name) > 1)
        raise ModelRefusedError(
            f"the archive holds two entries named {duplicate}", op=duplicate, fix=fix
        )
    files = [info for info in infos if not info.is_dir()]
    roots = {info.filename.split("/", 1)[0] for info in files}
    if len(roots) != 1 or any("/" not in info.filename for info in files):
        raise ModelRefusedError(
            f"the file is not {what}: its files must lie under one root directory", fix=fix
        )
    root = roots.pop()
    entries: dict[str, zipfile.ZipInfo] = {}
    for info in files:
        name = info.filename[len(root) + 1 :]
        parts = name.split("/")
        if info.filename.startswith("/") or "\\" in name or ".." in parts or "" in parts:
            raise ModelRefusedError(
                f"the archive holds an entry with an unsafe path: {info.filename!r}",
                op=info.filename,
                fix=fix,
            )
        entries[name] = info
    return Archive(zip=archive, root=root, entries=entries)


def scan_pickle_globals(
    data: bytes, *, entry: str, allowed: Callable[[str], bool], fix: str
) -> None:
    """Refuse a pickle that imports anything ``allowed`` rejects, without unpickling it.

    Every import (``GLOBAL``, ``STACK_GLOBAL``, ``INST``) is resolved to
    ``"module.name"`` from the opcodes alone; a ``STACK_GLOBAL`` whose strings cannot be
    followed (built by anything but string pushes and memo reads) is refused, and so
    are the extension-registry opcodes, which import by number.

    Parameters
    ----------
    data : bytes
    entry : str
        The archive entry, for messages.
    allowed : callable
        Takes ``"module.name"``; True when it may be imported.
    fix : str
        What to do instead, for messages.
    """
    # The two topmost stack items, when they are strings we know; None otherwise.
    top: list[str | None] = [None, None]
    memo: dict[int, str | None] = {}
    try:
        for opcode, arg, position in pickletools.genops(data):
            name = opcode.name
            where = f"{entry}, byte {position}"
            if name in ("GLOBAL", "INST"):
                module, _, attribute = str(arg).partition(" ")
                _check_global(f"{module}.{attribute}", where, allowed, fix)
                top = [None, None]
            elif name == "STACK_GLOBAL":
                module_name, attribute_name = top
                if module_name is None or attribute_name is None:
                    raise ModelRefusedError(
                        "a pickle imports a name this check cannot follow",
                        op="STACK_GLOBAL",
                        location=where,
                        fix=fix,
                    )
                _check_global(f"{module_name}.{attribute_name}", where, allowed, fix)
                top = [None, None]
            elif name in ("EXT1", "EXT2", "EXT4"):
                raise ModelRefusedError(
                    "a pickle imports through the extension registry",
                    op=name,
                    location=where,
                    fix=fix,
                )
            elif name in _STRING_PUSHES:
                top = [top[1], arg if isinstance(arg, str) else None]
            elif name in _MEMO_GETS:
                top = [top[1], memo.get(int(arg))]  # type: ignore[arg-type]
            elif name in _MEMO_PUTS:
                memo[int(arg)] = top[1]  # type: ignore[arg-type]
            elif name == "MEMOIZE":
                memo[len(memo)] = top[1]
            elif name == "DUP":
                top = [top[1], top[1]]
            elif name not in _NEUTRAL:
                # Anything else may pop, push or reorder: forget what we knew.
                top = [None, None]
    except ModelRefusedError:
        raise
    except Exception as error:  # genops raises ValueError and more on malformed data
        raise ModelRefusedError(
            f"{entry} is not a valid pickle ({type(error).__name__})",
            op=entry,
            location=entry,
            fix=fix,
        ) from None


def _check_global(qualified: str, where: str, allowed: Callable[[str], bool], fix: str) -> None:
    if not allowed(qualified):
        raise ModelRefusedError(
            f"a pickle imports {qualified}, which is not a tensor or a class of the model",
            op=qualified,
            location=where,
            fix=fix,
        )
