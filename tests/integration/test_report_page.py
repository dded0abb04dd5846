"""The report page as the service serves it, loaded from the service in headless Chromium.

The unit tests check the renderer on a file; this checks the page a user gets from
``GET /v1/jobs/{id}/report.html``, with the service's own Content-Security-Policy
header in force: it draws a two-set job with string labels (markup among them), makes no
request but for itself, and logs no error.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.integration.helpers import submit, upload_array, wait_for_status
from tests.unit.test_html_report import (
    DevTools,
    decode_png,
    headless_chromium,
    parse,
    visit,
)

pytestmark = pytest.mark.integration

ODD_LABEL = "<b>zero</b>"


@pytest.fixture(scope="module")
def two_set_job(alpha: httpx.Client, digits: tuple[np.ndarray, np.ndarray]) -> dict:
    """Digits as pixels and as a PCA-16 projection, labelled with strings, k=10."""
    pixels, targets = digits
    labels = np.array([ODD_LABEL if t == 0 else f"digit {t}" for t in targets])
    centred = pixels - pixels.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    pca16 = np.ascontiguousarray(centred @ vt[:16].T, dtype=np.float32)
    label_id = upload_array(alpha, labels)
    body = {
        "sets": [
            {
                "name": name,
                "embeddings": {"dataset": upload_array(alpha, points)},
                "labels": {"dataset": label_id},
            }
            for name, points in (("pixels", pixels), ("pca-16", pca16))
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
    assert response.headers["content-security-policy"].startswith("default-src 'none'")
    page = response.text
    text = parse(page).text()
    assert f"nnkgeo report {two_set_job['id']}" in text
    for set_report in report["sets"]:
        assert set_report["name"] in text
        assert f"{set_report['loo_error']['nnk_weighted']:.4g}" in text
    assert "<b>" not in page and "&lt;b&gt;zero&lt;/b&gt;" in page
    assert ODD_LABEL in text
    # The service maps each set's stored embeddings to draw its 2-D map.
    assert "the embeddings were not given" not in page
    assert page.count("2-D map of the embeddings (PCA)") == 2


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
    assert len(seen.facts["svgs"]) == 1 + 4 + 4 * 2  # overview, comparison, four per set (map)
    image = decode_png(seen.screenshot)[..., :3].reshape(-1, 3)
    assert np.any(image != np.array([0xF6, 0xF7, 0xF9]), axis=1).mean() > 0.02
