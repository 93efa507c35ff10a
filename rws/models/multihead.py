"""Multi-head students ("Efficiently robustify pre-trained models", docs/distill.md).

A pre-trained network is cut at stage boundaries (rws/models/stages.py) into
    frozen  the first stages: never trained, always in eval mode (BN statistics fixed), run once per batch
    shared  the tuned stages every head shares
    heads   the last stages, one copy per head (clean, unclean, combined), each behind a dropout layer
The tuned portion is the last ``tuned_stages`` stages, or the suffix whose parameter count is
closest to ``tuned_fraction`` of the network's; its suffix closest to ``head_fraction`` of the tuned
parameters (at least the last stage, the classifier) is head-specific: the paper's "last one-fifth of the tuning portion". Every head starts
as a copy of the pre-trained layers it replaces, so before tuning all heads equal the base model.

The model fills the heads contract (rws/models/contracts.py): ``heads``, ``default_head``,
``forward_heads``; ``features`` + ``heads_from_features`` let Monte-Carlo dropout run the trunk once
and only the heads N times (``mc_dropout_layers`` are the only layers it switches on).
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from rws.models.stages import model_stages, parameter_count

DEFAULT_HEADS = ("clean", "unclean", "combined")
HEAD_KEYS = ("names", "default", "tuned_stages", "tuned_fraction", "head_fraction", "dropout")
DEFAULT_TUNED_FRACTION = 0.1
DEFAULT_HEAD_FRACTION = 0.2
DEFAULT_DROPOUT = 0.25


def heads_options(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """``model.heads`` with defaults filled in; ValueError naming the key for anything invalid."""
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(HEAD_KEYS))
    if unknown:
        raise ValueError(f"model.heads: unknown key(s) {unknown}; keys: {', '.join(HEAD_KEYS)}")
    names = cfg.get("names") or list(DEFAULT_HEADS)
    if isinstance(names, str) or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise ValueError(f"model.heads.names must be a list of distinct head names, got {names!r}")
    names = [str(n) for n in names]
    default = cfg.get("default") or ("combined" if "combined" in names else names[-1])
    if default not in names:
        raise ValueError(f"model.heads.default: {default!r} is not one of the heads {names}")
    stages, fraction = cfg.get("tuned_stages"), cfg.get("tuned_fraction")
    if stages is not None and fraction is not None:
        raise ValueError("model.heads: give tuned_stages (a number of stages) or tuned_fraction (of the "
                         "parameters), not both")
    if stages is not None and (isinstance(stages, bool) or not isinstance(stages, int) or stages < 1):
        raise ValueError(f"model.heads.tuned_stages must be an integer >= 1, got {stages!r}")
    if stages is None:
        fraction = DEFAULT_TUNED_FRACTION if fraction is None else float(fraction)
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"model.heads.tuned_fraction must be in (0, 1], got {fraction!r}")
    head_fraction = float(cfg.get("head_fraction", DEFAULT_HEAD_FRACTION))
    if not 0.0 < head_fraction <= 1.0:
        raise ValueError(f"model.heads.head_fraction must be in (0, 1], got {head_fraction!r}")
    dropout = float(cfg.get("dropout", DEFAULT_DROPOUT))
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"model.heads.dropout must be in [0, 1), got {dropout!r}")
    return {"names": names, "default": default, "tuned_stages": stages, "tuned_fraction": fraction,
            "head_fraction": head_fraction, "dropout": dropout}


def _closest_suffix(counts: Sequence[int], target: float) -> int:
    """The length (>= 1) of the suffix of ``counts`` whose sum is closest to ``target`` (the shorter
    one on a tie): stages are coarse, so "the last 10 %" means the nearest stage boundary."""
    best, best_gap, total = 1, float("inf"), 0
    for n, c in enumerate(reversed(counts), start=1):
        total += c
        if abs(total - target) < best_gap:
            best, best_gap = n, abs(total - target)
    return best


def split_points(counts: Sequence[int], opts: Mapping[str, Any]) -> tuple[int, int]:
    """(number of tuned stages, number of head-specific stages) for per-stage parameter counts."""
    if opts["tuned_stages"] is not None:
        if opts["tuned_stages"] > len(counts):
            raise ValueError(f"model.heads.tuned_stages={opts['tuned_stages']} but the network has only "
                             f"{len(counts)} stages")
        tuned = int(opts["tuned_stages"])
    else:
        tuned = _closest_suffix(counts, opts["tuned_fraction"] * sum(counts))
    tuned_counts = list(counts[len(counts) - tuned:])
    head = _closest_suffix(tuned_counts, opts["head_fraction"] * sum(tuned_counts))
    return tuned, head


class MultiHeadStudent(nn.Module):
    """A network cut into frozen / shared / per-head stages (see the module docstring)."""

    def __init__(self, net: nn.Module, heads: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        opts = heads_options(heads)
        stages = model_stages(net)
        counts = [parameter_count(m) for _, m in stages]
        n_tuned, n_head = split_points(counts, opts)
        n = len(stages)
        self.stage_names = [name for name, _ in stages]
        self.frozen = nn.ModuleList([m for _, m in stages[: n - n_tuned]])
        self.shared = nn.ModuleList([m for _, m in stages[n - n_tuned: n - n_head]])
        head_stages = [m for _, m in stages[n - n_head:]]
        self.heads = tuple(opts["names"])
        self.default_head = str(opts["default"])
        # Each head: its own dropout (MC dropout at inference) in front of its own copy of the
        # pre-trained last stages.
        self.head_nets = nn.ModuleDict({
            h: nn.Sequential(nn.Dropout(opts["dropout"]), *copy.deepcopy(head_stages)) for h in self.heads})
        self.frozen.requires_grad_(False)
        self.split = {"stages": n, "frozen_stages": n - n_tuned, "shared_stages": n_tuned - n_head,
                      "head_stages": n_head, "head_stage_names": self.stage_names[n - n_head:]}
        self.parameter_counts = {
            "base_total": sum(counts), "base_tuned": sum(counts[n - n_tuned:]),
            "frozen": parameter_count(self.frozen), "shared": parameter_count(self.shared),
            "per_head": parameter_count(self.head_nets[self.heads[0]]),
            "trainable": sum(p.numel() for p in self.parameters() if p.requires_grad)}
        self.train(True)

    def train(self, mode: bool = True) -> "MultiHeadStudent":
        super().train(mode)
        self.frozen.eval()  # the frozen trunk keeps its pre-trained BN statistics
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Frozen + shared stages: what every head reads."""
        for stage in self.frozen:
            x = stage(x)
        for stage in self.shared:
            x = stage(x)
        return x

    def heads_from_features(self, f: torch.Tensor, heads: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        return {h: self.head_nets[h](f) for h in (heads or self.heads)}

    def forward_heads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.heads_from_features(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_nets[self.default_head](self.features(x))

    def mc_dropout_layers(self) -> list[nn.Module]:
        """The only layers Monte-Carlo dropout switches on: the heads' own dropout layers."""
        from rws.models.contracts import DROPOUT_LAYERS

        return [m for m in self.head_nets.modules() if isinstance(m, DROPOUT_LAYERS)]

    def extra_repr(self) -> str:
        return (f"heads={self.heads}, default={self.default_head!r}, split={self.split}, "
                f"parameters={self.parameter_counts}")
