"""nnkgeo.integrations.wandb: a real report logged into an offline W&B run and read back.

W&B's offline mode writes the run to ``<WANDB_DIR>/wandb/offline-run-*/``: every summary,
config and history update as a protobuf ``Record`` in ``run-<id>.wandb`` (a LevelDB-style
log, read here with the small reader below: wandb 0.31 ships no Python reader), and each
table as JSON under ``files/media/table/``. The tests read both back and compare them with
the report's own numbers.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_digits

from api_schemas import AnalysisParams, Report
from nnkgeo.integrations.wandb import log_report
from tests.unit.reference import headline_metrics_of
from workers.geometry import EmbeddingSet, analyze

PROJECTED = "pca:16/whitened"  # a "/" would nest sections: logged as pca:16_whitened
PROJECTED_KEY = "pca:16_whitened"


@pytest.fixture(scope="module")
def report() -> Report:
    """Digits in two spaces (the pixels, and a whitened 16-d projection), labelled, k=10."""
    x, y = load_digits(return_X_y=True)
    x, y = x[:600].astype(np.float32), y[:600]
    centred = x - x.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    projected = (centred @ vt[:16].T / singular[:16]).astype(np.float32)
    sets = [EmbeddingSet("pixels", x, y), EmbeddingSet(PROJECTED, projected, y)]
    return analyze(sets, params=AnalysisParams(k=10, device="cpu")).report


@pytest.fixture
def offline(tmp_path, monkeypatch) -> Path:
    """W&B in offline mode, writing under tmp_path; no run left active afterwards."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    # W&B's staging of tables, its cache and its settings file: in tmp_path too, not $HOME.
    for variable, folder in (
        ("WANDB_DATA_DIR", "data"),
        ("WANDB_CACHE_DIR", "cache"),
        ("WANDB_CONFIG_DIR", "config"),
    ):
        monkeypatch.setenv(variable, str(tmp_path / folder))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_PROJECT", "nnkgeo-test")
    assert wandb.run is None
    yield tmp_path
    if wandb.run is not None:
        wandb.run.finish()
    # W&B reads its environment once per process, at its first setup: forget it, so that
    # the next test's WANDB_DIR is read.
    wandb.teardown()


# --- reading an offline run back ------------------------------------------------------

_BLOCK = 32768  # LevelDB log blocks; each record fragment has a 7-byte header
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(path: Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2

    raw = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", raw[:7])
    assert (ident, magic) == (b":W&B", 0xBEE1), "not a W&B transaction log"
    position, pending, records = 7, b"", []
    while position + 7 <= len(raw):
        left = _BLOCK - position % _BLOCK
        if left < 7:  # a block's tail too short for a header is zero padding
            position += left
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[position : position + 7])
        data = raw[position + 7 : position + 7 + length]
        position += 7 + length
        if kind == _FULL:
            records.append(data)
        elif kind == _FIRST:
            pending = data
        elif kind == _MIDDLE:
            pending += data
        elif kind == _LAST:
            records.append(pending + data)
        else:
            position += left - 7 - length  # padding up to the next block
    parsed = []
    for data in records:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        parsed.append(record)
    return parsed


def _updates(records: list[Any], kind: str) -> dict[tuple[str, ...], Any]:
    """The last value of each key of the run's summary (or config), as a path tuple."""
    values: dict[tuple[str, ...], Any] = {}
    for record in records:
        if record.WhichOneof("record_type") != kind:
            continue
        for item in getattr(record, kind).update:
            path = (item.key,) if item.key else tuple(item.nested_key)
            values[path] = json.loads(item.value_json)
    return values


def _history(records: list[Any]) -> list[dict[str, Any]]:
    rows = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            row = {}
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            rows.append(row)
    return rows


def _run_dir(root: Path) -> Path:
    (run_dir,) = (root / "wandb").glob("offline-run-*")
    return run_dir


def _finished(run: Any, root: Path) -> tuple[Path, list[Any]]:
    """End the run and read its log back: its directory and its records.

    ``run.finish()`` can return before W&B's service has written the log's last block;
    ``wandb.teardown()`` waits for the service to stop, so the log is whole (its exit
    record is there).
    """
    import wandb

    run.finish()
    wandb.teardown()
    run_dir = _run_dir(root)
    records = _records(next(run_dir.glob("run-*.wandb")))
    assert [r for r in records if r.WhichOneof("record_type") == "exit"], "a truncated log"
    return run_dir, records


def _table(run_dir: Path, summary: dict[tuple[str, ...], Any], key: str) -> dict[str, Any]:
    """The JSON of the table the summary names under ``key``."""
    assert summary[(key, "_type")] == "table-file", key
    return json.loads((run_dir / "files" / summary[(key, "path")]).read_text())


# --- the tests --------------------------------------------------------------------------


def test_metrics_plots_and_suspects_read_back_equal_the_report(report, offline):
    import wandb

    run = log_report(report)

    assert wandb.run is run  # none was active: one was started, and left running
    run_dir, records = _finished(run, offline)
    summary = _updates(records, "summary")
    pixels, projected = report.sets

    for name, set_report in (("pixels", pixels), (PROJECTED_KEY, projected)):
        expected = headline_metrics_of(set_report)
        logged = {
            path[0].removeprefix(f"{name}/"): value
            for path, value in summary.items()
            if len(path) == 1 and path[0].startswith(f"{name}/") and path[0] != f"{name}/regime"
        }
        assert logged == expected, name
        assert summary[(f"{name}/regime",)] == set_report.regime
    assert summary[("pixels/loo_error.nnk_weighted",)] == pixels.loo_error.nnk_weighted
    # One step holds the whole report.
    (row,) = _history(records)
    assert row["pixels/nnk_degree.mean"] == pixels.nnk_degree.mean

    # The suspects of both sets, as one table, in the report's order.
    suspects = _table(run_dir, summary, "suspects")
    assert suspects["columns"] == ["set", "index", "id", "label", "predicted", "score"]
    assert suspects["data"] == [
        [set_report.name, s.index, s.id, s.label, s.predicted, s.score]
        for set_report in report.sets
        for s in set_report.suspects
    ]
    assert len(suspects["data"]) == len(pixels.suspects) + len(projected.suspects) > 0

    # One line plot per headline metric, over the sets in the report's order.
    config = _updates(records, "config")
    plots = {
        path[2]: json.loads(value) if isinstance(value, str) else value
        for path, value in config.items()
        if path[:2] == ("_wandb", "visualize")
    }
    assert set(plots) == {f"comparison/{metric}" for metric in headline_metrics_of(pixels)}
    for metric in headline_metrics_of(pixels):
        panel = plots[f"comparison/{metric}"]["panel_config"]
        assert panel["panelDefId"] == "wandb/line/v0"
        assert panel["fieldSettings"] == {"x": "set_index", "y": metric, "stroke": None}
        table = _table(run_dir, summary, f"comparison/{metric}_table")
        assert table["columns"] == ["set_index", "set", metric]
        assert table["data"] == [
            [0, "pixels", headline_metrics_of(pixels)[metric]],
            [1, PROJECTED, headline_metrics_of(projected)[metric]],
        ]

    assert config[("nnkgeo",)]["algorithm_version"] == report.algorithm_version
    assert config[("nnkgeo",)]["params"]["k"] == 10


def test_a_given_run_a_prefix_and_steps_make_a_history(report, offline):
    import wandb

    run = wandb.init()
    later = report.model_dump(mode="json")  # a dict, as read from report.json
    later["sets"][0]["loo_error"]["nnk_weighted"] = 0.5
    later["sets"][1]["name"] = "comparison"  # a reserved section: logged as comparison_2

    assert log_report(report, run, prefix="val/", step=3) is run
    assert log_report(later, run=run, prefix="val", step=4) is run

    run_dir, records = _finished(run, offline)
    history = _history(records)
    key = "val/pixels/loo_error.nnk_weighted"
    assert [(row["_step"], row[key]) for row in history] == [
        (3, report.sets[0].loo_error.nnk_weighted),
        (4, 0.5),
    ]
    summary = _updates(records, "summary")
    assert summary[(key,)] == 0.5
    assert summary[("val/comparison_2/nnk_degree.mean",)] == report.sets[1].nnk_degree.mean
    assert summary[("val/comparison/nnk_degree.mean_table", "_type")] == "table-file"
    assert len(list((run_dir / "files").rglob("*.table.json"))) > 2


def test_a_single_set_logs_no_comparison(report, offline):
    single = report.model_dump(mode="json")
    single["sets"] = single["sets"][:1]
    single["comparison"] = None

    run = log_report(single)

    _, records = _finished(run, offline)
    summary = _updates(records, "summary")
    assert not any(path[0].startswith("comparison/") for path in summary)
    assert summary[("pixels/nnk_degree.median",)] == report.sets[0].nnk_degree.median


def test_missing_wandb_says_how_to_install_it(report, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` fail
    with pytest.raises(ImportError, match=r"pip install 'nnkgeo\[wandb\]'"):
        log_report(report)


def test_bad_arguments_are_refused_before_anything_is_logged(report):
    with pytest.raises(TypeError, match="step"):
        log_report(report, step=1.5)
    with pytest.raises(TypeError, match="report"):
        log_report(42)


def test_importing_the_integration_does_not_import_wandb():
    code = (
        "import sys, nnkgeo, nnkgeo.integrations, nnkgeo.integrations.wandb\n"
        "assert 'wandb' not in sys.modules, 'wandb imported'\n"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, timeout=60)
