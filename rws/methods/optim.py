"""Optimizers and LR schedules from plain config dicts.

Schedules are stepped per optimizer step (not per epoch) so that warmup and short fine-tuning
schedules (a third of an epoch, as in the soups paper) behave the same at any dataset size.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch

OPTIMIZERS = ("sgd", "adamw", "adam")
SCHEDULES = ("none", "cosine", "multistep", "piecewise")


def _number(cfg: dict[str, Any], key: str, default: float) -> float:
    """``cfg[key]`` as a finite float; a bad value names its option (``method.optim.<key>``)."""
    value = cfg.get(key, default)
    try:
        out = float(value)
    except (TypeError, ValueError):
        out = float("nan")
    if isinstance(value, bool) or not math.isfinite(out):
        raise ValueError(f"method.optim.{key}={value!r} is not a finite number, expected e.g. {default}")
    return out


def check_optimizer_config(cfg: dict[str, Any]) -> None:
    """Raise on a bad ``method.optim`` before training starts (configure_optimizers runs after the
    loggers have written their first files)."""
    name = str(cfg.get("name", "sgd")).lower()
    if name not in OPTIMIZERS:
        raise ValueError(f"method.optim.name={name!r} is not one of {OPTIMIZERS}")
    for key, default in (("lr", 0.1), ("weight_decay", 0.0), ("momentum", 0.9)):
        _number(cfg, key, default)


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: dict[str, Any]) -> torch.optim.Optimizer:
    name = str(cfg.get("name", "sgd")).lower()
    lr = _number(cfg, "lr", 0.1)
    wd = _number(cfg, "weight_decay", 0.0)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=_number(cfg, "momentum", 0.9),
                               weight_decay=wd, nesterov=bool(cfg.get("nesterov", False)))
    betas = tuple(cfg.get("betas", (0.9, 0.999)))
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, betas=betas)
    if name == "adam":  # betas too: a configured method.optim.betas used to be dropped silently for adam
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, betas=betas)
    raise ValueError(f"method.optim.name={name!r} is not one of {OPTIMIZERS}")


def lr_factor(step: int, total_steps: int, cfg: dict[str, Any], steps_per_epoch: int) -> float:
    """Multiplier of the base LR at optimizer step ``step`` (0-based)."""
    name = str(cfg.get("name", "none")).lower()
    warmup = int(round(float(cfg.get("warmup_epochs", 0)) * steps_per_epoch))
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    epoch = step / max(steps_per_epoch, 1)
    if name == "none":
        return 1.0
    if name == "cosine":
        t = (step - warmup) / max(total_steps - warmup, 1)
        floor = float(cfg.get("min_factor", 0.0))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(max(t, 0.0), 1.0)))
    if name == "multistep":
        gamma = float(cfg.get("gamma", 0.1))
        return gamma ** sum(epoch >= float(m) for m in cfg.get("milestones", []))
    if name == "piecewise":
        # Piecewise-linear in epochs, e.g. the cyclic schedule of fast adversarial training:
        # epochs: [0, 2, 5], factors: [0, 1, 0].
        xs = [float(v) for v in cfg.get("epochs", [0, 1])]
        ys = [float(v) for v in cfg.get("factors", [1, 1])]
        if len(xs) != len(ys) or len(xs) < 2:
            raise ValueError("method.sched piecewise needs equal-length 'epochs' and 'factors' (>= 2 points)")
        if epoch <= xs[0]:
            return ys[0]
        for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
            if epoch <= x1:
                return y0 + (y1 - y0) * (epoch - x0) / max(x1 - x0, 1e-12)
        return ys[-1]
    raise ValueError(f"method.sched.name={name!r} is not one of {SCHEDULES}")
