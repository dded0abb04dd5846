"""Parameters and training memory of the built-in families, by arithmetic (no torch).

The API refuses a study whose models cannot be trained within the job memory budget
before it is queued: an MLP of depth 32 and width 16,384 has 8.6 billion parameters, 34 GB
of float32 weights before Adam's moments and the gradients double it twice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from api_schemas.models import CNNModel, MLPModel
from jobstate.errors import InvalidInputError

__all__ = [
    "CNN_BASE_CHANNELS",
    "check_family_fits",
    "cnn_channels",
    "family_parameters",
    "family_training_bytes",
]

CNN_BASE_CHANNELS: tuple[int, int, int] = (16, 32, 64)
# float32 copies of every parameter while training with Adam: weights, gradients, and
# the two moment estimates.
_COPIES_PER_PARAMETER = 4
# float32 values per activation kept for the backward pass (the pre- and post-ReLU values).
_COPIES_PER_ACTIVATION = 2


def cnn_channels(width_multiplier: float) -> tuple[int, int, int]:
    """Channels of the three conv blocks of the built-in CNN for a width multiplier."""
    first, second, third = (max(1, round(base * width_multiplier)) for base in CNN_BASE_CHANNELS)
    return first, second, third


def family_parameters(
    spec: MLPModel | CNNModel, *, input_shape: Sequence[int], n_classes: int
) -> int:
    """Trainable scalars of the model :func:`workers.models.families.build_family_model`
    would build (the unit tests check the two agree)."""
    if isinstance(spec, MLPModel):
        features = math.prod(int(size) for size in input_shape)
        width, depth = spec.width, spec.depth
        return (
            features * width
            + width
            + (depth - 1) * (width * width + width)
            + width * n_classes
            + n_classes
        )
    first, second, third = cnn_channels(spec.width_multiplier)
    channels = int(input_shape[0])
    convolutions = 9 * (channels * first + first * second + second * third)
    return convolutions + first + second + third + third * n_classes + n_classes


def _activations_per_point(spec: MLPModel | CNNModel, input_shape: Sequence[int]) -> int:
    if isinstance(spec, MLPModel):
        return math.prod(int(size) for size in input_shape) + spec.depth * spec.width
    first, second, third = cnn_channels(spec.width_multiplier)
    height, width = int(input_shape[1]), int(input_shape[2])
    pooled = (height // 2) * (width // 2)
    return height * width * (int(input_shape[0]) + first + second) + pooled * (second + third)


def family_training_bytes(
    spec: MLPModel | CNNModel,
    *,
    input_shape: Sequence[int],
    n_classes: int,
    batch_size: int,
) -> int:
    """Peak memory of training one model with Adam on minibatches of ``batch_size``."""
    parameters = family_parameters(spec, input_shape=input_shape, n_classes=n_classes)
    activations = batch_size * _activations_per_point(spec, input_shape)
    return 4 * (_COPIES_PER_PARAMETER * parameters + _COPIES_PER_ACTIVATION * activations)


def check_family_fits(
    spec: MLPModel | CNNModel,
    *,
    input_shape: Sequence[int],
    n_classes: int,
    batch_size: int,
    budget_bytes: int,
    field: str,
) -> None:
    """Refuse a model that cannot be trained within the job memory budget.

    Raises
    ------
    InvalidInputError
        Naming ``field``, the parameter count, the estimate and the budget.
    """
    needed = family_training_bytes(
        spec, input_shape=input_shape, n_classes=n_classes, batch_size=batch_size
    )
    if needed > budget_bytes:
        parameters = family_parameters(spec, input_shape=input_shape, n_classes=n_classes)
        raise InvalidInputError(
            field,
            f"this {spec.family} has {parameters:,} parameters; training it needs about "
            f"{needed / 2**30:.1f} GiB (weights, gradients, Adam's moments, activations), "
            f"over the memory budget of {budget_bytes / 2**30:.1f} GiB "
            "(NNKGEO_WORKER_MEMORY_BYTES): use a smaller width or depth, or smaller batches",
        )
