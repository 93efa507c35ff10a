"""Which state-dict keys make up each "layer", in forward order.

The RWS paper stores robust weight signatures only for the shallowest k layers, so "layer" needs a
fixed meaning per architecture (docs/models.md, "Layer rule"). Each architecture registers its rule
with ``register_model(..., layer_rule=...)``; this module holds the rules several architectures
share and the one generic fallback:

* ``conv_chain`` (VGG, small_cnn): each conv with the BN right after it, then the classifier;
* ``resnet_blocks`` (either stem, PreAct, WRN, timm ResNets): the stem (conv1 + bn1), each residual
  block with its downsample/shortcut, the final norm if any, then the head;
* ``vit_blocks``: the embedding (patch_embed, cls/reg token, pos_embed), each block, the final norm, the head;
* ``detect_blocks`` (timm passthrough, RobustBench): ``resnet_blocks`` or ``vit_blocks`` when the
  module has that shape, else the fallback;
* ``fallback_groups``: one group per module that owns parameters or buffers, in registration order.

BN running statistics belong to the layer of their BN, so a group is everything needed to swap a
layer between two models.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from rws.models.normalize import Normalized
from rws.models.registry import MODEL_NAME_ATTR, LayerRule, LayerSpec, lookup

Groups = list[tuple[str, list[str]]]


def _unwrap(model: nn.Module) -> tuple[nn.Module, str]:
    if isinstance(model, Normalized):
        return model.net, "net."
    return model, ""


def _owner(key: str) -> str:
    return key.rsplit(".", 1)[0] if "." in key else ""


def _under(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


def fallback_groups(keys: Iterable[str]) -> Groups:
    """The generic rule: one group per owning module, in state-dict (= registration) order; tensors
    registered on the root module form one group "(root)"."""
    # state_dict order is registration order: a module's own tensors, then its children's.
    groups: dict[str, list[str]] = {}
    for k in keys:
        groups.setdefault(_owner(k) or "(root)", []).append(k)
    return list(groups.items())


def conv_chain(net: nn.Module) -> LayerSpec:
    """A new group at every conv (and linear); norms and other parametrized modules join the open one."""
    spec: LayerSpec = []
    for name, mod in net.named_modules():
        if not name or not (list(mod.parameters(recurse=False)) or list(mod.buffers(recurse=False))):
            continue
        if isinstance(mod, (nn.Conv2d, nn.Linear)) or not spec:
            spec.append((name, [name]))
        else:
            spec[-1][1].append(name)
    return spec


def resnet_blocks(net: nn.Module) -> LayerSpec:
    """stem (conv1 + bn1), each block of layer1..N, the final norm if any, the head."""
    spec: LayerSpec = [("stem", [p for p in ("conv1", "bn1") if hasattr(net, p)])]
    i = 1
    while hasattr(net, f"layer{i}"):
        stage = getattr(net, f"layer{i}")
        spec += [(f"layer{i}.{j}", [f"layer{i}.{j}"]) for j, _ in enumerate(stage)]
        i += 1
    for norm in ("bn", "norm", "bn_final"):
        if isinstance(getattr(net, norm, None), nn.Module):
            spec.append((norm, [norm]))
    head = next((h for h in ("fc", "linear", "head", "classifier") if hasattr(net, h)), None)
    if head is not None:
        spec.append((head, [head]))
    return spec


def vit_blocks(net: nn.Module) -> LayerSpec:
    """embed (patch_embed, cls/reg token, pos_embed), each of blocks.i, norm (+fc_norm), head."""
    spec: LayerSpec = [("embed", ["patch_embed", "cls_token", "reg_token", "pos_embed"])]
    spec += [(f"blocks.{i}", [f"blocks.{i}"]) for i, _ in enumerate(net.blocks)]
    spec.append(("norm", ["norm", "fc_norm"]))
    spec.append(("head", ["attn_pool", "head"]))
    return spec


def detect_blocks(net: nn.Module) -> LayerSpec | None:
    """For models of unknown class (any timm model, RobustBench): the ResNet or ViT rule when the
    module has that shape, else None (the generic fallback)."""
    if hasattr(net, "conv1") and hasattr(net, "layer1"):
        return resnet_blocks(net)
    if hasattr(net, "patch_embed") and isinstance(getattr(net, "blocks", None), nn.Sequential):
        return vit_blocks(net)
    return None


def _rule(net: nn.Module) -> LayerRule | None:
    """The registered rule of the model create_model built ``net`` as; a module from elsewhere is
    treated like a timm passthrough model."""
    name = getattr(net, MODEL_NAME_ATTR, None)
    if name is None:
        return detect_blocks
    entry, _ = lookup(name)
    return entry.layer_rule


def _assign(spec: LayerSpec, keys: list[str]) -> Groups:
    """Map each key to the first group with a matching module prefix. Keys no rule names (a module a
    newer timm adds, say) become fallback groups just before the head, so nothing is ever dropped."""
    owned: dict[str, list[str]] = {name: [] for name, _ in spec}
    leftover: list[str] = []
    for k in keys:
        for name, prefixes in spec:
            if any(_under(k, p) for p in prefixes):
                owned[name].append(k)
                break
        else:
            leftover.append(k)
    groups = [(name, owned[name]) for name, _ in spec if owned[name]]
    if leftover:
        groups = groups[:-1] + fallback_groups(leftover) + groups[-1:]
    return groups


def layer_groups(model: nn.Module) -> Groups:
    """``[(layer name, [state-dict keys]), ...]`` in forward order; every key of
    ``model.state_dict()`` is in exactly one group. Keys of a :class:`Normalized` model carry ``net.``."""
    net, prefix = _unwrap(model)
    keys = list(net.state_dict().keys())
    rule = _rule(net)
    spec = None if rule is None else rule(net)
    groups = fallback_groups(keys) if spec is None else _assign(spec, keys)
    return [(name, [prefix + k for k in ks]) for name, ks in groups]


def shallow_keys(model: nn.Module, k: int = 5) -> list[str]:
    """State-dict keys of the first ``k`` layers (the RWS paper's "shallowest k layers", default 5)."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    return [key for _, keys in layer_groups(model)[:k] for key in keys]


def head_keys(model: nn.Module) -> list[str]:
    """State-dict keys of the classifier head (the last layer)."""
    return list(layer_groups(model)[-1][1])
