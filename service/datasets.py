"""Uploaded datasets: streaming an upload into the blob store, and a tenant's records.

An upload is written to a staging file while it is hashed and counted; it is refused
(413) as soon as it passes NNKGEO_MAX_UPLOAD_BYTES, then checked by
`workers.arrayfiles.inspect_arrays` (a model file: by `check_model_archive` and the op
allow-list of `modelcheck`, which reads the model as data and imports no torch), and
only then moved to its content address. On any failure the staging file is removed: nothing
half-written stays behind.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread

from api_schemas.datasets import MODEL_FORMATS
from api_schemas.problems import FieldError
from modelcheck import ModelRefusedError, check_model_file
from service.auth import Tenant
from service.blobs import BlobStore, StagedBlob
from service.errors import ProblemError, invalid_input, not_found
from service.records import DATASET_ID_PATTERN, DatasetRecord, StoredArray, utc_now
from service.retention import remove_blob_if_unreferenced
from service.store import Store
from workers.arrayfiles import array_stats, inspect_arrays, load_array
from workers.geometry import InvalidInputError

# Disk writes leave the event loop in blocks of this size, not per network chunk.
_WRITE_BLOCK_BYTES = 1 << 20


@dataclass(frozen=True)
class Upload:
    dataset: DatasetRecord
    created: bool


def dataset_id_for(*, tenant: str, sha256: str, fmt: str) -> str:
    """The same bytes in the same format give the same id, per tenant (never shared)."""
    digest = hashlib.sha256(f"{tenant}\0{sha256}\0{fmt}".encode()).hexdigest()
    return f"ds_{digest[:32]}"


def upload_too_large(limit: int) -> ProblemError:
    return ProblemError(
        413,
        f"The upload is larger than the limit of {limit} bytes (NNKGEO_MAX_UPLOAD_BYTES).",
        slug="upload-too-large",
    )


def check_model_archive(path: Path, *, fmt: str) -> None:
    """Refuse an upload that is not the zip archive ``torch.jit.save`` or ``torch.export.save``
    writes: one root directory holding the entries that format always has, every CRC intact.

    Only the container is checked here, without torch (which the API does not load);
    `modelcheck` then reads its code against the op allow-list. Whether the model loads
    is found by the worker, in its sandbox, where a failure fails the job with a 422
    naming the field.

    Raises
    ------
    InvalidInputError
        ``field="file"`` for a file that is not such an archive.
    """
    saved_by = "torch.jit.save" if fmt == "torchscript" else "torch.export.save"
    if not zipfile.is_zipfile(path):
        raise InvalidInputError("file", f"a {fmt} model is the zip archive {saved_by} writes")
    try:
        with zipfile.ZipFile(path) as archive:
            names = [info.filename for info in archive.infolist() if not info.is_dir()]
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, RuntimeError, ValueError, EOFError) as error:
        raise InvalidInputError("file", f"a damaged zip archive: {error}") from None
    if damaged is not None:
        raise InvalidInputError("file", f"a damaged zip archive: {damaged!r} fails its CRC")
    roots = {name.split("/", 1)[0] for name in names}
    if len(roots) != 1 or any("/" not in name for name in names):
        raise InvalidInputError(
            "file", f"not a {fmt} archive: {saved_by} puts every entry under one directory"
        )
    entries = {name.split("/", 1)[1] for name in names}
    if fmt == "torchscript":
        looks_right = (
            "data.pkl" in entries
            and bool({"version", ".data/version"} & entries)
            and any(entry.startswith("code/") for entry in entries)
        )
    else:
        looks_right = "archive_format" in entries and any(
            entry.startswith("models/") and entry.endswith(".json") for entry in entries
        )
    if not looks_right:
        raise InvalidInputError(
            "file", f"not a {fmt} archive: it lacks the entries {saved_by} always writes"
        )


class DatasetService:
    def __init__(self, *, store: Store, blobs: BlobStore, max_upload_bytes: int) -> None:
        self._store = store
        self._blobs = blobs
        self.max_upload_bytes = max_upload_bytes

    async def upload(
        self,
        *,
        tenant: Tenant,
        body: AsyncIterator[bytes],
        declared_length: int | None,
        fmt: str,
    ) -> Upload:
        if declared_length is not None and declared_length > self.max_upload_bytes:
            raise upload_too_large(self.max_upload_bytes)
        with self._blobs.staged(prefix="upload-") as staged:
            pending = bytearray()
            async for chunk in body:
                if staged.size_bytes + len(pending) + len(chunk) > self.max_upload_bytes:
                    raise upload_too_large(self.max_upload_bytes)
                pending += chunk
                if len(pending) >= _WRITE_BLOCK_BYTES:
                    await anyio.to_thread.run_sync(staged.write, bytes(pending))
                    pending.clear()
            if pending:
                await anyio.to_thread.run_sync(staged.write, bytes(pending))
            if staged.size_bytes == 0:
                raise invalid_input(
                    [FieldError(field="body", message="is empty; send the file's bytes")]
                )
            await anyio.to_thread.run_sync(staged.finish_writing)
            return await anyio.to_thread.run_sync(self._register, tenant, staged, fmt)

    def _register(self, tenant: Tenant, staged: StagedBlob, fmt: str) -> Upload:
        dataset_id = dataset_id_for(tenant=tenant.name, sha256=staged.sha256, fmt=fmt)
        existing = self._store.get_dataset(tenant.name, dataset_id)
        if existing is not None:
            return Upload(dataset=existing, created=False)
        record = DatasetRecord(
            id=dataset_id,
            tenant=tenant.name,
            sha256=staged.sha256,
            format=fmt,
            size_bytes=staged.size_bytes,
            arrays=self._describe_arrays(staged, fmt),
            created_at=utc_now(),
        )
        with self._store.blob_lock(record.sha256):
            self._blobs.commit(staged)
            stored, created = self._store.add_dataset(record)
        return Upload(dataset=stored, created=created)

    @staticmethod
    def _describe_arrays(staged: StagedBlob, fmt: str) -> list[StoredArray]:
        """Validate the file (InvalidInputError -> 422) and note what jobs will check."""
        if fmt in MODEL_FORMATS:
            if fmt != "onnx":
                check_model_archive(staged.path, fmt=fmt)
            try:
                check_model_file(staged.path, fmt=fmt)
            except ModelRefusedError as error:
                raise InvalidInputError("file", str(error)) from None
            return []
        described = []
        for info in inspect_arrays(staged.path, fmt=fmt):
            zero_rows = None
            if len(info.shape) == 2:  # a candidate for embeddings; array_stats skips non-floats
                matrix = load_array(staged.path, fmt=fmt, name=info.name, mmap=True)
                zero_rows = array_stats(matrix).zero_rows
            described.append(
                StoredArray(
                    name=info.name, shape=list(info.shape), dtype=info.dtype, zero_rows=zero_rows
                )
            )
        return described

    def get(self, *, tenant: Tenant, dataset_id: str) -> DatasetRecord:
        record = (
            self._store.get_dataset(tenant.name, dataset_id)
            if DATASET_ID_PATTERN.match(dataset_id)
            else None
        )
        if record is None:
            raise not_found(f"Dataset {dataset_id}")
        return record

    def delete(self, *, tenant: Tenant, dataset_id: str) -> None:
        """Delete the tenant's record, and the blob once no record of any tenant uses it.

        Refused (409) while an unfinished job of the tenant reads the dataset: its worker
        reads the blob, perhaps not yet.
        """
        record = self.get(tenant=tenant, dataset_id=dataset_id)
        deletion = self._store.delete_dataset(tenant.name, dataset_id, record.sha256)
        if deletion.pinned_by:
            # Pins of jobs that finished or expired without unpinning (a crash between the
            # two) must not block the delete forever.
            stale = [
                job_id
                for job_id in deletion.pinned_by
                if not self._store.job_is_unfinished(tenant.name, job_id)
            ]
            self._store.drop_stale_pins(tenant.name, dataset_id, stale)
            if len(stale) < len(deletion.pinned_by):
                active = sorted(set(deletion.pinned_by) - set(stale))
                raise ProblemError(
                    409,
                    f"Dataset {dataset_id} is read by unfinished jobs ({', '.join(active)}); "
                    "cancel them or wait until they finish, then delete it.",
                    slug="dataset-in-use",
                )
            deletion = self._store.delete_dataset(tenant.name, dataset_id, record.sha256)
            if deletion.pinned_by:
                raise ProblemError(
                    409,
                    f"Dataset {dataset_id} was just taken by a new job; try again later.",
                    slug="dataset-in-use",
                )
        if deletion.missing:
            raise not_found(f"Dataset {dataset_id}")
        if deletion.blob_unreferenced:
            remove_blob_if_unreferenced(self._store, self._blobs, record.sha256)
