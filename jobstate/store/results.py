"""Result records, and the cache that maps a tenant's inputs to the result they gave."""

from __future__ import annotations

import json
from datetime import datetime

from jobstate.records import GraphFiles, ResultRecord
from jobstate.store.datasets import BlobReferenceStore
from jobstate.store.keys import job_key, result_cache_key, result_key


class ResultStore(BlobReferenceStore):
    """Results and the result cache; a live result keeps its graph blobs alive."""

    def put_result(
        self,
        tenant: str,
        result: ResultRecord,
        *,
        only_if_absent: bool = False,
        fence: tuple[str, int] | None = None,
    ) -> bool:
        """Store a result; with `only_if_absent`, keep the one stored first (False then).

        Two copies of one job's last step may race (a redelivered message); the first
        result stays, so its report and ETag never change once a client has seen them.
        With `fence` = (job id, attempt) the result is stored only while the job runs as
        that attempt (False otherwise): a stale attempt stores nothing.
        """
        if fence is not None:
            only_if_absent = True
        key = result_key(tenant, result.id)
        graphs = {name: files.model_dump() for name, files in result.graphs.items()}
        graphs_json = json.dumps(graphs, separators=(",", ":"))
        if only_if_absent:
            job_id, attempt = fence if fence is not None else ("", 0)
            stored = self._scripts.put_result_once(
                keys=[key, job_key(tenant, job_id)] if fence is not None else [key],
                args=[
                    result.report_json,
                    result.etag,
                    graphs_json,
                    result.created_at.isoformat(),
                    self.result_ttl_s,
                    result.page or "",
                    *([str(attempt)] if fence is not None else []),
                ],
            )
            return int(stored) == 1
        with self._redis.pipeline() as pipe:
            pipe.hset(
                key,
                mapping={
                    "report": result.report_json,
                    "etag": result.etag,
                    "graphs": graphs_json,
                    "created_at": result.created_at.isoformat(),
                    "page": result.page or "",
                },
            )
            pipe.expire(key, self.result_ttl_s)
            pipe.execute()
        return True

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

    def remember_result(self, tenant: str, cache_key: str, result_id: str) -> None:
        self._redis.set(result_cache_key(tenant, cache_key), result_id, ex=self.result_ttl_s)

    def cached_result(self, tenant: str, cache_key: str) -> ResultRecord | None:
        """The tenant's live result for these inputs, its lifetime renewed; else None."""
        result_id = self._redis.get(result_cache_key(tenant, cache_key))
        if result_id is None:
            return None
        result = self.get_result(tenant, result_id)
        if result is None:
            return None
        with self._redis.pipeline() as pipe:
            pipe.expire(result_cache_key(tenant, cache_key), self.result_ttl_s)
            pipe.expire(result_key(tenant, result_id), self.result_ttl_s)
            pipe.execute()
        self.register_graph_blobs(result.blob_sha256s())
        return result
