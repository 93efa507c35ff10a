"""Model-soup arithmetic: theta = sum_i w_i * theta_i over state dicts of one architecture.

Building a soup from a spec (members, BN policy, calibration source) is ``rws.specs.kinds.soup``;
this module holds only the arithmetic, so it needs no spec machinery.

Conventions (shared with rws.weights.functional_soup so both give identical tensors):
- Floating tensors, parameters *and* BN running stats, are combined with the soup weights, in the
  tensors' own dtype, as one matrix-vector product over the stacked members (``combine_flat``); a
  one-hot soup is a copy, so it reproduces its member bit-exactly, including the sign of zeros.
- An extrapolated soup (negative weights) can give a negative ``running_var``; it is clamped at 0
  because BN would otherwise produce NaNs. Use ``bn: recalibrate`` for such soups.
- Integer buffers (BN ``num_batches_tracked``) are not averaged: we take the max over members. It only
  matters for BN layers with ``momentum=None``, where a larger count is the conservative choice.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from rws.weights.bn import recalibrate
from rws.weights.export import state_dict_mismatches

StateDict = dict[str, torch.Tensor]
AFFINE_TOL = 1e-6
SOUP_BN_POLICIES = ("combine", "recalibrate")


def check_weights(weights: Sequence[Any], n: int, affine: bool = True, tol: float = AFFINE_TOL) -> list[float]:
    """Validate soup weights; Fractions are checked exactly, floats within ``tol``."""
    if len(weights) != n:
        raise ValueError(f"{len(weights)} soup weight(s) for {n} member(s)")
    # A NaN/inf weight would silently give NaN weights in every soup tensor: refuse it here, where
    # the weights come in, naming the position.
    bad = [i for i, w in enumerate(weights) if not math.isfinite(float(w))]
    if bad:
        raise ValueError(f"soup weight {bad[0]} is {weights[bad[0]]!r}, expected a finite number")
    if affine:
        if all(isinstance(w, (Fraction, int)) for w in weights):
            ok = sum(Fraction(w) for w in weights) == 1
        else:
            ok = abs(sum(float(w) for w in weights) - 1.0) <= tol
        if not ok:
            raise ValueError(f"affine soup weights must sum to 1, got {[float(w) for w in weights]} "
                             f"(sum {sum(float(w) for w in weights)}); pass affine=False for arbitrary weights")
    return [float(w) for w in weights]


def check_soup_members(states: Sequence[Mapping[str, torch.Tensor]], names: Sequence[str] | None = None) -> None:
    """Raise listing every key/shape/dtype mismatch between the first member's state dict and the others'."""
    names = list(names) if names is not None else [f"member {i}" for i in range(len(states))]
    problems = []
    for name, sd in zip(names[1:], states[1:]):
        probs = state_dict_mismatches(dict(states[0]), dict(sd))
        probs += [f"dtype: {k} {states[0][k].dtype} vs {sd[k].dtype}" for k in states[0]
                  if k in sd and states[0][k].shape == sd[k].shape and states[0][k].dtype != sd[k].dtype]
        problems += [f"{name} vs {names[0]}: {p}" for p in probs]
    if problems:
        shown = "\n  ".join(problems[:30])
        more = f"\n  ... and {len(problems) - 30} more" if len(problems) > 30 else ""
        raise ValueError(f"soup members have different architectures ({len(problems)} problem(s)):\n  {shown}{more}")


def combine_into(targets: list[torch.Tensor], members: Sequence[Sequence[torch.Tensor]],
                 weights: Sequence[float]) -> None:
    """targets <- sum_i weights[i] * members[i], in place. The fallback for mixed-dtype state dicts;
    single-dtype ones go through :func:`combine_flat`, which reads memory once instead of ~n times."""
    nz = [i for i, w in enumerate(weights) if w != 0.0]
    if not nz:
        torch._foreach_zero_(targets)
        return
    first = nz[0]
    torch._foreach_copy_(targets, list(members[first]))
    if weights[first] != 1.0:
        torch._foreach_mul_(targets, weights[first])
    for i in nz[1:]:
        torch._foreach_add_(targets, list(members[i]), alpha=weights[i])


def stack_members(members: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
    """(P, n) matrix: member i's tensors flattened into column i. Row-major so each output value is a
    dot product over n adjacent numbers: one streaming pass over the members per soup."""
    return torch.stack([torch.cat([t.reshape(-1) for t in mem]) for mem in members], 1).contiguous()


def combine_flat(stacked: torch.Tensor, weights: Sequence[float], out: torch.Tensor) -> torch.Tensor:
    """out <- stacked @ weights. A one-hot soup is a plain copy, so it reproduces its member bit-exactly
    (a matrix-vector product would turn -0.0 into +0.0)."""
    nz = [i for i, w in enumerate(weights) if w != 0.0]
    if len(nz) == 1 and weights[nz[0]] == 1.0:
        return out.copy_(stacked[:, nz[0]])
    return torch.mv(stacked, torch.tensor(list(weights), dtype=stacked.dtype, device=stacked.device), out=out)


def is_running_var(key: str) -> bool:
    return key.endswith("running_var")


def soup_state_dicts(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[Any],
                     affine: bool = True, names: Sequence[str] | None = None) -> StateDict:
    """The soup's state dict (new tensors; members are not modified)."""
    if not states:
        raise ValueError("a soup needs at least one member")
    check_soup_members(states, names)
    w = check_weights(weights, len(states), affine)
    keys = list(states[0].keys())
    fkeys = [k for k in keys if states[0][k].is_floating_point()]
    members = [[sd[k] for k in fkeys] for sd in states]
    if len({states[0][k].dtype for k in fkeys}) == 1 and fkeys:
        flat = combine_flat(stack_members(members), w, torch.empty(sum(states[0][k].numel() for k in fkeys),
                                                                   dtype=states[0][fkeys[0]].dtype))
        # Separate tensors, not views of one buffer: safetensors refuses to save shared storage.
        out: StateDict = dict(zip(fkeys, (t.view_as(states[0][k]).clone() for t, k in
                                          zip(flat.split([states[0][k].numel() for k in fkeys]), fkeys))))
    else:
        out = {k: torch.empty_like(states[0][k]) for k in fkeys}
        combine_into([out[k] for k in fkeys], members, w)
    for k in fkeys:
        if is_running_var(k):
            out[k].clamp_(min=0)
    for k in keys:
        if k not in out:
            # Integer buffers (num_batches_tracked): max over members, see the module docstring.
            out[k] = torch.stack([sd[k] for sd in states]).amax(0).to(states[0][k].dtype)
    return {k: out[k] for k in keys}


def recalibrate_soup_bn(model: nn.Module, batches: Iterable[Any], n_batches: int | None = None,
                        device: str | torch.device | None = None) -> nn.Module:
    """Recompute every BN layer's running statistics as a cumulative average over ``batches``;
    ``num_batches_tracked`` counts them (see ``rws.weights.bn.recalibrate``)."""
    return recalibrate(model, batches, n_batches=n_batches, device=device, keep_num_batches_tracked=False)


def load_soup_state(model: nn.Module, state: Mapping[str, torch.Tensor], bn: str,
                    device: str | torch.device, calibration: Iterable[Any] | None = None) -> nn.Module:
    """Put a soup's state into ``model`` (strict), move it to ``device`` and apply the BN policy:
    ``combine`` keeps the combined statistics, ``recalibrate`` re-estimates every BN layer's on the
    ``calibration`` batches (on ``device``)."""
    if bn not in SOUP_BN_POLICIES:
        raise ValueError(f"soup bn must be one of {SOUP_BN_POLICIES}, got {bn!r}")
    model.load_state_dict(state, strict=True)
    model.to(device).eval()
    if bn == "recalibrate":
        if calibration is None:
            raise ValueError("bn: recalibrate needs calibration batches")
        recalibrate_soup_bn(model, calibration, device=device)
    return model


def soup_spec(paths: Sequence[str], weights: Sequence[Any], bn: str = "combine", affine: bool = True) -> dict:
    """The canonical model spec of a soup; weights are stored as exact decimal strings when possible."""
    return {"kind": "soup", "bn": bn, "affine": bool(affine),
            "members": [{"spec": {"kind": "export", "path": str(p)}, "weight": _canonical_weight(w)}
                        for p, w in zip(paths, weights)]}


def _canonical_weight(w: Any) -> float:
    # Round-trip through the shortest decimal so 1/5 and 0.2 hash the same.
    return float(Fraction(w).limit_denominator(10**9)) if isinstance(w, Fraction) else float(w)
