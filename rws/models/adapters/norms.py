"""Normalization-layer adapters: ``layernorm``, ``dual_gn``, ``dual_bn`` (AdvProp) and
``dualparams_bn`` (paper section 3.2 and appendix A).

``layernorm`` / ``dual_gn`` make the scale and offset of every LayerNorm / GroupNorm dual parameters
(a ParamMix parametrization, rws/models/adapters/dual.py); those norms have no statistics.
BatchNorm has running statistics, so its adapters replace each BN module:

* :class:`DualBatchNorm` (``dual_bn``): two whole BN layers, ``clean`` (the original module) and
  ``robust`` (a copy of it): separate statistics and affine parameters.
* :class:`DualParamsBatchNorm` (``dualparams_bn``): one BN (``bn``: the clean affine and the one set of
  shared running statistics) plus a robust scale/offset; the robust branch always normalizes with
  the running statistics, also in train mode, and never updates them.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from rws.models.adapters.dual import CLEAN, ROBUST, DomainPairs, Mixable, adapt_parameter


def _affine_norms(net: nn.Module, types: tuple[type[nn.Module], ...]) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, types) and isinstance(getattr(m, "weight", None), nn.Parameter)]


def _adapt_affine(net: nn.Module, kind: str, types: tuple[type[nn.Module], ...], what: str) -> int:
    norms = _affine_norms(net, types)
    if not norms:
        raise ValueError(f"adapter {kind!r} adapts the scales/offsets of {what} layers, but "
                         f"{type(net).__name__} has no {what} with affine parameters; choose an adapter that fits "
                         f"the architecture (model.adapter)")
    for norm in norms:
        adapt_parameter(norm, "weight")
        if isinstance(getattr(norm, "bias", None), nn.Parameter):
            adapt_parameter(norm, "bias")
    return len(norms)


def adapt_layernorm(net: nn.Module, kind: str = "layernorm") -> None:
    """Every LayerNorm's scale and offset (the paper's "All LN's scales/offsets")."""
    _adapt_affine(net, kind, (nn.LayerNorm,), "LayerNorm")


def adapt_groupnorm(net: nn.Module, kind: str = "dual_gn") -> None:
    """Every GroupNorm's scale and offset (Figure 2's Dual GroupNorm)."""
    _adapt_affine(net, kind, (nn.GroupNorm,), "GroupNorm")


# ----- BatchNorm ----------------------------------------------------------------------------------
def _replace_batchnorms(net: nn.Module, kind: str, make: type[nn.Module]) -> None:
    targets = [(parent, child_name, child) for parent in net.modules()
               for child_name, child in parent.named_children() if isinstance(child, nn.modules.batchnorm._BatchNorm)]
    if not targets:
        raise ValueError(f"adapter {kind!r} converts BatchNorm layers, but {type(net).__name__} has no BatchNorm; "
                         f"choose an adapter that fits the architecture (model.adapter), e.g. dual_gn for GroupNorm")
    # Build every replacement before installing any: a BN the adapter cannot take leaves net untouched.
    replacements = [(parent, child_name, make(bn)) for parent, child_name, bn in targets]
    for parent, child_name, dual in replacements:
        setattr(parent, child_name, dual)


def _mixed_stats(clean: nn.modules.batchnorm._BatchNorm, robust: nn.modules.batchnorm._BatchNorm,
                 mix: tuple[float, float]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if clean.running_mean is None or robust.running_mean is None:
        return None, None
    mean = mix[0] * clean.running_mean + mix[1] * robust.running_mean
    # Extrapolated mixes can make a variance negative; eps keeps the clamped one usable.
    var = (mix[0] * clean.running_var + mix[1] * robust.running_var).clamp_min(0.0)
    return mean, var


def _mixed(a: torch.Tensor | None, b: torch.Tensor | None, mix: tuple[float, float]) -> torch.Tensor | None:
    return None if a is None or b is None else mix[0] * a + mix[1] * b


class DualBatchNorm(Mixable):
    """AdvProp's dual BN: ``clean`` (the original BN) and ``robust`` (its copy: same init and
    statistics at conversion). In a mode each branch is its own BN (train mode: batch statistics and
    an update of that branch's running statistics only).

    A beta mix blends both the affine parameters and the running statistics linearly
    (mean and variance, the variance clamped at 0 for extrapolations) and, in eval mode, normalizes
    with the blended statistics. In train mode a mix normalizes with batch statistics (the mixed
    affine applies) and updates no running statistics: no domain owns a mixed batch."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        self.clean = bn
        self.robust = copy.deepcopy(bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.branch
        if branch == CLEAN:
            return self.clean(x)
        if branch == ROBUST:
            return self.robust(x)
        c, r = self.clean, self.robust
        mean, var = _mixed_stats(c, r, self.mix)
        use_batch = self.training or mean is None
        return F.batch_norm(x, None if use_batch else mean, None if use_batch else var,
                            _mixed(c.weight, r.weight, self.mix), _mixed(c.bias, r.bias, self.mix),
                            use_batch, 0.0, c.eps)

    def domain_pairs(self) -> DomainPairs:
        names = ("weight", "bias", "running_mean", "running_var")
        return {n: (getattr(self.clean, n), getattr(self.robust, n)) for n in names
                if getattr(self.clean, n, None) is not None}


class DualParamsBatchNorm(Mixable):
    """BN with one set of statistics and two affine sets (the paper's DualParams BatchNorm).

    ``bn`` is the original module: the clean scale/offset and the shared running statistics; the
    clean branch is exactly that BN. ``weight_robust``/``bias_robust`` start as clones of the clean
    ones. Every other branch (robust or a mix) normalizes with the running statistics, in train mode
    too, and does not update them (appendix A: "we fix the robust branch to always use the
    accumulated statistics"); a mix blends only the affine parameters."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        if not bn.affine:
            raise ValueError(f"adapter 'dualparams_bn' needs BatchNorm layers with affine parameters; {bn} has none")
        if not bn.track_running_stats or bn.running_mean is None:
            raise ValueError(f"adapter 'dualparams_bn' needs BatchNorm layers with running statistics (the robust "
                             f"branch normalizes with them); {bn} has track_running_stats=False")
        self.bn = bn
        self.weight_robust = nn.Parameter(bn.weight.detach().clone(), requires_grad=bn.weight.requires_grad)
        self.bias_robust = nn.Parameter(bn.bias.detach().clone(), requires_grad=bn.bias.requires_grad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.branch
        if branch == CLEAN:
            return self.bn(x)
        bn = self.bn
        bn._check_input_dim(x)
        if branch == ROBUST:
            weight, bias = self.weight_robust, self.bias_robust
        else:
            weight, bias = _mixed(bn.weight, self.weight_robust, self.mix), _mixed(bn.bias, self.bias_robust, self.mix)
        return F.batch_norm(x, bn.running_mean, bn.running_var, weight, bias, False, 0.0, bn.eps)

    def domain_pairs(self) -> DomainPairs:
        return {"weight": (self.bn.weight, self.weight_robust), "bias": (self.bn.bias, self.bias_robust)}


def adapt_dual_bn(net: nn.Module, kind: str = "dual_bn") -> None:
    _replace_batchnorms(net, kind, DualBatchNorm)


def adapt_dualparams_bn(net: nn.Module, kind: str = "dualparams_bn") -> None:
    _replace_batchnorms(net, kind, DualParamsBatchNorm)
