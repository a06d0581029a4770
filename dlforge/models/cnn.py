"""The reference convolutional network MY_NET (SPEC §2), sizes as parameters.

conv1 C->32 k3 p1 -> ReLU -> conv2 32->64 k3 p1 -> ReLU -> maxpool 2 -> conv3 64->128 k3 p1 -> ReLU
-> maxpool 2 -> flatten (128·(S/4)²) -> dropout 0.5 -> fc1 -> 512 -> ReLU -> dropout 0.5 -> fc2 -> logits.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from dlforge.errors import DlforgeError
from dlforge.registry import register_model


class MyNet(nn.Module):
    def __init__(self, in_channels: int = 3, img_size: int = 48, num_classes: int = 10,
                 width: int = 32, fc_width: int = 512, dropout: float = 0.5):
        super().__init__()
        if img_size < 4:
            raise DlforgeError(f"--img-size: the cnn needs at least 4 pixels (two 2x2 poolings), got {img_size}")
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.conv3 = nn.Conv2d(2 * width, 4 * width, 3, padding=1)
        self.pool2 = nn.MaxPool2d(2, 2)
        side = img_size // 2 // 2
        self.fc1 = nn.Linear(4 * width * side * side, fc_width)
        self.fc2 = nn.Linear(fc_width, num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, S, S) -> (B, num_classes)
        x = self.pool1(F.relu(self.conv2(F.relu(self.conv1(x), inplace=True)), inplace=True))  # (B, 64, S/2, S/2)
        x = self.pool2(F.relu(self.conv3(x), inplace=True))                                   # (B, 128, S/4, S/4)
        x = self.dropout(torch.flatten(x, 1))
        x = self.dropout(F.relu(self.fc1(x), inplace=True))
        return self.fc2(x)


@register_model("cnn", task="classify")
def cnn(in_channels: int = 3, img_size: int = 48, num_classes: int = 10, **kw) -> MyNet:
    """The reference MY_NET: 3 conv layers, 2 max-pools, dropout, 2 fully connected layers."""
    return MyNet(in_channels, img_size, num_classes, **kw)


@register_model("cnn-small", task="classify")
def cnn_small(in_channels: int = 3, img_size: int = 48, num_classes: int = 10, **kw) -> MyNet:
    """MY_NET at a quarter of the width (8/16/32 filters, 128 hidden): quick tries."""
    return MyNet(in_channels, img_size, num_classes, width=8, fc_width=128, **kw)
