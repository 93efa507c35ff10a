"""ViTs with 4x4 patches for 32x32 images, built with timm's VisionTransformer.

``vit_tiny_patch4_32`` / ``vit_small_patch4_32`` are ViT-Ti/S on a 4px patch grid (64 tokens + CLS);
``vit_cpu_patch4_32`` is a CPU-scale ViT for the adapters paper (embed 96, depth 4, 3 heads, MLP
ratio 2, MAE-style mean pooling by default). Options for all of them:

* ``global_pool``: ``token`` (the CLS token feeds the head) or ``avg`` (the mean of the final
  tokens except the CLS token, then a LayerNorm, as in MAE / the adapters paper), or timm's others.
* ``patch_stride``: the stride of the patch projection; None = the patch size (non-overlapping).
  The paper's CIFAR setting is patch 4, stride 2: 15x15 = 225 overlapping patches at 32px.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from torch import nn

from rws.models.layers import vit_blocks
from rws.models.registry import register_model

# rws name -> (timm architecture whose dims/depth/heads we reuse, overrides of them).
VIT_ARCHS: dict[str, tuple[str, dict[str, Any]]] = {
    "vit_tiny_patch4_32": ("vit_tiny_patch16_224", {}),
    "vit_small_patch4_32": ("vit_small_patch16_224", {}),
    # ~0.31M params; trains at ~230 img/s on one CPU core at 32px, batch 128 (docs/models.md).
    "vit_cpu_patch4_32": ("vit_tiny_patch16_224", {"embed_dim": 96, "depth": 4, "num_heads": 3, "mlp_ratio": 2.0}),
}
GLOBAL_POOLS = ("token", "avg", "max", "avgmax", "map")
# ImageNet weights at patch 16 do not fit a 4px patch embedding, so these train from scratch.
_NO_PRETRAINED = "patch 4 at 32px; use timm/<name> for those"


def strided_patch_embed(*args: Any, stride: int, **kwargs: Any) -> nn.Module:
    """timm's PatchEmbed with a projection stride other than the patch size (overlapping patches
    for stride < patch): grid = (img - patch) // stride + 1 per side. Fixed input size only. (A
    function, not a subclass, so importing rws.models does not import timm.)"""
    from timm.layers import PatchEmbed

    embed = PatchEmbed(*args, **kwargs)
    if embed.img_size is None or not embed.strict_img_size or embed.dynamic_img_pad:
        raise ValueError("patch_stride needs a fixed img_size (no dynamic_img_size / dynamic_img_pad)")
    old = embed.proj
    embed.proj = nn.Conv2d(old.in_channels, old.out_channels, kernel_size=old.kernel_size, stride=int(stride),
                           bias=old.bias is not None, device=old.weight.device, dtype=old.weight.dtype)
    embed.grid_size = tuple((s - p) // int(stride) + 1 for s, p in zip(embed.img_size, embed.patch_size))
    embed.num_patches = embed.grid_size[0] * embed.grid_size[1]
    return embed


def _check_options(name: str, patch_size: int, patch_stride: int | None, global_pool: str) -> None:
    if global_pool not in GLOBAL_POOLS:
        raise ValueError(f"model {name!r}: unknown global_pool {global_pool!r}; expected one of "
                         f"{', '.join(GLOBAL_POOLS)} (token: CLS token, avg: mean of the other tokens)")
    if patch_stride is not None and (isinstance(patch_stride, bool) or not isinstance(patch_stride, int)
                                     or not 1 <= patch_stride <= int(patch_size)):
        raise ValueError(f"model {name!r}: patch_stride must be null or an integer in [1, patch_size={patch_size}], "
                         f"got {patch_stride!r}")


def create_vit(name: str, num_classes: int, drop_rate: float = 0.0, img_size: int = 32, patch_size: int = 4,
               patch_stride: int | None = None, global_pool: str = "token", **kwargs: Any) -> nn.Module:
    import timm

    _check_options(name, patch_size, patch_stride, global_pool)
    arch, dims = VIT_ARCHS[name]
    options: dict[str, Any] = {**dims, **kwargs}
    if patch_stride is not None and patch_stride != patch_size:
        options["embed_layer"] = partial(strided_patch_embed, stride=patch_stride)
    return timm.create_model(arch, pretrained=False, num_classes=num_classes, img_size=img_size,
                             patch_size=patch_size, drop_rate=drop_rate, global_pool=global_pool, **options)


@register_model("vit_tiny_patch4_32", layer_rule=vit_blocks, width=False, no_pretrained_hint=_NO_PRETRAINED)
def vit_tiny_patch4_32(num_classes: int, drop_rate: float, **kwargs: Any) -> nn.Module:
    return create_vit("vit_tiny_patch4_32", num_classes, drop_rate=drop_rate, **kwargs)


@register_model("vit_small_patch4_32", layer_rule=vit_blocks, width=False, no_pretrained_hint=_NO_PRETRAINED)
def vit_small_patch4_32(num_classes: int, drop_rate: float, **kwargs: Any) -> nn.Module:
    return create_vit("vit_small_patch4_32", num_classes, drop_rate=drop_rate, **kwargs)


@register_model("vit_cpu_patch4_32", layer_rule=vit_blocks, width=False, no_pretrained_hint=_NO_PRETRAINED)
def vit_cpu_patch4_32(num_classes: int, drop_rate: float, global_pool: str = "avg", **kwargs: Any) -> nn.Module:
    # The adapters paper's head (MAE style: mean of the final tokens except CLS) is this model's default.
    return create_vit("vit_cpu_patch4_32", num_classes, drop_rate=drop_rate, global_pool=global_pool, **kwargs)
