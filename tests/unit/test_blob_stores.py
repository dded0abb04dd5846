"""The blob store interface, against the local directory and an obstore MemoryStore.

Both implementations must agree on content addressing, staging, reading, sizes and
removal; the object store must also keep no staging file once a blob is stored, and keep
its read cache within its bound.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import obstore
import pytest
from obstore.store import MemoryStore

from jobstate.blobs import BlobStore, ObjectBlobStore, open_blob_store


def _local(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "data")


def _memory(tmp_path: Path) -> BlobStore:
    return ObjectBlobStore(MemoryStore(), tmp_path / "data")


IMPLEMENTATIONS = [pytest.param(_local, id="file"), pytest.param(_memory, id="memory")]


def _store_bytes(blobs: BlobStore, content: bytes) -> str:
    with blobs.staged(prefix="upload-") as staged:
        staged.write(content[: len(content) // 2])
        staged.write(content[len(content) // 2 :])
        staged.finish_writing()
        return blobs.commit(staged)


@pytest.mark.parametrize("make", IMPLEMENTATIONS)
def test_content_addressed_round_trip(make, tmp_path: Path) -> None:
    blobs = make(tmp_path)
    blobs.ensure_directories()
    content = os.urandom(3 * 1024 * 1024 + 17)
    sha = _store_bytes(blobs, content)
    assert sha == hashlib.sha256(content).hexdigest()
    assert blobs.exists(sha)
    assert blobs.size(sha) == len(content)
    assert blobs.read_bytes(sha) == content
    assert b"".join(blobs.iter_bytes(sha)) == content
    assert blobs.path_of(sha).read_bytes() == content
    # staging is empty once the blob is stored, whichever store holds it
    assert list(blobs.staging_dir.iterdir()) == []


@pytest.mark.parametrize("make", IMPLEMENTATIONS)
def test_missing_and_removed_blobs(make, tmp_path: Path) -> None:
    blobs = make(tmp_path)
    sha = _store_bytes(blobs, b"some bytes")
    absent = hashlib.sha256(b"never stored").hexdigest()
    assert not blobs.exists(absent)
    assert not blobs.path_of(absent).is_file()
    with pytest.raises(FileNotFoundError):
        blobs.read_bytes(absent)
    with pytest.raises(FileNotFoundError):
        blobs.iter_bytes(absent)
    blobs.path_of(sha)  # a cached copy, for the object store: removal takes it too
    blobs.remove(sha)
    blobs.remove(sha)  # removing twice is harmless
    assert not blobs.exists(sha)
    assert not blobs.path_of(sha).is_file()
    with pytest.raises(ValueError):
        blobs.path_of("../../etc/passwd")


@pytest.mark.parametrize("make", IMPLEMENTATIONS)
def test_same_bytes_twice_and_discarded_staging(make, tmp_path: Path) -> None:
    blobs = make(tmp_path)
    first = _store_bytes(blobs, b"twice")
    second = _store_bytes(blobs, b"twice")
    assert first == second and blobs.read_bytes(first) == b"twice"
    with blobs.staged() as staged:
        staged.write(b"abandoned")
    assert list(blobs.staging_dir.iterdir()) == []
    assert not blobs.exists(hashlib.sha256(b"abandoned").hexdigest())


@pytest.mark.parametrize("make", IMPLEMENTATIONS)
def test_write_new_memory_maps(make, tmp_path: Path) -> None:
    blobs = make(tmp_path)
    array = np.arange(1000, dtype=np.float32).reshape(100, 10)
    staged = blobs.write_new(lambda file: np.save(file, array), prefix="graph-")
    sha = blobs.commit(staged)
    np.testing.assert_array_equal(np.load(blobs.path_of(sha), mmap_mode="r"), array)


def test_object_store_upload_is_one_object_and_no_local_copy(tmp_path: Path) -> None:
    memory = MemoryStore()
    blobs = ObjectBlobStore(memory, tmp_path / "api")
    content = os.urandom(12 * 1024 * 1024)  # over obstore's 5 MiB part: a multipart put
    sha = _store_bytes(blobs, content)
    keys = [meta["path"] for batch in obstore.list(memory) for meta in batch]
    assert keys == [f"blobs/{sha[:2]}/{sha}"]
    assert bytes(obstore.get(memory, keys[0]).bytes()) == content
    # the API's store caches no write: nothing of the upload is left on its disk
    assert [p for p in (tmp_path / "api").rglob("*") if p.is_file()] == []


def test_cache_is_bounded_and_evicts_least_recently_used(tmp_path: Path) -> None:
    memory = MemoryStore()
    writer = ObjectBlobStore(memory, tmp_path / "writer")
    reader = ObjectBlobStore(memory, tmp_path / "reader", cache_bytes=2500)
    shas = [_store_bytes(writer, bytes([n]) * 1000) for n in range(4)]
    for sha in shas[:2]:
        reader.path_of(sha)
    reader.path_of(shas[0])  # used again: now the newest
    os.utime(reader.path_of(shas[0]), (2e9, 2e9))
    reader.path_of(shas[2])  # 3,000 bytes > 2,500: the oldest, shas[1], goes
    cached = {p.name for p in reader.cache_dir.rglob("*") if p.is_file()}
    assert cached == {shas[0], shas[2]}
    assert reader.path_of(shas[1]).read_bytes() == bytes([1]) * 1000  # fetched again


def test_worker_cache_keeps_what_it_wrote(tmp_path: Path) -> None:
    memory = MemoryStore()
    worker = ObjectBlobStore(memory, tmp_path / "worker", cache_writes=True)
    sha = _store_bytes(worker, b"block")
    assert (worker.cache_dir / sha[:2] / sha).read_bytes() == b"block"
    assert bytes(obstore.get(memory, worker.key_of(sha)).bytes()) == b"block"


def test_open_blob_store_by_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert open_blob_store("", tmp_path).blob_dir == tmp_path / "blobs"
    other = open_blob_store(f"file://{tmp_path}/elsewhere", tmp_path)
    assert type(other) is BlobStore and other.data_dir == tmp_path / "elsewhere"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_ALLOW_HTTP", "true")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    s3 = open_blob_store("s3://bucket/prefix", tmp_path)
    assert isinstance(s3, ObjectBlobStore) and s3.staging_dir == tmp_path / "tmp"
    for bad in ("gs://bucket", "file://host/path", "s3:///nobucket"):
        with pytest.raises(ValueError):
            open_blob_store(bad, tmp_path)


def _keys(memory: MemoryStore) -> list[str]:
    return sorted(meta["path"] for batch in obstore.list(memory) for meta in batch)


def test_upload_ahead_then_commit_copies_and_leaves_one_object(tmp_path: Path) -> None:
    memory = MemoryStore()
    blobs = ObjectBlobStore(memory, tmp_path / "api")
    content = os.urandom(6 * 1024 * 1024)
    with blobs.staged() as staged:
        staged.write(content)
        staged.finish_writing()
        blobs.upload(staged)  # the transfer, before any lock
        assert [k.split("/")[0] for k in _keys(memory)] == ["staging"]
        blobs.commit(staged)
    assert _keys(memory) == [blobs.key_of(staged.sha256)]
    assert blobs.read_bytes(staged.sha256) == content


def test_an_upload_never_committed_is_deleted(tmp_path: Path) -> None:
    memory = MemoryStore()
    blobs = ObjectBlobStore(memory, tmp_path / "api")
    with blobs.staged() as staged:
        staged.write(b"refused after inspection")
        staged.finish_writing()
        blobs.upload(staged)
        assert len(_keys(memory)) == 1
    assert _keys(memory) == []
    assert list(blobs.staging_dir.iterdir()) == []


def test_sweep_removes_temporary_uploads_of_dead_processes(tmp_path: Path) -> None:
    memory = MemoryStore()
    blobs = ObjectBlobStore(memory, tmp_path / "api")
    sha = _store_bytes(blobs, b"kept")
    obstore.put(memory, "staging/left-by-a-crash", b"partial")
    assert blobs.sweep_staging(older_than_s=3600) == 0  # too young to be a leftover
    assert blobs.sweep_staging(older_than_s=-1) == 1
    assert _keys(memory) == [blobs.key_of(sha)]
