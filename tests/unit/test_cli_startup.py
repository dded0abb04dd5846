"""``nnkgeo`` starts light even where the engine is installed: its help loads no numeric
library and no HTTP client.

Each command line runs in a fresh interpreter (this process has torch and numba loaded
by other tests), which reports the modules it left in ``sys.modules``. The start-up time
itself is measured outside the tests (``time nnkgeo --help``), where a busy machine
cannot fail it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# What the parser must not import: the engine's libraries (seconds: torch alone is ~2 s)
# and the client's transport (httpx, with the rich and click it imports when present),
# which only a command that talks to the service needs, when it runs.
HEAVY = ("torch", "faiss", "numba", "scipy", "numpy", "sklearn", "httpx", "rich")

_PROBE = """
import contextlib, io, json, sys
from nnkgeo.cli import main
with contextlib.redirect_stdout(io.StringIO()) as shown:
    try:
        main(sys.argv[1:])
    except SystemExit as exit:
        status = exit.code
print(json.dumps({"status": status, "help": shown.getvalue(),
                  "loaded": sorted({name.partition(".")[0] for name in sys.modules})}))
"""


def _help_of(*argv: str) -> dict:
    completed = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "argv",
    [
        ("--help",),
        ("analyze", "--help"),
        ("study", "--help"),
        ("upload", "--help"),
        ("submit", "--help"),
        ("jobs", "--help"),
        ("wait", "--help"),
        ("check", "--help"),
    ],
    ids=lambda argv: " ".join(argv),
)
def test_help_loads_no_numeric_library_and_no_http_client(argv: tuple[str, ...]) -> None:
    shown = _help_of(*argv)
    assert shown["status"] == 0
    assert shown["help"].startswith("usage: nnkgeo"), shown["help"][:200]
    assert not set(HEAVY) & set(shown["loaded"]), sorted(set(HEAVY) & set(shown["loaded"]))


def test_upload_still_offers_every_upload_format() -> None:
    """``upload --format`` takes its choices from the wire contract, not from the client."""
    from typing import get_args

    from nnkgeo.client import UploadFormat

    shown = _help_of("upload", "--help")["help"]
    assert "{" + ",".join(get_args(UploadFormat)) + "}" in shown.replace("\n", "").replace(" ", "")
