"""How problems name fields (one style), and what the upload path takes for CSV text."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest

from service.datasets import looks_like_csv
from service.errors import field_path

BODY = {
    "sets": [
        {"name": "layer4", "embeddings": {"dataset": "ds_x"}},
        {"name": "../bad", "embeddings": {"dataset": "ds_y"}},
        {"embeddings": {"dataset": "ds_z"}},
    ],
    "study": {"model": {"widths": [8, 16]}},
}


@pytest.mark.parametrize(
    ("location", "body", "path"),
    [
        (("body", "sets", 0, "embeddings", "dataset"), BODY, "sets[layer4].embeddings.dataset"),
        (("body", "sets", 1, "name"), BODY, "sets[1].name"),
        (("body", "sets", 2, "name"), BODY, "sets[2].name"),
        (("body", "sets", 7, "name"), BODY, "sets[7].name"),
        (("body", "sets", 0, "embeddings"), None, "sets[0].embeddings"),
        (("body", "study", "model", "widths", 1), BODY, "study.model.widths[1]"),
        (
            ("body", "embed", "model", "torchscript", "dataset"),
            {},
            "embed.model.torchscript.dataset",
        ),
        (("body", "sets"), BODY, "sets"),
        (("query", "limit"), None, "query.limit"),
        (("body",), BODY, "body"),
        ((), None, "body"),
    ],
)
def test_a_field_path_has_dots_for_members_and_brackets_for_items(
    location: tuple, body: object, path: str
) -> None:
    assert field_path(location, body) == path


def _npy() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ones((4, 3), np.float32))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("head", "is_csv"),
    [
        (b"1.0,2.0,3.0\n4.0,5.0,6.0\n", True),
        (b"x,y,label\n0.5,-1e-3,2\n", True),
        (b"1\t2\t3\n4\t5\t6", True),
        (b"0.1;0.2\n0.3;0.4\n", True),
        (b"1.5,2.5,3.5\n" * 1000, True),
        (b"nan,inf,-inf\n1,2,3\n", True),
        (_npy(), False),
        (pickle.dumps([1.0, 2.0]), False),
        (b"PAR1" + b"\x00" * 60, False),
        (b"\xff" * 64, False),
        (b"hello world\n", False),
        (b'{"a": [1, 2]}', False),
        (b"a,b,c\n", False),
        (b"", False),
    ],
)
def test_csv_text_is_told_from_the_binary_formats(head: bytes, is_csv: bool) -> None:
    assert looks_like_csv(head[:4096]) is is_csv
