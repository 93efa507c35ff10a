"""``create_model``: the one way rws builds a classifier (see docs/models.md)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from rws.models.normalize import Normalized

TIMM_PREFIX = "timm/"


def _vgg(bn: bool) -> Callable[..., nn.Module]:
    def build(num_classes: int, width: float, drop_rate: float, **kw: Any) -> nn.Module:
        from rws.models.vgg import VGG

        return VGG(num_classes, batch_norm=bn, width=width, drop_rate=drop_rate, **kw)
    return build


def _small_cnn(num_classes: int, width: float, drop_rate: float, bn: bool = True) -> nn.Module:
    from rws.models.small_cnn import SmallCNN

    return SmallCNN(num_classes, width=width, bn=bn, drop_rate=drop_rate)


def _resnet18_cifar(num_classes: int, width: float, drop_rate: float) -> nn.Module:
    from rws.models.resnet_cifar import resnet18_cifar

    return resnet18_cifar(num_classes, width=width, drop_rate=drop_rate)


def _resnet50_cifar(num_classes: int, width: float, drop_rate: float) -> nn.Module:
    from rws.models.resnet_cifar import resnet50_cifar

    return resnet50_cifar(num_classes, width=width, drop_rate=drop_rate)


def _preact_resnet18(num_classes: int, width: float, drop_rate: float) -> nn.Module:
    from rws.models.preact_resnet import preact_resnet18

    return preact_resnet18(num_classes, width=width, drop_rate=drop_rate)


def _wrn(num_classes: int, width: float, drop_rate: float, depth: int = 28, widen_factor: float = 10) -> nn.Module:
    from rws.models.wide_resnet import WideResNet

    return WideResNet(num_classes, depth=depth, widen_factor=widen_factor, width=width, drop_rate=drop_rate)


# Builders that accept a width multiplier; the rest are fixed timm architectures.
_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": _small_cnn,
    "vgg16": _vgg(bn=False),
    "vgg16_bn": _vgg(bn=True),
    "resnet18_cifar": _resnet18_cifar,
    "resnet50_cifar": _resnet50_cifar,
    "preact_resnet18": _preact_resnet18,
    "wrn28_10": _wrn,
}
_TIMM_FIXED = ("resnet50", "vit_tiny_patch4_32", "vit_small_patch4_32")

MODEL_NAMES: tuple[str, ...] = (*_BUILDERS, *_TIMM_FIXED)


def _no_width(name: str, width: float) -> None:
    # A silently ignored width would make a "narrow" run train the full model.
    if float(width) != 1.0:
        raise ValueError(f"model {name!r} has no width multiplier; width must be 1.0, got {width}")


def create_model(name: str, num_classes: int, mean: Sequence[float] = (0.5, 0.5, 0.5),
                 std: Sequence[float] = (0.5, 0.5, 0.5), width: float = 1.0, pretrained: bool = False,
                 drop_rate: float = 0.0, **kwargs: Any) -> Normalized:
    """Build classifier ``name`` wrapped in :class:`Normalized` (input pixels in [0, 1]).

    ``name`` is one of :data:`MODEL_NAMES` or ``timm/<timm model name>``. ``kwargs`` go to the
    architecture (``small_cnn``: ``bn``; ``wrn28_10``: ``depth``, ``widen_factor``; ViT and
    ``timm/*``: timm keyword arguments). Only ``timm/*`` and ``resnet50`` can load pretrained weights
    (which needs the internet or a filled timm/HF cache).
    """
    num_classes = int(num_classes)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    width = float(width)
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    drop_rate = float(drop_rate)

    if name.startswith(TIMM_PREFIX):
        import timm

        _no_width(name, width)
        net = timm.create_model(name[len(TIMM_PREFIX):], pretrained=bool(pretrained), num_classes=num_classes,
                                drop_rate=drop_rate, **kwargs)
    elif name == "resnet50":
        import timm

        _no_width(name, width)
        # timm's resnet50 has torchvision's layout and key names (conv1/bn1/layer1.0.conv1/.../fc)
        # and resets the head itself when pretrained weights have another class count.
        net = timm.create_model("resnet50", pretrained=bool(pretrained), num_classes=num_classes,
                                drop_rate=drop_rate, **kwargs)
    elif name in ("vit_tiny_patch4_32", "vit_small_patch4_32"):
        from rws.models.vit import create_vit

        _no_width(name, width)
        if pretrained:
            raise ValueError(f"{name} has no pretrained weights (patch 4 at 32px); use timm/<name> for those")
        net = create_vit(name, num_classes, drop_rate=drop_rate, **kwargs)
    elif name in _BUILDERS:
        if pretrained:
            raise ValueError(f"{name} has no pretrained weights; train it or pass init=<export dir>")
        net = _BUILDERS[name](num_classes, width=width, drop_rate=drop_rate, **kwargs)
    else:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}, "
                         f"or {TIMM_PREFIX}<any timm model name>")
    return Normalized(net, mean=mean, std=std)
