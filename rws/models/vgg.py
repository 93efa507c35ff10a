"""VGG-16 for CIFAR as used by the RWS paper: 13 3x3 convs and a single linear head.

Three normalizations: none (``vgg16``, the paper's Fig. 8 composition network), BatchNorm
(``vgg16_bn``) and GroupNorm (``vgg16_gn``: no running statistics, so a signature is weights only).
``init: official`` draws conv weights from N(0, 2 / (3·3·out_channels)) with zero biases, as the RWS
code's (and pytorch-cifar's) VGG; without it a deep VGG without BN trained from scratch with PyTorch's
default init can stay at chance (measured: a narrow vgg16 at lr 0.02 did, issue 11).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from rws.models._common import scaled
from rws.models.layers import conv_chain
from rws.models.registry import register_model

# "M" is a 2x2 max-pool. Five pools take 32px to 1x1, which is why the head is a single Linear(512, C).
NORMS = ("none", "bn", "gn")
INITS = ("torch", "official")
GN_GROUPS = 8  # groups per GroupNorm (fewer where 8 does not divide a narrow layer's channels)
VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                    512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    """``features`` (conv[+BN]+ReLU and pools, as one Sequential) then ``classifier``.

    A global average pool sits before the classifier: it is the identity at 32px and keeps the head
    Linear(512*width, C) at larger inputs (64px Tiny-ImageNet leaves 2x2 maps), so the state dict
    does not depend on the resolution.
    """

    def __init__(self, num_classes: int, batch_norm: bool = False, width: float = 1.0,
                 drop_rate: float = 0.0, cfg: tuple[int | str, ...] = VGG16_CFG, norm: str | None = None,
                 init: str = "torch") -> None:
        super().__init__()
        norm = norm or ("bn" if batch_norm else "none")
        if norm not in NORMS:
            raise ValueError(f"vgg norm {norm!r} is not one of {NORMS}")
        if init not in INITS:
            raise ValueError(f"model.init={init!r} is not one of {INITS}")
        layers: list[nn.Module] = []
        in_ch = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            out_ch = scaled(int(v), width)
            # Conv keeps its bias even with BN: the classic CIFAR VGG does, and the pinned counts rely on it.
            layers.append(nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=True))
            if norm == "bn":
                layers.append(nn.BatchNorm2d(out_ch))
            elif norm == "gn":
                layers.append(nn.GroupNorm(math.gcd(GN_GROUPS, out_ch), out_ch))
            layers.append(nn.ReLU(inplace=True))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.classifier = nn.Linear(in_ch, num_classes)
        if init == "official":
            for m in self.features.modules():
                if isinstance(m, nn.Conv2d):
                    fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                    nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.classifier(self.dropout(x))


@register_model("vgg16", layer_rule=conv_chain)
def vgg16(num_classes: int, width: float, drop_rate: float, init: str = "torch") -> VGG:
    return VGG(num_classes, width=width, drop_rate=drop_rate, norm="none", init=init)


@register_model("vgg16_bn", layer_rule=conv_chain)
def vgg16_bn(num_classes: int, width: float, drop_rate: float, init: str = "torch") -> VGG:
    return VGG(num_classes, width=width, drop_rate=drop_rate, norm="bn", init=init)


@register_model("vgg16_gn", layer_rule=conv_chain)
def vgg16_gn(num_classes: int, width: float, drop_rate: float, init: str = "torch") -> VGG:
    return VGG(num_classes, width=width, drop_rate=drop_rate, norm="gn", init=init)
