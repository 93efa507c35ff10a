"""Re-estimating BatchNorm running statistics, shared by patching (RWS) and soups."""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

BatchNorm = nn.modules.batchnorm._BatchNorm


def bn_modules(model: nn.Module) -> list[BatchNorm]:
    return [m for m in model.modules() if isinstance(m, BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate(model: nn.Module, batches: Iterable[Any], modules: Iterable[BatchNorm] | None = None,
                n_batches: int | None = None, device: str | torch.device | None = None,
                keep_num_batches_tracked: bool = True) -> nn.Module:
    """Reset and re-estimate the running stats of ``modules`` (default: every BN layer).

    momentum=None makes BN keep an exact cumulative average over the batches (no dependence on the
    number of batches through an EMA). Every other module stays in eval mode, so dropout and the
    other BN layers do not move. Module modes and momenta are restored; num_batches_tracked too
    unless ``keep_num_batches_tracked=False`` (patching needs it, so removing a patch is bit-exact;
    a soup counts the calibration batches instead). ``batches`` yields tensors or
    (x, y) tuples of model inputs; at most ``n_batches`` are used.
    """
    bns = list(modules) if modules is not None else bn_modules(model)
    if not bns:
        return model
    modes = {m: m.training for m in model.modules()}
    saved = {m: (m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in bns}
    device = device or next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        model.eval()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        seen = 0
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(x.to(device))
            seen += 1
            if n_batches is not None and seen >= n_batches:
                break
        if seen == 0:
            raise ValueError("BN recalibration got no batches")
    finally:
        for m, (momentum, nbt) in saved.items():
            m.momentum = momentum
            if nbt is not None and keep_num_batches_tracked:
                m.num_batches_tracked.copy_(nbt)
        for m, mode in modes.items():
            m.train(mode)
    return model
