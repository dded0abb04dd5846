"""A study over seeds: training controls, held-out queries, t-intervals and claim verdicts.

One small study (500 digits, MLPs of width 6 and 48, three seeds, at most 60 epochs)
runs once per module; its report's ``study`` section is checked against scipy's
t-interval over the per-seed set reports, against out-of-sample metrics computed
directly, and against the verdict functions fed with per-point correctness recomputed
here by a slow loop over the graph's rows.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

from api_schemas import AnalysisParams
from api_schemas.models import MLPModel, StudySpec, TrainConfig
from api_schemas.study import STUDY_METRICS
from workers.geometry import analyze
from workers.geometry.out_of_sample import out_of_sample_metrics
from workers.geometry.statistics import (
    PairedCorrectness,
    pure_patches_grow_verdict,
    unweighted_catches_up_verdict,
)
from workers.models import build_family_model, load_digits_data, split_dataset
from workers.models.datasets import LabelledData, TrainTestData, standardize_split
from workers.models.study import StudyEmbeddingSet, run_study
from workers.models.study_report import add_study_section, metric_value
from workers.models.training import deterministic_torch, train_until_fit

# One thread: the machine is shared, and small MLPs gain nothing from more.
torch.set_num_threads(1)

K = 10
SEEDS = [0, 1, 2]
N_POINTS = 500


def _data() -> LabelledData:
    return load_digits_data(layout="vectors").subset(np.arange(N_POINTS))


def _spec(**train) -> StudySpec:
    return StudySpec.model_validate(
        {
            "dataset": {"builtin": "digits", "layout": "vectors"},
            "model": {"family": "mlp", "depth": 1, "widths": [48, 6]},
            "train": {"seeds": SEEDS, "max_epochs": 60, "lr": 1e-2, "batch_size": 32, **train},
        }
    )


@pytest.fixture(scope="module")
def study():
    params = AnalysisParams(k=K)
    sets = run_study(_spec(), dataset=_data(), params=params)
    analysis = add_study_section(analyze(sets, params=params), sets, params=params)
    return sets, analysis


def _slow_loo_correct(directed, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per point, a plain loop: argmax over sorted classes of summed weights / counts."""
    classes = np.unique(labels)
    weighted, unweighted = [], []
    for row in range(directed.shape[0]):
        start, stop = directed.indptr[row], directed.indptr[row + 1]
        neighbours, weights = directed.indices[start:stop], directed.data[start:stop]
        sums = {label: 0.0 for label in classes}
        counts = {label: 0.0 for label in classes}
        for neighbour, weight in zip(neighbours, weights, strict=True):
            sums[labels[neighbour]] += weight
            counts[labels[neighbour]] += 1.0 if weight > 0 else 0.0
        # max() keeps the first of equal values: the smallest label, as DESIGN asks.
        weighted.append(max(classes, key=lambda label: sums[label]) == labels[row])
        unweighted.append(max(classes, key=lambda label: counts[label]) == labels[row])
    return np.array(weighted), np.array(unweighted)


# --------------------------------------------------------------------------- controls


def test_standardize_uses_the_training_statistics_per_feature():
    data = _data()
    parts = split_dataset(data, split=_spec().dataset.split or _default_split())
    scaled = standardize_split(parts)
    train = parts.train.inputs.astype(np.float64)
    mean, std = train.mean(axis=0), train.std(axis=0)
    constant = std == 0
    assert constant.any()  # digits' border pixels: only centred, never divided by 0
    expected_std = np.where(constant, 1.0, std)
    np.testing.assert_allclose(
        scaled.train.inputs, (train - mean) / expected_std, rtol=1e-6, atol=1e-6
    )
    np.testing.assert_allclose(
        scaled.test.inputs,
        (parts.test.inputs.astype(np.float64) - mean) / expected_std,
        rtol=1e-6,
        atol=1e-6,
    )
    np.testing.assert_allclose(scaled.train.inputs[:, ~constant].std(axis=0), 1.0, atol=1e-5)
    # The held-out part is not standardised by its own statistics.
    assert np.abs(scaled.test.inputs[:, ~constant].mean(axis=0)).max() > 1e-3


def test_standardize_images_per_channel():
    rng = np.random.default_rng(0)
    images = rng.normal(3.0, 2.0, size=(40, 2, 3, 3)).astype(np.float32)
    images[:, 1] *= 10.0
    labels = np.repeat([0, 1], 20)
    parts = TrainTestData(
        train=LabelledData(images[:30], labels[:30], np.arange(30)),
        test=LabelledData(images[30:], labels[30:], np.arange(30, 40)),
    )
    scaled = standardize_split(parts)
    train = images[:30].astype(np.float64)
    mean = train.mean(axis=(0, 2, 3), keepdims=True)
    std = train.std(axis=(0, 2, 3), keepdims=True)
    np.testing.assert_allclose(scaled.train.inputs, (train - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scaled.test.inputs, (images[30:] - mean) / std, rtol=1e-5, atol=1e-5)


def _default_split():
    from api_schemas.models import DatasetSplit

    return DatasetSplit()


def _train(config: TrainConfig, *, seed: int = 0):
    parts = standardize_split(split_dataset(_data(), split=_default_split()))
    with deterministic_torch(seed):
        model = build_family_model(
            MLPModel(family="mlp", depth=1, width=48), input_shape=(64,), n_classes=10, field="m"
        )
        result = train_until_fit(model, parts.train.inputs, parts.train.labels, config=config)
    return model, result, parts


def test_min_epochs_keeps_training_past_the_fit():
    _, quick, _ = _train(TrainConfig(max_epochs=60, lr=1e-2, batch_size=32))
    assert quick.fitted and quick.epochs < 12
    _, held, _ = _train(TrainConfig(max_epochs=60, min_epochs=12, lr=1e-2, batch_size=32))
    assert held.fitted
    assert held.epochs == 12
    assert held.final_loss < quick.final_loss


def test_until_loss_stops_at_the_first_epoch_at_the_target():
    target = 0.005
    config = dict(max_epochs=60, lr=1e-2, batch_size=32, until="loss", target_loss=target)
    model, result, parts = _train(TrainConfig(**config))
    assert result.fitted
    # The loss reported is the model's mean cross-entropy on the training split.
    with torch.inference_mode():
        logits = model(torch.from_numpy(parts.train.inputs))
        loss = torch.nn.functional.cross_entropy(
            logits.double(), torch.from_numpy(parts.train.labels)
        ).item()
    assert result.final_loss == pytest.approx(loss, rel=1e-5)
    assert loss <= target
    # One epoch less (same seed, same numbers) has not reached it: it is unfitted.
    _, before, _ = _train(TrainConfig(**{**config, "max_epochs": result.epochs - 1}))
    assert not before.fitted
    assert before.final_loss > target
    # Accuracy 1.0 comes earlier than this loss: "fit" would have stopped sooner.
    _, fit, _ = _train(TrainConfig(max_epochs=60, lr=1e-2, batch_size=32))
    assert fit.epochs < result.epochs


def test_train_config_refuses_inconsistent_controls():
    with pytest.raises(ValueError, match="target_loss"):
        TrainConfig(until="loss")
    with pytest.raises(ValueError, match="min_epochs"):
        TrainConfig(min_epochs=10, max_epochs=5)
    with pytest.raises(ValueError, match="distinct"):
        TrainConfig(seeds=[1, 1])
    assert TrainConfig(seed=4, seeds=[2, 3]).seed_values == [2, 3]
    assert TrainConfig(seed=4).seed_values == [4]


# --------------------------------------------------------------------------- the study


def test_sets_come_per_size_then_seed_with_their_held_out_split(study):
    sets, analysis = study
    assert [s.name for s in sets] == [
        f"mlp-d1-w{width}.seed{seed}" for width in (6, 48) for seed in SEEDS
    ]
    test = split_dataset(_data(), split=_default_split()).test
    for embedding_set in sets:
        assert isinstance(embedding_set, StudyEmbeddingSet)
        assert embedding_set.extra["seed"] == embedding_set.seed
        assert embedding_set.held_out_embeddings.shape[1] == embedding_set.embeddings.shape[1]
        assert embedding_set.held_out_embeddings.shape[0] <= test.n_points
    assert analysis.report.study is not None


def test_out_of_sample_section_is_the_held_out_split_against_the_training_graph(study):
    sets, analysis = study
    for embedding_set, entry in zip(sets, analysis.report.sets, strict=True):
        direct = out_of_sample_metrics(
            embedding_set.embeddings,
            embedding_set.labels,
            embedding_set.held_out_embeddings,
            embedding_set.held_out_labels,
            k=K,
        )
        section = entry.out_of_sample
        assert section.n == direct.n
        assert section.error.nnk_weighted == direct.error.nnk_weighted
        assert section.error.nnk_unweighted == direct.error.nnk_unweighted
        assert section.nnk_degree.mean == direct.nnk_degree.mean
        assert section.mcnemar.weighted_vs_unweighted.b == direct.mcnemar_weighted_vs_unweighted.b


def test_study_metrics_are_t_intervals_over_the_fitted_seeds(study):
    sets, analysis = study
    reports = {entry.name: entry for entry in analysis.report.sets}
    summaries = {summary.name: summary for summary in analysis.report.study.models}
    assert list(summaries) == ["mlp-d1-w6", "mlp-d1-w48"]
    some_unfitted = False
    for name, summary in summaries.items():
        members = [s for s in sets if s.model == name]
        assert summary.seeds == len(SEEDS) and summary.seed_values == SEEDS
        assert summary.parameters == members[0].extra["parameters"]
        fitted = [s for s in members if reports[s.name].extra["fitted"] == 1]
        some_unfitted |= len(fitted) < len(members)
        assert summary.fitted_seeds == [s.seed for s in fitted]
        assert set(summary.metrics) == set(STUDY_METRICS)
        for path in STUDY_METRICS:
            values = [metric_value(reports[s.name], path) for s in fitted]
            metric = summary.metrics[path]
            assert metric.values == values
            if not values:
                assert metric.mean is None
                continue
            assert metric.mean == pytest.approx(np.mean(values), abs=1e-12)
            if len(values) < 2:
                assert metric.ci95 is None
            elif np.ptp(values) == 0:
                assert metric.ci95 == pytest.approx([values[0], values[0]])
            else:
                low, high = scipy.stats.t.interval(
                    0.95, len(values) - 1, loc=np.mean(values), scale=scipy.stats.sem(values)
                )
                assert metric.ci95 == pytest.approx([low, high], rel=1e-9, abs=1e-12)
    # The small model does not fit every seed in 60 epochs: the flag is exercised.
    assert some_unfitted


def test_claims_follow_the_verdict_rules_on_the_same_numbers(study):
    sets, analysis = study
    reports = {entry.name: entry for entry in analysis.report.sets}
    fitted = [s for s in sets if reports[s.name].extra["fitted"] == 1]
    sizes = [m for m in ("mlp-d1-w6", "mlp-d1-w48") if any(s.model == m for s in fitted)]
    assert sizes == ["mlp-d1-w6", "mlp-d1-w48"]
    fractions = np.full((2, len(SEEDS)), np.nan)
    for s in fitted:
        fractions[sizes.index(s.model), SEEDS.index(s.seed)] = reports[
            s.name
        ].homogeneity.pure_patch_fraction
    claims = {claim.id: claim for claim in analysis.report.study.claims}
    verdict, evidence = pure_patches_grow_verdict(fractions, sizes=sizes)
    assert claims["pure_patches_grow"].verdict == verdict
    assert claims["pure_patches_grow"].evidence["steps"] == evidence["steps"]

    def pooled(model: str, kind: str) -> PairedCorrectness:
        weighted, unweighted = [], []
        for s in fitted:
            if s.model != model:
                continue
            if kind == "train":
                w, u = _slow_loo_correct(analysis.sets[s.name].directed, s.labels)
                # The slow loop agrees with the report's LOO errors.
                assert 1 - w.mean() == pytest.approx(reports[s.name].loo_error.nnk_weighted)
                assert 1 - u.mean() == pytest.approx(reports[s.name].loo_error.nnk_unweighted)
            else:
                direct = out_of_sample_metrics(
                    s.embeddings, s.labels, s.held_out_embeddings, s.held_out_labels, k=K
                )
                w, u = direct.correct_nnk_weighted, direct.correct_nnk_unweighted
            weighted.append(w)
            unweighted.append(u)
        return PairedCorrectness(np.concatenate(weighted), np.concatenate(unweighted))

    verdict, evidence = unweighted_catches_up_verdict(
        train=(pooled(sizes[0], "train"), pooled(sizes[-1], "train")),
        held_out=(pooled(sizes[0], "held_out"), pooled(sizes[-1], "held_out")),
    )
    claim = claims["unweighted_catches_up"]
    assert claim.verdict == verdict
    for kind in ("train", "held_out"):
        assert claim.evidence[kind] == evidence[kind]
    assert claim.evidence["train"]["largest"]["n"] == sum(
        reports[s.name].n_points for s in fitted if s.model == sizes[-1]
    )


# --------------------------------------------------------------------------- HTML


def _study_html(report) -> str:
    from htmlreport.page import render_report_html

    html = render_report_html(report)
    section = html[html.index('<section id="study">') :]
    return html, section[: section.index("</section>")]


def test_html_study_section_shows_size_on_a_log_axis_and_each_verdict(study):
    import html as html_module
    import re

    from htmlreport.sections.study import VERDICT_TEXT
    from htmlreport.text import fmt

    _, analysis = study
    html, section = _study_html(analysis.report)
    assert '<a href="#study">' in html
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", section)
    # Held-out and LOO errors side by side, first; titles in words, not field names.
    assert captions[:2] == ["Leave-one-out errors", "Held-out errors"]
    assert all("_" not in caption for caption in captions)
    assert "fitted" not in " ".join(captions).lower()
    assert section.count("parameters (log scale)") == len(captions)
    # The model with three fitted seeds shows its interval (hover text and bar).
    largest = analysis.report.study.models[-1].metrics["homogeneity.pure_patch_fraction"]
    low, high = largest.ci95
    assert f"95 % interval [{fmt(low)}, {fmt(high)}]" in section
    for claim in analysis.report.study.claims:
        assert f">{VERDICT_TEXT[claim.verdict]}</span>" in section
        assert claim.rule in html_module.unescape(section)


def test_html_draws_no_chart_of_a_metric_constant_across_models(study):
    import re

    _, analysis = study
    report = analysis.report
    models = []
    for model in report.study.models:
        metrics = dict(model.metrics)
        metrics["extra.test_accuracy"] = metrics["extra.test_accuracy"].model_copy(
            update={"mean": 0.5, "ci95": None}
        )
        models.append(model.model_copy(update={"metrics": metrics}))
    flat = report.model_copy(update={"study": report.study.model_copy(update={"models": models})})
    _, section = _study_html(flat)
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", section)
    assert "Test accuracy" not in captions
    assert "Pure patch fraction" in captions


def test_comparison_charts_no_flag_seed_or_constant_fact(study):
    import re

    from htmlreport.page import render_report_html

    _, analysis = study
    html = render_report_html(analysis.report)
    section = html[html.index('<section id="comparison">') :]
    section = section[: section.index("</section>")]
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", section)
    assert "Parameters" in captions and "Final loss" in captions
    assert {"Fitted", "Seed", "Depth", "fitted", "seed", "depth"}.isdisjoint(captions)
    assert all("_" not in caption for caption in captions)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from tests.unit.test_html_report import headless_chromium

    yield from headless_chromium(tmp_path_factory)


@pytest.mark.slow
def test_study_page_renders_in_chromium_without_errors_or_requests(study, browser, tmp_path):
    from htmlreport.page import render_report_html
    from tests.unit.test_html_report import visit

    _, analysis = study
    page = tmp_path / "study.html"
    page.write_text(render_report_html(analysis.report), encoding="utf-8")

    seen = visit(browser, page.as_uri())

    assert seen.errors == []
    assert all(url == page.as_uri() or url.startswith("data:") for url in seen.requests)
    # Readable on a laptop: nothing wider than the window, every chart drawn at a size.
    assert seen.facts["scrollWidth"] <= seen.facts["innerWidth"]
    assert seen.facts["svgs"] and all(w > 300 and h > 150 for w, h in seen.facts["svgs"])
