"""Which state-dict keys a signature keeps.

Three ways to choose, in this order of precedence:
  * ``regex``: every key matching the pattern (``re.search``);
  * ``names``: an explicit list of layer names from ``layer_groups``;
  * ``k``: the shallowest k layers of ``layer_groups`` (the paper's rule, k=5). The head (the last
    group) is never one of the shallow layers. ``k: null`` / ``"all"`` keeps every layer (RWS_full).

``num_batches_tracked`` is never kept: it counts steps, it is not a weight.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from rws.models import fallback_groups as module_groups
from rws.models import layer_groups

STAT_SUFFIXES = ("running_mean", "running_var")
NEVER_KEEP = ("num_batches_tracked",)

Groups = list[tuple[str, list[str]]]


def is_stat_key(key: str) -> bool:
    """BN running statistics: patched by a BN policy, never projected."""
    return key.rsplit(".", 1)[-1] in STAT_SUFFIXES


def _keepable(key: str) -> bool:
    return key.rsplit(".", 1)[-1] not in NEVER_KEEP


def fallback_groups(state: Mapping[str, torch.Tensor] | nn.Module) -> Groups:
    """One group per owning module, in registration order: ``rws.models.fallback_groups`` (what
    layer_groups does for unknown nets) over a state dict's keys, for exports whose model cannot be rebuilt."""
    sd = state.state_dict() if isinstance(state, nn.Module) else state
    return module_groups(sd)


def model_groups(model: nn.Module) -> Groups:
    """``rws.models.layer_groups(model)`` as a fresh list (callers may edit it)."""
    return [(name, list(keys)) for name, keys in layer_groups(model)]


def select_layers(groups: Groups, state_keys: Sequence[str], k: int | str | None = 5,
                  names: Sequence[str] | None = None, regex: str | None = None) -> tuple[list[str], list[str]]:
    """Return (layer names, keys) to keep, keys in state-dict order."""
    order = {key: i for i, key in enumerate(state_keys)}
    if regex:
        pat = re.compile(regex)
        keys = [key for key in state_keys if pat.search(key) and _keepable(key)]
        if not keys:
            raise ValueError(f"layers.regex={regex!r} matches no state-dict key")
        owners = [name for name, gkeys in groups if any(key in keys for key in gkeys)]
        return owners, keys
    if names:
        by_name = dict(groups)
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise ValueError(f"unknown layer name(s) {unknown}; layers are: {[n for n, _ in groups]}")
        chosen = [(n, by_name[n]) for n in names]
    elif k is None or (isinstance(k, str) and k.lower() in ("all", "full")):
        chosen = list(groups)
    else:
        body = groups[:-1]  # the last group is the head: never a "shallow" layer
        try:
            k = int(k)
        except (TypeError, ValueError):
            raise ValueError(f"layers.k={k!r} is not a number of layers; expected 1..{len(body)} or all") from None
        if not 0 < k <= len(body):
            raise ValueError(f"layers.k={k} but the network has {len(body)} non-head layers; expected "
                             f"1..{len(body)}, all (every layer), or layers.names / layers.regex")
        chosen = body[:k]
    keys = sorted({key for _, gkeys in chosen for key in gkeys if _keepable(key) and key in order},
                  key=order.__getitem__)
    return [n for n, _ in chosen], keys


def select_from_cfg(groups: Groups, state_keys: Sequence[str], layers: Mapping[str, Any] | None) -> tuple[list[str], list[str]]:
    layers = dict(layers or {})
    return select_layers(groups, state_keys, k=layers.get("k", 5), names=layers.get("names"),
                         regex=layers.get("regex"))
