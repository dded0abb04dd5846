"""Content-addressed blob store on a local (or shared) directory.

    {data_dir}/blobs/{sha[:2]}/{sha}   finished blobs, read-only, named by their sha256
    {data_dir}/tmp/                    files being written; renamed into blobs/ when done

A blob appears under its name only complete (os.replace on the same filesystem is
atomic), so a reader never sees a half-written file. The caller holds
`Store.blob_lock(sha)` while it commits or removes a blob, so that a removal cannot
race a new upload of the same bytes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
_READ_CHUNK = 1 << 20

logger = logging.getLogger(__name__)


class StagedBlob:
    """A file being written into the staging area, hashed and counted as it grows."""

    def __init__(self, path: Path, file: BinaryIO) -> None:
        self.path = path
        self.file = file
        self.size_bytes = 0
        self._hash = hashlib.sha256()
        self._sha256: str | None = None
        self.committed = False

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
                while chunk := written.read(_READ_CHUNK):
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
        if not self.file.closed:
            self.file.close()
        if not self.committed:
            with suppress(FileNotFoundError):
                self.path.unlink()


class BlobStore:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.blob_dir = data_dir / "blobs"
        self.staging_dir = data_dir / "tmp"

    def ensure_directories(self) -> None:
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.staging_dir.mkdir(parents=True, exist_ok=True)

    def path_of(self, sha256: str) -> Path:
        if not SHA256_PATTERN.match(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.blob_dir / sha256[:2] / sha256

    def _open_staging(self, prefix: str) -> StagedBlob:
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        descriptor, name = tempfile.mkstemp(dir=self.staging_dir, prefix=prefix, suffix=".part")
        return StagedBlob(Path(name), os.fdopen(descriptor, "wb"))

    @contextmanager
    def staged(self, *, prefix: str = "blob-") -> Iterator[StagedBlob]:
        """A staging file that is removed on exit unless `commit` moved it into place."""
        staged = self._open_staging(prefix)
        try:
            yield staged
        finally:
            staged.discard()

    def commit(self, staged: StagedBlob) -> Path:
        """Move a finished staging file to its content address (hold the blob's lock)."""
        target = self.path_of(staged.sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_file():
            staged.discard()  # same bytes already stored
        else:
            os.chmod(staged.path, 0o444)
            os.replace(staged.path, target)
        staged.committed = True
        return target

    def write_new(self, writer: Callable[[BinaryIO], None], *, prefix: str = "blob-") -> StagedBlob:
        """Stage what `writer` writes (it may seek); the caller commits or discards it."""
        staged = self._open_staging(prefix)
        try:
            writer(staged.file)
            staged.finish_writing(rehash=True)
        except BaseException:
            staged.discard()
            raise
        return staged

    def remove(self, sha256: str) -> None:
        """Delete a blob (hold the blob's lock and check it is unreferenced first)."""
        with suppress(FileNotFoundError):
            self.path_of(sha256).unlink()

    def sweep_staging(self, *, older_than_s: float) -> int:
        """Remove staging files left by a process that died mid-write."""
        if not self.staging_dir.is_dir():
            return 0
        horizon = time.time() - older_than_s
        removed = 0
        for leftover in self.staging_dir.iterdir():
            with suppress(FileNotFoundError):
                if leftover.stat().st_mtime < horizon:
                    leftover.unlink()
                    removed += 1
        if removed:
            logger.info("removed %d stale staging files from %s", removed, self.staging_dir)
        return removed
