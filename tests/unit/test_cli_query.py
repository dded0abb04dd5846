"""``nnkgeo analyze --query``: held-out points, and the opt-in baseline, from the command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
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


def test_analyze_with_query_writes_the_engines_held_out_section(tmp_path):
    data = load_digits()
    points, labels = data.data.astype(np.float32), data.target
    train, test = np.arange(0, 1400), np.arange(1400, points.shape[0])
    for name, array in {
        "x": points[train],
        "y": labels[train],
        "q": points[test],
        "qy": labels[test],
    }.items():
        np.save(tmp_path / f"{name}.npy", array)
    completed = _run(
        "analyze",
        str(tmp_path / "x.npy"),
        "--labels",
        str(tmp_path / "y.npy"),
        "--query",
        str(tmp_path / "q.npy"),
        "--query-labels",
        str(tmp_path / "qy.npy"),
        "--k",
        "12",
        "--baselines",
        "linear_probe",
        "--out",
        str(tmp_path / "report.json"),
        "--html",
        str(tmp_path / "report.html"),
    )
    assert completed.returncode == 0, completed.stderr
    assert "held-out error NNK" in completed.stderr
    written = Report.model_validate_json((tmp_path / "report.json").read_text())
    expected = analyze(
        [
            EmbeddingSet(
                "x",
                points[train],
                labels[train],
                query_embeddings=points[test],
                query_labels=labels[test],
            )
        ],
        params=AnalysisParams(k=12, baselines=["linear_probe"]),
    ).report
    assert written.params == expected.params
    got, want = written.sets[0], expected.sets[0]
    assert got.out_of_sample == want.out_of_sample and got.out_of_sample.n == len(test)
    assert got.neural_collapse == want.neural_collapse
    assert got.baselines.linear_probe.method == "held_out"
    assert got.baselines == want.baselines
    page = (tmp_path / "report.html").read_text()
    assert "held-out" in page and "McNemar" in page and "NC1" in page and "Linear-probe" in page


def test_analyze_refuses_query_of_another_width_and_query_labels_alone(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.standard_normal((60, 8)).astype(np.float32))
    np.save(tmp_path / "q.npy", rng.standard_normal((10, 5)).astype(np.float32))
    np.save(tmp_path / "qy.npy", np.zeros(10, dtype=np.int64))
    out = str(tmp_path / "r.json")
    wide = _run(
        "analyze",
        str(tmp_path / "x.npy"),
        "--query",
        str(tmp_path / "q.npy"),
        "--k",
        "5",
        "--out",
        out,
    )
    assert wide.returncode != 0 and "sets[x].query.embeddings" in wide.stderr, wide.stderr
    alone = _run(
        "analyze", str(tmp_path / "x.npy"), "--query-labels", str(tmp_path / "qy.npy"), "--out", out
    )
    assert alone.returncode != 0 and "--query-labels needs --query" in alone.stderr
    assert not Path(out).exists()


def test_remote_submit_puts_each_query_on_the_set_it_names() -> None:
    from nnkgeo.cli.entry import build_parser
    from nnkgeo.cli.param_flags import given_analysis_params
    from nnkgeo.cli.remote import _parse_set, _with_queries

    parser = build_parser()
    args = parser.parse_args(
        [
            "submit",
            *("--set", "a=ds_x:ds_y", "--set", "b=ds_z"),
            *("--query", "a=ds_q/emb:ds_qy", "--baselines", "linear_probe"),
        ]
    )
    sets = _with_queries([_parse_set(text) for text in args.sets], args.queries)
    assert sets == [
        {
            "name": "a",
            "embeddings": {"dataset": "ds_x"},
            "labels": {"dataset": "ds_y"},
            "query": {
                "embeddings": {"dataset": "ds_q", "array": "emb"},
                "labels": {"dataset": "ds_qy"},
            },
        },
        {"name": "b", "embeddings": {"dataset": "ds_z"}},
    ]
    assert given_analysis_params(args) == {"baselines": ["linear_probe"]}
