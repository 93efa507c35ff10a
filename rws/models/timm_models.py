"""Models timm builds: ``resnet50`` (ImageNet stem) and the ``timm/<name>`` passthrough."""

from __future__ import annotations

from typing import Any

from torch import nn

from rws.models.gn_ws import check_norm, to_gn_ws
from rws.models.layers import detect_blocks, resnet_blocks
from rws.models.registry import register_model


@register_model("resnet50", layer_rule=resnet_blocks, width=False, pretrained=True)
def resnet50(num_classes: int, pretrained: bool, drop_rate: float, norm: str = "bn", **kwargs: Any) -> nn.Module:
    """``norm``: ``bn`` or ``gn_ws`` (GroupNorm + weight-standardized convs, rws/models/gn_ws.py; from scratch)."""
    import timm

    norm = check_norm("resnet50", norm)
    if norm == "gn_ws" and pretrained:
        raise ValueError("model 'resnet50': norm=gn_ws has no pretrained weights (the published ones are "
                         "BatchNorm); use pretrained=false or norm=bn")
    # timm's resnet50 has torchvision's layout and key names (conv1/bn1/layer1.0.conv1/.../fc)
    # and resets the head itself when pretrained weights have another class count.
    net = timm.create_model("resnet50", pretrained=pretrained, num_classes=num_classes, drop_rate=drop_rate,
                            **kwargs)
    return to_gn_ws(net) if norm == "gn_ws" else net


# Any timm architecture: its class is unknown here, so the layer rule goes by the module's shape.
@register_model("timm/", layer_rule=detect_blocks, width=False, pretrained=True)
def timm_model(arch: str, num_classes: int, pretrained: bool, drop_rate: float, **kwargs: Any) -> nn.Module:
    import timm

    return timm.create_model(arch, pretrained=pretrained, num_classes=num_classes, drop_rate=drop_rate, **kwargs)
