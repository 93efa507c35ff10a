"""A small CNN that trains to useful accuracy on CIFAR-size data in CPU-minutes."""

from __future__ import annotations

import torch
from torch import nn

from rws.models._common import scaled
from rws.models.layers import conv_chain
from rws.models.registry import register_model


class ConvBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, bn: bool, pool: bool) -> None:
        super().__init__()
        # No conv bias when a BN follows: BN's shift makes it redundant.
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=not bn)
        self.bn = nn.BatchNorm2d(out_ch) if bn else nn.Identity()
        self.act = nn.ReLU(inplace=True)
        # ceil_mode lets tiny inputs (the 8x8 digits set) pass through every pool without shrinking to 0.
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.bn(self.conv(x))))


class SmallCNN(nn.Module):
    """Four conv(+BN)+ReLU blocks (32w, 64w, 128w, 256w channels), pools after the first three,
    global average pool, linear head. About 0.39M params at width 1 and ~15 MMACs per 32px image."""

    def __init__(self, num_classes: int, width: float = 1.0, bn: bool = True, drop_rate: float = 0.0) -> None:
        super().__init__()
        chans = [scaled(c, width) for c in (32, 64, 128, 256)]
        blocks = []
        in_ch = 3
        for i, c in enumerate(chans):
            blocks.append(ConvBlock(in_ch, c, bn=bn, pool=i < 3))
            in_ch = c
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.classifier = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.pool(self.blocks(x)).flatten(1)))


@register_model("small_cnn", layer_rule=conv_chain)
def small_cnn(num_classes: int, width: float, drop_rate: float, bn: bool = True) -> SmallCNN:
    return SmallCNN(num_classes, width=width, bn=bn, drop_rate=drop_rate)
