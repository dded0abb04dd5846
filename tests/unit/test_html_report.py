"""The HTML report: real reports rendered, parsed, and looked at in a real headless Chromium.

The Chromium test drives Debian's ``chromium`` over the Chrome DevTools Protocol (its
``--remote-debugging-port`` websocket, with the ``websockets`` package that uvicorn
brings): it records every network request and console error while the page loads, and
decodes the screenshot (PNG, in pure Python) to check that something was drawn.
"""

from __future__ import annotations

import base64
import inspect
import io
import itertools
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import types
import zlib
from collections.abc import Iterator
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_digits

from api_schemas import AnalysisParams, Report
from htmlreport import CONTENT_SECURITY_POLICY, NO_EMBEDDINGS_NOTE, render_report_html
from htmlreport import embedding_map as report_map
from htmlreport.embedding_map import (
    MAP_MAX_POINTS,
    EmbeddingMap,
    compute_embedding_map,
    read_embedding_map,
    sample_rows,
    write_embedding_map,
)
from htmlreport.projection import top_components
from htmlreport.sections.set_detail import MAX_SUSPECT_ROWS
from htmlreport.svg import nice_ticks
from htmlreport.text import fmt
from workers.geometry import EmbeddingSet, analyze

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")
VOID_ELEMENTS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta"}
VOID_ELEMENTS |= {"source", "track", "wbr"}
SVG_PER_SET = 4  # degree histogram, homogeneity per class, LOO per class, 2-D map
MALICIOUS = '<script>alert("x")</script>'


def _plots_beside_the_sets(report: Report) -> int:
    """Plots of the digits page outside the set sections: the LOO overview, four
    comparison charts, and the neighbourhood overlap of consecutive sets (the two sets
    are the same points)."""
    assert report.comparison is not None
    return 1 + 4 + (1 if report.comparison.overlap_consecutive else 0)


@dataclass(frozen=True)
class Rendered:
    """A report of digits in two spaces, its inputs, and its page."""

    report: Report
    embeddings: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    html: str


@pytest.fixture(scope="module")
def digits_page() -> Rendered:
    """Digits as raw pixels and as a PCA-16 projection, labelled, k=10 (about a second)."""
    data = load_digits()
    pixels = data.data.astype(np.float32)
    labels = data.target.astype(np.int64)
    centred = pixels - pixels.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    pca16 = (centred @ vt[:16].T).astype(np.float32)
    sets = [EmbeddingSet("pixels", pixels, labels), EmbeddingSet("pca-16", pca16, labels)]
    report = analyze(sets, params=AnalysisParams(k=10), job_id="job_digits", n_threads=1).report
    embeddings = {"pixels": pixels, "pca-16": pca16}
    label_map = {"pixels": labels, "pca-16": labels}
    html = render_report_html(report, embeddings=embeddings, labels=label_map)
    return Rendered(report, embeddings, label_map, html)


@pytest.fixture(scope="module")
def malicious_page() -> str:
    """A set whose name, labels and ids are markup, with label noise so there are suspects."""
    data = load_digits()
    points = data.data[:400].astype(np.float32)
    names = np.array([MALICIOUS, "<img src=x onerror=alert(1)>", "a&b"], dtype=object)
    labels = names[data.target[:400] % 3].astype(str)
    labels[::7] = names[0]  # noise: suspects labelled with the script tag
    ids = np.array([f'"><script>id{i}</script>' for i in range(400)])
    report = analyze(
        [EmbeddingSet(MALICIOUS, points, labels, ids)], params=AnalysisParams(k=8), n_threads=1
    ).report
    assert report.sets[0].suspects, "the label noise should make suspects"
    return render_report_html(
        report,
        embeddings={MALICIOUS: points},
        labels={MALICIOUS: labels},
        title=f"title {MALICIOUS}",
    )


# --------------------------------------------------------------------------------------
# The page as HTML


@dataclass
class _Element:
    tag: str
    attrs: dict[str, str | None]
    children: list[_Element | str] = field(default_factory=list)

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def iter(self) -> Iterator[_Element]:
        yield self
        for child in self.children:
            if isinstance(child, _Element):
                yield from child.iter()


class _TreeParser(HTMLParser):
    """html.parser into a tree, failing on any end tag that does not close the open one."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = _Element("#document", {})
        self.stack = [self.root]
        self.declarations: list[str] = []

    def handle_decl(self, decl: str) -> None:
        self.declarations.append(decl)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = _Element(tag, dict(attrs))
        self.stack[-1].children.append(element)
        if tag not in VOID_ELEMENTS:
            self.stack.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(_Element(tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        open_tag = self.stack[-1].tag
        assert open_tag == tag, f"</{tag}> closes <{open_tag}>"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(html: str) -> _Element:
    parser = _TreeParser()
    parser.feed(html)
    parser.close()
    assert len(parser.stack) == 1, f"unclosed: {[e.tag for e in parser.stack[1:]]}"
    assert [d.lower() for d in parser.declarations] == ["doctype html"]
    return parser.root


def test_page_parses_into_a_well_nested_document(digits_page: Rendered) -> None:
    root = parse(digits_page.html)

    (html,) = [e for e in root.children if isinstance(e, _Element)]
    assert html.tag == "html" and html.attrs["lang"] == "en"
    assert [e.tag for e in html.children if isinstance(e, _Element)] == ["head", "body"]
    titles = [e.text() for e in root.iter() if e.tag == "title"]
    assert titles[0] == "nnkgeo report job_digits"


def test_page_holds_the_headline_numbers_of_every_set(digits_page: Rendered) -> None:
    text = parse(digits_page.html).text()

    assert "1,797" in text
    for set_report in digits_page.report.sets:
        assert set_report.name in text
        loo = set_report.loo_error
        assert loo is not None and set_report.homogeneity is not None
        for value in (
            loo.nnk_weighted,
            loo.nnk_unweighted,
            loo.knn_weighted,
            loo.knn_unweighted,
            set_report.homogeneity.pure_patch_fraction,
            set_report.homogeneity.nnk_mean,
            set_report.nnk_degree.mean,
        ):
            assert f"{value:.4g}" in text, value
        assert fmt(set_report.intrinsic_dimension.twonn, 3) in text
        assert fmt(set_report.intrinsic_dimension.mle, 3) in text
        assert set_report.regime is not None and set_report.regime in text
        for suspect in set_report.suspects[:5]:
            assert f"{suspect.score:.3f}" in text
    # The service's test reads the same formats.
    assert f"{digits_page.report.sets[0].nnk_degree.mean:.4g}" in digits_page.html
    assert "<table>" in digits_page.html


def test_page_has_the_sections_and_one_titled_svg_per_plot(digits_page: Rendered) -> None:
    root = parse(digits_page.html)
    ids = {e.attrs.get("id") for e in root.iter()} - {None}
    svgs = [e for e in root.iter() if e.tag == "svg"]

    n_sets = len(digits_page.report.sets)
    assert len(svgs) == _plots_beside_the_sets(digits_page.report) + SVG_PER_SET * n_sets
    assert {"overview", "comparison", "set-1", "set-2", "guide"} <= ids
    for svg in svgs:
        first, second = [c for c in svg.children if isinstance(c, _Element)][:2]
        assert (first.tag, second.tag) == ("title", "desc")
        assert first.text().strip() and second.text().strip()
        assert svg.attrs["role"] == "img"
        assert set((svg.attrs["aria-labelledby"] or "").split()) == {
            first.attrs["id"],
            second.attrs["id"],
        }
    all_ids = [e.attrs["id"] for e in root.iter() if e.attrs.get("id")]
    assert len(set(all_ids)) == len(all_ids), "ids are unique"
    maps = [s for s in svgs if "2-D map" in s.children[0].text()]  # type: ignore[union-attr]
    assert len(maps) == n_sets
    suspects = sum(len(s.suspects) for s in digits_page.report.sets)
    ringed = [
        e
        for svg in maps
        for e in svg.iter()
        if e.tag == "title" and e.text().startswith("suspect #")
    ]
    assert len(ringed) == suspects


def test_page_loads_nothing_from_anywhere(digits_page: Rendered) -> None:
    root = parse(digits_page.html)

    assert "http://" not in digits_page.html and "https://" not in digits_page.html
    for element in root.iter():
        assert element.tag not in {"script", "link", "img", "iframe", "object", "embed"}
        for name in ("src", "href", "xlink:href", "srcset", "action", "data"):
            value = element.attrs.get(name)
            assert value is None or value.startswith("#"), (element.tag, name, value)
    styles = "".join(e.text() for e in root.iter() if e.tag == "style")
    assert "url(" not in styles and "@import" not in styles
    (csp,) = [e for e in root.iter() if e.attrs.get("http-equiv") == "Content-Security-Policy"]
    assert csp.attrs["content"] == CONTENT_SECURITY_POLICY


def test_user_strings_are_escaped(malicious_page: str) -> None:
    lowered = malicious_page.lower()

    assert "<script" not in lowered
    assert "<img" not in lowered
    assert "&lt;script&gt;" in malicious_page
    assert "&lt;img src=x onerror=alert(1)&gt;" in malicious_page
    assert "a&amp;b" in malicious_page
    assert "&quot;&gt;&lt;script&gt;id" in malicious_page  # the ids, in the suspects table
    text = parse(malicious_page).text()
    assert MALICIOUS in text  # shown to the reader as typed
    assert '"><script>id' in text


def test_without_embeddings_the_map_gives_way_to_a_note(digits_page: Rendered) -> None:
    html = render_report_html(digits_page.report)
    root = parse(html)

    svgs = [e for e in root.iter() if e.tag == "svg"]
    n_sets = len(digits_page.report.sets)
    assert len(svgs) == _plots_beside_the_sets(digits_page.report) + (SVG_PER_SET - 1) * n_sets
    assert html.count("the embeddings were not given") == len(digits_page.report.sets)


def test_embeddings_of_the_wrong_shape_are_noted_not_drawn(digits_page: Rendered) -> None:
    html = render_report_html(
        digits_page.report, embeddings={"pixels": digits_page.embeddings["pixels"][:100]}
    )

    assert "Not drawn: the embeddings given have shape (100, 64)" in html


def test_a_single_unlabelled_set_has_no_comparison_and_grey_points() -> None:
    points = np.random.default_rng(0).standard_normal((300, 5)).astype(np.float32)
    report = analyze([EmbeddingSet("noise", points)], params=AnalysisParams(k=6)).report

    html = render_report_html(report, embeddings={"noise": points})

    root = parse(html)
    assert 'id="comparison"' not in html
    assert "No set has labels" in html
    assert "None: no labels were given." in html
    svgs = [e for e in root.iter() if e.tag == "svg"]
    assert len(svgs) == 2  # the degree histogram and the map
    assert 'fill="#7f8c99"' in html


class _FakeUmap:
    """Stands in for umap.UMAP: its first two input columns (or a failure)."""

    fail = False

    def __init__(self, n_components: int, random_state: int) -> None:
        assert (n_components, random_state) == (2, 0)

    def fit_transform(self, x: np.ndarray) -> np.ndarray:
        if self.fail:
            raise RuntimeError("umap broke")
        return x[:, :2]


@pytest.mark.parametrize(("fails", "method"), [(False, "UMAP"), (True, "PCA")])
def test_map_uses_umap_when_installed_and_pca_when_it_fails(
    digits_page: Rendered, monkeypatch: pytest.MonkeyPatch, fails: bool, method: str
) -> None:
    fake = types.ModuleType("umap")
    fake.UMAP = type("UMAP", (_FakeUmap,), {"fail": fails})  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "umap", fake)

    html = render_report_html(
        digits_page.report,
        embeddings={"pixels": digits_page.embeddings["pixels"]},
        labels={"pixels": digits_page.labels["pixels"]},
    )

    assert f"2-D map of the embeddings ({method})" in html
    assert ("UMAP 1" in html) is (not fails)


def test_suspects_table_is_capped_and_says_so(digits_page: Rendered) -> None:
    first = digits_page.report.sets[0]
    many = [first.suspects[0].model_copy(update={"index": i}) for i in range(MAX_SUSPECT_ROWS + 7)]
    report = digits_page.report.model_copy(
        update={"sets": [first.model_copy(update={"suspects": many})]}
    )

    html = render_report_html(report)

    assert f"Suspects ({MAX_SUSPECT_ROWS + 7:,})" in html
    assert f"The first {MAX_SUSPECT_ROWS} of {MAX_SUSPECT_ROWS + 7}" in html
    table = [e for e in parse(html).iter() if e.tag == "table"][-2]  # before per-class
    assert len([e for e in table.iter() if e.tag == "tr"]) == MAX_SUSPECT_ROWS + 1


def test_map_sample_is_bounded_and_keeps_the_suspects() -> None:
    keep = [5, 17, 9_999, 12_345_678, -1]

    rows = sample_rows(10_000, keep, MAP_MAX_POINTS)

    assert rows.size == MAP_MAX_POINTS
    assert np.all(np.diff(rows) > 0)
    assert {5, 17, 9_999} <= set(rows.tolist())
    assert np.array_equal(rows, sample_rows(10_000, keep, MAP_MAX_POINTS))
    assert np.array_equal(sample_rows(50, keep, MAP_MAX_POINTS), np.arange(50))


# --------------------------------------------------------------------------------------
# The map computed once and stored (what the service's worker does)


def reference_pca_map(sample: np.ndarray) -> np.ndarray:
    """PCA by a full numpy SVD, each component signed so its largest entry is positive."""
    centred = sample - sample.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    components = vt[:2] * np.sign(vt[:2][np.arange(2), np.argmax(np.abs(vt[:2]), axis=1)])[:, None]
    return centred @ components.T


def test_pca_map_matches_a_full_svd_with_the_sign_rule(digits_page: Rendered) -> None:
    pixels = digits_page.embeddings["pixels"]

    embedding_map = compute_embedding_map(pixels, digits_page.labels["pixels"])

    assert embedding_map.method == "PCA"
    assert np.array_equal(embedding_map.rows, np.arange(len(pixels)))
    expected = reference_pca_map(pixels.astype(np.float64))
    # The randomized PCA agrees with the full SVD to far less than a pixel of the plot.
    extent = np.ptp(expected, axis=0)
    assert np.all(np.abs(embedding_map.xy - expected).max(axis=0) < 1e-3 * extent)


def test_pca_components_are_signed_the_same_whatever_the_random_start() -> None:
    rng = np.random.default_rng(3)
    points = rng.standard_normal((500, 12)) * np.linspace(4, 1, 12)
    centred = points - points.mean(axis=0)

    signed = [top_components(centred, 2, seed=seed)[0] for seed in range(6)]

    for components in signed[1:]:
        assert np.abs(components - signed[0]).max() < 1e-8


def test_stored_map_draws_the_same_page_as_the_embeddings(digits_page: Rendered) -> None:
    maps = {}
    for set_report in digits_page.report.sets:
        computed = compute_embedding_map(
            digits_page.embeddings[set_report.name],
            digits_page.labels[set_report.name],
            suspects=[s.index for s in set_report.suspects],
        )
        file = io.BytesIO()
        write_embedding_map(file, computed)
        assert file.tell() < 100_000
        file.seek(0)
        maps[set_report.name] = read_embedding_map(file)

    assert render_report_html(digits_page.report, maps=maps) == digits_page.html


def test_map_file_keeps_labels_exactly_and_unlabelled_maps_stay_grey() -> None:
    points = np.random.default_rng(0).standard_normal((40, 3))
    labels = np.array([MALICIOUS, "é", "a b", ""] * 10)
    for given in (labels, None):
        file = io.BytesIO()
        write_embedding_map(file, compute_embedding_map(points, given))
        file.seek(0)

        stored = read_embedding_map(file)

        assert stored.labels == (None if given is None else tuple(labels.tolist()))


def _map_file(**arrays: np.ndarray) -> io.BytesIO:
    file = io.BytesIO()
    np.savez(file, **arrays)
    file.seek(0)
    return file


@pytest.mark.parametrize(
    "change",
    [
        {"format_version": np.asarray(2)},
        {"rows": np.asarray([3, 1], dtype=np.int64)},
        {"xy": np.zeros((3, 2))},
        {"label_codes": np.asarray([0, 5], dtype=np.int64)},
        {"note": np.asarray([{"a": 1}], dtype=object)},
    ],
)
def test_malformed_map_files_are_refused(change: dict[str, np.ndarray]) -> None:
    arrays = {
        "format_version": np.asarray(1, dtype=np.int64),
        "rows": np.asarray([1, 3], dtype=np.int64),
        "xy": np.zeros((2, 2)),
        "label_names": np.asarray(["a"]),
        "label_codes": np.asarray([0, 0], dtype=np.int64),
        "method": np.asarray("PCA"),
        "x_title": np.asarray("PC 1"),
        "y_title": np.asarray("PC 2"),
        "note": np.asarray("PCA"),
    }
    assert read_embedding_map(_map_file(**arrays)).labels == ("a", "a")

    with pytest.raises(ValueError, match="map file"):
        read_embedding_map(_map_file(**{**arrays, **change}))


def test_map_file_that_inflates_past_the_bound_is_refused(
    digits_page: Rendered, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = io.BytesIO()
    write_embedding_map(file, compute_embedding_map(digits_page.embeddings["pixels"]))
    assert file.tell() < 40_000  # compressed; 43 kB of arrays inflated
    monkeypatch.setattr(report_map, "MAP_FILE_MAX_BYTES", 20_000)
    file.seek(0)

    with pytest.raises(ValueError, match="more than 20000"):
        read_embedding_map(file)


def test_a_set_without_a_map_shows_the_note_it_is_given(digits_page: Rendered) -> None:
    note = "Not available: no map was stored with this report."

    html = render_report_html(digits_page.report, map_notes={"pixels": note})

    assert html.count(note) == 1
    assert html.count(NO_EMBEDDINGS_NOTE) == 1  # pca-16, which has no note of its own


def test_a_stored_map_naming_points_the_report_lacks_is_not_drawn(digits_page: Rendered) -> None:
    n = digits_page.report.sets[0].n_points
    stray = EmbeddingMap(
        rows=np.asarray([0, n], dtype=np.int64),
        xy=np.zeros((2, 2)),
        labels=None,
        method="PCA",
        x_title="PC 1",
        y_title="PC 2",
        note="PCA",
    )

    html = render_report_html(digits_page.report, maps={"pixels": stray})

    assert "Not drawn: the stored map names points the report does not have." in html


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (0.0, 1.0, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        (0.0, 0.0178, [0.0, 0.005, 0.01, 0.015, 0.02]),
        (0.0, 557.0, [0.0, 200.0, 400.0, 600.0]),
        (-3.2, 4.1, [-4.0, -2.0, 0.0, 2.0, 4.0, 6.0]),
        (5.0, 5.0, [4.4, 4.6, 4.8, 5.0, 5.2, 5.4, 5.6]),
        (0.9, 1.0, [0.9, 0.92, 0.94, 0.96, 0.98, 1.0]),
    ],
)
def test_nice_ticks_cover_the_range_in_round_steps(
    low: float, high: float, expected: list[float]
) -> None:
    assert nice_ticks(low, high) == pytest.approx(expected)


# --------------------------------------------------------------------------------------
# What a reader sees first: parameters in words, the inputs and the date of a local page

ROOT = Path(__file__).resolve().parents[2]
PYTHON_LITERALS = ("None", "True", "False", "[]")


def _fragment(html: str) -> _Element:
    """A part of the page (a header, a section) as a tree, checked for nesting."""
    parser = _TreeParser()
    parser.feed(html)
    parser.close()
    assert len(parser.stack) == 1, f"unclosed: {[e.tag for e in parser.stack[1:]]}"
    return parser.root


def _parameter_chips(html: str) -> dict[str, str]:
    """The page's parameter chips as ``{name: shown value}``, read from the header."""
    header = html[html.index("<header>") : html.index("</header>") + len("</header>")]
    line = next(p for p in _fragment(header).iter() if p.tag == "p" and "parameters:" in p.text())
    chips = [chip.text() for chip in line.iter() if chip.tag == "code"]
    return dict(chip.split("=", 1) for chip in chips)


@pytest.mark.parametrize(
    ("params", "expected", "absent"),
    [
        (
            {"kernel": "gaussian"},
            {"kernel": "gaussian", "sigma": "auto", "ignore_identical": "no", "baselines": "none"},
            (),
        ),
        (
            {"kernel": "gaussian", "sigma": 0.5, "ignore_identical": True},
            {"sigma": "0.5", "ignore_identical": "yes"},
            (),
        ),
        (
            {"baselines": ["linear_probe"], "knn": "exact"},
            {"kernel": "cosine", "baselines": "linear_probe", "knn": "exact", "k": "50"},
            ("sigma",),  # a bandwidth means nothing under the cosine kernel
        ),
    ],
)
def test_parameter_chips_show_values_in_words_not_python(
    digits_page: Rendered, params: dict[str, Any], expected: dict[str, str], absent: tuple
) -> None:
    report = digits_page.report.model_copy(update={"params": AnalysisParams(**params)})

    chips = _parameter_chips(render_report_html(report))

    assert {name: chips.get(name) for name in expected} == expected
    assert not set(absent) & set(chips)
    assert not [v for v in chips.values() if v in PYTHON_LITERALS or v.startswith("[")], chips
    # Every parameter the report ran with has its chip, except a sigma that cannot apply.
    assert set(chips) == set(AnalysisParams.model_fields) - set(absent)


def test_chip_tooltips_give_each_parameters_meaning(digits_page: Rendered) -> None:
    html = digits_page.html
    header = _fragment(html[html.index("<header>") : html.index("</header>") + len("</header>")])
    chip = next(e for e in header.iter() if e.tag == "code" and e.text().startswith("k="))
    assert chip.attrs["title"] == AnalysisParams.model_fields["k"].description


def test_page_names_its_inputs_and_when_it_was_made(digits_page: Rendered) -> None:
    from datetime import UTC, datetime, timedelta, timezone

    made = datetime(2026, 12, 2, 9, 5, 30, tzinfo=timezone(timedelta(hours=2)))
    html = render_report_html(
        digits_page.report,
        inputs=[("embeddings", "runs/<b>layer4</b>.npy"), ("labels", "y.npy")],
        generated_at=made,
    )
    header = _fragment(html[html.index("<header>") : html.index("</header>") + len("</header>")])
    lines = [p.text() for p in header.iter() if p.tag == "p"]

    assert (
        "embeddings: runs/<b>layer4</b>.npy · labels: y.npy · generated 2026-12-02 07:05 UTC"
        in (lines)
    ), lines
    stamp = next(e for e in header.iter() if e.tag == "time")
    assert datetime.fromisoformat(stamp.attrs["datetime"]) == made.astimezone(UTC)
    # Without them (the service's page, which names its job) nothing is made up, and the
    # same report still renders to the same bytes.
    assert "generated" not in digits_page.html[: digits_page.html.index("</header>")]
    assert render_report_html(digits_page.report) == render_report_html(digits_page.report)


def test_nnkgeo_analyze_html_names_its_files_and_date(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    data = load_digits()
    np.save(tmp_path / "layer4.npy", data.data[:300].astype(np.float32))
    np.save(tmp_path / "y.npy", data.target[:300])
    before = datetime.now(UTC).replace(second=0, microsecond=0)
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "nnkgeo",
            "analyze",
            str(tmp_path / "layer4.npy"),
            "--labels",
            str(tmp_path / "y.npy"),
            "--k",
            "8",
            "--kernel",
            "gaussian",
            "--out",
            str(tmp_path / "report.json"),
            "--html",
            str(tmp_path / "report.html"),
            "--quiet",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    after = datetime.now(UTC)
    assert completed.returncode == 0, completed.stderr

    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    header = _fragment(html[html.index("<header>") : html.index("</header>") + len("</header>")])
    lines = [p.text() for p in header.iter() if p.tag == "p"]
    provenance = next(line for line in lines if "generated" in line)
    assert provenance.startswith(
        f"embeddings: {tmp_path / 'layer4.npy'} · labels: {tmp_path / 'y.npy'} · generated "
    ), provenance
    stamp = datetime.fromisoformat(
        next(e for e in header.iter() if e.tag == "time").attrs["datetime"]
    )
    assert before <= stamp <= after
    assert _parameter_chips(html)["sigma"] == "auto"


# --------------------------------------------------------------------------------------
# A study's facts across its models: lines only for what varies, titles in words


STUDY_FACTS = [
    # parameters, seed, fitted, test accuracy, final loss: vary; depth, dropped rows: do not.
    {"parameters": 310, "seed": 0, "fitted": 0, "test_accuracy": 0.87, "final_loss": 0.35},
    {"parameters": 1210, "seed": 0, "fitted": 1, "test_accuracy": 0.95, "final_loss": 0.03},
    {"parameters": 4810, "seed": 0, "fitted": 1, "test_accuracy": 0.97, "final_loss": 0.01},
]


@pytest.fixture(scope="module")
def facts_page() -> str:
    """Three small sets carrying a study's facts in ``extra``, as run_study writes them."""
    data = load_digits()
    sets = []
    for i, facts in enumerate(STUDY_FACTS):
        rows = slice(300 * i, 300 * (i + 1))
        extra = {**facts, "depth": 2, "dropped_zero_rows": 0, "width": 4**i, "layer": "fc"}
        sets.append(
            EmbeddingSet(
                f"mlp-d2-w{4**i}",
                data.data[rows].astype(np.float32),
                data.target[rows],
                extra=extra,
            )
        )
    return render_report_html(analyze(sets, params=AnalysisParams(k=8), n_threads=1).report)


def _section(html: str, section_id: str) -> str:
    section = html[html.index(f'<section id="{section_id}">') :]
    return section[: section.index("</section>") + len("</section>")]


def test_comparison_charts_only_facts_that_vary_under_titles_in_words(facts_page: str) -> None:
    import re

    comparison = _section(facts_page, "comparison")
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", comparison)

    assert {"Parameters", "Test accuracy", "Final loss"} <= set(captions), captions
    # Constant facts (depth, dropped rows), the seed, the widths and the fitted flag
    # are no lines to follow.
    for uncharted in ("Hidden layers", "Rows dropped (all zero)", "Training seed", "Width"):
        assert uncharted not in captions
    assert not [c for c in captions if "fitted" in c.lower() or "_" in c], captions
    assert "fitted" not in " ".join(re.findall(r"<title>(.*?)</title>", comparison)).lower()


def test_fitted_flag_is_a_row_of_yes_and_no_marks(facts_page: str) -> None:
    table = next(
        t for t in _fragment(_section(facts_page, "comparison")).iter() if t.tag == "table"
    )
    rows = {
        row.children[0].text(): [cell.text() for cell in row.children[1:]]
        for row in table.iter()
        if row.tag == "tr" and row.children and row.children[0].attrs.get("scope") == "row"
    }
    assert rows["fitted"] == ["no", "yes", "yes"]
    assert rows["training seed"] == ["0", "0", "0"]
    assert len(rows["regime"]) == 3


def test_facts_are_named_in_words_everywhere_on_the_page(facts_page: str) -> None:
    text = parse(facts_page).text()
    for field_name in ("dropped_zero_rows", "final_loss", "test_accuracy", "extra."):
        assert field_name not in text
    overview = _fragment(_section(facts_page, "overview"))
    headers = [e.text() for e in overview.iter() if e.tag == "th" and e.attrs.get("scope") == "row"]
    assert {"rows dropped (all zero)", "hidden layers", "fitted", "final loss"} <= set(headers)
    first_set = _section(facts_page, "set-1")
    assert "fitted: no" in first_set and "hidden layers: 2" in first_set


# --------------------------------------------------------------------------------------
# In a real browser


def _chromium() -> str | None:
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


class DevTools:
    """A headless Chromium driven over the Chrome DevTools Protocol (one page target).

    A context manager: the browser is started on entry and closed on exit.
    """

    def __init__(self, binary: str, profile: Path, *, width: int, height: int) -> None:
        self.binary, self.profile = binary, profile
        self.width, self.height = width, height
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None

    def __enter__(self) -> DevTools:
        from websockets.sync.client import connect

        binary, profile, width, height = self.binary, self.profile, self.width, self.height
        self.stack = ExitStack()
        self.log = profile / "chromium.log"
        log = self.stack.enter_context(self.log.open("wb"))
        self.process = subprocess.Popen(
            [
                binary,
                "--headless",
                "--disable-gpu",
                "--no-sandbox",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-extensions",
                "--disable-sync",
                "--hide-scrollbars",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        self.stack.callback(self._stop_process)
        try:
            port, path = self._devtools_port()
            options: dict[str, Any] = {"max_size": None, "open_timeout": 10}
            if "proxy" in inspect.signature(connect).parameters:
                options["proxy"] = None  # never through an HTTP(S)_PROXY from the environment
            self.socket = self.stack.enter_context(
                connect(f"ws://127.0.0.1:{port}{path}", **options)
            )
            self.stack.callback(self._close_browser)
            target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            self.session = self.send(
                "Target.attachToTarget", {"targetId": target, "flatten": True}
            )["sessionId"]
        except BaseException:
            self.stack.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stack.close()

    def _devtools_port(self) -> tuple[str, str]:
        """The port and browser path Chromium writes once its DevTools server listens."""
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                self.process.wait(timeout=10)
                raise RuntimeError(
                    "chromium did not open its DevTools port: "
                    + self.log.read_text(errors="replace")[-2000:]
                )
            time.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        return port, path

    def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one command (to the page once attached) and return its result."""
        message: dict[str, Any] = {"id": next(self.ids), "method": method, "params": params or {}}
        if self.session is not None:
            message["sessionId"] = self.session
        self.socket.send(json.dumps(message))
        while True:
            reply = json.loads(self.socket.recv(timeout=30))
            if reply.get("id") == message["id"]:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_for(self, method: str, timeout_s: float = 30) -> None:
        """Collect events until ``method`` arrives."""
        if any(event["method"] == method for event in self.events):
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            event = json.loads(self.socket.recv(timeout=max(deadline - time.monotonic(), 0.01)))
            if "method" in event:
                self.events.append(event)
                if event["method"] == method:
                    return
        raise TimeoutError(method)

    def drain(self, seconds: float) -> None:
        """Collect whatever events arrive within ``seconds`` (late requests or errors)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = json.loads(self.socket.recv(timeout=left))
            except TimeoutError:
                return
            if "method" in event:
                self.events.append(event)

    def _close_browser(self) -> None:
        self.session = None
        with suppress(Exception):  # the browser may already be gone
            self.send("Browser.close")

    def _stop_process(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process.wait(timeout=10)


@dataclass(frozen=True)
class PageVisit:
    """What loading one page in Chromium produced."""

    requests: list[str]
    errors: list[str]
    screenshot: bytes
    full_page: bytes | None
    facts: dict[str, Any]


_PAGE_FACTS = """JSON.stringify({
    scrollWidth: document.documentElement.scrollWidth,
    innerWidth: window.innerWidth,
    svgs: [...document.querySelectorAll('svg')].map(s => {
        const r = s.getBoundingClientRect();
        return [r.width, r.height];
    }),
    headerLines: [...document.querySelectorAll('header p')].map(p => p.innerText),
    captions: [...document.querySelectorAll('figcaption')].map(f => f.innerText),
    comparisonRows: [...document.querySelectorAll('#comparison tr')].map(
        tr => [...tr.children].map(cell => cell.innerText)),
})"""


def visit(
    browser: DevTools,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    full_page: bool = False,
) -> PageVisit:
    """Load ``url``: the requests it made, its console errors, screenshots, layout facts.

    ``headers`` go with every request the page makes (an Authorization header);
    ``full_page`` adds a screenshot of the whole page (slow: for a person to look at).
    """
    browser.events.clear()
    for domain in ("Runtime", "Log", "Network", "Page"):
        browser.send(f"{domain}.enable")
    browser.send("Network.setExtraHTTPHeaders", {"headers": headers or {}})
    browser.send(
        "Emulation.setDeviceMetricsOverride",
        {"width": browser.width, "height": browser.height, "deviceScaleFactor": 1, "mobile": False},
    )
    browser.send("Page.navigate", {"url": url})
    browser.wait_for("Page.loadEventFired")
    browser.drain(0.5)
    evaluated = browser.send("Runtime.evaluate", {"expression": _PAGE_FACTS, "returnByValue": True})
    screenshot = browser.send("Page.captureScreenshot", {"format": "png"})["data"]
    whole = None
    if full_page:
        content = browser.send("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": browser.width, "height": min(content["height"], 16_000)}
        whole = browser.send(
            "Page.captureScreenshot",
            {"format": "png", "captureBeyondViewport": True, "clip": {**clip, "scale": 1}},
        )["data"]
    browser.drain(0.2)
    requests, errors = [], []
    for event in browser.events:
        method, params = event["method"], event.get("params", {})
        if method == "Network.requestWillBeSent":
            requests.append(params["request"]["url"])
        elif method == "Runtime.exceptionThrown":
            errors.append(json.dumps(params["exceptionDetails"])[:500])
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            errors.append(json.dumps(params["args"])[:500])
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            errors.append(f"{params['entry'].get('source')}: {params['entry']['text']}")
    return PageVisit(
        requests,
        errors,
        base64.b64decode(screenshot),
        base64.b64decode(whole) if whole is not None else None,
        json.loads(evaluated["result"]["value"]),
    )


def decode_png(data: bytes) -> np.ndarray:
    """An 8-bit RGB or RGBA PNG (non-interlaced) as an (height, width, channels) array.

    Pure Python and numpy: zlib for the data, the five scanline filters undone row by
    row (Sub and Up vectorised, Average and Paeth in a loop).
    """
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    position, chunks, header = 8, [], b""
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
        elif kind == b"IEND":
            break
        position += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    channels = 3 if colour == 2 else 4
    stride = width * channels
    raw = np.frombuffer(zlib.decompress(b"".join(chunks)), dtype=np.uint8)
    raw = raw.reshape(height, stride + 1)
    image = np.zeros((height, stride), dtype=np.uint8)
    previous = np.zeros(stride, dtype=np.uint8)
    for y in range(height):
        kind, row = raw[y, 0], raw[y, 1:]
        if kind == 0:
            out = row.copy()
        elif kind == 1:
            out = (
                (row.reshape(width, channels).astype(np.int64).cumsum(axis=0) % 256)
                .astype(np.uint8)
                .ravel()
            )
        elif kind == 2:
            out = row + previous
        else:
            line, above = row.tolist(), previous.tolist()
            for i in range(stride):
                left = line[i - channels] if i >= channels else 0
                up = above[i]
                if kind == 3:
                    line[i] = (line[i] + (left + up) // 2) & 0xFF
                else:
                    corner = above[i - channels] if i >= channels else 0
                    estimate = left + up - corner
                    pa, pb, pc = abs(estimate - left), abs(estimate - up), abs(estimate - corner)
                    predictor = left if pa <= pb and pa <= pc else (up if pb <= pc else corner)
                    line[i] = (line[i] + predictor) & 0xFF
            out = np.array(line, dtype=np.uint8)
        image[y] = out
        previous = out
    return image.reshape(height, width, channels)


def test_decode_png_reads_every_filter_type() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    rows = []
    for y, kind in enumerate([0, 1, 2, 3, 4]):
        row = pixels[y].astype(np.int64).ravel()
        above = pixels[y - 1].astype(np.int64).ravel() if y else np.zeros(12, np.int64)
        left = np.concatenate([np.zeros(3, np.int64), row[:-3]])
        corner = np.concatenate([np.zeros(3, np.int64), above[:-3]])
        if kind == 1:
            row = row - left
        elif kind == 2:
            row = row - above
        elif kind == 3:
            row = row - (left + above) // 2
        elif kind == 4:
            estimate = left + above - corner
            pa, pb, pc = abs(estimate - left), abs(estimate - above), abs(estimate - corner)
            row = row - np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, above, corner))
        rows.append(bytes([kind]) + (row % 256).astype(np.uint8).tobytes())

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 5, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + chunk(b"IEND", b"")
    )

    assert np.array_equal(decode_png(png), pixels)


def headless_chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevTools]:
    """A headless Chromium, 1280 x 2000 (a laptop, two screens tall), or a skip saying
    that Chromium is missing (scripts/test.sh installs it, so CI never skips)."""
    binary = _chromium()
    if binary is None:
        pytest.skip(
            "Chromium is not installed and could not be installed here"
            " (scripts/test.sh runs apt-get install chromium)"
        )
    with DevTools(binary, tmp_path_factory.mktemp("chromium"), width=1280, height=2000) as b:
        yield b


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevTools]:
    """One headless Chromium for the module."""
    yield from headless_chromium(tmp_path_factory)


@pytest.mark.slow
def test_browser_check_sees_requests_and_console_errors(browser: DevTools, tmp_path: Path) -> None:
    """The negative control: a page that fetches and logs is caught doing both."""
    page = tmp_path / "bad.html"
    page.write_text(
        '<!doctype html><html><body><img src="http://127.0.0.1:9/x.png" alt="">'
        '<script>console.error("boom")</script></body></html>',
        encoding="utf-8",
    )

    seen = visit(browser, page.as_uri())

    assert "http://127.0.0.1:9/x.png" in seen.requests
    assert any("boom" in error for error in seen.errors), seen.errors


@pytest.mark.slow
def test_page_renders_in_chromium_without_errors_or_requests(
    digits_page: Rendered, browser: DevTools, tmp_path: Path
) -> None:
    page = tmp_path / "report.html"
    page.write_text(digits_page.html, encoding="utf-8")

    directory = os.environ.get("NNKGEO_SCREENSHOT_DIR")  # to look at the page yourself

    seen = visit(browser, page.as_uri(), full_page=bool(directory))

    (tmp_path / "screenshot.png").write_bytes(seen.screenshot)
    if directory:
        shutil.copy(tmp_path / "screenshot.png", Path(directory) / "report-screenshot.png")
        assert seen.full_page is not None
        (Path(directory) / "report-full-page.png").write_bytes(seen.full_page)
    assert seen.errors == []
    assert seen.requests and all(
        url == page.as_uri() or url.startswith("data:") for url in seen.requests
    ), seen.requests
    # Readable on a laptop: nothing wider than the window, every plot drawn at a size.
    assert seen.facts["scrollWidth"] <= seen.facts["innerWidth"]
    n_sets = len(digits_page.report.sets)
    assert len(seen.facts["svgs"]) == _plots_beside_the_sets(digits_page.report) + (
        SVG_PER_SET * n_sets
    )
    assert all(w > 300 and h > 150 for w, h in seen.facts["svgs"]), seen.facts["svgs"]
    image = decode_png(seen.screenshot)
    assert image.shape[:2] == (2000, 1280)
    rgb = image[..., :3].reshape(-1, 3)
    background = np.array([0xF6, 0xF7, 0xF9])
    drawn = np.any(rgb != background, axis=1).mean()
    assert drawn > 0.02, f"only {drawn:.1%} of the screenshot differs from the background"
    packed = (rgb[:, 0].astype(np.uint32) << 16) | (rgb[:, 1].astype(np.uint32) << 8) | rgb[:, 2]
    _, counts = np.unique(packed, return_counts=True)
    assert (counts > 50).sum() >= 8, "the screenshot should show several distinct colours"


@pytest.mark.slow
def test_local_page_reads_in_words_in_chromium(
    digits_page: Rendered, browser: DevTools, tmp_path: Path
) -> None:
    """What a person sees: the inputs, the date, the parameters in words."""
    from datetime import UTC, datetime

    report = digits_page.report.model_copy(
        update={"params": AnalysisParams(k=10, kernel="gaussian", ignore_identical=True)}
    )
    page = tmp_path / "local.html"
    page.write_text(
        render_report_html(
            report,
            inputs=[("embeddings", "layer4.npy"), ("labels", "y.npy")],
            generated_at=datetime(2026, 12, 2, 7, 5, tzinfo=UTC),
        ),
        encoding="utf-8",
    )

    seen = visit(browser, page.as_uri())

    assert seen.errors == []
    lines = seen.facts["headerLines"]
    assert "embeddings: layer4.npy · labels: y.npy · generated 2026-12-02 07:05 UTC" in lines
    chips = next(line for line in lines if line.startswith("parameters:")).split()[1:]
    assert {"sigma=auto", "ignore_identical=yes", "baselines=none", "k=10"} <= set(chips)
    assert not [chip for chip in chips if chip.split("=", 1)[1] in PYTHON_LITERALS], chips


@pytest.mark.slow
def test_study_facts_read_in_words_in_chromium(
    facts_page: str, browser: DevTools, tmp_path: Path
) -> None:
    """The comparison of a study's models as drawn: titles in words, the flag as marks."""
    page = tmp_path / "facts.html"
    page.write_text(facts_page, encoding="utf-8")

    seen = visit(browser, page.as_uri())

    assert seen.errors == []
    captions = seen.facts["captions"]
    assert "Test accuracy" in captions and "Parameters" in captions
    assert not [c for c in captions if "_" in c or "fitted" in c.lower() or c == "Width"]
    rows = {row[0]: row[1:] for row in seen.facts["comparisonRows"] if row}
    assert rows["fitted"] == ["no", "yes", "yes"]
    assert all(w > 300 and h > 150 for w, h in seen.facts["svgs"]), seen.facts["svgs"]
