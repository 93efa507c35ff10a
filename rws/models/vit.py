"""ViT-Ti/S with 4x4 patches for 32x32 images (64 tokens + CLS), built with timm's VisionTransformer."""

from __future__ import annotations

from typing import Any

from torch import nn

# rws name -> timm architecture whose dims/depth/heads we reuse; only the patch grid changes.
VIT_ARCHS: dict[str, str] = {
    "vit_tiny_patch4_32": "vit_tiny_patch16_224",
    "vit_small_patch4_32": "vit_small_patch16_224",
}


def create_vit(name: str, num_classes: int, drop_rate: float = 0.0, img_size: int = 32, patch_size: int = 4,
               **kwargs: Any) -> nn.Module:
    import timm

    # pretrained=False always: ImageNet weights at patch 16 do not fit a 4px patch embedding.
    return timm.create_model(VIT_ARCHS[name], pretrained=False, num_classes=num_classes, img_size=img_size,
                             patch_size=patch_size, drop_rate=drop_rate, **kwargs)
