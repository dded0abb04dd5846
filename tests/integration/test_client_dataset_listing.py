"""Listing datasets, newest first, a page at a time: ``Client.datasets``, ``iter_datasets``
(sync and async) and ``nnkgeo datasets``, against the real service."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest

from api_schemas import DatasetList, DatasetOut
from nnkgeo.cli import main
from nnkgeo.client import AsyncClient, Client
from tests.integration.stack import TENANT_KEYS, ServiceStack

pytestmark = pytest.mark.integration

BETA_KEY = TENANT_KEYS["beta"]


@pytest.fixture(scope="module")
def nnk(stack: ServiceStack) -> Iterator[Client]:
    with Client(stack.base_url, BETA_KEY) as client:
        yield client


@pytest.fixture(scope="module")
def uploaded(nnk: Client) -> list[DatasetOut]:
    """Three new datasets of tenant beta, uploaded oldest to newest."""
    rng = np.random.default_rng()  # new bytes each run: never an earlier upload
    return [
        nnk.upload(rng.standard_normal((5 + index, 3)).astype(np.float32)) for index in range(3)
    ]


def test_pages_list_the_newest_dataset_first(nnk: Client, uploaded: list[DatasetOut]) -> None:
    first_page = nnk.datasets(limit=2)
    assert first_page.next_cursor is not None
    second_page = nnk.datasets(limit=2, cursor=first_page.next_cursor)
    every_dataset = list(nnk.iter_datasets(page_size=2))

    newest_first = [dataset.id for dataset in reversed(uploaded)]
    assert [dataset.id for dataset in first_page.items] == newest_first[:2]
    assert second_page.items[0].id == newest_first[2]
    assert [dataset.id for dataset in every_dataset[:3]] == newest_first
    assert len({dataset.id for dataset in every_dataset}) == len(every_dataset)
    assert every_dataset[0] == uploaded[-1]  # the same record as the upload answered


def test_another_tenants_datasets_are_not_listed(
    stack: ServiceStack, uploaded: list[DatasetOut]
) -> None:
    with Client(stack.base_url, TENANT_KEYS["alpha"]) as alpha:
        listed = {dataset.id for dataset in alpha.iter_datasets()}

    assert listed.isdisjoint(dataset.id for dataset in uploaded)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_the_async_client_lists_the_same_pages(
    stack: ServiceStack, nnk: Client, uploaded: list[DatasetOut]
) -> None:
    async with AsyncClient(stack.base_url, BETA_KEY) as client:
        page = await client.datasets(limit=2)
        every_dataset = [dataset async for dataset in client.iter_datasets(page_size=2)]

    assert page == nnk.datasets(limit=2)
    assert every_dataset == list(nnk.iter_datasets(page_size=2))


def test_nnkgeo_datasets_prints_a_table_or_the_json_pages(
    stack: ServiceStack,
    nnk: Client,
    uploaded: list[DatasetOut],
    capsys: pytest.CaptureFixture[str],
) -> None:
    connection = ["--url", stack.base_url, "--api-key", BETA_KEY]

    def nnkgeo(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        status = main([*argv, *connection])
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    table = nnkgeo("datasets", "--limit", "2")
    as_json = nnkgeo("datasets", "--limit", "2", "--json")
    every_dataset = nnkgeo("datasets", "--all", "--json")
    refused = nnkgeo("datasets", "--limit", "0")

    assert table[0] == as_json[0] == every_dataset[0] == 0
    page = DatasetList.model_validate(json.loads(as_json[1]))
    assert page == nnk.datasets(limit=2)
    rows = table[1].splitlines()
    assert [row.split()[0] for row in rows] == [dataset.id for dataset in page.items]
    newest = uploaded[-1]
    assert rows[0].split()[1:3] == ["npy", f"{newest.size_bytes:,}"]
    assert rows[0].endswith("array: float32 [7, 3]")
    assert table[2] == f"more: nnkgeo datasets --cursor {page.next_cursor}\n"
    listed = [item["id"] for item in json.loads(every_dataset[1])["items"]]
    assert listed == [dataset.id for dataset in nnk.iter_datasets()]
    assert json.loads(every_dataset[1])["next_cursor"] is None
    assert refused[0] == 2 and refused[2].startswith("nnkgeo: error: 422 ")
