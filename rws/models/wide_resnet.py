"""WideResNet (Zagoruyko & Komodakis, 2016) in its CIFAR form: a 3x3 16-channel stem, three stages of
pre-activation basic blocks at 16k/32k/64k channels, final BN+ReLU, average pool, linear head.
Depth must be 6n+4 (WRN-28-10: n=4 blocks per stage, k=10, ~36.5M params)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rws.models._common import scaled
from rws.models.layers import resnet_blocks
from rws.models.registry import register_model


class WideBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        # Dropout sits between the two convs, where the WRN paper found it helps.
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        identity = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + identity


class WideResNet(nn.Module):
    def __init__(self, num_classes: int, depth: int = 28, widen_factor: float = 10, width: float = 1.0,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WideResNet depth must be 6n+4 (10, 16, 22, 28, 34, 40, ...), got {depth}")
        n = (depth - 4) // 6
        k = widen_factor * width
        stem = 16
        self.conv1 = nn.Conv2d(3, stem, 3, padding=1, bias=False)
        in_ch = stem
        for i, base in enumerate((16, 32, 64)):
            out_ch = scaled(base, k)
            blocks = []
            for j in range(n):
                blocks.append(WideBlock(in_ch, out_ch, stride=2 if (i > 0 and j == 0) else 1, drop_rate=drop_rate))
                in_ch = out_ch
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.bn = nn.BatchNorm2d(in_ch)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        x = F.relu(self.bn(x))
        return self.fc(self.pool(x).flatten(1))


@register_model("wrn28_10", layer_rule=resnet_blocks)
def wrn28_10(num_classes: int, width: float, drop_rate: float, depth: int = 28,
             widen_factor: float = 10) -> WideResNet:
    return WideResNet(num_classes, depth=depth, widen_factor=widen_factor, width=width, drop_rate=drop_rate)
