"""Uploaded datasets: streaming an upload into the blob store, and a tenant's records.

An upload is written to a staging file while it is hashed and counted; it is refused
(413) as soon as it passes NNKGEO_MAX_UPLOAD_BYTES, then checked (arrays by
`arrayfiles.scan_arrays`, which streams the file and stops at any array that
decompresses past NNKGEO_MAX_ARRAY_BYTES, 413; a model file by `check_model_archive` and
the op allow-list of `modelcheck`, which reads the model as data and imports no torch), and
only then moved to its content address. On any failure the staging file is removed: nothing
half-written stays behind.

A tenant's uploads are bounded in total by NNKGEO_TENANT_MAX_STORED_BYTES (413), checked
against the declared or streamed length before the file is kept, and atomically when its
record is stored. Dataset records live until deleted, so instead of a TTL their size is
capped: at most `MAX_ARRAYS_PER_UPLOAD` arrays, names of at most `MAX_ARRAY_NAME_CHARS`
characters, `MAX_DATASET_RECORD_BYTES` of JSON in all (422 naming the file).

CSV is refused wherever it shows (a CSV Content-Type, ``format=csv``, or CSV text that
fails to parse as its declared format) with one problem that says how to convert it.
A tenant's records are listed newest first through the store's per-tenant index; the
cursor of a page is the position (creation ms and id) of its last record, so that a
delete between two pages does not lose the place.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread

from api_schemas.datasets import MODEL_FORMATS, DatasetList
from api_schemas.problems import FieldError
from arrayfiles import ArrayFileError, ArrayTooLargeError, scan_arrays
from jobstate.blobs import BlobStore, StagedBlob
from jobstate.errors import InvalidInputError
from jobstate.records import DATASET_ID_PATTERN, DatasetRecord, StoredArray, utc_now
from jobstate.retention import remove_blob_if_unreferenced
from jobstate.store import DatasetPosition, Store, StoredBytesQuotaError
from modelcheck import ModelRefusedError, check_model_file
from service.auth import Tenant
from service.errors import ProblemError, invalid_input, not_found

# Disk writes leave the event loop in blocks of this size, not per network chunk.
_WRITE_BLOCK_BYTES = 1 << 20

# What one dataset record (kept in Redis until DELETE) may hold: 1,024 entries of a
# 256-character name, a shape and a dtype stay far below the 1 MiB record cap.
MAX_ARRAYS_PER_UPLOAD = 1024
MAX_ARRAY_NAME_CHARS = 256
MAX_DATASET_RECORD_BYTES = 1024**2

# A listing's cursor: the creation time (unix ms) and id of the last dataset of its page.
_CURSOR_PATTERN = re.compile(r"^(?P<ms>[0-9]{1,16})\.(?P<id>ds_[0-9a-f]{32})$")


def dataset_cursor(position: DatasetPosition) -> str:
    """The text of a listing's `next_cursor`."""
    return f"{position.created_ms}.{position.dataset_id}"


def parse_dataset_cursor(cursor: str) -> DatasetPosition:
    """The position a `next_cursor` names; 422 (``query.cursor``) for any other text."""
    matched = _CURSOR_PATTERN.match(cursor)
    if matched is None:
        raise invalid_input(
            [
                FieldError(
                    field="query.cursor",
                    message="not a cursor this API returned; pass the `next_cursor` of the "
                    "previous page, or leave it out for the first page",
                )
            ]
        )
    return DatasetPosition(created_ms=int(matched["ms"]), dataset_id=matched["id"])


# How a CSV file becomes an upload: one line of numpy, or pandas to parquet.
CSV_CONVERSION = (
    "convert it first, e.g. `python -c \"import numpy as np; np.save('x.npy', "
    "np.loadtxt('x.csv', delimiter=',', dtype=np.float32))\"` (labels: dtype=np.int64) "
    "and upload x.npy, or `pandas.read_csv('x.csv').to_parquet('x.parquet')` and upload "
    "x.parquet"
)
CSV_MEDIA_TYPES = frozenset(
    {"text/csv", "application/csv", "text/tab-separated-values", "text/comma-separated-values"}
)
CSV_FORMAT_NAMES = frozenset({"csv", "tsv", "txt"})
# Enough of a file to tell CSV text from the binary formats, whose first bytes are magic.
_CSV_SNIFF_BYTES = 4096
_CSV_CHARACTERS = frozenset(b"0123456789.,;\t +-eE\r\nnaNAinfIF\"'_")


def csv_not_supported(*, status: int, field: str, got: str) -> ProblemError:
    """The answer to a CSV upload (by Content-Type, by format, or by its bytes)."""
    message = f"CSV is not supported ({got}); {CSV_CONVERSION}"
    return ProblemError(
        status,
        f"{field}: {message}.",
        slug="csv-not-supported",
        title="CSV is not supported",
        errors=[FieldError(field=field, message=message)],
    )


def looks_like_csv(head: bytes) -> bool:
    """True for lines of numbers separated by commas, semicolons or tabs.

    A first line of column names is allowed. Only called on a file that failed to parse
    as its declared format, to say what it is instead.
    """
    lines = head.splitlines()
    if len(head) >= _CSV_SNIFF_BYTES and len(lines) > 1:
        lines = lines[:-1]  # cut short at the sniffing limit
    if lines and not set(lines[0]) <= _CSV_CHARACTERS:
        try:
            header_is_text = lines[0].decode("utf-8").isprintable()
        except UnicodeDecodeError:
            header_is_text = False
        if not header_is_text:
            return False
        lines = lines[1:]
    return (
        bool(lines)
        and all(set(line) <= _CSV_CHARACTERS for line in lines)
        and any(separator in lines[0] for separator in (b",", b";", b"\t"))
        and any(48 <= byte <= 57 for line in lines for byte in line)  # a digit
    )


@dataclass(frozen=True)
class Upload:
    dataset: DatasetRecord
    created: bool


def dataset_id_for(*, tenant: str, sha256: str, fmt: str) -> str:
    """The same bytes in the same format give the same id, per tenant (never shared)."""
    digest = hashlib.sha256(f"{tenant}\0{sha256}\0{fmt}".encode()).hexdigest()
    return f"ds_{digest[:32]}"


def array_too_large(error: ArrayTooLargeError) -> ProblemError:
    """413 for an upload holding an array that decompresses past NNKGEO_MAX_ARRAY_BYTES."""
    return ProblemError(
        413,
        f"{error.message} (NNKGEO_MAX_ARRAY_BYTES); the upload was not kept. Split the "
        "array over several files, or ask the operator to raise the limit.",
        slug="array-too-large",
        title="Array too large",
        errors=[FieldError(field=error.field, message=error.message)],
    )


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


def stored_bytes_quota_exceeded(*, stored_bytes: int, size_bytes: int, limit: int) -> ProblemError:
    return ProblemError(
        413,
        f"This tenant stores {stored_bytes} bytes of uploads; {size_bytes} more would pass its "
        f"limit of {limit} bytes (NNKGEO_TENANT_MAX_STORED_BYTES). Delete datasets it no "
        "longer needs (DELETE /v1/datasets/{id}), then upload again.",
        slug="stored-bytes-quota-exceeded",
        title="Storage quota exceeded",
    )


def check_record_size(record: DatasetRecord) -> None:
    """Refuse (422, field ``file``) a file whose record would be too large to keep.

    Raises
    ------
    ProblemError
        422 for more than `MAX_ARRAYS_PER_UPLOAD` arrays, a name longer than
        `MAX_ARRAY_NAME_CHARS`, or a record over `MAX_DATASET_RECORD_BYTES` of JSON.
    """
    problem: str | None = None
    long_names = [a.name for a in record.arrays if len(a.name) > MAX_ARRAY_NAME_CHARS]
    if len(record.arrays) > MAX_ARRAYS_PER_UPLOAD:
        problem = (
            f"holds {len(record.arrays)} arrays; an upload may hold at most "
            f"{MAX_ARRAYS_PER_UPLOAD} (split it into several files)"
        )
    elif long_names:
        problem = (
            f"names an array with {len(long_names[0])} characters ({long_names[0][:40]!r}...); "
            f"array names may have at most {MAX_ARRAY_NAME_CHARS}"
        )
    elif len(record.model_dump_json()) > MAX_DATASET_RECORD_BYTES:
        problem = (
            f"describes its arrays in more than {MAX_DATASET_RECORD_BYTES} bytes of metadata "
            "(shapes, names); split it into several files"
        )
    if problem is not None:
        raise invalid_input([FieldError(field="file", message=problem)])


class DatasetService:
    def __init__(
        self,
        *,
        store: Store,
        blobs: BlobStore,
        max_upload_bytes: int,
        max_stored_bytes: int = 0,
        max_array_bytes: int | None = None,
    ) -> None:
        self._store = store
        self._blobs = blobs
        self.max_upload_bytes = max_upload_bytes
        self.max_stored_bytes = max_stored_bytes
        # Settings.array_limit_bytes: NNKGEO_MAX_ARRAY_BYTES, or the upload limit.
        self.max_array_bytes = max_array_bytes or max_upload_bytes

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
        # Checked before a byte is staged. The file is counted as new: whether the tenant
        # has these bytes already is known only once they are read, so close to its quota
        # a repeated upload is refused here too (`add_dataset` charges it nothing).
        stored_bytes = (
            await anyio.to_thread.run_sync(self._store.stored_bytes, tenant.name)
            if self.max_stored_bytes
            else 0
        )
        room = self.max_stored_bytes - stored_bytes if self.max_stored_bytes else None

        def check_room(size_bytes: int) -> None:
            if room is not None and size_bytes > room:
                raise stored_bytes_quota_exceeded(
                    stored_bytes=stored_bytes, size_bytes=size_bytes, limit=self.max_stored_bytes
                )

        if declared_length is not None:
            check_room(declared_length)
        with self._blobs.staged(prefix="upload-") as staged:
            pending = bytearray()
            async for chunk in body:
                if staged.size_bytes + len(pending) + len(chunk) > self.max_upload_bytes:
                    raise upload_too_large(self.max_upload_bytes)
                check_room(staged.size_bytes + len(pending) + len(chunk))
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
            # A record stored before the dataset index existed gets its entry now.
            self._store.index_dataset(existing)
            return Upload(dataset=existing, created=False)
        record = DatasetRecord(
            id=dataset_id,
            tenant=tenant.name,
            sha256=staged.sha256,
            format=fmt,
            size_bytes=staged.size_bytes,
            arrays=self._describe_arrays(staged, fmt, max_array_bytes=self.max_array_bytes),
            created_at=utc_now(),
        )
        check_record_size(record)
        # An object store receives the bytes now, outside the lock; the commit under it
        # is then a server-side copy. The staging context deletes what is not committed.
        self._blobs.upload(staged)
        try:
            with self._store.blob_lock(record.sha256):
                self._blobs.commit(staged)
                stored, created = self._store.add_dataset(
                    record, max_stored_bytes=self.max_stored_bytes
                )
        except StoredBytesQuotaError as error:
            # Another upload of the tenant got in first. The file went into place before
            # the record (a record never names a missing file): take it out again unless
            # something else holds it.
            remove_blob_if_unreferenced(self._store, self._blobs, record.sha256)
            raise stored_bytes_quota_exceeded(
                stored_bytes=error.stored_bytes, size_bytes=error.size_bytes, limit=error.limit
            ) from None
        return Upload(dataset=stored, created=created)

    @staticmethod
    def _describe_arrays(
        staged: StagedBlob, fmt: str, *, max_array_bytes: int
    ) -> list[StoredArray]:
        """Validate the file (InvalidInputError -> 422) and note what jobs will check.

        Arrays are scanned in chunks, never inflated whole: an array that decompresses
        past ``max_array_bytes`` stops the scan with a 413.
        """
        if fmt in MODEL_FORMATS:
            if fmt != "onnx":
                check_model_archive(staged.path, fmt=fmt)
            try:
                check_model_file(staged.path, fmt=fmt)
            except ModelRefusedError as error:
                raise InvalidInputError("file", str(error)) from None
            return []
        try:
            scanned = scan_arrays(staged.path, fmt=fmt, max_array_bytes=max_array_bytes)
        except ArrayTooLargeError as error:
            raise array_too_large(error) from None
        except ArrayFileError as error:
            with staged.path.open("rb") as file:
                head = file.read(_CSV_SNIFF_BYTES)
            if looks_like_csv(head):
                raise csv_not_supported(
                    status=422, field="file", got=f"the file is CSV text, not {fmt}"
                ) from None
            raise InvalidInputError(error.field, error.message) from None
        described = []
        for array in scanned:
            # Only a 2-D array can be embeddings; zero rows matter to the cosine kernel.
            two_d = len(array.info.shape) == 2
            described.append(
                StoredArray(
                    name=array.info.name,
                    shape=list(array.info.shape),
                    dtype=array.info.dtype,
                    zero_rows=array.stats.zero_rows if two_d else None,
                    first_zero_row=array.stats.first_zero_row if two_d else None,
                )
            )
        return described

    def list(self, *, tenant: Tenant, limit: int, cursor: str | None) -> DatasetList:
        """One page of the tenant's datasets, newest first (by their first upload)."""
        after = parse_dataset_cursor(cursor) if cursor is not None else None
        records, next_position = self._store.list_datasets(tenant.name, limit=limit, after=after)
        return DatasetList(
            items=[record.to_out() for record in records],
            next_cursor=dataset_cursor(next_position) if next_position is not None else None,
        )

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
