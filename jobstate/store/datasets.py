"""Dataset records and what keeps a blob file alive: the datasets that hold it, the
jobs that pin a dataset, the lifetimes of derived (graph) blobs, the lock held while a
blob file is created or removed, and each tenant's stored-bytes quota.

Each tenant's datasets are also indexed by creation time (`dataset_index_key`), for
listing newest first: the scripts that add and delete a record add and remove its entry
in the same step. An entry can still outlive its record (a re-upload that indexes its
record while a delete removes it, a record lost with Redis's memory): a listing drops
such entries as it meets them, as the job index drops those of expired jobs. Records
stored before the index existed are indexed once per tenant, by its first listing.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from redis.lock import Lock

from jobstate.records import DatasetRecord
from jobstate.store.base import StoreBase
from jobstate.store.keys import (
    GRAPH_BLOBS_KEY,
    blob_datasets_key,
    blob_lock_key,
    dataset_index_backfilled_key,
    dataset_index_key,
    dataset_key,
    dataset_pins_key,
    stored_bytes_key,
)

# Dataset records fetched per round trip while paging through the index.
_LIST_BATCH = 64
# Keys looked at per SCAN call while indexing a tenant's records for the first time.
_BACKFILL_SCAN_COUNT = 1000


class StoredBytesQuotaError(Exception):
    """Storing a dataset record would take its tenant past its stored-bytes quota."""

    def __init__(self, *, stored_bytes: int, size_bytes: int, limit: int) -> None:
        super().__init__(
            f"{stored_bytes} bytes stored, {size_bytes} more would pass the limit of {limit}"
        )
        self.stored_bytes = stored_bytes
        self.size_bytes = size_bytes
        self.limit = limit


def created_ms(created_at: datetime) -> int:
    """A record's creation time as its index score: unix milliseconds."""
    return int(created_at.timestamp() * 1000)


@dataclass(frozen=True)
class DatasetPosition:
    """Where a listing stopped: the last dataset it returned, by (creation ms, id)."""

    created_ms: int
    dataset_id: str


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
                dataset_index_key(record.tenant),
            ],
            args=[
                record.model_dump_json(),
                f"{record.tenant}/{record.id}",
                record.size_bytes,
                max_stored_bytes,
                record.id,
                created_ms(record.created_at),
            ],
        )
        if int(outcome) < 0:
            raise StoredBytesQuotaError(
                stored_bytes=int(value), size_bytes=record.size_bytes, limit=max_stored_bytes
            )
        stored = DatasetRecord.model_validate_json(value)
        if int(outcome) == 0:
            self.index_dataset(stored)
        return stored, int(outcome) == 1

    def index_dataset(self, record: DatasetRecord) -> None:
        """Make sure the tenant's index lists `record`, at its own creation time.

        For a record found again (the same bytes uploaded twice): one stored before the
        index existed gets its entry, one that has an entry keeps it (NX).
        """
        self._redis.zadd(
            dataset_index_key(record.tenant), {record.id: created_ms(record.created_at)}, nx=True
        )

    def list_datasets(
        self, tenant: str, *, limit: int, after: DatasetPosition | None = None
    ) -> tuple[list[DatasetRecord], DatasetPosition | None]:
        """The tenant's datasets, newest first, starting after `after`.

        Parameters
        ----------
        tenant
            Whose datasets; the index is per tenant, so no other tenant's can appear.
        limit
            Most records returned.
        after
            The position the previous page ended at (its last record), or None for the
            first page.

        Returns
        -------
        tuple[list[DatasetRecord], DatasetPosition | None]
            At most `limit` records, and the position to continue from when more follow.
        """
        self._backfill_dataset_index(tenant)
        index = dataset_index_key(tenant)
        position = after
        collected: list[DatasetRecord] = []
        gone: list[str] = []
        while len(collected) <= limit:
            batch = self._index_entries_after(index, position)
            if not batch:
                break
            with self._redis.pipeline() as pipe:
                for dataset_id, _ in batch:
                    pipe.get(dataset_key(tenant, dataset_id))
                records = pipe.execute()
            for (dataset_id, _), raw in zip(batch, records, strict=True):
                if raw is None:
                    gone.append(dataset_id)
                else:
                    collected.append(DatasetRecord.model_validate_json(raw))
            position = DatasetPosition(created_ms=batch[-1][1], dataset_id=batch[-1][0])
        if gone:
            self._redis.zrem(index, *gone)
        page = collected[:limit]
        more = len(collected) > limit and bool(page)
        next_position = (
            DatasetPosition(created_ms=created_ms(page[-1].created_at), dataset_id=page[-1].id)
            if more
            else None
        )
        return page, next_position

    def _index_entries_after(
        self, index: str, position: DatasetPosition | None
    ) -> list[tuple[str, int]]:
        """The next entries below `position`, newest first: ``(dataset id, created ms)``.

        Entries of the same millisecond come in descending id order (Redis orders equal
        scores by member), so those of the position's millisecond that follow it are the
        ones with a smaller id; then come the older milliseconds, a batch of them.
        """
        if position is None:
            ties: list[tuple[str, int]] = []
            upper = "+inf"
        else:
            same_ms = self._redis.zrevrangebyscore(index, position.created_ms, position.created_ms)
            ties = [
                (dataset_id, position.created_ms)
                for dataset_id in same_ms
                if dataset_id < position.dataset_id
            ]
            upper = f"({position.created_ms}"
        older = self._redis.zrevrangebyscore(
            index, upper, "-inf", start=0, num=_LIST_BATCH, withscores=True
        )
        return ties + [(dataset_id, int(score)) for dataset_id, score in older]

    def _backfill_dataset_index(self, tenant: str) -> None:
        """Index the tenant's records stored before the index existed (once per tenant).

        A SCAN of the keyspace, done by the tenant's first listing only: a marker key
        records that it was done. Entries are added with NX, so records indexed since
        keep theirs; one whose record a delete removes meanwhile is dropped by a listing.
        """
        marker = dataset_index_backfilled_key(tenant)
        if self._redis.exists(marker):
            return
        prefix = dataset_key(tenant, "")
        found: dict[str, int] = {}
        for key in self._redis.scan_iter(match=f"{prefix}*", count=_BACKFILL_SCAN_COUNT):
            dataset_id = key[len(prefix) :]
            if ":" in dataset_id:  # a pin set, `...:dataset:{id}:jobs`
                continue
            raw = self._redis.get(key)
            if raw is not None:
                found[dataset_id] = created_ms(DatasetRecord.model_validate_json(raw).created_at)
        if found:
            self._redis.zadd(dataset_index_key(tenant), found, nx=True)
        self._redis.set(marker, "1")

    def stored_bytes(self, tenant: str) -> int:
        """Bytes of the tenant's dataset records (their files' sizes, summed)."""
        return int(self._redis.get(stored_bytes_key(tenant)) or 0)

    def delete_dataset(self, tenant: str, dataset_id: str, sha256: str) -> DatasetDeletion:
        keys = [
            dataset_key(tenant, dataset_id),
            dataset_pins_key(tenant, dataset_id),
            blob_datasets_key(sha256),
            stored_bytes_key(tenant),
            dataset_index_key(tenant),
        ]
        remaining = int(
            self._scripts.delete_dataset(keys=keys, args=[f"{tenant}/{dataset_id}", dataset_id])
        )
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
