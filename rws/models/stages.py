"""A network as an ordered list of stages whose composition is its forward pass.

Multi-head students (rws/models/multihead.py) freeze the first stages, tune the last ones and give
each head its own copy of the very last ones, so they need to cut a network at stage boundaries.
``model_stages(net)`` returns ``[(name, module), ...]`` with
``net(x) == stages[-1](...stages[1](stages[0](x)))``; the modules are the network's own (shared
parameter objects), wrapped in small adapters where the network's forward does more than call a
child (pooling + flatten, timm ViT's token handling).

Supported: ``small_cnn``, ``vgg16``/``vgg16_bn``, the CIFAR ResNets, timm VisionTransformers
(``vit_*`` and ``timm/vit_*``, incl. CLIP ViTs) and timm ResNets (``resnet50``, ``timm/resnet*``);
any other timm model falls back to three stages (``forward_features``, pre-logits, classifier).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

Stages = list[tuple[str, nn.Module]]


class PoolFlatten(nn.Module):
    """``pool(x).flatten(1)`` around the network's own pooling module."""

    def __init__(self, pool: nn.Module) -> None:
        super().__init__()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x).flatten(1)


class CallMethod(nn.Module):
    """A stage that calls one method of an owning timm model (``forward_features``, the ViT token
    embedding, ``forward_head(pre_logits=True)``). The owner is held outside the module tree so the
    stage's state dict holds only ``parts`` (the submodules that method uses).

    A deep copy (a student head's copy of this stage) shares the owner instead of copying the whole
    network: the copy runs the owner's modules, so its parameters stay shared between heads.
    Stages with head-specific parameters are explicit modules (``ViTPreLogits``) for that reason."""

    def __init__(self, owner: nn.Module, fn: Callable[[nn.Module, torch.Tensor], torch.Tensor],
                 parts: dict[str, nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleDict(parts)
        self._owner = [owner]  # a list: not registered as a submodule
        self._fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fn(self._owner[0], x)

    def __deepcopy__(self, memo: dict) -> "CallMethod":
        return CallMethod(self._owner[0], self._fn, {})


class TokenParams(nn.Module):
    """Holds a ViT's token/position parameters so a stage's state dict owns them."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        for name in ("cls_token", "reg_token", "pos_embed"):
            p = getattr(vit, name, None)
            if isinstance(p, nn.Parameter):
                self.register_parameter(name, p)


def _small_cnn(net: nn.Module) -> Stages:
    return ([(f"blocks.{i}", b) for i, b in enumerate(net.blocks)]
            + [("pool", PoolFlatten(net.pool)), ("classifier", nn.Sequential(net.dropout, net.classifier))])


def _vgg(net: nn.Module) -> Stages:
    stages: Stages = []
    current: list[nn.Module] = []
    start = 0
    for i, layer in enumerate(net.features):
        current.append(layer)
        # A stage ends after each ReLU (conv[+BN]+ReLU) and each pool.
        if isinstance(layer, (nn.ReLU, nn.MaxPool2d)):
            stages.append((f"features.{start}-{i}", nn.Sequential(*current)))
            current, start = [], i + 1
    if current:
        stages.append((f"features.{start}-", nn.Sequential(*current)))
    return stages + [("pool", PoolFlatten(net.pool)), ("classifier", nn.Sequential(net.dropout, net.classifier))]


def _resnet_cifar(net: nn.Module) -> Stages:
    stages: Stages = [("stem", nn.Sequential(net.conv1, net.bn1, net.relu))]
    for i in range(net.num_stages):
        stages += [(f"layer{i + 1}.{j}", b) for j, b in enumerate(getattr(net, f"layer{i + 1}"))]
    return stages + [("pool", PoolFlatten(net.pool)), ("fc", nn.Sequential(net.dropout, net.fc))]


def _vit_embed(vit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))


class ViTPreLogits(nn.Module):
    """timm ViT's final norm + ``forward_head(pre_logits=True)`` (pool, fc_norm, head dropout) as
    its own module, so a head's copy owns its norms."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.norm, self.fc_norm, self.head_drop = vit.norm, vit.fc_norm, vit.head_drop
        self.attn_pool = getattr(vit, "attn_pool", None)
        self.global_pool, self.num_prefix_tokens = vit.global_pool, vit.num_prefix_tokens
        self.pool_include_prefix = bool(getattr(vit, "pool_include_prefix", False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from timm.models.vision_transformer import global_pool_nlc

        x = self.norm(x)
        if self.attn_pool is not None:  # the arithmetic of VisionTransformer.pool
            x = self.attn_pool(x if self.pool_include_prefix else x[:, self.num_prefix_tokens:])
        else:
            x = global_pool_nlc(x, pool_type=self.global_pool, num_prefix_tokens=self.num_prefix_tokens,
                                reduce_include_prefix=self.pool_include_prefix)
        return self.head_drop(self.fc_norm(x))


def _timm_vit(net: nn.Module) -> Stages:
    embed = CallMethod(net, _vit_embed, {"patch_embed": net.patch_embed, "tokens": TokenParams(net),
                                         "pos_drop": net.pos_drop, "patch_drop": net.patch_drop,
                                         "norm_pre": net.norm_pre})
    return ([("embed", embed)] + [(f"blocks.{i}", b) for i, b in enumerate(net.blocks)]
            + [("pre_logits", ViTPreLogits(net)), ("head", net.head)])


def _timm_resnet(net: nn.Module) -> Stages:
    stages: Stages = [("stem", nn.Sequential(net.conv1, net.bn1, net.act1, net.maxpool))]
    for i in range(1, 5):
        stages += [(f"layer{i}.{j}", b) for j, b in enumerate(getattr(net, f"layer{i}"))]
    if net.drop_rate:
        drop = nn.Dropout(float(net.drop_rate))
        return stages + [("pre_logits", nn.Sequential(net.global_pool, drop)), ("fc", net.fc)]
    return stages + [("pre_logits", net.global_pool), ("fc", net.fc)]


def _timm_generic(net: nn.Module) -> Stages:
    classifier = net.get_classifier()
    if not isinstance(classifier, nn.Module):
        raise ValueError(f"{type(net).__name__}: timm get_classifier() returned no module")
    head_parts = {n: m for n, m in net.named_children() if m is not classifier}
    return [("features", CallMethod(net, lambda m, x: m.forward_features(x), head_parts)),
            ("pre_logits", CallMethod(net, lambda m, x: m.forward_head(x, pre_logits=True), {})),
            ("classifier", classifier)]


def model_stages(net: nn.Module) -> Stages:
    """The stages of ``net`` (the network inside ``Normalized``), in forward order.
    ValueError for a network without a decomposition, naming the supported ones."""
    from rws.models.resnet_cifar import ResNetCifar
    from rws.models.small_cnn import SmallCNN
    from rws.models.vgg import VGG

    if isinstance(net, SmallCNN):
        return _small_cnn(net)
    if isinstance(net, VGG):
        return _vgg(net)
    if isinstance(net, ResNetCifar):
        return _resnet_cifar(net)
    if type(net).__module__.startswith("timm."):
        from timm.models.resnet import ResNet
        from timm.models.vision_transformer import VisionTransformer

        if isinstance(net, VisionTransformer):
            return _timm_vit(net)
        if isinstance(net, ResNet):
            return _timm_resnet(net)
        return _timm_generic(net)
    raise ValueError(f"{type(net).__name__} has no stage decomposition for multi-head students; supported: "
                     f"small_cnn, vgg16, vgg16_bn, resnet18_cifar, resnet50_cifar, vit_* and any timm/<model> "
                     f"(rws/models/stages.py)")


def run_stages(stages: Stages, x: torch.Tensor) -> torch.Tensor:
    for _, stage in stages:
        x = stage(x)
    return x


def parameter_count(module: nn.Module) -> int:
    """Parameters of ``module``, each tensor once."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())
