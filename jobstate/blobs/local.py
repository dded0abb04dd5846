"""Content-addressed blobs in a local (or shared) directory, and the interface all stores share.

    {data_dir}/blobs/{sha[:2]}/{sha}   finished blobs, read-only, named by their sha256
    {data_dir}/tmp/                    files being written; renamed into blobs/ when done

A blob appears under its name only complete (os.replace on the same filesystem is
atomic), so a reader never sees a half-written file. The caller holds
`Store.blob_lock(sha)` while it commits or removes a blob, so that a removal cannot
race a new upload of the same bytes.

`BlobStore` is both the interface and the local implementation: staging is local for
every store (the bytes are hashed as they are written), and an object store
(`jobstate.blobs.objects.ObjectBlobStore`) overrides only where finished blobs live.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

from jobstate.blobs.staging import READ_CHUNK, StagedBlob

SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")

logger = logging.getLogger(__name__)


def check_sha256(sha256: str) -> str:
    """Return ``sha256`` if it is a lowercase hex digest, else raise ValueError."""
    if not SHA256_PATTERN.match(sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return sha256


class BlobStore:
    """Content-addressed blobs under ``{data_dir}/blobs``, staged in ``{data_dir}/tmp``.

    Parameters
    ----------
    data_dir : Path
        The directory that holds the blobs and the staging area.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.blob_dir = data_dir / "blobs"
        self.staging_dir = data_dir / "tmp"

    def ensure_directories(self) -> None:
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.staging_dir.mkdir(parents=True, exist_ok=True)

    # Reading ---------------------------------------------------------------------

    def path_of(self, sha256: str) -> Path:
        """A local path of the blob, to open or memory-map; it may not exist.

        Callers test ``is_file()`` or catch FileNotFoundError for a missing blob.
        """
        check_sha256(sha256)
        return self.blob_dir / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path_of(sha256).is_file()

    def size(self, sha256: str) -> int:
        """The blob's size in bytes; FileNotFoundError if it is missing."""
        return self.path_of(sha256).stat().st_size

    def read_bytes(self, sha256: str) -> bytes:
        """The whole blob (for small ones: a page, a map); FileNotFoundError if missing."""
        return self.path_of(sha256).read_bytes()

    def iter_bytes(self, sha256: str) -> Iterator[bytes]:
        """The blob in chunks, opened now: FileNotFoundError is raised by this call."""
        file = self.path_of(sha256).open("rb")

        def chunks() -> Iterator[bytes]:
            with file:
                while chunk := file.read(READ_CHUNK):
                    yield chunk

        return chunks()

    # Writing ---------------------------------------------------------------------

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

    def upload(self, staged: StagedBlob) -> None:
        """Send a finished staging file ahead of `commit`, without the blob's lock.

        A no-op on disk (the commit is a rename); an object store puts the bytes under a
        temporary key, so that the commit under the lock is a quick server-side copy.
        """

    def commit(self, staged: StagedBlob) -> str:
        """Store a finished staging file at its content address (hold the blob's lock).

        Returns the blob's sha256. The staging file is gone afterwards either way.
        """
        target = self.path_of(staged.sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_file():
            staged.discard()  # same bytes already stored
        else:
            os.chmod(staged.path, 0o444)
            os.replace(staged.path, target)
        staged.committed = True
        return staged.sha256

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
