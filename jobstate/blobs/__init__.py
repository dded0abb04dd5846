"""Content-addressed blobs: uploads, graphs, maps and pages, named by their sha256.

`open_blob_store` reads ``NNKGEO_BLOB_URL``: empty or ``file:///path`` is a directory
(`BlobStore`, shared by every process when they share a filesystem); ``s3://bucket/prefix``
is an S3-compatible object store (`ObjectBlobStore`), configured by the standard AWS
environment variables, with ``NNKGEO_DATA_DIR`` only for this process's staging files
and read cache.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from jobstate.blobs.local import SHA256_PATTERN, BlobStore, check_sha256
from jobstate.blobs.objects import DEFAULT_CACHE_BYTES, ObjectBlobStore
from jobstate.blobs.staging import StagedBlob

__all__ = [
    "SHA256_PATTERN",
    "BlobStore",
    "ObjectBlobStore",
    "StagedBlob",
    "check_sha256",
    "open_blob_store",
]


def open_blob_store(
    blob_url: str,
    data_dir: Path,
    *,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    cache_writes: bool = False,
) -> BlobStore:
    """The blob store that ``blob_url`` names.

    Parameters
    ----------
    blob_url : str
        ``""`` (blobs under ``data_dir``), ``file:///path``, or ``s3://bucket/prefix``.
    data_dir : Path
        This process's data directory: the blobs themselves for ``""``; staging files
        and the read cache for an object store.
    cache_bytes : int
        Bound on an object store's local read cache.
    cache_writes : bool
        Whether an object store keeps what this process stores in its cache (workers).

    Returns
    -------
    BlobStore
        A local store or an `ObjectBlobStore`.

    Raises
    ------
    ValueError
        For another scheme, or a ``file:`` URL with a host.
    """
    if not blob_url:
        return BlobStore(data_dir)
    parsed = urlparse(blob_url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"file URLs name a local path, not a host: {blob_url!r}")
        return BlobStore(Path(unquote(parsed.path)))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"an s3 URL names a bucket: {blob_url!r}")
        from obstore.store import from_url

        # from_url reads AWS_ENDPOINT_URL, the keys, AWS_REGION/AWS_DEFAULT_REGION and
        # AWS_ALLOW_HTTP from the environment; the URL's path is the key prefix.
        return ObjectBlobStore(
            from_url(blob_url), data_dir, cache_bytes=cache_bytes, cache_writes=cache_writes
        )
    raise ValueError(f"NNKGEO_BLOB_URL must be file:///path or s3://bucket/prefix: {blob_url!r}")
