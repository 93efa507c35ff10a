"""Adapters ("Revisiting adapters with adversarial training", sections 3.2-3.4): a network whose
few domain-specific parameters phi come in two sets, phi_clean and phi_robust, on shared psi.

    net = apply_adapter(net, "cls_token")    # -> DualModeNetwork (declares the modes contract)
    net.set_mode("robust"); net.set_mode(0.5); net.set_mode((1.0, 0.3))

``create_model(..., adapter=<kind>)`` does this after building the bare network (see docs/models.md,
"Adapters"). Kinds (``ADAPTER_KINDS``):

    cls_token      ViT classification token
    pos_embed      ViT positional embedding
    patch_embed    ViT embedder (patch projection weight and bias)
    layernorm      every LayerNorm's scale and offset
    dual_bn        AdvProp: each BatchNorm doubled (statistics and affine)
    dualparams_bn  BatchNorm with shared statistics, separate affine; the robust branch always uses
                   the running statistics
    dual_gn        every GroupNorm's scale and offset
    none           fully shared: the modes exist but select the same parameters (Eq. 1 co-training)

phi_robust starts as a copy of phi_clean (one initialization for both domains).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from rws.models.adapters.dual import (MODES, DualModeNetwork, Mixable, ParamMix, adapt_parameter,
                                      domain_parameter_pairs)
from rws.models.adapters.norms import (DualBatchNorm, DualParamsBatchNorm, adapt_dual_bn, adapt_dualparams_bn,
                                       adapt_groupnorm, adapt_layernorm)
from rws.models.adapters.tokens import adapt_cls_token, adapt_patch_embed, adapt_pos_embed


def _shared(net: nn.Module, kind: str = "none") -> None:
    """``none``: nothing to convert."""


_CONVERTERS: dict[str, Callable[[nn.Module, str], None]] = {
    "cls_token": adapt_cls_token,
    "pos_embed": adapt_pos_embed,
    "patch_embed": adapt_patch_embed,
    "layernorm": adapt_layernorm,
    "dual_bn": adapt_dual_bn,
    "dualparams_bn": adapt_dualparams_bn,
    "dual_gn": adapt_groupnorm,
    "none": _shared,
}
ADAPTER_KINDS: tuple[str, ...] = tuple(_CONVERTERS)


def check_adapter_kind(kind: object) -> str:
    """``kind`` if it is a known adapter kind, else a ValueError listing them."""
    if not isinstance(kind, str) or kind not in _CONVERTERS:
        raise ValueError(f"unknown adapter {kind!r} (model.adapter); valid adapters: {', '.join(ADAPTER_KINDS)}, "
                         f"or null for a plain model without modes")
    return kind


def apply_adapter(net: nn.Module, kind: str) -> DualModeNetwork:
    """Convert ``net`` in place with adapter ``kind`` and wrap it in a DualModeNetwork (mode clean).

    The clean mode computes exactly what ``net`` computed before; a ValueError says when ``net`` has
    nothing the adapter could adapt (a cls_token adapter on a CNN, dual_bn without BatchNorm)."""
    kind = check_adapter_kind(kind)
    if isinstance(net, DualModeNetwork) or any(isinstance(m, Mixable) for m in net.modules()):
        raise ValueError(f"adapter {kind!r}: the network is already converted by an adapter; apply one adapter "
                         f"to a plain network")
    _CONVERTERS[kind](net, kind)
    return DualModeNetwork(net, kind)


__all__ = ["ADAPTER_KINDS", "MODES", "DualBatchNorm", "DualModeNetwork", "DualParamsBatchNorm", "Mixable",
           "ParamMix", "adapt_parameter", "apply_adapter", "check_adapter_kind", "domain_parameter_pairs"]
