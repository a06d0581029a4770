"""A multi-layer perceptron: Flatten -> [Linear -> activation]* -> Linear (logits; softmax lives in the loss)."""
from __future__ import annotations

from torch import nn

from dlforge.errors import DlforgeError
from dlforge.registry import register_model

ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


class MLP(nn.Sequential):
    def __init__(self, in_features: int, num_classes: int, hidden: tuple[int, ...] = (256, 128),
                 activation: str = "relu", dropout: float = 0.0):
        if activation not in ACTIVATIONS:
            raise DlforgeError(f"--activation: expected one of {', '.join(ACTIVATIONS)}; got {activation!r}")
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:  # z = W x + b, then the non-linearity
            layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


def _in_features(in_features: int | None, in_channels: int, img_size: int) -> int:
    return in_features if in_features is not None else in_channels * img_size * img_size


@register_model("mlp", task="classify")
def mlp(in_features: int | None = None, in_channels: int = 1, img_size: int = 28, num_classes: int = 10,
        hidden: tuple[int, ...] = (256, 128), activation: str = "relu", dropout: float = 0.0) -> MLP:
    """Fully connected network; hidden sizes and activation (relu, sigmoid, tanh) configurable."""
    return MLP(_in_features(in_features, in_channels, img_size), num_classes, tuple(hidden), activation, dropout)
