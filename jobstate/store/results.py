"""Result records, and the cache that maps a tenant's inputs to the result they gave."""

from __future__ import annotations

import json
import time
from datetime import datetime
from enum import IntEnum

from jobstate.records import GraphFiles, ResultRecord
from jobstate.store.datasets import BlobReferenceStore
from jobstate.store.keys import GRAPH_BLOBS_KEY, job_key, result_cache_key, result_key


class PutResultOutcome(IntEnum):
    """What `ResultStore.put_result` did (the script's reply)."""

    stored = 1
    kept_first = 0  # a copy of the same attempt stored its result first
    stale = -1  # the job no longer runs as this attempt


class ResultStore(BlobReferenceStore):
    """Results and the result cache; a live result keeps its graph blobs alive."""

    def put_result(
        self,
        tenant: str,
        result: ResultRecord,
        *,
        attempt: int,
        cache_key: str | None = None,
    ) -> PutResultOutcome:
        """Store the result of the job's `attempt`, with its blobs' lifetimes and cache entry.

        The result, the lifetimes of every blob it names and (with `cache_key`) the cache
        entry that leads to it are written in one script, all to expire together, and only
        while the job runs as `attempt`: a stale attempt stores nothing. Two copies of one
        attempt's last step may race (a redelivered assembly); the first result stays, so
        its report and ETag never change once a client has seen them.
        """
        graphs = {name: files.model_dump() for name, files in result.graphs.items()}
        keys = [result_key(tenant, result.id), job_key(tenant, result.id), GRAPH_BLOBS_KEY]
        if cache_key is not None:
            keys.append(result_cache_key(tenant, cache_key))
        reply = self._scripts.put_result(
            keys=keys,
            args=[
                result.report_json,
                result.etag,
                json.dumps(graphs, separators=(",", ":")),
                result.created_at.isoformat(),
                self.result_ttl_s,
                result.page or "",
                str(attempt),
                repr(time.time()),
                result.id,
                *result.blob_sha256s(),
            ],
        )
        return PutResultOutcome(int(reply))

    def get_result(self, tenant: str, result_id: str) -> ResultRecord | None:
        fields: dict[str, str] = self._redis.hgetall(result_key(tenant, result_id))
        if not fields:
            return None
        return ResultRecord(
            id=result_id,
            report_json=fields["report"],
            etag=fields["etag"],
            graphs={
                name: GraphFiles.model_validate(files)
                for name, files in json.loads(fields["graphs"]).items()
            },
            created_at=datetime.fromisoformat(fields["created_at"]),
            page=fields.get("page") or None,
        )

    def cached_result(self, tenant: str, cache_key: str) -> ResultRecord | None:
        """The tenant's live result for these inputs, its lifetime renewed; else None.

        The cache entry, the result and every blob it names are extended together.
        """
        entry = result_cache_key(tenant, cache_key)
        result_id = self._redis.get(entry)
        if result_id is None:
            return None
        result = self.get_result(tenant, result_id)
        if result is None:
            return None
        extended = self._scripts.extend_result(
            keys=[entry, result_key(tenant, result_id), GRAPH_BLOBS_KEY],
            args=[self.result_ttl_s, repr(time.time()), *result.blob_sha256s()],
        )
        return result if int(extended) == 1 else None
