"""The model-size study: training to a fit, fixed seeds, and the report of ``nnkgeo study``.

The CLI run (module fixture) and one direct ``run_study`` call are the only trainings:
MLPs of widths 16 and 64 on digits, a few seconds each.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from api_schemas import AnalysisParams, Report
from api_schemas.models import StudySpec
from nnkgeo.cli import main
from workers.geometry import EmbeddingSet, analyze
from workers.models import load_digits_data, run_study, split_dataset, study_models
from workers.models.training import accuracy

torch.set_num_threads(min(2, torch.get_num_threads()))

WIDTHS = (64, 16)  # out of order on purpose: the study sorts by size
K = 20
TRAIN = {"max_epochs": 200, "seed": 0, "lr": 3e-3, "batch_size": 64}


def _spec(layers="penultimate") -> StudySpec:
    return StudySpec.model_validate(
        {
            "kind": "width",
            "dataset": {"builtin": "digits", "split": {"test_fraction": 0.25, "seed": 0}},
            "model": {"family": "mlp", "depth": 2, "widths": list(WIDTHS)},
            "train": TRAIN,
            "layers": layers,
        }
    )


@pytest.fixture(scope="module")
def cli_study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    status = main(
        [
            "study",
            "--dataset",
            "digits",
            "--family",
            "mlp",
            "--depth",
            "2",
            "--widths",
            ",".join(map(str, WIDTHS)),
            "--layers",
            "penultimate",
            "--k",
            str(K),
            "--max-epochs",
            str(TRAIN["max_epochs"]),
            "--lr",
            str(TRAIN["lr"]),
            "--seed",
            "0",
            "--out",
            str(folder / "report.json"),
            "--embeddings-out",
            str(folder / "sets.npz"),
            "--quiet",
        ]
    )
    assert status == 0
    report = Report.model_validate_json((folder / "report.json").read_text())
    with np.load(folder / "sets.npz", allow_pickle=False) as saved:
        arrays = dict(saved)
    return report, arrays


def _saved_sets(report: Report, arrays: dict[str, np.ndarray]) -> list[EmbeddingSet]:
    return [
        EmbeddingSet(
            name=entry.name,
            embeddings=arrays[f"{entry.name}.embeddings"],
            labels=arrays[f"{entry.name}.labels"],
            ids=arrays[f"{entry.name}.ids"],
            extra=dict(entry.extra),
        )
        for entry in report.sets
    ]


def _without_timings(report: Report) -> dict:
    """The report without timings, nor what only a study adds (the held-out split)."""
    dumped = json.loads(report.model_dump_json())
    dumped.pop("study", None)
    for entry in dumped["sets"]:
        entry.pop("timings")
        entry.pop("out_of_sample", None)
    series = dumped["comparison"]["series"]
    for path in [path for path in series if path.startswith("out_of_sample.")]:
        series.pop(path)
    return dumped


def test_models_come_in_size_order():
    names = [model.name for model in study_models(_spec())]
    assert names == ["mlp-d2-w16", "mlp-d2-w64"]


def test_every_model_of_the_study_fits_the_digits_training_set(cli_study):
    report, _ = cli_study
    assert [entry.name for entry in report.sets] == ["mlp-d2-w16", "mlp-d2-w64"]
    for entry in report.sets:
        assert entry.extra["fitted"] == 1
        assert entry.extra["train_accuracy"] == 1.0
        assert 0 < entry.extra["epochs"] <= TRAIN["max_epochs"]
        assert entry.extra["test_accuracy"] > 0.9
    assert report.comparison.series["extra.parameters"] == [1482, 8970]
    assert report.comparison.series["extra.width"] == [16, 64]


def test_study_embeds_the_training_split(cli_study):
    report, arrays = cli_study
    train = split_dataset(load_digits_data(), split=_spec().dataset.split).train
    for entry in report.sets:
        assert entry.n_points == train.n_points - entry.extra["dropped_zero_rows"]
        ids = arrays[f"{entry.name}.ids"]
        assert np.isin(ids, train.ids).all()
        np.testing.assert_array_equal(
            arrays[f"{entry.name}.labels"], train.labels[np.isin(train.ids, ids)]
        )


def test_study_report_equals_the_engine_on_the_same_embeddings(cli_study):
    report, arrays = cli_study
    assert report.params == AnalysisParams(k=K, device="cpu")
    again = analyze(_saved_sets(report, arrays), params=report.params).report
    assert _without_timings(again) == _without_timings(report)


def test_fixed_seeds_give_identical_numbers_twice(cli_study):
    report, arrays = cli_study
    sets = run_study(_spec(), dataset=load_digits_data(), params=AnalysisParams(k=K))
    assert [s.name for s in sets] == [entry.name for entry in report.sets]
    for embedding_set, entry in zip(sets, report.sets, strict=True):
        np.testing.assert_array_equal(embedding_set.embeddings, arrays[f"{entry.name}.embeddings"])
        assert embedding_set.extra == entry.extra


def test_trained_penultimate_features_separate_the_classes(cli_study):
    report, _ = cli_study
    for entry in report.sets:
        assert entry.loo_error.nnk_weighted < 0.05
        assert entry.regime in ("homogeneous", "weighted", "not_interpolating")


def test_all_layers_of_a_cnn_study_are_sets_in_depth_order_per_model():
    spec = StudySpec.model_validate(
        {
            "dataset": {"builtin": "digits"},
            "model": {"family": "cnn", "width_multipliers": [0.25]},
            "train": {"max_epochs": 1, "seed": 0},
            "layers": "all",
        }
    )
    sets = run_study(spec, dataset=load_digits_data())
    assert [s.name for s in sets] == [
        "cnn-x0.25.block1",
        "cnn-x0.25.block2",
        "cnn-x0.25.block3",
        "cnn-x0.25.pool",
        "cnn-x0.25.output",
    ]
    assert {s.extra["epochs"] for s in sets} == {1}
    assert sets[0].embeddings.shape[1] == 4  # block1 maps, average pooled


def test_accuracy_counts_argmax_hits():
    logits_model = torch.nn.Identity()
    inputs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    assert accuracy(logits_model, inputs, torch.tensor([0, 1, 1])) == pytest.approx(2 / 3)


def test_cli_study_refuses_a_bad_reference_with_status_2(tmp_path, capsys):
    status = main(
        ["study", "--dataset", "digits", "--family", "cnn", "--out", str(tmp_path / "r.json")]
    )
    assert status == 2
    assert "--width-multipliers" in capsys.readouterr().err
    status = main(
        [
            "study",
            "--dataset",
            "digits",
            "--widths",
            "8",
            "--layers",
            "hidden7",
            "--max-epochs",
            "1",
            "--out",
            str(tmp_path / "r.json"),
            "--quiet",
        ]
    )
    assert status == 2
    assert "no layer named 'hidden7'" in capsys.readouterr().err


def test_cli_study_flags_make_the_training_controls():
    from nnkgeo.cli.entry import build_parser
    from nnkgeo.cli.local import _study_spec

    args = build_parser().parse_args(
        [
            "study",
            "--dataset",
            "digits",
            "--widths",
            "8,32",
            "--seeds",
            "0,1,2",
            "--min-epochs",
            "5",
            "--until",
            "loss",
            "--target-loss",
            "0.05",
            "--no-standardize",
            "--out",
            "report.json",
        ]
    )
    spec, _ = _study_spec(args)
    assert spec.train.seed_values == [0, 1, 2]
    assert spec.train.min_epochs == 5
    assert spec.train.until == "loss" and spec.train.target_loss == 0.05
    assert spec.train.standardize is False
    defaults, _ = _study_spec(
        build_parser().parse_args(
            ["study", "--dataset", "digits", "--widths", "8", "--out", "report.json"]
        )
    )
    assert defaults.train.seed_values == [0]
    assert defaults.train.standardize is True
    assert defaults.train.until == "fit" and defaults.train.min_epochs == 0
