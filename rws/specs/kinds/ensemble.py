"""``{kind: ensemble, members: [<spec>, ...], weights: [w1, ...]}``: a probability-level ensemble,
p(x) = Σ_i w_i · softmax(f_i(x)) (weights default to equal). The adapters paper's Fig. 4 / Table 8
ensemble of a model's clean and robust modes is two adapter specs of one export (each member is
built on its own, so switching one never switches the other).

The forward returns log p(x) (like ``HeadSelection``): its argmax is the ensemble's prediction and
cross-entropy on it, what attacks maximize, is −log p_y. A wrapper module: put it outermost.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from rws.specs.context import BuildContext
from rws.specs.registry import SpecError, SpecKind, register_kind


class ProbabilityEnsemble(nn.Module):
    """log Σ_i w_i softmax(member_i(x)); one forward pass per member of weight > 0."""

    def __init__(self, members: list[nn.Module], weights: list[float]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A member of weight 0 is skipped: log 0 would be -inf, and its pass would change nothing.
        terms = [m(x).log_softmax(-1) + w.log() for m, w in zip(self.members, self.weights.to(x.device)) if w > 0]
        return torch.logsumexp(torch.stack(terms), 0)


def ensemble_weights(spec: dict[str, Any], where: str = "ensemble spec") -> list[float]:
    members = spec.get("members")
    if not isinstance(members, list) or len(members) < 1:
        raise SpecError(f"{where}.members must be a non-empty list of specs, got {members!r}")
    weights = spec.get("weights")
    if weights is None:
        return [1.0 / len(members)] * len(members)
    if not isinstance(weights, list) or len(weights) != len(members):
        raise SpecError(f"{where}.weights must be a list of {len(members)} numbers (one per member), got {weights!r}")
    out = []
    for i, w in enumerate(weights):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(float(w)) or w < 0:
            raise SpecError(f"{where}.weights[{i}] must be a finite number >= 0, got {w!r}")
        out.append(float(w))
    if sum(out) <= 0:
        raise SpecError(f"{where}.weights must not all be 0, got {weights!r}")
    return [w / sum(out) for w in out]


def check_ensemble_spec(spec: dict[str, Any], where: str) -> None:
    ensemble_weights(spec, where)


def ensemble_children(spec: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(f".members[{i}]", m) for i, m in enumerate(spec["members"])]


def build_ensemble(spec: dict[str, Any], ctx: BuildContext) -> nn.Module:
    return ProbabilityEnsemble([ctx.build(m) for m in spec["members"]], ensemble_weights(spec))


def ensemble_name(spec: dict[str, Any], name_of: Callable[[Any], str]) -> str:
    w = ensemble_weights(spec)
    return "ensemble[" + ", ".join(f"{w_i:g}*{name_of(m)}" for w_i, m in zip(w, spec["members"])) + "]"


KIND = register_kind(SpecKind(name="ensemble", required=("members",), build=build_ensemble,
                              children=ensemble_children, check=check_ensemble_spec, display=ensemble_name))
