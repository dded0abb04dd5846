"""Content-addressed blobs in an object store (S3 and compatible, or in memory), via obstore.

    {prefix}/blobs/{sha[:2]}/{sha}     finished blobs in the object store
    {prefix}/staging/{random}          uploads sent ahead of their commit (`upload`)
    {data_dir}/tmp/                    local staging: bytes hashed as they are written
    {data_dir}/cache/{sha[:2]}/{sha}   local copies for memory-mapping, evicted oldest first

An upload is staged locally (the API inspects it there), then put under a temporary
key without any lock (obstore sends a file larger than one part as a multipart upload,
and the object appears only complete), and copied server-side to its content address
under the blob's lock, which a long transfer could otherwise outlive. The staging file
is deleted at once, so a process keeps no copy of what it stored (workers keep theirs
in the cache: a sharded run reads its blocks back). Readers that need a file (workers
memory-map their inputs, the API serves graph files) get one from a bounded local
cache; the page is read directly.

obstore is imported here only, so the engine's light install never loads it.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

from jobstate.blobs.local import BlobStore, check_sha256
from jobstate.blobs.staging import StagedBlob

logger = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES = 4 << 30
_STAGING_PREFIX = "staging/"
_STREAM_CHUNK = 1 << 20


class ObjectBlobStore(BlobStore):
    """Blobs in an obstore ``ObjectStore``, with a local cache of at most ``cache_bytes``.

    Parameters
    ----------
    store : obstore.store.ObjectStore
        Where finished blobs live (an S3Store from ``s3://bucket/prefix``, a MemoryStore).
    data_dir : Path
        Local directory for staging files and the read cache; never shared.
    cache_bytes : int
        Bound on the cache's total size. A blob just fetched stays even if larger.
    cache_writes : bool
        Keep what this process stores in its cache (workers read back their blocks and
        maps); the API passes False, so that it keeps no copy of an upload.
    """

    def __init__(
        self,
        store: Any,
        data_dir: Path,
        *,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        cache_writes: bool = False,
    ) -> None:
        super().__init__(data_dir)
        self.store = store
        self.cache_dir = data_dir / "cache"
        self.cache_bytes = cache_bytes
        self.cache_writes = cache_writes

    def ensure_directories(self) -> None:
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        self.cache_dir.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key_of(sha256: str) -> str:
        """The object's key, relative to the store's prefix."""
        check_sha256(sha256)
        return f"blobs/{sha256[:2]}/{sha256}"

    # Reading ---------------------------------------------------------------------

    def _cache_path(self, sha256: str) -> Path:
        check_sha256(sha256)
        return self.cache_dir / sha256[:2] / sha256

    def path_of(self, sha256: str) -> Path:
        """A local copy of the blob, fetched into the cache; a missing path if the object is.

        Content addressing makes a cached copy valid for ever; only space evicts it.
        """
        cached = self._cache_path(sha256)
        if cached.is_file():
            with suppress(FileNotFoundError):
                os.utime(cached)  # most recently used: evicted last
                return cached
        import obstore

        try:
            response = obstore.get(self.store, self.key_of(sha256))
        except FileNotFoundError:
            return cached
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        descriptor, name = tempfile.mkstemp(dir=self.staging_dir, prefix="fetch-", suffix=".part")
        try:
            with os.fdopen(descriptor, "wb") as part:
                for chunk in response.stream(min_chunk_size=_STREAM_CHUNK):
                    part.write(chunk)
            os.chmod(name, 0o444)
            cached.parent.mkdir(parents=True, exist_ok=True)
            os.replace(name, cached)  # another thread's copy of the same bytes is as good
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(name)
            raise
        self._evict(keep=cached)
        return cached

    def _evict(self, *, keep: Path) -> None:
        """Remove the least recently used copies until the cache fits its bound.

        A worker that memory-mapped an evicted file keeps its mapping (unlinking does not
        unmap on POSIX), so eviction never breaks a running job.
        """
        entries: list[tuple[float, int, Path]] = []
        for path in self.cache_dir.glob("*/*"):
            with suppress(FileNotFoundError):
                stat = path.stat()
                entries.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.cache_bytes:
                break
            if path == keep:
                continue
            with suppress(FileNotFoundError):
                path.unlink()
            total -= size

    def exists(self, sha256: str) -> bool:
        import obstore

        try:
            obstore.head(self.store, self.key_of(sha256))
        except FileNotFoundError:
            return False
        return True

    def size(self, sha256: str) -> int:
        import obstore

        return int(obstore.head(self.store, self.key_of(sha256))["size"])

    def read_bytes(self, sha256: str) -> bytes:
        import obstore

        return bytes(obstore.get(self.store, self.key_of(sha256)).bytes())

    def iter_bytes(self, sha256: str) -> Iterator[bytes]:
        import obstore

        response = obstore.get(self.store, self.key_of(sha256))  # raises if missing

        def chunks() -> Iterator[bytes]:
            for chunk in response.stream(min_chunk_size=_STREAM_CHUNK):
                yield bytes(chunk)

        return chunks()

    # Writing ---------------------------------------------------------------------

    def upload(self, staged: StagedBlob) -> None:
        """Put a finished staging file under a temporary key (no lock needed)."""
        import obstore

        if staged.uploaded_key is not None or self.exists(staged.sha256):
            return
        key = f"{_STAGING_PREFIX}{uuid.uuid4().hex}"
        obstore.put(self.store, key, staged.path)
        staged.uploaded_key = key
        staged.forget_upload = lambda stale: obstore.delete(self.store, stale)

    def commit(self, staged: StagedBlob) -> str:
        """Store a finished staging file at its content address, then delete the file.

        Hold the blob's lock. A file sent by `upload` is copied server-side; one that
        was not is put now. Same bytes already stored are not sent again.
        """
        import obstore

        key = self.key_of(staged.sha256)
        try:
            if not self.exists(staged.sha256):
                if staged.uploaded_key is not None:
                    obstore.copy(self.store, staged.uploaded_key, key)
                else:
                    obstore.put(self.store, key, staged.path)
            if staged.uploaded_key is not None:
                with suppress(FileNotFoundError):
                    obstore.delete(self.store, staged.uploaded_key)
                staged.uploaded_key = None
            if self.cache_writes:
                cached = self._cache_path(staged.sha256)
                cached.parent.mkdir(parents=True, exist_ok=True)
                os.chmod(staged.path, 0o444)
                os.replace(staged.path, cached)
                self._evict(keep=cached)
        finally:
            staged.discard()  # the staging file goes, whether or not the upload went
        staged.committed = True
        return staged.sha256

    def remove(self, sha256: str) -> None:
        """Delete the object and this process's cached copy (hold the blob's lock)."""
        import obstore

        obstore.delete(self.store, self.key_of(sha256))
        with suppress(FileNotFoundError):
            self._cache_path(sha256).unlink()

    def sweep_staging(self, *, older_than_s: float) -> int:
        """Remove local staging files and temporary uploads left by a process that died."""
        import obstore

        removed = super().sweep_staging(older_than_s=older_than_s)
        horizon = time.time() - older_than_s
        stale = [
            meta["path"]
            for batch in obstore.list(self.store, prefix=_STAGING_PREFIX)
            for meta in batch
            if meta["last_modified"].timestamp() < horizon
        ]
        if stale:
            obstore.delete(self.store, stale)
            logger.info("removed %d stale temporary uploads", len(stale))
        return removed + len(stale)
