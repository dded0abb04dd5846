"""Train a classifier until it fits its training set, deterministically.

The study needs each model trained "until it classifies every training point
correctly": training stops at the first epoch after which the training accuracy is
1.0, or at ``max_epochs``, and the result says which. Adam on cross-entropy over
shuffled minibatches; the initial weights come from the caller (seed before building),
the batch order from a generator seeded with ``config.seed``, and torch runs with
deterministic algorithms, so the same seed gives the same numbers on the same machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from api_schemas.models import TrainConfig

__all__ = ["TrainingResult", "accuracy", "deterministic_torch", "train_until_fit"]

_EVAL_BATCH = 4096


@dataclass(frozen=True)
class TrainingResult:
    """How a training run ended.

    Attributes
    ----------
    epochs : int
        Epochs run (the first at whose end every training point was right, if any).
    train_accuracy, test_accuracy : float
        Share of points classified correctly after the last epoch; ``test_accuracy``
        is None without test data.
    fitted : bool
        Whether the training accuracy reached 1.0 within ``max_epochs``.
    seconds : float
        Wall time of the run.
    """

    epochs: int
    train_accuracy: float
    test_accuracy: float | None
    fitted: bool
    seconds: float


@contextmanager
def deterministic_torch(seed: int) -> Iterator[None]:
    """Seed torch's global generator and run with deterministic algorithms.

    The global random state and the deterministic-algorithms flag are restored on
    exit, so that the caller's process is left as it was found.
    """
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # warn_only: some CUDA kernels have no deterministic version; a warning is
        # better than refusing to train on a GPU.
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(was_deterministic, warn_only=warn_only)


def accuracy(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of ``inputs`` whose argmax logit is their label, in eval mode."""
    was_training = model.training
    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, inputs.shape[0], _EVAL_BATCH):
            logits = model(inputs[start : start + _EVAL_BATCH])
            correct += int((logits.argmax(dim=1) == labels[start : start + _EVAL_BATCH]).sum())
    model.train(was_training)
    return correct / max(1, inputs.shape[0])


def train_until_fit(
    model: nn.Module,
    train_inputs: np.ndarray,
    train_labels: np.ndarray,
    *,
    config: TrainConfig,
    test_inputs: np.ndarray | None = None,
    test_labels: np.ndarray | None = None,
    device: str = "cpu",
    progress: Callable[[float], None] | None = None,
) -> TrainingResult:
    """Train ``model`` until every training point is classified correctly.

    Parameters
    ----------
    model : torch.nn.Module
        Maps a batch of inputs to one logit per class; trained in place, left in eval
        mode on ``device``.
    train_inputs : numpy.ndarray
        float32, shape (N, ...).
    train_labels : numpy.ndarray
        Class indices in 0..C-1, shape (N,).
    config : TrainConfig
        ``max_epochs``, ``seed`` (batch order), ``lr`` (Adam), ``batch_size``.
    test_inputs, test_labels : numpy.ndarray, optional
        Held-out points, for the test accuracy.
    device : str
        Where to train; a resolved device ("cpu" or "cuda").
    progress : callable, optional
        ``progress(fraction)`` after each epoch, as a share of ``max_epochs``; may
        raise to cancel.

    Returns
    -------
    TrainingResult

    Notes
    -----
    The stopping rule follows the study of Shekkizhar & Ortega (GSP 2023): models are
    compared once they interpolate their training data, so training stops as soon as
    the training accuracy is 1.0 rather than after a fixed budget.
    """
    started = time.perf_counter()
    model.to(device)
    inputs = torch.from_numpy(np.ascontiguousarray(train_inputs, dtype=np.float32)).to(device)
    labels = torch.from_numpy(np.asarray(train_labels, dtype=np.int64)).to(device)
    n_points = inputs.shape[0]
    batch_size = min(config.batch_size, n_points)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    loss_function = nn.CrossEntropyLoss()
    order_generator = torch.Generator().manual_seed(config.seed)
    epochs = 0
    train_accuracy = accuracy(model, inputs, labels)
    while train_accuracy < 1.0 and epochs < config.max_epochs:
        model.train()
        order = torch.randperm(n_points, generator=order_generator).to(device)
        for start in range(0, n_points, batch_size):
            batch = order[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss_function(model(inputs[batch]), labels[batch]).backward()
            optimizer.step()
        epochs += 1
        train_accuracy = accuracy(model, inputs, labels)
        if progress is not None:
            progress(1.0 if train_accuracy == 1.0 else epochs / config.max_epochs)
    model.eval()
    test_accuracy = None
    if test_inputs is not None and test_labels is not None and len(test_inputs):
        test_accuracy = accuracy(
            model,
            torch.from_numpy(np.ascontiguousarray(test_inputs, dtype=np.float32)).to(device),
            torch.from_numpy(np.asarray(test_labels, dtype=np.int64)).to(device),
        )
    return TrainingResult(
        epochs=epochs,
        train_accuracy=train_accuracy,
        test_accuracy=test_accuracy,
        fitted=train_accuracy == 1.0,
        seconds=time.perf_counter() - started,
    )
