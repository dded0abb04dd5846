"""Train a classifier until it fits its training set, deterministically.

The study needs each model trained "until it classifies every training point
correctly": by default (``until="fit"``) training stops at the first epoch after which
the training accuracy is 1.0; with ``until="loss"`` at the first whose training
cross-entropy is at most ``target_loss``; never before ``min_epochs``, never after
``max_epochs``, and the result says whether the rule was met. Adam on cross-entropy over
shuffled minibatches; the initial weights come from the caller (seed before building),
the batch order from a generator seeded with the run's seed, and torch runs with
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

__all__ = [
    "TrainingResult",
    "accuracy",
    "deterministic_torch",
    "evaluate",
    "train_until_fit",
]

_EVAL_BATCH = 4096


@dataclass(frozen=True)
class TrainingResult:
    """How a training run ended.

    Attributes
    ----------
    epochs : int
        Epochs run (the first, from ``min_epochs`` on, at whose end the stopping rule
        held, if any).
    train_accuracy, test_accuracy : float
        Share of points classified correctly after the last epoch; ``test_accuracy``
        is None without test data.
    final_loss : float
        Mean cross-entropy over the training set after the last epoch, in eval mode.
    fitted : bool
        Whether the stopping rule held at the end: training accuracy 1.0 (``until="fit"``)
        or training loss at most ``target_loss`` (``until="loss"``).
    seconds : float
        Wall time of the run.
    """

    epochs: int
    train_accuracy: float
    test_accuracy: float | None
    fitted: bool
    seconds: float
    final_loss: float = float("nan")


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


def evaluate(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of ``model`` on ``inputs``, in eval mode.

    Returns
    -------
    (accuracy, loss) : tuple of float
        Share of argmax hits, and the mean cross-entropy (summed per batch in float64,
        divided by the number of points, so that the batching does not change it).
    """
    was_training = model.training
    model.eval()
    correct = 0
    loss_sum = 0.0
    with torch.inference_mode():
        for start in range(0, inputs.shape[0], _EVAL_BATCH):
            logits = model(inputs[start : start + _EVAL_BATCH])
            batch_labels = labels[start : start + _EVAL_BATCH]
            correct += int((logits.argmax(dim=1) == batch_labels).sum())
            loss_sum += float(
                nn.functional.cross_entropy(logits, batch_labels, reduction="sum").double()
            )
    model.train(was_training)
    n_points = max(1, inputs.shape[0])
    return correct / n_points, loss_sum / n_points


def accuracy(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of ``inputs`` whose argmax logit is their label, in eval mode."""
    return evaluate(model, inputs, labels)[0]


def train_until_fit(
    model: nn.Module,
    train_inputs: np.ndarray,
    train_labels: np.ndarray,
    *,
    config: TrainConfig,
    seed: int | None = None,
    test_inputs: np.ndarray | None = None,
    test_labels: np.ndarray | None = None,
    device: str = "cpu",
    progress: Callable[[float], None] | None = None,
) -> TrainingResult:
    """Train ``model`` until its stopping rule holds (by default: every point right).

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
        ``max_epochs``, ``min_epochs``, ``until`` and ``target_loss`` (the stopping
        rule), ``lr`` (Adam), ``batch_size``.
    seed : int, optional
        Seeds the batch order; default ``config.seed`` (a study passes each of
        ``config.seeds`` in turn).
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
    the training accuracy is 1.0 rather than after a fixed budget. That makes the
    training budget depend on the width (a wide model fits in a few epochs, a narrow one
    in hundreds), so ``min_epochs`` and ``until="loss"`` let a study give every model a
    comparable amount of training.
    """
    started = time.perf_counter()
    model.to(device)
    inputs = torch.from_numpy(np.ascontiguousarray(train_inputs, dtype=np.float32)).to(device)
    labels = torch.from_numpy(np.asarray(train_labels, dtype=np.int64)).to(device)
    n_points = inputs.shape[0]
    batch_size = min(config.batch_size, n_points)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    loss_function = nn.CrossEntropyLoss()
    order_generator = torch.Generator().manual_seed(config.seed if seed is None else seed)

    def rule_holds(train_accuracy: float, train_loss: float) -> bool:
        if config.until == "loss":
            assert config.target_loss is not None
            return train_loss <= config.target_loss
        return train_accuracy == 1.0

    epochs = 0
    train_accuracy, train_loss = evaluate(model, inputs, labels)
    while epochs < config.max_epochs and (
        epochs < config.min_epochs or not rule_holds(train_accuracy, train_loss)
    ):
        model.train()
        order = torch.randperm(n_points, generator=order_generator).to(device)
        for start in range(0, n_points, batch_size):
            batch = order[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss_function(model(inputs[batch]), labels[batch]).backward()
            optimizer.step()
        epochs += 1
        train_accuracy, train_loss = evaluate(model, inputs, labels)
        if progress is not None:
            done = epochs >= config.min_epochs and rule_holds(train_accuracy, train_loss)
            progress(1.0 if done else epochs / config.max_epochs)
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
        fitted=rule_holds(train_accuracy, train_loss),
        seconds=time.perf_counter() - started,
        final_loss=train_loss,
    )
