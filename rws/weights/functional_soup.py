"""Evaluate many soups with one model: soup weights are written in place into its tensors.

Building a soup from scratch per grid point (deepcopy, a new state dict, load_state_dict) costs
allocations and copies that rival a forward pass on a few hundred 32x32 images. Here the members are
held once as a (P, n) matrix on the evaluation device, the model's floating parameters and buffers are
re-pointed into one flat (P,) buffer, and each soup is a single ``torch.mv(members, w, out=flat)``:
one streaming pass over the members, no allocation. It is the arithmetic of
``rws.weights.soups.soup_state_dicts``, so results are bit-identical to building the soup.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from rws.weights.soups import (check_soup_members, check_weights, combine_flat, combine_into, is_running_var,
                               recalibrate_soup_bn, stack_members)


class InPlaceSoup:
    """One model whose weights are set to any soup of ``member_states`` by :meth:`set`.

    The model must have the members' architecture; its current weights are overwritten.
    """

    def __init__(self, model: nn.Module, member_states: Sequence[Mapping[str, torch.Tensor]],
                 names: Sequence[str] | None = None, affine: bool = True) -> None:
        check_soup_members(member_states, names)
        check_soup_members([model.state_dict(), member_states[0]], ["model", "member 0"])
        self.model = model
        self.affine = affine
        self.n = len(member_states)
        # state_dict(keep_vars=True) gives the live Parameter/buffer objects, so writes land in the model.
        live = model.state_dict(keep_vars=True)
        keys = list(live.keys())
        self.float_keys = [k for k in keys if live[k].is_floating_point()]
        self.targets = [live[k].data for k in self.float_keys]
        device = self.targets[0].device if self.targets else torch.device("cpu")
        members = [[sd[k].to(device=device, dtype=live[k].dtype) for k in self.float_keys] for sd in member_states]
        self.flat: torch.Tensor | None = None
        if len({t.dtype for t in self.targets}) == 1 and self.targets:
            self.stacked = stack_members(members)
            del members
            self.flat = torch.empty(self.stacked.shape[0], dtype=self.stacked.dtype, device=device)
            # Re-point every floating parameter/buffer into the flat buffer, so one mv writes them all.
            views = self.flat.split([t.numel() for t in self.targets])
            for k, v in zip(self.float_keys, views):
                live[k].data = v.view_as(live[k])
            self.targets = [live[k].data for k in self.float_keys]
        else:
            self.members = members
        self.var_targets = [t for k, t in zip(self.float_keys, self.targets) if is_running_var(k)]
        with torch.no_grad():
            for k in keys:
                if k not in self.float_keys:
                    # Integer buffers do not depend on the weights: max over members, once.
                    live[k].copy_(torch.stack([sd[k] for sd in member_states]).amax(0))
        self.weights: list[float] | None = None

    @torch.no_grad()
    def set(self, weights: Sequence[Any], calibration: Any = None, n_calibration_batches: int | None = None) -> nn.Module:
        """Write the soup ``sum_i weights[i] * member_i`` into the model; returns the model (eval mode)."""
        w = check_weights(weights, self.n, self.affine)
        if self.flat is not None:
            combine_flat(self.stacked, w, self.flat)
        else:
            combine_into(self.targets, self.members, w)
        if self.var_targets:
            torch._foreach_clamp_min_(self.var_targets, 0.0)
        self.model.eval()
        if calibration is not None:
            recalibrate_soup_bn(self.model, calibration, n_calibration_batches)
        self.weights = w
        return self.model

    def iterate(self, weight_list: Sequence[Sequence[Any]]) -> Iterator[tuple[int, nn.Module]]:
        """Yield (index, model-set-to-soup) for each weight vector; the model is the same object each time."""
        for i, w in enumerate(weight_list):
            yield i, self.set(w)


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits for ``x`` in chunks of ``batch_size`` (the batched forward of robust evaluation, tests and
    the benchmark)."""
    return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
