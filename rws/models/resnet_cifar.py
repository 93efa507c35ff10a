"""ResNet-18/50 with a CIFAR stem: a 3x3 stride-1 conv and no max-pool, so 32px inputs keep
enough spatial resolution for four stages. Attribute names follow torchvision's ResNet
(conv1/bn1/layer1..4/fc, blocks with downsample.0/.1), so layer rules and key names are shared
with the ImageNet-stem ``resnet50``."""

from __future__ import annotations

import torch
from torch import nn

from rws.models._common import scaled
from rws.models.gn_ws import check_norm, to_gn_ws
from rws.models.layers import resnet_blocks
from rws.models.registry import register_model


def _downsample(in_ch: int, out_ch: int, stride: int) -> nn.Module | None:
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        # Stride on the 3x3 conv (the "ResNet v1.5" placement torchvision and timm use).
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNetCifar(nn.Module):
    def __init__(self, block: type[BasicBlock] | type[Bottleneck], depths: tuple[int, ...], num_classes: int,
                 width: float = 1.0, drop_rate: float = 0.0) -> None:
        super().__init__()
        stem = scaled(64, width)
        self.conv1 = nn.Conv2d(3, stem, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        in_ch = stem
        for i, n in enumerate(depths):
            planes = scaled(64 * 2 ** i, width)
            blocks = []
            for j in range(n):
                blocks.append(block(in_ch, planes, stride=2 if (i > 0 and j == 0) else 1))
                in_ch = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_stages = len(depths)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(self.dropout(self.pool(x).flatten(1)))


def _build(name: str, block: type[BasicBlock] | type[Bottleneck], depths: tuple[int, ...], num_classes: int,
           width: float, drop_rate: float, norm: str) -> ResNetCifar:
    norm = check_norm(name, norm)
    net = ResNetCifar(block, depths, num_classes, width=width, drop_rate=drop_rate)
    return to_gn_ws(net) if norm == "gn_ws" else net


@register_model("resnet18_cifar", layer_rule=resnet_blocks)
def resnet18_cifar(num_classes: int, width: float = 1.0, drop_rate: float = 0.0, norm: str = "bn") -> ResNetCifar:
    """``norm``: ``bn`` (BatchNorm) or ``gn_ws`` (GroupNorm + weight-standardized convs, rws/models/gn_ws.py)."""
    return _build("resnet18_cifar", BasicBlock, (2, 2, 2, 2), num_classes, width, drop_rate, norm)


@register_model("resnet50_cifar", layer_rule=resnet_blocks)
def resnet50_cifar(num_classes: int, width: float = 1.0, drop_rate: float = 0.0, norm: str = "bn") -> ResNetCifar:
    """``norm``: ``bn`` (BatchNorm) or ``gn_ws`` (GroupNorm + weight-standardized convs, rws/models/gn_ws.py)."""
    return _build("resnet50_cifar", Bottleneck, (3, 4, 6, 3), num_classes, width, drop_rate, norm)
