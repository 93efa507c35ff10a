"""``norm: bn | gn_ws`` for the ResNets: GroupNorm + Weight Standardization in every conv (the
adapters paper's ResNet-50, appendix A, after Kolesnikov et al.'s BiT).

The architecture is built with BatchNorm and then converted in place: every ``nn.Conv2d`` becomes a
timm ``StdConv2d`` (same shape, stride, padding and initial weights) and every ``BatchNorm2d`` a
``GroupNorm`` with its affine parameters. Module names and parameter shapes stay the same, so the
layer rules and parameter counts do not change; only the BN running statistics disappear.
"""

from __future__ import annotations

import math

from torch import nn

NORMS = ("bn", "gn_ws")
MAX_GROUPS = 32  # BiT's 32 groups; fewer for narrow layers (the group count must divide the channels)


def check_norm(model: str, norm: object) -> str:
    if norm not in NORMS:
        raise ValueError(f"model {model!r}: unknown norm {norm!r}; expected one of {', '.join(NORMS)} "
                         f"(bn: BatchNorm, gn_ws: GroupNorm + weight-standardized convs)")
    return str(norm)


def groups_for(channels: int) -> int:
    """32 groups where 32 divides the channels, else the largest common divisor (width < 1 builds)."""
    return math.gcd(MAX_GROUPS, int(channels))


def _std_conv(conv: nn.Conv2d) -> nn.Module:
    from timm.layers import StdConv2d

    new = StdConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                    dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                    device=conv.weight.device, dtype=conv.weight.dtype)
    new.weight.data.copy_(conv.weight.data)
    if conv.bias is not None:
        new.bias.data.copy_(conv.bias.data)
    return new


def _group_norm(bn: nn.BatchNorm2d) -> nn.GroupNorm:
    gn = nn.GroupNorm(groups_for(bn.num_features), bn.num_features, eps=bn.eps, affine=bn.affine,
                      device=bn.running_mean.device if bn.running_mean is not None else None)
    if bn.affine:
        # Keeps the architecture's init (e.g. timm's zero-init of each block's last norm).
        gn.weight.data.copy_(bn.weight.data)
        gn.bias.data.copy_(bn.bias.data)
    return gn


def to_gn_ws(net: nn.Module) -> nn.Module:
    """Convert ``net`` in place (and return it): StdConv2d for every Conv2d, GroupNorm for every BatchNorm2d."""
    swaps = []
    for parent in net.modules():
        for name, child in parent.named_children():
            if type(child) is nn.Conv2d:
                swaps.append((parent, name, _std_conv(child)))
            elif isinstance(child, nn.BatchNorm2d):
                swaps.append((parent, name, _group_norm(child)))
    for parent, name, new in swaps:
        setattr(parent, name, new)
    return net
