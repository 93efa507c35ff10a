"""The dual-parameter mechanism of adapter models and ``DualModeNetwork``, the module that declares
the modes contract of rws/models/contracts.py for them.

An adapter model has shared parameters psi and two sets of domain parameters, phi_clean and
phi_robust. Every place in the network that holds domain parameters is a :class:`Mixable` module;
``DualModeNetwork.set_mode`` hands the mixing weights (w_clean, w_robust) to each of them and
nothing else changes: no module is rebuilt and no tensor is copied, so psi is the same objects with
the same values in every mode.

A parameter adapter (a token, an embedding, a norm's scale/offset) is a parametrization
(torch.nn.utils.parametrize) of the adapted tensor: the tensor registered on the module is phi_clean
(``<module>.parametrizations.<name>.original``) and :class:`ParamMix`, the parametrization, holds
phi_robust (``<module>.parametrizations.<name>.0.robust``). Reading ``module.<name>`` then gives
    weights (1, 0): phi_clean itself (the same tensor: bit-exact, gradients reach only phi_clean)
    weights (0, 1): phi_robust itself
    otherwise:      w_clean * phi_clean + w_robust * phi_robust
so beta=1, the pair (1, 0) and the mode "clean" are one code path, as are beta=0 and "robust".
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

from rws.models.contracts import Mode, check_mode_value, mix_weights

MODES: tuple[str, str] = ("clean", "robust")
CLEAN, ROBUST, MIX = "clean", "robust", "mix"
Weights = tuple[float, float]
DomainPairs = dict[str, tuple[torch.Tensor, torch.Tensor]]


def branch_of(weights: Weights) -> str:
    """Which path the mixing weights take: exactly (1, 0) is the clean path, exactly (0, 1) the
    robust path (both read one domain's tensors as they are), anything else a mix."""
    if weights == (1.0, 0.0):
        return CLEAN
    if weights == (0.0, 1.0):
        return ROBUST
    return MIX


class Mixable(nn.Module):
    """A module holding domain parameters; ``set_mix`` is called by DualModeNetwork.set_mode.

    The weights are plain floats (not buffers): the mode is not part of the state dict, so an export
    holds both phi sets and the mode is chosen by whoever loads it (a rebuilt model starts clean)."""

    mix: Weights = (1.0, 0.0)

    def set_mix(self, weights: Weights) -> None:
        self.mix = (float(weights[0]), float(weights[1]))

    @property
    def branch(self) -> str:
        return branch_of(self.mix)

    def domain_pairs(self) -> DomainPairs:
        """{local name: (clean tensor, robust tensor)} of the domain tensors this module owns
        (a ParamMix owns only phi_robust: its pairs are read from the parametrized module)."""
        return {}


class ParamMix(Mixable):
    """Parametrization of one adapted tensor: the original tensor is phi_clean, ``robust`` phi_robust.

    phi_robust starts as a clone of phi_clean: both domains share the initialization (as two fresh
    layers drawn from one seed would not), so at step 0 the two modes are the same function and the
    co-training loss alone makes them diverge."""

    def __init__(self, original: torch.Tensor) -> None:
        super().__init__()
        self.robust = nn.Parameter(original.detach().clone(), requires_grad=original.requires_grad)

    def forward(self, clean: torch.Tensor) -> torch.Tensor:
        branch = self.branch
        if branch == CLEAN:
            return clean
        if branch == ROBUST:
            return self.robust
        return self.mix[0] * clean + self.mix[1] * self.robust


def adapt_parameter(module: nn.Module, name: str) -> None:
    """Make ``module.<name>`` (a Parameter) a dual parameter: clean = the tensor as it is, robust = a clone."""
    tensor = getattr(module, name)
    if not isinstance(tensor, nn.Parameter):
        raise ValueError(f"cannot adapt {type(module).__name__}.{name}: expected a Parameter, got "
                         f"{type(tensor).__name__}")
    parametrize.register_parametrization(module, name, ParamMix(tensor))


def parametrized_pairs(module: nn.Module) -> DomainPairs:
    """{tensor name: (phi_clean, phi_robust)} for the tensors of ``module`` adapted by ParamMix."""
    if not parametrize.is_parametrized(module):
        return {}
    pairs: DomainPairs = {}
    for name, plist in module.parametrizations.items():
        mixers = [p for p in plist if isinstance(p, ParamMix)]
        if mixers:
            pairs[name] = (plist.original, mixers[0].robust)
    return pairs


def domain_parameter_pairs(net: nn.Module) -> DomainPairs:
    """Every (phi_clean, phi_robust) pair in ``net``, by the adapted tensor's name relative to ``net``
    (``cls_token``, ``blocks.0.norm1.weight``, ``layer1.0.bn1.running_mean``, ...)."""
    pairs: DomainPairs = {}
    for path, module in net.named_modules():
        prefix = f"{path}." if path else ""
        for name, pair in parametrized_pairs(module).items():
            pairs[prefix + name] = pair
        if isinstance(module, Mixable):
            for name, pair in module.domain_pairs().items():
                pairs[prefix + name] = pair
    return pairs


def mixables(net: nn.Module) -> Iterator[Mixable]:
    return (m for m in net.modules() if isinstance(m, Mixable))


class DualModeNetwork(nn.Module):
    """A network converted by an adapter (``self.net``), with the modes ``clean`` and ``robust``.

    ``mode`` is a name, a float beta (beta * phi_clean + (1 - beta) * phi_robust; values outside
    [0, 1] extrapolate) or a pair (b1, b2) (b1 * phi_clean + b2 * phi_robust). It starts ``clean``.
    """

    modes: tuple[str, ...] = MODES

    def __init__(self, net: nn.Module, adapter_kind: str) -> None:
        super().__init__()
        self.net = net
        self.adapter_kind = str(adapter_kind)
        self._mode: Mode = CLEAN
        self.set_mode(CLEAN)

    @property
    def mode(self) -> Mode:
        return self._mode

    def set_mode(self, mode: Mode) -> None:
        """Switch in place: only the mixing weights the adapted layers read change."""
        mode = check_mode_value(mode, self.modes)
        weights = mix_weights(mode, self.modes)
        if not all(math.isfinite(w) for w in weights):
            raise ValueError(f"mode weights must be finite numbers, got {mode!r}")
        for m in mixables(self.net):
            m.set_mix(weights)
        self._mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def domain_parameters(self) -> DomainPairs:
        """{name: (phi_clean, phi_robust)}, the live tensors (Parameters, or BN running statistics
        for ``dual_bn``); empty for the adapter ``none``."""
        return domain_parameter_pairs(self.net)

    def extra_repr(self) -> str:
        return f"adapter_kind={self.adapter_kind!r}, mode={self._mode!r}"
