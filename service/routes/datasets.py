"""/v1/datasets: upload a file of arrays, read its record, delete it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, Response, status
from starlette.requests import ClientDisconnect

from api_schemas import DatasetList, DatasetOut
from api_schemas.datasets import DatasetFormat
from service.datasets import CSV_FORMAT_NAMES, CSV_MEDIA_TYPES, csv_not_supported
from service.deps import CurrentTenant, DatasetServiceDep
from service.errors import (
    ProblemError,
    media_type_of,
    problem_responses,
    unsupported_media_type,
)

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

UPLOAD_MEDIA_TYPE = "application/octet-stream"


async def _body_chunks(request: Request) -> AsyncIterator[bytes]:
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect:
        raise ProblemError(
            400, "The client closed the connection before the upload finished."
        ) from None


def _declared_length(content_length: str | None) -> int | None:
    if content_length is None:
        return None
    try:
        return int(content_length)
    except ValueError:
        raise ProblemError(400, "Content-Length is not a number.") from None


async def refuse_csv(request: Request, _: CurrentTenant) -> None:
    """Say how to convert a CSV upload, before the generic answers to its Content-Type
    (415) or its format (422) would; after authentication, like every other answer."""
    content_type = request.headers.get("content-type")
    if media_type_of(content_type) in CSV_MEDIA_TYPES:
        raise csv_not_supported(
            status=415, field="header.Content-Type", got=f"Content-Type: {content_type}"
        )
    fmt = request.query_params.get("format")
    if fmt is not None and fmt.strip().lower() in CSV_FORMAT_NAMES:
        raise csv_not_supported(status=422, field="query.format", got=f"format={fmt}")


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetOut,
    summary="Upload a file of arrays (raw body)",
    description=(
        "Send the file as the raw request body with `Content-Type: application/octet-stream`."
        " The upload is streamed to disk, validated (parses, no pickles, supported dtypes, "
        "non-empty, finite floats) and stored by content: the same bytes give the same "
        "dataset (200 instead of 201). Models for `embed` jobs are uploaded the same way: "
        "`format=onnx`, `format=torchscript` (`torch.jit.save`) or `format=pt2` "
        "(`torch.export.save`). They list no arrays; each is read here as data, never "
        "loaded, and refused (422 naming the op and where it is) when it calls anything "
        "outside the op allow-list; the worker runs it only in its sandbox. Weights for a "
        "built-in family are `format=safetensors`. CSV is not accepted (a problem says "
        "how to convert it to npy or parquet)."
    ),
    dependencies=[Depends(refuse_csv)],
    responses={
        200: {"model": DatasetOut, "description": "These bytes were uploaded before."},
        **problem_responses(400, 401, 413, 415, 422),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {UPLOAD_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def upload_dataset(
    request: Request,
    response: Response,
    tenant: CurrentTenant,
    datasets: DatasetServiceDep,
    fmt: Annotated[DatasetFormat, Query(alias="format", description="How the file is encoded.")],
    content_type: Annotated[str | None, Header(include_in_schema=False)] = None,
    content_length: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> DatasetOut:
    if media_type_of(content_type) != UPLOAD_MEDIA_TYPE:
        raise unsupported_media_type(expected=UPLOAD_MEDIA_TYPE, got=content_type)
    upload = await datasets.upload(
        tenant=tenant,
        body=_body_chunks(request),
        declared_length=_declared_length(content_length),
        fmt=fmt,
    )
    response.status_code = status.HTTP_201_CREATED if upload.created else status.HTTP_200_OK
    response.headers["Location"] = f"/v1/datasets/{upload.dataset.id}"
    return upload.dataset.to_out()


@router.get(
    "",
    response_model=DatasetList,
    summary="The tenant's datasets, newest first",
    description=(
        "Pages of at most `limit` datasets, the most recently uploaded first (a repeated "
        "upload of the same bytes keeps its first place); pass `next_cursor` as `cursor` "
        "for the next page, until it is null."
    ),
    responses=problem_responses(401, 422),
)
def list_datasets(
    tenant: CurrentTenant,
    datasets: DatasetServiceDep,
    limit: Annotated[int, Query(ge=1, le=100, description="Datasets per page.")] = 20,
    cursor: Annotated[
        str | None, Query(max_length=64, description="`next_cursor` of the previous page.")
    ] = None,
) -> DatasetList:
    return datasets.list(tenant=tenant, limit=limit, cursor=cursor or None)


@router.get(
    "/{dataset_id}",
    response_model=DatasetOut,
    summary="A dataset's record",
    responses=problem_responses(401, 404),
)
def get_dataset(dataset_id: str, tenant: CurrentTenant, datasets: DatasetServiceDep) -> DatasetOut:
    return datasets.get(tenant=tenant, dataset_id=dataset_id).to_out()


@router.delete(
    "/{dataset_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete a dataset",
    description=(
        "Removes the tenant's record, and the file once no record uses it. Refused with 409 "
        "while an unfinished job of the tenant reads the dataset."
    ),
    responses=problem_responses(401, 404, 409),
)
def delete_dataset(dataset_id: str, tenant: CurrentTenant, datasets: DatasetServiceDep) -> Response:
    datasets.delete(tenant=tenant, dataset_id=dataset_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
