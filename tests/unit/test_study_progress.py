"""A study's progress bar moves one way: training and embedding, then the analysis.

``nnkgeo study`` is run as a user runs it (a real process, stderr captured, so the bar
writes one line per stage or 10 %), on a small file of digits with two tiny MLPs.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

from workers.models.study import TRAINING_PROGRESS_SHARE, scaled_progress

ROOT = Path(__file__).resolve().parents[2]
BAR_LINE = re.compile(r"\]\s+(\d+)% (\S+) \(")


def test_scaled_progress_maps_each_phase_onto_its_own_span() -> None:
    seen: list[tuple[str, float]] = []
    training = scaled_progress(lambda s, f: seen.append((s, f)), 0.0, TRAINING_PROGRESS_SHARE)
    analysis = scaled_progress(
        lambda s, f: seen.append((s, f)), TRAINING_PROGRESS_SHARE, 1 - TRAINING_PROGRESS_SHARE
    )
    assert training is not None and analysis is not None
    for fraction in (0.0, 0.5, 1.0):
        training("train:m", fraction)
    for fraction in (0.0, 0.5, 1.0):
        analysis("m:knn", fraction)

    assert np.allclose([f for _, f in seen], [0.0, 0.4, 0.8, 0.8, 0.9, 1.0])
    assert [s for s, _ in seen] == ["train:m"] * 3 + ["m:knn"] * 3
    assert scaled_progress(None, 0.0, 1.0) is None


def test_the_cli_and_the_service_split_a_studys_bar_alike() -> None:
    from workers.progress import MODEL_PROGRESS_SHARE

    assert TRAINING_PROGRESS_SHARE == MODEL_PROGRESS_SHARE


def test_study_progress_never_falls_back_after_training(tmp_path: Path) -> None:
    data = load_digits()
    np.savez(
        tmp_path / "digits.npz",
        inputs=data.data[:240].astype(np.float32),
        labels=data.target[:240],
    )
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "nnkgeo",
            "study",
            "--dataset",
            str(tmp_path / "digits.npz"),
            "--family",
            "mlp",
            "--depth",
            "1",
            "--widths",
            "4,8",
            "--max-epochs",
            "5",
            "--k",
            "6",
            "--out",
            str(tmp_path / "study.json"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr

    shown = [(int(m[1]), m[2]) for m in BAR_LINE.finditer(completed.stderr)]
    percents = [percent for percent, _ in shown]
    assert percents == sorted(percents), shown
    assert percents[-1] == 100
    # Training and embedding first, then every set's analysis, from the training's share on.
    stages = [stage for _, stage in shown]
    first_analysis = next(
        i for i, stage in enumerate(stages) if not stage.startswith(("train:", "embed:"))
    )
    assert all(stage.startswith(("train:", "embed:")) for stage in stages[:first_analysis])
    assert min(percents[first_analysis:]) >= int(TRAINING_PROGRESS_SHARE * 100), shown
