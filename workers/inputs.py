"""Reading a job's sets from the blob store, memory-mapped and bounded."""

from __future__ import annotations

from typing import Any

from arrayfiles import ArrayFileError, ArrayTooLargeError, load_array
from jobstate.blobs import BlobStore
from jobstate.errors import InvalidInputError
from jobstate.records import SetInput
from workers.geometry import EmbeddingSet


def load_set(blobs: BlobStore, set_input: SetInput, *, max_array_bytes: int) -> EmbeddingSet:
    """Read a set's arrays from the blob store, none past ``max_array_bytes`` decompressed.

    The limit (NNKGEO_MAX_ARRAY_BYTES) is enforced again here although uploads were checked
    against it, since the operator may have lowered it since. A refusal names the set's
    array, and fails the job with a 422.

    Parameters
    ----------
    blobs : BlobStore
        Where the uploads are.
    set_input : SetInput
        The set's arrays, as the job recorded them at submission.
    max_array_bytes : int
        The most one array may hold, decompressed.

    Returns
    -------
    EmbeddingSet
        Its arrays (the query points' too) memory-mapped where the format allows.

    Raises
    ------
    InvalidInputError
        When an upload was deleted, is too large or cannot be read; ``field`` names the
        set's array.
    """

    def load(which: str) -> Any:
        array_input = getattr(set_input, which)
        if array_input is None:
            return None
        # The request's names: sets[name].query.embeddings for query_embeddings.
        field = f"sets[{set_input.name}].{which.replace('query_', 'query.')}"
        path = blobs.path_of(array_input.sha256)
        if not path.is_file():
            raise InvalidInputError(
                field,
                f"dataset {array_input.dataset} was deleted before the job ran; upload it again",
            )
        try:
            return load_array(
                path,
                fmt=array_input.format,
                name=array_input.array,
                mmap=True,
                max_array_bytes=max_array_bytes,
            )
        except ArrayTooLargeError as error:
            raise InvalidInputError(
                field,
                f"dataset {array_input.dataset}: {error.message} (NNKGEO_MAX_ARRAY_BYTES)",
            ) from None
        except ArrayFileError as error:
            raise InvalidInputError(
                field, f"dataset {array_input.dataset}: {error.message}"
            ) from None

    return EmbeddingSet(
        name=set_input.name,
        embeddings=load("embeddings"),
        labels=load("labels"),
        ids=load("ids"),
        query_embeddings=load("query_embeddings"),
        query_labels=load("query_labels"),
    )
