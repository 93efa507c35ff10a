"""ViT-Ti/S with 4x4 patches for 32x32 images (64 tokens + CLS), built with timm's VisionTransformer."""

from __future__ import annotations

from typing import Any

from torch import nn

from rws.models.layers import vit_blocks
from rws.models.registry import register_model

# rws name -> timm architecture whose dims/depth/heads we reuse; only the patch grid changes.
VIT_ARCHS: dict[str, str] = {
    "vit_tiny_patch4_32": "vit_tiny_patch16_224",
    "vit_small_patch4_32": "vit_small_patch16_224",
}
# ImageNet weights at patch 16 do not fit a 4px patch embedding, so these train from scratch.
_NO_PRETRAINED = "patch 4 at 32px; use timm/<name> for those"


def create_vit(name: str, num_classes: int, drop_rate: float = 0.0, img_size: int = 32, patch_size: int = 4,
               **kwargs: Any) -> nn.Module:
    import timm

    return timm.create_model(VIT_ARCHS[name], pretrained=False, num_classes=num_classes, img_size=img_size,
                             patch_size=patch_size, drop_rate=drop_rate, **kwargs)


@register_model("vit_tiny_patch4_32", layer_rule=vit_blocks, width=False, no_pretrained_hint=_NO_PRETRAINED)
def vit_tiny_patch4_32(num_classes: int, drop_rate: float, **kwargs: Any) -> nn.Module:
    return create_vit("vit_tiny_patch4_32", num_classes, drop_rate=drop_rate, **kwargs)


@register_model("vit_small_patch4_32", layer_rule=vit_blocks, width=False, no_pretrained_hint=_NO_PRETRAINED)
def vit_small_patch4_32(num_classes: int, drop_rate: float, **kwargs: Any) -> nn.Module:
    return create_vit("vit_small_patch4_32", num_classes, drop_rate=drop_rate, **kwargs)
