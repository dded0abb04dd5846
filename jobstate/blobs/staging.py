"""A file being written into the local staging area, hashed and counted as it grows.

Every blob store stages locally: the bytes are hashed while written, and only then does
the blob get its content address (a rename on disk, or an upload to an object store).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO

READ_CHUNK = 1 << 20


class StagedBlob:
    """A file being written into the staging area, hashed and counted as it grows."""

    def __init__(self, path: Path, file: BinaryIO) -> None:
        self.path = path
        self.file = file
        self.size_bytes = 0
        self._hash = hashlib.sha256()
        self._sha256: str | None = None
        self.committed = False
        # An object store's copy under a temporary key (`BlobStore.upload`), and how to
        # delete it if the blob is never committed.
        self.uploaded_key: str | None = None
        self.forget_upload: Callable[[str], None] | None = None

    def write(self, chunk: bytes) -> None:
        self.file.write(chunk)
        self._hash.update(chunk)
        self.size_bytes += len(chunk)

    def finish_writing(self, *, rehash: bool = False) -> str:
        """Flush to disk and return the sha256; `rehash` for writers that seek."""
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        if rehash:
            self._hash = hashlib.sha256()
            self.size_bytes = 0
            with self.path.open("rb") as written:
                while chunk := written.read(READ_CHUNK):
                    self._hash.update(chunk)
                    self.size_bytes += len(chunk)
        self._sha256 = self._hash.hexdigest()
        return self._sha256

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            raise RuntimeError("finish_writing() first")
        return self._sha256

    def discard(self) -> None:
        """Close and delete the staging file (and any temporary upload) unless committed."""
        if not self.file.closed:
            self.file.close()
        if not self.committed:
            with suppress(FileNotFoundError):
                self.path.unlink()
            if self.uploaded_key is not None and self.forget_upload is not None:
                # Best effort: a leftover is swept by age (`sweep_staging`).
                with suppress(Exception):
                    self.forget_upload(self.uploaded_key)
                self.uploaded_key = None
