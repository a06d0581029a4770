"""The reference convolutional network MY_NET (SPEC §2), sizes as parameters.

conv1 C->32 k3 p1 -> ReLU -> conv2 32->64 k3 p1 -> ReLU -> maxpool 2 -> conv3 64->128 k3 p1 -> ReLU
-> maxpool 2 -> flatten (128·(S/4)²) -> dropout 0.5 -> fc1 -> 512 -> ReLU -> dropout 0.5 -> fc2 -> logits.

Computed in an order that does the same arithmetic with less memory traffic (benchmarks/peak_ceiling.py):
- each max-pool runs before its ReLU. relu(max(x)) is max(relu(x)) exactly, and so is the gradient (it reaches
  the window's largest element when that is positive, else nothing), but the ReLU and its backward then touch
  a quarter of the elements: conv2's 64 × 48² output is the largest tensor of the step;
- while training channels-last, the gradient that reaches pool2 from the flatten is made channels-last too: it
  comes back in the flatten's (channel-major) order, and max_pool2d's backward would then copy its saved
  input (4× larger) into that order and its result back;
- dropout draws the cheap CPU mask of dlforge.models.dropout;
- conv2's and conv3's weight gradients are im2col matrix products on the CPU (dlforge.models.conv), not oneDNN's.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from dlforge.errors import DlforgeError
from dlforge.models.conv import conv3x3
from dlforge.models.dropout import Dropout
from dlforge.registry import register_model


class _ChannelsLastGrad(torch.autograd.Function):
    """The identity, whose backward hands the gradient on in channels-last order."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        return g.contiguous(memory_format=torch.channels_last)


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
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, S, S) -> (B, num_classes)
        x = F.relu(self.conv1(x), inplace=True)                                                # (B, 32, S, S)
        x = F.relu(self.pool1(conv3x3(self.conv2, x)), inplace=True)                            # (B, 64, S/2, S/2)
        x = F.relu(self.pool2(conv3x3(self.conv3, x)), inplace=True)                            # (B, 128, S/4, S/4)
        if self.training and x.requires_grad and x.is_contiguous(memory_format=torch.channels_last) \
                and not x.is_contiguous():
            x = _ChannelsLastGrad.apply(x)
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
