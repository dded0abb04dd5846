"""``nnkgeo analyze`` as a user runs it: real files, a real process, exit statuses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
from safetensors.numpy import save_file
from sklearn.datasets import load_digits

from api_schemas import AnalysisParams, Report
from workers.geometry import EmbeddingSet, analyze

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nnkgeo", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits")
    data = load_digits()
    points = data.data.astype(np.float32)
    np.save(folder / "pixels.npy", points)
    np.save(folder / "labels.npy", data.target)
    np.save(folder / "halved.npy", points[:, ::2].copy())
    return folder, points, data.target


def _without_timings(report: dict) -> dict:
    for entry in report["sets"]:
        entry.pop("timings")
    return report


def test_analyze_writes_the_engines_report_and_graphs(digits, tmp_path):
    folder, points, labels = digits
    completed = _run(
        "analyze",
        str(folder / "pixels.npy"),
        str(folder / "halved.npy"),
        "--labels",
        str(folder / "labels.npy"),
        "--k",
        "20",
        "--out",
        str(tmp_path / "report.json"),
        "--graph",
        str(tmp_path / "A.npz"),
        "--directed-graph",
        str(tmp_path / "W.npz"),
        "--html",
        str(tmp_path / "report.html"),
    )
    assert completed.returncode == 0, completed.stderr
    assert "solve" in completed.stderr and "regime" in completed.stderr
    page = (tmp_path / "report.html").read_text()
    assert page.lower().startswith("<!doctype html>") and "halved" in page and "<svg" in page
    assert "Not available" not in page  # the CLI has the embeddings: the 2-D map is drawn
    written = json.loads((tmp_path / "report.json").read_text())
    Report.model_validate(written)
    expected = analyze(
        [EmbeddingSet("pixels", points, labels), EmbeddingSet("halved", points[:, ::2], labels)],
        params=AnalysisParams(k=20),
    )
    assert _without_timings(written) == _without_timings(
        json.loads(expected.report.model_dump_json())
    )
    for name in ("pixels", "halved"):
        symmetric = sp.load_npz(tmp_path / f"A-{name}.npz")
        directed = sp.load_npz(tmp_path / f"W-{name}.npz")
        assert (symmetric != expected.sets[name].symmetric).nnz == 0
        assert (directed != expected.sets[name].directed).nnz == 0


@pytest.mark.parametrize("fmt", ["npz", "safetensors", "parquet-list", "parquet-columns"])
def test_analyze_reads_every_format(digits, tmp_path, fmt):
    _, points, labels = digits
    points, labels = points[:300], labels[:300]
    if fmt == "npz":
        path = tmp_path / "emb.npz"
        np.savez(path, emb=points, y=labels)
        extra = ["--array", "emb", "--labels", str(path), "--labels-array", "y"]
    elif fmt == "safetensors":
        path = tmp_path / "emb.safetensors"
        save_file({"emb": points, "y": labels.astype(np.int64)}, str(path))
        extra = ["--array", "emb", "--labels", str(path), "--labels-array", "y"]
    elif fmt == "parquet-list":
        path = tmp_path / "emb.parquet"
        table = pa.table(
            {
                "emb": pa.FixedSizeListArray.from_arrays(pa.array(points.ravel()), points.shape[1]),
                "y": labels,
            }
        )
        pq.write_table(table, path)
        extra = ["--array", "emb", "--labels", str(path), "--labels-array", "y"]
    else:
        path = tmp_path / "emb.parquet"
        columns = {f"d{i}": points[:, i] + 0.5 for i in range(points.shape[1])}
        pq.write_table(pa.table({**columns, "y": labels}), path)
        points = points + 0.5
        extra = ["--array", "__columns__", "--labels", str(path), "--labels-array", "y"]
    completed = _run(
        "analyze", str(path), *extra, "--k", "10", "--quiet", "--out", str(tmp_path / "r.json")
    )
    assert completed.returncode == 0, completed.stderr
    written = json.loads((tmp_path / "r.json").read_text())["sets"][0]
    expected = analyze([EmbeddingSet("emb", points, labels)], params=AnalysisParams(k=10))
    assert written["loo_error"] == expected.report.sets[0].loo_error.model_dump()
    assert written["nnk_degree"]["histogram"] == expected.report.sets[0].nnk_degree.histogram


def _bad_inputs(folder: Path) -> dict[str, tuple[list[str], str]]:
    rng = np.random.default_rng(0)
    good = rng.standard_normal((20, 4)).astype(np.float32)
    with_nan = good.copy()
    with_nan[3, 1] = np.nan
    with_inf = good.copy()
    with_inf[5, 0] = np.inf
    with_zero = good.copy()
    with_zero[7] = 0
    files = {
        "nan.npy": with_nan,
        "inf.npy": with_inf,
        "zero.npy": with_zero,
        "good.npy": good,
        "tiny.npy": good[:2],
        "labels_short.npy": np.arange(19),
    }
    for name, array in files.items():
        np.save(folder / name, array)
    np.save(folder / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (folder / "ragged.parquet").write_bytes(b"")
    pq.write_table(
        pa.table({"emb": pa.array([[1.0, 2.0], [3.0], [4.0, 5.0]])}), folder / "ragged.parquet"
    )
    np.save(folder / "strings.npy", np.array([["a", "b"]] * 20))
    g = str(folder / "good.npy")
    return {
        "nan": ([str(folder / "nan.npy")], "NaN or Inf"),
        "inf": ([str(folder / "inf.npy")], "NaN or Inf"),
        "zero vector": ([str(folder / "zero.npy")], "zero vector"),
        "k >= N": ([g, "--k", "20"], "smaller than the number of points"),
        "N < 3": ([str(folder / "tiny.npy"), "--k", "1"], "at least 3 points"),
        "labels length": ([g, "--labels", str(folder / "labels_short.npy")], "one entry per point"),
        "pickled npy": ([str(folder / "pickled.npy")], "pickle"),
        "ragged": ([str(folder / "ragged.parquet")], "ragged"),
        "non-numeric": ([str(folder / "strings.npy")], "numeric"),
        "missing file": ([str(folder / "absent.npy")], "no such file"),
        "sigma with cosine": ([g, "--sigma", "1"], "sigma applies only"),
    }


def test_bad_input_stops_with_one_line_and_status_2(tmp_path):
    for case, (args, phrase) in _bad_inputs(tmp_path).items():
        k = [] if "--k" in args else ["--k", "5"]
        completed = _run("analyze", *args, *k, "--out", str(tmp_path / "r.json"))
        assert completed.returncode == 2, (case, completed.stderr)
        lines = [line for line in completed.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("nnkgeo: error:"), (case, lines)
        assert phrase in lines[0], (case, lines[0])
        assert not (tmp_path / "r.json").exists()
