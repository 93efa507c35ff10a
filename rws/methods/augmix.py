"""AugMix (+ DeepAugment) training: the robust teachers of "Efficiently robustify pre-trained models".

    python train.py method=augmix                      # AugMix + Jensen-Shannon consistency (Hendrycks et al. 2020)
    python train.py method=augmix_da                   # AugMix + DeepAugment's Noise2Net on half of each batch
    python train.py method=augmix method.jsd=false     # AugMix without the consistency loss

Step: (optionally) Noise2Net / a user's image-to-image network on a fraction of the batch (the
DeepAugment images, which then count as clean images), two AugMix views of every image, one forward
on ``cat([x, aug1, aug2])`` and timm's ``JsdCrossEntropy`` (label-smoothed CE on the clean third +
``jsd_weight`` times the Jensen-Shannon divergence of the three predictions). With ``jsd: false`` the
step is the reference's ``--no-jsd``: label-smoothed CE on one AugMix view, no clean forward.
All randomness comes from a private generator seeded by ``method.seed`` (rws/augment).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from rws.augment.augmix import augmix_batch, augmix_views, resolve_ops
from rws.augment.noise2net import build_perturbation
from rws.methods.base import ClassifierModule
from rws.methods.step import StepOutput


class AugMixModule(ClassifierModule):
    def __init__(self, model: dict, width: int = 3, depth: int = -1, severity: float = 3, alpha: float = 1.0,
                 ops: str | Sequence[str] | None = "all", jsd: bool = True, jsd_weight: float = 12.0,
                 noise2net: dict | None = None, image_to_image: dict | None = None, seed: int = 0,
                 **kw: Any) -> None:
        from timm.loss import JsdCrossEntropy

        names = list(resolve_ops(ops))
        if int(width) < 1 or int(depth) == 0 or int(depth) < -1 or not 0.1 < float(severity) <= 10 or float(alpha) <= 0:
            raise ValueError(f"method: width >= 1, depth -1 or >= 1, severity in (0.1, 10], alpha > 0; got "
                             f"width={width}, depth={depth}, severity={severity}, alpha={alpha}")
        if jsd and kw.get("mixup"):
            raise ValueError("method.mixup needs hard labels for the clean split of the JSD loss: "
                             "set method.jsd=false or method.mixup=null")
        super().__init__(model=model, width=int(width), depth=int(depth), severity=float(severity),
                         alpha=float(alpha), ops=names, jsd=bool(jsd), jsd_weight=float(jsd_weight),
                         noise2net=noise2net, image_to_image=image_to_image, seed=int(seed), **kw)
        self.augmix_options = {"width": int(width), "depth": int(depth), "severity": float(severity),
                               "alpha": float(alpha), "ops": tuple(names)}
        self.jsd, self.jsd_weight = bool(jsd), float(jsd_weight)
        self.jsd_loss = JsdCrossEntropy(num_splits=3, alpha=self.jsd_weight, smoothing=self.label_smoothing)
        mean, std = _model_stats(self.model, "mean", model), _model_stats(self.model, "std", model)
        # Not submodules: never trained, never in checkpoints or exports.
        self.perturbations = [p for p in (build_perturbation("noise2net", noise2net, mean, std),
                                          build_perturbation("image_to_image", image_to_image)) if p is not None]
        # A private generator keeps the augmentation stream repeatable per seed and independent of
        # the global RNG that data augmentation and dropout consume.
        self._gen = torch.Generator().manual_seed(int(seed))

    def perturb_batch(self, x: torch.Tensor) -> torch.Tensor:
        """DeepAugment: each configured perturbation on its random fraction of the batch."""
        for perturbation in self.perturbations:
            x, _ = perturbation(x, self._gen)
        return x

    def step(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        x = self.perturb_batch(x)
        if not self.jsd:
            x_aug = augmix_batch(x, self._gen, **self.augmix_options)
            return self.supervised_step(x_aug, y)
        aug1, aug2 = augmix_views(x, self._gen, **self.augmix_options)
        n = len(x)
        logits = self.model(torch.cat([x, aug1, aug2]))
        loss = self.jsd_loss(logits, y)
        out = StepOutput(loss=loss, logits=logits[:n], target=y)
        with torch.no_grad():
            clean_loss = self.jsd_loss.cross_entropy_loss(logits[:n], y)
        out.log("train/clean_loss", clean_loss)
        out.log("train/jsd", loss.detach() - clean_loss)  # jsd_weight * JS(p_clean, p_aug1, p_aug2)
        return out


def _model_stats(net: torch.nn.Module, name: str, cfg: dict) -> list[float] | None:
    """The normalisation the model applies inside (its ``mean``/``std`` buffer; the model config's
    value when the buffer is not readable, e.g. a structure-only build on the meta device)."""
    value = getattr(net, name, None)
    if torch.is_tensor(value) and not value.is_meta:
        return value.detach().cpu().flatten().tolist()
    return cfg.get(name)
