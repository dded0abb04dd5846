"""``nnkgeo compare``, ``nnkgeo drift`` and ``nnkgeo check --max-drift`` as a user runs them.

Real files, a real ``python -m nnkgeo`` process, exit statuses; the reports are those of
the engine called in-process (``analyze`` then ``add_comparison_sections``), and the HTML
page carries the compare and drift sections with the report's numbers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from api_schemas import AnalysisParams, Report
from htmlreport import render_report_html
from htmlreport.text import fmt
from workers.geometry import EmbeddingSet, analyze
from workers.geometry.comparison_report import add_comparison_sections

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nnkgeo", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _without_timings(report: dict) -> dict:
    for entry in report["sets"]:
        entry.pop("timings")
    return report


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compare")
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, 240)
    centres = 3.0 * rng.standard_normal((3, 8))
    first = (centres[labels] + rng.standard_normal((240, 8))).astype(np.float32)
    second = np.tanh(first @ rng.standard_normal((8, 5))).astype(np.float32)
    current_labels = rng.integers(0, 3, 160)
    current = (centres[current_labels] + rng.standard_normal((160, 8))).astype(np.float32)
    current[current_labels == 1] += 6.0 / np.sqrt(8)  # class 1 moves 6 sigma: drift
    arrays = {
        "a": first,
        "b": second,
        "y": labels,
        "cur": current,
        "cy": current_labels,
        "same": (centres[current_labels] + rng.standard_normal((160, 8))).astype(np.float32),
    }
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", array)
    return folder, arrays


def test_compare_writes_the_engines_report_and_page(files, tmp_path):
    folder, arrays = files
    completed = _run(
        "compare",
        str(folder / "a.npy"),
        str(folder / "b.npy"),
        "--labels",
        str(folder / "y.npy"),
        "--k",
        "10",
        "--out",
        str(tmp_path / "report.json"),
        "--html",
        str(tmp_path / "report.html"),
    )
    assert completed.returncode == 0, completed.stderr
    assert "linear CKA" in completed.stderr
    written = json.loads((tmp_path / "report.json").read_text())
    params = AnalysisParams(k=10)
    sets = [
        EmbeddingSet("a", arrays["a"], arrays["y"]),
        EmbeddingSet("b", arrays["b"], arrays["y"]),
    ]
    expected = add_comparison_sections(
        analyze(sets, params=params), sets, params=params, compare_sets=True
    ).report
    assert _without_timings(written) == _without_timings(json.loads(expected.model_dump_json()))
    page = (tmp_path / "report.html").read_text()
    # Two sets: the consecutive overlap is the compare section's Jaccard mean, not repeated.
    assert 'id="compare"' in page and 'id="overlap-consecutive"' not in page
    assert expected.comparison.overlap_consecutive == [expected.compare.overlap.jaccard.mean]
    assert fmt(expected.compare.cka_linear, 3) in page
    assert "<script" not in page


def test_drift_finds_the_moved_class_and_check_gates_on_it(files, tmp_path):
    folder, arrays = files
    report_path = tmp_path / "drift.json"
    completed = _run(
        "drift",
        str(folder / "a.npy"),
        str(folder / "cur.npy"),
        "--labels",
        str(folder / "y.npy"),
        "--current-labels",
        str(folder / "cy.npy"),
        "--k",
        "10",
        "--out",
        str(report_path),
        "--html",
        str(tmp_path / "drift.html"),
        "--quiet",
    )
    assert completed.returncode == 0, completed.stderr
    report = Report.model_validate_json(report_path.read_text())
    params = AnalysisParams(k=10, knn="exact")
    reference = [EmbeddingSet("a", arrays["a"], arrays["y"])]
    expected = add_comparison_sections(
        analyze(reference, params=params),
        reference,
        params=params,
        current=EmbeddingSet("cur", arrays["cur"], arrays["cy"]),
    ).report.drift
    assert report.drift == expected
    assert report.params.knn == "exact"  # drift searches the reference exactly
    assert report.drift.verdict == "drift"
    moved = max(report.drift.per_class, key=lambda c: c.score_mean)
    assert moved.label == 1
    page = (tmp_path / "drift.html").read_text()
    assert 'id="drift"' in page and fmt(report.drift.ks.statistic, 3) in page

    statistic = report.drift.ks.statistic
    failing = _run("check", str(report_path), "--max-drift", f"{statistic / 2:.6f}")
    assert failing.returncode == 1, failing.stderr
    assert "drift.ks.statistic" in failing.stdout and "FAIL" in failing.stdout
    passing = _run("check", str(report_path), "--max-drift", f"{min(1.0, statistic * 2):.6f}")
    assert passing.returncode == 0, passing.stdout + passing.stderr


def test_a_fresh_sample_is_no_drift_and_check_without_a_drift_section_refuses(files, tmp_path):
    folder, _ = files
    completed = _run(
        "drift",
        str(folder / "a.npy"),
        str(folder / "same.npy"),
        "--k",
        "10",
        "--out",
        str(tmp_path / "same.json"),
        "--quiet",
    )
    assert completed.returncode == 0, completed.stderr
    report = Report.model_validate_json((tmp_path / "same.json").read_text())
    assert report.drift.verdict == "no_drift", report.drift.ks
    analysed = _run(
        "analyze", str(folder / "a.npy"), "--k", "10", "--out", str(tmp_path / "plain.json")
    )
    assert analysed.returncode == 0, analysed.stderr
    refused = _run("check", str(tmp_path / "plain.json"), "--max-drift", "0.1")
    assert refused.returncode == 2 and "no drift section" in refused.stderr


def test_compare_refuses_sets_of_different_sizes_and_drift_an_approximate_search(files, tmp_path):
    folder, _ = files
    refused = _run(
        "compare", str(folder / "a.npy"), str(folder / "cur.npy"), "--out", str(tmp_path / "r")
    )
    assert refused.returncode == 2 and "same points" in refused.stderr
    refused = _run(
        "drift",
        str(folder / "a.npy"),
        str(folder / "cur.npy"),
        "--knn",
        "approximate",
        "--out",
        str(tmp_path / "r"),
    )
    assert refused.returncode == 2 and "--knn exact" in refused.stderr


class _Sections(HTMLParser):
    """Ids of the page's sections and the text of the table cells of each."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.cells: dict[str, list[str]] = {}
        self._in_cell = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "section":
            self.sections.append(dict(attrs).get("id") or "")
            self.cells[self.sections[-1]] = []
        self._in_cell = tag in ("td", "th")

    def handle_data(self, data: str) -> None:
        if self._in_cell and self.sections:
            self.cells[self.sections[-1]].append(data)


def test_page_sections_list_the_changed_and_drifted_points_of_the_report(files):
    _, arrays = files
    params = AnalysisParams(k=10, knn="exact", device="cpu")
    sets = [EmbeddingSet("a", arrays["a"]), EmbeddingSet("b", arrays["b"])]
    report = add_comparison_sections(
        analyze(sets, params=params, n_threads=1), sets, params=params, compare_sets=True
    ).report
    parser = _Sections()
    parser.feed(render_report_html(report))
    assert parser.sections.index("compare") > parser.sections.index("comparison")
    # The changed points' rows, in the report's order, with both neighbour lists.
    first = report.compare.changed[0]
    cells = parser.cells["compare"]
    start = cells.index(str(first.index))
    assert cells[start + 2] == fmt(first.jaccard, 3)
    assert cells[start + 4].startswith(", ".join(map(str, first.neighbours_a[:3])))

    three = [*sets, EmbeddingSet("c", np.sqrt(np.abs(arrays["b"])))]
    parser = _Sections()
    parser.feed(render_report_html(analyze(three, params=params, n_threads=1).report))
    assert "overlap-consecutive" in parser.sections and "compare" not in parser.sections

    reference = sets[:1]
    drift_report = add_comparison_sections(
        analyze(reference, params=params, n_threads=1),
        reference,
        params=params,
        current=EmbeddingSet("cur", arrays["cur"], ids=np.arange(160) + 5000),
        n_threads=1,
    ).report
    parser = _Sections()
    parser.feed(render_report_html(drift_report))
    assert "drift" in parser.sections and "compare" not in parser.sections
    top = drift_report.drift.drifted[0]
    cells = parser.cells["drift"]
    # The drifted table follows the per-class one (no labels here: no per-class table).
    start = cells.index(str(top.index))
    assert cells[start + 1] == str(top.id) and cells[start + 2] == fmt(top.score, 3)
