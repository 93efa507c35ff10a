"""Pre-activation ResNet-18 (He et al., 2016, "Identity Mappings"), the usual adversarial-training
backbone. Blocks apply BN+ReLU before each conv, so a final BN+ReLU (``bn``) is needed before
pooling; names follow the ResNet convention (conv1/layer1..4/bn/fc) so the same layer rule applies."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rws.models._common import scaled
from rws.models.layers import resnet_blocks
from rws.models.registry import register_model


class PreActBlock(nn.Module):
    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_ch != planes:
            self.shortcut = nn.Conv2d(in_ch, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        # The projection shortcut reads the pre-activated input, as in the paper's full pre-activation unit.
        identity = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + identity


class PreActResNet(nn.Module):
    def __init__(self, depths: tuple[int, ...], num_classes: int, width: float = 1.0,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        stem = scaled(64, width)
        self.conv1 = nn.Conv2d(3, stem, 3, padding=1, bias=False)
        in_ch = stem
        for i, n in enumerate(depths):
            planes = scaled(64 * 2 ** i, width)
            blocks = []
            for j in range(n):
                blocks.append(PreActBlock(in_ch, planes, stride=2 if (i > 0 and j == 0) else 1))
                in_ch = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_stages = len(depths)
        self.bn = nn.BatchNorm2d(in_ch)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        x = F.relu(self.bn(x))
        return self.fc(self.dropout(self.pool(x).flatten(1)))


@register_model("preact_resnet18", layer_rule=resnet_blocks)
def preact_resnet18(num_classes: int, width: float = 1.0, drop_rate: float = 0.0) -> PreActResNet:
    return PreActResNet((2, 2, 2, 2), num_classes, width=width, drop_rate=drop_rate)
