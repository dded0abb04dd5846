"""Dataset records and what keeps a blob file alive: the datasets that hold it, the
jobs that pin a dataset, the lifetimes of derived (graph) blobs, the lock held while a
blob file is created or removed, and each tenant's stored-bytes quota.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from redis.lock import Lock

from jobstate.records import DatasetRecord
from jobstate.store.base import StoreBase
from jobstate.store.keys import (
    GRAPH_BLOBS_KEY,
    blob_datasets_key,
    blob_lock_key,
    dataset_key,
    dataset_pins_key,
    stored_bytes_key,
)


class StoredBytesQuotaError(Exception):
    """Storing a dataset record would take its tenant past its stored-bytes quota."""

    def __init__(self, *, stored_bytes: int, size_bytes: int, limit: int) -> None:
        super().__init__(
            f"{stored_bytes} bytes stored, {size_bytes} more would pass the limit of {limit}"
        )
        self.stored_bytes = stored_bytes
        self.size_bytes = size_bytes
        self.limit = limit


@dataclass(frozen=True)
class DatasetDeletion:
    deleted: bool
    missing: bool = False
    pinned_by: tuple[str, ...] = ()
    blob_unreferenced: bool = False


class BlobReferenceStore(StoreBase):
    """Who still needs a blob file: dataset records, and live results for graph blobs."""

    def blob_lock(self, sha256: str) -> Lock:
        """Serialises creating and removing one blob file across processes and hosts."""
        return self._redis.lock(blob_lock_key(sha256), timeout=120, blocking_timeout=60)

    def blob_has_datasets(self, sha256: str) -> bool:
        return bool(self._redis.scard(blob_datasets_key(sha256)))

    def register_graph_blobs(self, sha256s: Iterable[str]) -> None:
        """Keep graph blobs at least as long as the results that name them."""
        expires_at = time.time() + self.result_ttl_s
        mapping = {sha: expires_at for sha in sha256s}
        if mapping:
            # GT only ever extends a lifetime, and still adds blobs not yet listed.
            self._redis.zadd(GRAPH_BLOBS_KEY, mapping, gt=True)

    def graph_blob_is_live(self, sha256: str) -> bool:
        expires_at = self._redis.zscore(GRAPH_BLOBS_KEY, sha256)
        return expires_at is not None and expires_at > time.time()

    def expired_graph_blobs(self, *, limit: int = 100) -> list[str]:
        return self._redis.zrangebyscore(GRAPH_BLOBS_KEY, "-inf", time.time(), start=0, num=limit)

    def forget_graph_blob(self, sha256: str) -> None:
        self._redis.zrem(GRAPH_BLOBS_KEY, sha256)


class DatasetStore(StoreBase):
    """Dataset records, the jobs pinning them, and the tenant's stored bytes."""

    def get_dataset(self, tenant: str, dataset_id: str) -> DatasetRecord | None:
        raw = self._redis.get(dataset_key(tenant, dataset_id))
        return DatasetRecord.model_validate_json(raw) if raw is not None else None

    def add_dataset(
        self, record: DatasetRecord, *, max_stored_bytes: int = 0
    ) -> tuple[DatasetRecord, bool]:
        """Store a dataset record unless the tenant has it already, and count its bytes.

        Call under `blob_lock(record.sha256)`, once the blob file is in place.

        Parameters
        ----------
        record
            The record to store.
        max_stored_bytes
            The tenant's stored-bytes quota (0 = no limit).

        Returns
        -------
        tuple[DatasetRecord, bool]
            The stored record (the earlier one if the tenant had it) and whether it is new.

        Raises
        ------
        StoredBytesQuotaError
            When `max_stored_bytes` is set and a new record would take the tenant's
            stored bytes past it (checked and counted in one step, so concurrent uploads
            cannot both slip under it). A record the tenant already has costs nothing.
        """
        outcome, value = self._scripts.add_dataset(
            keys=[
                dataset_key(record.tenant, record.id),
                blob_datasets_key(record.sha256),
                stored_bytes_key(record.tenant),
            ],
            args=[
                record.model_dump_json(),
                f"{record.tenant}/{record.id}",
                record.size_bytes,
                max_stored_bytes,
            ],
        )
        if int(outcome) < 0:
            raise StoredBytesQuotaError(
                stored_bytes=int(value), size_bytes=record.size_bytes, limit=max_stored_bytes
            )
        return DatasetRecord.model_validate_json(value), int(outcome) == 1

    def stored_bytes(self, tenant: str) -> int:
        """Bytes of the tenant's dataset records (their files' sizes, summed)."""
        return int(self._redis.get(stored_bytes_key(tenant)) or 0)

    def delete_dataset(self, tenant: str, dataset_id: str, sha256: str) -> DatasetDeletion:
        keys = [
            dataset_key(tenant, dataset_id),
            dataset_pins_key(tenant, dataset_id),
            blob_datasets_key(sha256),
            stored_bytes_key(tenant),
        ]
        remaining = int(self._scripts.delete_dataset(keys=keys, args=[f"{tenant}/{dataset_id}"]))
        if remaining == -1:
            return DatasetDeletion(deleted=False, missing=True)
        if remaining == -2:
            pinned = sorted(self._redis.smembers(dataset_pins_key(tenant, dataset_id)))
            return DatasetDeletion(deleted=False, pinned_by=tuple(pinned))
        return DatasetDeletion(deleted=True, blob_unreferenced=remaining == 0)

    def drop_stale_pins(self, tenant: str, dataset_id: str, job_ids: Iterable[str]) -> None:
        members = list(job_ids)
        if members:
            self._redis.srem(dataset_pins_key(tenant, dataset_id), *members)

    def pin_datasets(self, tenant: str, job_id: str, dataset_ids: Sequence[str]) -> list[str]:
        """Mark the datasets as read by an unfinished job; return those that no longer exist.

        The pin is written before the existence check, and DELETE checks pins before it
        removes a record (atomically): whichever comes second sees the other.
        """
        with self._redis.pipeline() as pipe:
            for dataset_id in dataset_ids:
                pipe.sadd(dataset_pins_key(tenant, dataset_id), job_id)
            for dataset_id in dataset_ids:
                pipe.exists(dataset_key(tenant, dataset_id))
            replies = pipe.execute()
        exists = replies[len(dataset_ids) :]
        missing = [d for d, found in zip(dataset_ids, exists, strict=True) if not found]
        if missing:
            self.unpin_datasets(tenant, job_id, dataset_ids)
        return missing

    def unpin_datasets(self, tenant: str, job_id: str, dataset_ids: Sequence[str]) -> None:
        with self._redis.pipeline() as pipe:
            for dataset_id in dataset_ids:
                pipe.srem(dataset_pins_key(tenant, dataset_id), job_id)
            pipe.execute()
