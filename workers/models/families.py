"""The built-in model families a study trains: an MLP and a small CNN.

Both are built so that their direct children are the layers one would want to read,
in forward order, and the last child is the linear classifier: ``"all"`` then lists
every hidden representation and the logits, and ``"penultimate"`` is the input of the
classifier.

- MLP: ``hidden1 ... hidden{depth}`` (each ``Linear`` + ``ReLU``), then ``output``.
  Inputs of any shape are flattened first, so N x 64 and N x 1 x 8 x 8 both work.
- CNN: ``block1`` (3x3 conv, ReLU), ``block2`` (3x3 conv, ReLU, 2x2 max pool),
  ``block3`` (3x3 conv, ReLU), ``pool`` (global average pool, flatten), ``output``;
  16, 32 and 64 channels times the width multiplier (at least one each).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from api_schemas.models import CNNModel, MLPModel
from jobstate.errors import InvalidInputError
from jobstate.model_footprint import CNN_BASE_CHANNELS, cnn_channels

__all__ = [
    "CNN_BASE_CHANNELS",
    "MLP",
    "SmallCNN",
    "build_family_model",
    "cnn_channels",
    "parameter_count",
]


class MLP(nn.Module):
    """``depth`` hidden ReLU layers of ``width`` units and a linear classifier.

    Parameters
    ----------
    in_features : int
        Size of a flattened input.
    n_classes : int
    depth : int
        Number of hidden layers, at least 1.
    width : int
        Units per hidden layer.
    """

    def __init__(self, in_features: int, n_classes: int, *, depth: int, width: int) -> None:
        super().__init__()
        sizes = [in_features] + [width] * depth
        for index in range(depth):
            block = nn.Sequential(nn.Linear(sizes[index], sizes[index + 1]), nn.ReLU())
            self.add_module(f"hidden{index + 1}", block)
        self.output = nn.Linear(width, n_classes)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        hidden = inputs.flatten(1)
        for block in self.children():
            hidden = block(hidden)
        return hidden


class SmallCNN(nn.Module):
    """Three 3x3 conv blocks, global average pooling and a linear classifier.

    Parameters
    ----------
    in_channels : int
    n_classes : int
    width_multiplier : float
        Scales the 16, 32 and 64 channels of the blocks.
    """

    def __init__(self, in_channels: int, n_classes: int, *, width_multiplier: float) -> None:
        super().__init__()
        first, second, third = cnn_channels(width_multiplier)
        self.block1 = nn.Sequential(nn.Conv2d(in_channels, first, 3, padding=1), nn.ReLU())
        self.block2 = nn.Sequential(
            nn.Conv2d(first, second, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.block3 = nn.Sequential(nn.Conv2d(second, third, 3, padding=1), nn.ReLU())
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.output = nn.Linear(third, n_classes)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        hidden = inputs
        for block in self.children():
            hidden = block(hidden)
        return hidden


def build_family_model(
    spec: MLPModel | CNNModel,
    *,
    input_shape: Sequence[int],
    n_classes: int,
    field: str = "model",
) -> nn.Module:
    """A freshly initialised model of a built-in family, sized for the data.

    Parameters
    ----------
    spec : MLPModel or CNNModel
    input_shape : sequence of int
        Shape of one input, without the batch dimension: (F,) or (C, H, W).
    n_classes : int
        Number of outputs of the classifier.
    field : str
        Dotted name of the reference, for error messages.

    Returns
    -------
    torch.nn.Module
        In training mode, initialised from torch's global generator (seed it first).

    Raises
    ------
    InvalidInputError
        For a CNN on inputs that are not images (C x H x W with H, W >= 2).
    """
    if isinstance(spec, MLPModel):
        in_features = 1
        for size in input_shape:
            in_features *= int(size)
        return MLP(in_features, n_classes, depth=spec.depth, width=spec.width)
    if isinstance(spec, CNNModel):
        if len(input_shape) != 3 or min(input_shape[1:]) < 2:
            raise InvalidInputError(
                f"{field}.family",
                "the cnn family needs image inputs N x C x H x W with H and W at least 2, "
                f"got points of shape {tuple(input_shape)}",
            )
        return SmallCNN(int(input_shape[0]), n_classes, width_multiplier=spec.width_multiplier)
    raise InvalidInputError(f"{field}.family", f"unknown model family {type(spec).__name__}")


def parameter_count(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
