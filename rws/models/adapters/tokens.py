"""ViT embedding adapters (paper section 5.1, Table 1): the classification token, the positional
embedding and the embedder (patch embedding), made dual parameters with ParamMix."""

from __future__ import annotations

from torch import nn

from rws.models.adapters.dual import adapt_parameter


def _vit_parameter(net: nn.Module, kind: str, attr: str, what: str) -> None:
    if not isinstance(getattr(net, attr, None), nn.Parameter):
        raise ValueError(f"adapter {kind!r} adapts the {what} ({attr}) of a ViT, but {type(net).__name__} has "
                         f"no {attr} parameter; use it with a ViT that has one (e.g. model=vit_cpu_patch4_32) or "
                         f"choose another adapter (model.adapter)")
    adapt_parameter(net, attr)


def adapt_cls_token(net: nn.Module, kind: str = "cls_token") -> None:
    """The classification token: embed_dim extra parameters (the paper's choice)."""
    _vit_parameter(net, kind, "cls_token", "classification token")


def adapt_pos_embed(net: nn.Module, kind: str = "pos_embed") -> None:
    """The learned positional embedding ((1, tokens, embed_dim) extra parameters)."""
    _vit_parameter(net, kind, "pos_embed", "positional embedding")


def adapt_patch_embed(net: nn.Module, kind: str = "patch_embed") -> None:
    """Every parameter of the embedder ``patch_embed`` (its projection's weight and bias, and its norm
    if it has one): the paper's "Embedder" adapter."""
    embed = getattr(net, "patch_embed", None)
    owned = [] if not isinstance(embed, nn.Module) else [
        (module, name) for module in embed.modules() for name, p in module.named_parameters(recurse=False)]
    if not owned:
        raise ValueError(f"adapter {kind!r} adapts the embedder (patch_embed) of a ViT, but {type(net).__name__} "
                         f"has no patch_embed with parameters; use it with a ViT or choose another adapter "
                         f"(model.adapter)")
    for module, name in owned:
        adapt_parameter(module, name)
