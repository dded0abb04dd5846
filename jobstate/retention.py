"""Removing blob files once nothing references them.

A blob may be an uploaded dataset (referenced by dataset records, possibly of several
tenants) and, in principle, a graph too (referenced by results until they expire). It
is removed only when neither holds, under the blob's lock so that an upload of the same
bytes cannot slip in between the check and the removal.
"""

from __future__ import annotations

import logging

from jobstate.blobs import BlobStore
from jobstate.store import Store

logger = logging.getLogger(__name__)


def remove_blob_if_unreferenced(store: Store, blobs: BlobStore, sha256: str) -> bool:
    with store.blob_lock(sha256):
        graph_is_live = store.graph_blob_is_live(sha256)
        if not graph_is_live:
            store.forget_graph_blob(sha256)
        if graph_is_live or store.blob_has_datasets(sha256):
            return False
        blobs.remove(sha256)
        return True


def sweep_expired_graphs(store: Store, blobs: BlobStore, *, limit: int = 100) -> int:
    """Remove graph blobs whose results have all expired; return how many went."""
    removed = 0
    for sha256 in store.expired_graph_blobs(limit=limit):
        if remove_blob_if_unreferenced(store, blobs, sha256):
            removed += 1
    if removed:
        logger.info("removed %d expired graph blobs", removed)
    return removed
