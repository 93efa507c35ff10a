"""Mixup / CutMix on training batches (``method.mixup``), from timm.

    method.mixup='{mixup_alpha: 0.8, cutmix_alpha: 1.0}'     # the ViT recipe of the adapters paper

The mixed batch comes with soft targets, (N, num_classes) probabilities with the method's label
smoothing already in them (timm's ``mixup_target``). A method's step then receives those soft
targets: ``ClassifierModule.loss`` takes them as they are, attacks get :func:`hard_labels` (the
dominant class of each mixed example: our choice, the papers do not say how the attack of a
mixed batch is labelled), and ``train/acc`` is measured against the hard labels.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

MIXUP_KEYS = ("mixup_alpha", "cutmix_alpha", "cutmix_minmax", "prob", "switch_prob", "mode", "correct_lam")


def hard_labels(y: torch.Tensor) -> torch.Tensor:
    """Class indices: ``y`` itself, or the argmax of soft (N, C) targets."""
    return y.argmax(1) if y.ndim == 2 else y


class BatchMixer:
    """timm's ``Mixup`` (mixup and/or CutMix per batch, ``switch_prob`` choosing between them) that
    also takes odd batch sizes: timm pairs example i with N-1-i and needs N even, so the last
    example of an odd batch is left unmixed (its target one-hot and smoothed)."""

    def __init__(self, config: Mapping[str, Any], num_classes: int, label_smoothing: float) -> None:
        from timm.data import Mixup

        unknown = sorted(set(config) - set(MIXUP_KEYS))
        if unknown:
            raise ValueError(f"method.mixup has unknown keys {unknown}; valid keys: {', '.join(MIXUP_KEYS)}")
        opts = dict(config)
        if not (float(opts.get("mixup_alpha", 1.0)) > 0 or float(opts.get("cutmix_alpha", 0.0)) > 0
                or opts.get("cutmix_minmax")):
            raise ValueError("method.mixup needs mixup_alpha > 0 or cutmix_alpha > 0 (or null for no mixing)")
        self.num_classes = int(num_classes)
        self.label_smoothing = float(label_smoothing)
        self.mixup = Mixup(**opts, label_smoothing=self.label_smoothing, num_classes=self.num_classes)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from timm.data.mixup import mixup_target

        n = len(x) - len(x) % 2
        if n == 0:
            return x, mixup_target(y, self.num_classes, 1.0, self.label_smoothing)
        x = x.clone()  # timm mixes in place; the loader's batch stays as it came
        head_x, head_y = self.mixup(x[:n], y[:n])
        if n == len(x):
            return head_x, head_y
        tail_y = mixup_target(y[n:], self.num_classes, 1.0, self.label_smoothing)
        return torch.cat([head_x, x[n:]]), torch.cat([head_y, tail_y])
