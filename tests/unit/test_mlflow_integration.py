"""nnkgeo.integrations.mlflow: a real report logged into a local MLflow store and read back.

Each read-back test runs against both local stores that need no server: SQLite (MLflow's
default since the file store went into maintenance mode) and the file store (still what
``./mlruns`` users have; MLflow 3 refuses it unless ``MLFLOW_ALLOW_FILE_STORE=true``).
The store, experiment and artifact root live in ``tmp_path``, chosen through MLflow's
environment variables so that nothing global is left behind.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from api_schemas import AnalysisParams, Report
from nnkgeo.integrations.mlflow import _safe_prefix, headline_metrics, log_report
from tests.unit.reference import headline_metrics_of
from workers.geometry import EmbeddingSet, analyze

pytestmark = [
    # MLflow's SQLAlchemy store uses a loader strategy that SQLAlchemy 2.1 deprecates.
    pytest.mark.filterwarnings("ignore::DeprecationWarning:mlflow"),
    pytest.mark.filterwarnings("ignore::FutureWarning:mlflow"),
]

PROJECTED = "pca:16/whitened"  # not MLflow-safe: logged as pca_16_whitened
PAGE = "<!doctype html><html><head><title>r</title></head><body>nnkgeo</body></html>"


@pytest.fixture(scope="module")
def report() -> Report:
    """Digits in two spaces (the pixels, and a whitened 16-d projection), labelled, k=10."""
    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    centred = x - x.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    projected = (centred @ vt[:16].T / singular[:16]).astype(np.float32)
    sets = [EmbeddingSet("pixels", x, y), EmbeddingSet(PROJECTED, projected, y)]
    return analyze(sets, params=AnalysisParams(k=10, device="cpu")).report


@pytest.fixture(scope="module")
def empty_sqlite_store(tmp_path_factory) -> Path:
    """An MLflow SQLite database with its tables made (the migrations take seconds)."""
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    pytest.importorskip("alembic")
    from mlflow.tracking import MlflowClient

    database = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{database}").search_experiments()
    return database


@pytest.fixture(params=["sqlite", "file"])
def store(request, tmp_path, monkeypatch):
    """A fresh local tracking store and experiment; yields (MlflowClient, experiment id)."""
    pytest.importorskip("mlflow")
    import mlflow
    from mlflow.tracking import MlflowClient

    if request.param == "sqlite":
        database = tmp_path / "mlflow.db"
        shutil.copyfile(request.getfixturevalue("empty_sqlite_store"), database)
        uri = f"sqlite:///{database}"
    else:
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(
        "nnkgeo-test", artifact_location=(tmp_path / "artifacts").as_uri()
    )
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", experiment_id)
    assert mlflow.active_run() is None
    yield client, experiment_id
    while mlflow.active_run() is not None:
        mlflow.end_run()


def _expected_metrics(set_report, head: str) -> dict[str, float]:
    return {f"{head}.{key}": value for key, value in headline_metrics_of(set_report).items()}


def _downloaded(client, run_id: str, path: str, tmp_path: Path) -> str:
    destination = tmp_path / "downloads" / path.replace("/", "_")
    destination.mkdir(parents=True)
    return Path(client.download_artifacts(run_id, path, str(destination))).read_text("utf-8")


def test_metrics_tags_and_artifacts_read_back_equal_the_report(report, store, tmp_path):
    import mlflow

    client, experiment_id = store
    page = tmp_path / "layer-report.html"
    page.write_text(PAGE, encoding="utf-8")

    log_report(report, html=page)

    # No run was active: one was started in the current experiment and left active.
    active = mlflow.active_run()
    assert active is not None and active.info.experiment_id == experiment_id
    run = client.get_run(active.info.run_id)
    pixels, projected = report.sets
    expected = _expected_metrics(pixels, "nnkgeo.pixels")
    expected |= _expected_metrics(projected, "nnkgeo.pca_16_whitened")
    assert run.data.metrics == expected
    assert run.data.metrics["nnkgeo.pixels.loo_error.nnk_weighted"] == pixels.loo_error.nnk_weighted
    assert run.data.metrics == headline_metrics(report)[0]

    tags = run.data.tags
    assert tags["nnkgeo.pixels.regime"] == pixels.regime
    assert tags["nnkgeo.pca_16_whitened.regime"] == projected.regime
    assert tags["nnkgeo.pca_16_whitened.name"] == PROJECTED
    assert "nnkgeo.pixels.name" not in tags
    assert tags["nnkgeo.algorithm_version"] == report.algorithm_version
    assert tags["nnkgeo.params.k"] == "10"
    assert tags["nnkgeo.params.kernel"] == report.params.kernel
    assert "nnkgeo.job_id" not in tags  # an in-process report has none

    listed = {entry.path for entry in client.list_artifacts(run.info.run_id, "nnkgeo")}
    assert listed == {"nnkgeo/report.json", "nnkgeo/report.html"}
    logged = _downloaded(client, run.info.run_id, "nnkgeo/report.json", tmp_path)
    assert Report.model_validate_json(logged) == report
    assert json.loads(logged) == report.model_dump(mode="json")
    assert _downloaded(client, run.info.run_id, "nnkgeo/report.html", tmp_path) == PAGE


def test_steps_make_a_metric_history_in_one_run(report, store, tmp_path):
    import mlflow

    client, experiment_id = store
    later = report.model_dump(mode="json")
    later["sets"][0]["loo_error"]["nnk_weighted"] = 0.5
    key = "nnkgeo.pixels.loo_error.nnk_weighted"

    for epoch, each in enumerate([report, later]):  # a Report, then a dict
        log_report(each, step=epoch)

    run_id = mlflow.active_run().info.run_id
    assert [run.info.run_id for run in client.search_runs([experiment_id])] == [run_id]
    history = sorted(client.get_metric_history(run_id, key), key=lambda metric: metric.step)
    assert [(m.step, m.value) for m in history] == [
        (0, report.sets[0].loo_error.nnk_weighted),
        (1, 0.5),
    ]
    assert client.get_run(run_id).data.metrics[key] == 0.5  # the latest step
    steps = {entry.path for entry in client.list_artifacts(run_id, "nnkgeo")}
    assert steps == {"nnkgeo/step_0", "nnkgeo/step_1"}
    first = _downloaded(client, run_id, "nnkgeo/step_0/report.json", tmp_path)
    assert Report.model_validate_json(first) == report
    second = _downloaded(client, run_id, "nnkgeo/step_1/report.json", tmp_path)
    assert Report.model_validate_json(second).sets[0].loo_error.nnk_weighted == 0.5


def test_run_id_and_the_active_run_are_used_as_given(report, store, tmp_path):
    import mlflow

    client, experiment_id = store
    path = tmp_path / "report.json"
    path.write_text(report.model_dump_json(), encoding="utf-8")

    # An explicit run, from a report.json path: no run is started, and none is left active.
    other = client.create_run(experiment_id).info.run_id
    log_report(str(path), run_id=other, prefix="val/nnk geo")
    assert mlflow.active_run() is None
    metrics = client.get_run(other).data.metrics
    assert metrics["val/nnk geo.pixels.loo_error.nnk_weighted"] == (
        report.sets[0].loo_error.nnk_weighted
    )
    listed = {entry.path for entry in client.list_artifacts(other, "val/nnk geo")}
    assert listed == {"val/nnk geo/report.json"}

    # The active run, from JSON text, with an empty prefix.
    with mlflow.start_run() as active:
        log_report(report.model_dump_json(), prefix="")
    assert client.get_run(active.info.run_id).data.tags["pixels.regime"] == report.sets[0].regime
    assert {entry.path for entry in client.list_artifacts(active.info.run_id)} == {"report.json"}
    assert "pixels.nnk_degree.mean" not in client.get_run(other).data.metrics


def test_html_true_renders_the_page_from_the_report(report, store, tmp_path):
    html_report = pytest.importorskip("htmlreport")
    import mlflow

    client, _ = store
    log_report(report, html=True, step=3)
    run_id = mlflow.active_run().info.run_id
    page = _downloaded(client, run_id, "nnkgeo/step_3/report.html", tmp_path)
    assert page == html_report.render_report_html(report)


def test_names_are_made_safe_and_kept_distinct(report):
    renamed = report.model_dump(mode="json")
    renamed["sets"][0]["name"] = "a:b"
    renamed["sets"][1]["name"] = "a/b"
    metrics, tags = headline_metrics(renamed, prefix="run 1/../nnkgeo//x")
    assert {key.split(".")[1] for key in metrics} == {"a_b", "a_b_2"}
    assert tags["run 1/_/nnkgeo/x.a_b.name"] == "a:b"
    assert tags["run 1/_/nnkgeo/x.a_b_2.name"] == "a/b"
    assert _safe_prefix("./é/") == "_"


def test_a_report_without_labels_logs_what_it_has():
    x = load_digits().data[:300].astype(np.float32)
    unlabelled = analyze([EmbeddingSet("x", x)], params=AnalysisParams(k=10, device="cpu"))
    metrics, tags = headline_metrics(unlabelled.report)
    assert set(metrics) == {
        "nnkgeo.x.nnk_degree.mean",
        "nnkgeo.x.nnk_degree.median",
        "nnkgeo.x.reconstruction_error.mean",
        "nnkgeo.x.reconstruction_error.median",
        "nnkgeo.x.intrinsic_dimension.twonn",
        "nnkgeo.x.intrinsic_dimension.mle",
    }
    assert "nnkgeo.x.regime" not in tags


def test_missing_mlflow_says_how_to_install_it(report, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # makes `import mlflow` fail
    with pytest.raises(ImportError, match=r"pip install 'nnkgeo\[mlflow\]'"):
        log_report(report)


def test_a_database_store_without_sqlalchemy_says_how_to_install_it(report, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    database = tmp_path / "mlflow.db"  # MLflow's default store, relative to the cwd
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{database}")
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)  # as with mlflow-skinny alone
    with pytest.raises(ImportError, match=r"SQLAlchemy.*pip install 'nnkgeo\[mlflow\]'"):
        log_report(report)
    assert mlflow.active_run() is None and not database.exists()


def test_importing_nnkgeo_does_not_import_mlflow():
    code = (
        "import sys, nnkgeo, nnkgeo.integrations, nnkgeo.integrations.mlflow\n"
        "assert 'mlflow' not in sys.modules, 'mlflow imported'\n"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, timeout=60)


def test_bad_arguments_are_refused_before_anything_is_logged(report):
    with pytest.raises(TypeError, match="step"):
        log_report(report, step=1.5)
    with pytest.raises(TypeError, match="report"):
        log_report(42)
    with pytest.raises(FileNotFoundError):
        log_report("no-such-report.json")
