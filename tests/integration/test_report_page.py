"""The report page as the service serves it, loaded from the service in headless Chromium.

The unit tests check the renderer on a file; this checks the page a user gets from
``GET /v1/jobs/{id}/report.html``, with the service's own Content-Security-Policy
header in force: it draws a two-set job with string labels (markup among them), makes no
request but for itself, and logs no error.

The worker computes each set's 2-D map once, stores it as a small blob beside the set's
graphs, draws the page and stores it with the result: the page draws exactly the map the
embeddings give in-process, the API reads no embeddings for it (its memory barely
moves), an embed job's page has its maps, the map and page blobs live and die with the
result, a set without a map says so, and a result stored without a page answers a
problem that says to submit the job again.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
import redis
from safetensors.numpy import save as safetensors_bytes

from api_schemas import Report
from api_schemas.models import MLPModel
from htmlreport import CONTENT_SECURITY_POLICY, render_report_html
from htmlreport.embedding_map import EmbeddingMap, read_embedding_map
from tests.integration.helpers import assert_problem, submit, upload, upload_array, wait_for_status
from tests.integration.stack import ServiceStack, wait_until
from tests.unit.test_html_report import (
    DevTools,
    decode_png,
    headless_chromium,
    parse,
    reference_pca_map,
    visit,
)

pytestmark = pytest.mark.integration

ODD_LABEL = "<b>zero</b>"
MAP_FIGURE = "2-D map of the embeddings (PCA)"


@pytest.fixture(scope="module")
def two_sets(digits: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
    """Digits as pixels and as a PCA-16 projection, and string labels."""
    pixels, targets = digits
    centred = pixels - pixels.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return {
        "pixels": pixels,
        "pca-16": np.ascontiguousarray(centred @ vt[:16].T, dtype=np.float32),
        "labels": np.array([ODD_LABEL if t == 0 else f"digit {t}" for t in targets]),
    }


@pytest.fixture(scope="module")
def two_set_job(alpha: httpx.Client, two_sets: dict[str, np.ndarray]) -> dict:
    """The two sets, labelled with strings, k=10."""
    label_id = upload_array(alpha, two_sets["labels"])
    body = {
        "sets": [
            {
                "name": name,
                "embeddings": {"dataset": upload_array(alpha, two_sets[name])},
                "labels": {"dataset": label_id},
            }
            for name in ("pixels", "pca-16")
        ],
        "params": {"k": 10},
    }
    response = submit(alpha, body)
    assert response.status_code == 202, response.text
    job = wait_for_status(alpha, response.json()["id"])
    assert job["status"] == "succeeded", job
    return job


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevTools]:
    yield from headless_chromium(tmp_path_factory)


def test_served_page_shows_both_sets_escaped(alpha: httpx.Client, two_set_job: dict) -> None:
    report = alpha.get(two_set_job["links"]["report"]).json()

    response = alpha.get(two_set_job["links"]["report_html"])

    assert response.status_code == 200
    page = response.text
    # The API sends the policy the page declares, without importing the renderer.
    (declared,) = [
        e.attrs["content"]
        for e in parse(page).iter()
        if e.tag == "meta" and e.attrs.get("http-equiv") == "Content-Security-Policy"
    ]
    assert response.headers["content-security-policy"] == declared == CONTENT_SECURITY_POLICY
    text = parse(page).text()
    assert f"nnkgeo report {two_set_job['id']}" in text
    for set_report in report["sets"]:
        assert set_report["name"] in text
        assert f"{set_report['loo_error']['nnk_weighted']:.4g}" in text
    assert "<b>" not in page and "&lt;b&gt;zero&lt;/b&gt;" in page
    assert ODD_LABEL in text
    # The worker stored each set's 2-D map with the result.
    assert "Not available" not in page
    assert page.count(MAP_FIGURE) == 2


@pytest.mark.slow
def test_served_page_loads_in_chromium_without_errors_or_requests(
    alpha: httpx.Client, two_set_job: dict, browser: DevTools, tmp_path: Path
) -> None:
    url = str(alpha.build_request("GET", two_set_job["links"]["report_html"]).url)

    seen = visit(browser, url, headers={"Authorization": alpha.headers["Authorization"]})

    (tmp_path / "served-page.png").write_bytes(seen.screenshot)
    assert seen.errors == []
    assert seen.requests == [url]
    assert seen.facts["scrollWidth"] <= seen.facts["innerWidth"]
    # The LOO overview, four comparison charts, the neighbourhood overlap of the two sets
    # (the same points, as pixels and as PCA), and four plots per set (the map included).
    assert len(seen.facts["svgs"]) == 1 + 4 + 1 + 4 * 2
    image = decode_png(seen.screenshot)[..., :3].reshape(-1, 3)
    assert np.any(image != np.array([0xF6, 0xF7, 0xF9]), axis=1).mean() > 0.02


# --------------------------------------------------------------------------------------
# The map and the page: made once by the worker, stored with the result, read by the API


def _result_files(stack: ServiceStack, tenant: str, result_id: str) -> dict[str, dict]:
    """The result's blobs by set, as the store keeps them (layout in service/store.py)."""
    client = redis.Redis.from_url(stack.redis_url)
    graphs = client.hget(f"nnkgeo:t:{tenant}:result:{result_id}", "graphs")
    assert graphs is not None, "no such result"
    return json.loads(graphs)


def _blob_path(stack: ServiceStack, sha256: str) -> Path:
    return stack.data_dir / "blobs" / sha256[:2] / sha256


def _stored_map(stack: ServiceStack, sha256: str) -> EmbeddingMap:
    with _blob_path(stack, sha256).open("rb") as file:
        return read_embedding_map(file)


def test_served_map_is_the_pca_of_the_set_and_the_page_the_local_one(
    alpha: httpx.Client, two_set_job: dict, two_sets: dict[str, np.ndarray], stack: ServiceStack
) -> None:
    pixels, labels = two_sets["pixels"], two_sets["labels"]
    files = _result_files(stack, "alpha", two_set_job["id"])
    report = Report.model_validate(alpha.get(two_set_job["links"]["report"]).json())

    stored = _stored_map(stack, files["pixels"]["map"])

    # Digits has fewer points than a map draws: all of them, as an independent PCA.
    assert np.array_equal(stored.rows, np.arange(len(pixels)))
    assert stored.labels == tuple(labels.tolist())
    expected = reference_pca_map(pixels.astype(np.float64))
    assert np.all(np.abs(stored.xy - expected).max(axis=0) < 1e-3 * np.ptp(expected, axis=0))
    # The served page is the very page `nnkgeo analyze --html` draws from the embeddings,
    # whose maps draw as many points.
    local = render_report_html(
        report,
        embeddings={name: two_sets[name] for name in ("pixels", "pca-16")},
        labels={"pixels": labels, "pca-16": labels},
        title=f"nnkgeo report {two_set_job['id']}",
    )
    assert alpha.get(two_set_job["links"]["report_html"]).text == local


def _peak_rss_growth(pid: int, action: Callable[[], object]) -> int:
    """How far above its resident set before ``action`` the process peaked during it.

    The peak is the kernel's high-water mark (VmHWM), reset first through clear_refs:
    RSS read after the request would miss memory the request allocated and gave back.
    """
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    before = psutil.Process(pid).memory_info().rss
    action()
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    (peak_kb,) = [int(line.split()[1]) for line in status if line.startswith("VmHWM:")]
    return peak_kb * 1024 - before


@pytest.fixture(scope="module")
def large_set_job(alpha: httpx.Client) -> dict:
    """20,000 x 64 points uploaded as a compressed npz, which the old page read whole."""
    rng = np.random.default_rng(11)
    points = (rng.standard_normal((20_000, 64)) * np.linspace(3, 1, 64)).astype(np.float32)
    content = io.BytesIO()
    np.savez_compressed(content, array=points)
    uploaded = upload(alpha, content.getvalue(), fmt="npz")
    assert uploaded.status_code in (200, 201), uploaded.text
    labels = upload_array(alpha, rng.integers(0, 10, len(points)))
    body = {
        "sets": [
            {
                "name": "large",
                "embeddings": {"dataset": uploaded.json()["id"]},
                "labels": {"dataset": labels},
            }
        ],
        "params": {"k": 5},
    }
    response = submit(alpha, body)
    assert response.status_code == 202, response.text
    job = wait_for_status(alpha, response.json()["id"])
    assert job["status"] == "succeeded", job
    return job


def test_report_page_of_a_large_set_barely_moves_the_api_memory(
    alpha: httpx.Client, large_set_job: dict, stack: ServiceStack
) -> None:
    assert stack.api is not None
    url = large_set_job["links"]["report_html"]
    assert alpha.get(url).status_code == 200  # first use: imports, caches
    pages: list[httpx.Response] = []

    growth = _peak_rss_growth(stack.api.process.pid, lambda: pages.append(alpha.get(url)))

    assert pages[0].status_code == 200
    assert pages[0].text.count(MAP_FIGURE) == 1
    # Reading the 5 MiB of embeddings (as the page once did) would cost about 11 MiB.
    assert growth < 3 * 2**20, f"the API grew by {growth / 2**20:.1f} MiB"


def test_embed_job_page_has_its_maps(alpha: httpx.Client, stack: ServiceStack) -> None:
    import torch

    from workers.models import build_family_model

    spec = MLPModel(family="mlp", depth=1, width=8)
    torch.manual_seed(0)
    state = build_family_model(spec, input_shape=(64,), n_classes=10).state_dict()
    weights = upload(
        alpha,
        safetensors_bytes({name: tensor.numpy() for name, tensor in state.items()}),
        fmt="safetensors",
    )
    assert weights.status_code in (200, 201), weights.text
    model = {
        **spec.model_dump(mode="json", exclude_none=True),
        "weights": {"dataset": weights.json()["id"]},
    }
    body = {
        "embed": {
            "dataset": {"builtin": "digits", "layout": "vectors"},
            "model": model,
            "layers": "all",
        },
        "params": {"k": 10},
    }
    response = submit(alpha, body)
    assert response.status_code == 202, response.text
    job = wait_for_status(alpha, response.json()["id"])
    assert job["status"] == "succeeded", job

    page = alpha.get(job["links"]["report_html"]).text

    names = [s["name"] for s in alpha.get(job["links"]["report"]).json()["sets"]]
    assert len(names) >= 2
    assert page.count(MAP_FIGURE) == len(names)
    assert "Not available" not in page
    files = _result_files(stack, "alpha", job["id"])
    for name in names:
        assert _stored_map(stack, files[name]["map"]).rows.size == 1797


def test_set_whose_map_could_not_be_made_shows_a_note_in_its_place(
    alpha: httpx.Client, two_set_job: dict, stack: ServiceStack
) -> None:
    from workers.report_page import NO_MAP_NOTE, render_report_page

    report = Report.model_validate(alpha.get(two_set_job["links"]["report"]).json())
    files = _result_files(stack, "alpha", two_set_job["id"])
    pixels_map = _blob_path(stack, files["pixels"]["map"]).read_bytes()

    page = render_report_page(report, {"pixels": pixels_map}).decode("utf-8")

    assert page.count(MAP_FIGURE) == 1
    assert page.count(NO_MAP_NOTE) == 1
    # With both maps it is the page the service serves.
    both = {name: _blob_path(stack, f["map"]).read_bytes() for name, f in files.items()}
    served = alpha.get(two_set_job["links"]["report_html"]).content
    assert render_report_page(report, both) == served


def test_result_stored_without_a_page_answers_a_problem_saying_submit_again(
    alpha: httpx.Client, alpha_digits: tuple[str, str], stack: ServiceStack
) -> None:
    embeddings, labels = alpha_digits
    body = {
        "sets": [
            {"name": "digits", "embeddings": {"dataset": embeddings}, "labels": {"dataset": labels}}
        ],
        "params": {"k": 17},
    }
    job = wait_for_status(alpha, submit(alpha, body).json()["id"])
    # A result as stored before the worker drew pages: it names no page.
    client = redis.Redis.from_url(stack.redis_url)
    assert client.hdel(f"nnkgeo:t:alpha:result:{job['id']}", "page") == 1

    response = alpha.get(job["links"]["report_html"])

    problem = assert_problem(response, 404)
    assert problem["type"] == "urn:nnkgeo:problem:report-page-not-stored"
    assert "Submit the job again" in problem["detail"]
    assert alpha.get(job["links"]["report"]).status_code == 200


def test_map_blob_lives_and_dies_with_the_result(alpha: httpx.Client, stack: ServiceStack) -> None:
    # Points of this test alone: blobs are shared by content, and digits' map is the
    # same whatever k (every point drawn), so other results keep theirs alive.
    points = np.random.default_rng(23).standard_normal((400, 6)).astype(np.float32)
    body = {"sets": [{"name": "own", "embeddings": {"dataset": upload_array(alpha, points)}}]}
    job = wait_for_status(alpha, submit(alpha, {**body, "params": {"k": 7}}).json()["id"])
    files = _result_files(stack, "alpha", job["id"])["own"]
    client = redis.Redis.from_url(stack.redis_url)
    page = client.hget(f"nnkgeo:t:alpha:result:{job['id']}", "page")
    assert page
    blobs = [files["map"], files["directed"], files["symmetric"], page.decode()]

    def expiries() -> list[float]:
        return [float(client.zscore("nnkgeo:blobs:graphs", sha) or 0) for sha in blobs]

    first = expiries()
    assert all(_blob_path(stack, sha).is_file() for sha in blobs)
    assert min(first) > time.time() and max(first) - min(first) < 5  # the result's lifetime
    time.sleep(1.1)
    # A cache hit renews the result, and the map and page with its graphs.
    assert submit(alpha, {**body, "params": {"k": 7}}).json()["cached"] is True
    renewed = expiries()
    assert all(after > before for before, after in zip(first, renewed, strict=True))

    # The result's lifetime runs out: its key goes, its blobs' expiry passes.
    client.delete(f"nnkgeo:t:alpha:result:{job['id']}")
    client.zadd("nnkgeo:blobs:graphs", dict.fromkeys(blobs, 0), xx=True)
    # The worker sweeps expired blobs after each job it runs (once the job has ended).
    other = np.random.default_rng(24).standard_normal((300, 6)).astype(np.float32)
    sweeper = {"sets": [{"name": "other", "embeddings": {"dataset": upload_array(alpha, other)}}]}
    submit(alpha, {**sweeper, "params": {"k": 7}})

    wait_until(
        lambda: not any(_blob_path(stack, sha).exists() for sha in blobs),
        timeout_s=30,
        what="the expired map, page and graphs to be removed",
    )
    assert alpha.get(job["links"]["report_html"]).status_code == 410
