"""The LightningModule every training method builds on.

Subclasses change only how a training batch becomes a loss: ``step(x, y) -> StepOutput`` (see
rws/methods/step.py and docs/methods.md). The base class logs, measures accuracy and returns the loss.
Hyperparameters are stored as plain containers so Lightning checkpoints load with
``weights_only=True`` (a DictConfig or nn.Module in ``hyper_parameters`` would not unpickle).
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from timm.utils import ModelEmaV3
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from rws.methods.mixing import BatchMixer, hard_labels
from rws.methods.optim import build_optimizer, check_optimizer_config, lr_factor
from rws.methods.step import StepOutput
from rws.utils.config import to_plain
from rws.weights.export import build_model


class ClassifierModule(pl.LightningModule):
    """Cross-entropy classifier with optimizer/schedule from config and torchmetrics accuracy."""

    def __init__(self, model: dict, optim: dict | None = None, sched: dict | None = None,
                 label_smoothing: float = 0.0, mixup: dict | None = None, ema: dict | None = None,
                 **method_kwargs: Any) -> None:
        super().__init__()
        model, optim, sched = to_plain(model), to_plain(optim or {}), to_plain(sched or {})
        check_optimizer_config(optim)
        mixup, ema = to_plain(mixup) or None, to_plain(ema) or None
        method_kwargs = {k: to_plain(v) for k, v in method_kwargs.items()}
        self.save_hyperparameters({"model": model, "optim": optim, "sched": sched,
                                   "label_smoothing": label_smoothing, "mixup": mixup, "ema": ema,
                                   **method_kwargs})
        self.model_cfg = model
        self.label_smoothing = float(label_smoothing)
        num_classes = int(model["num_classes"])
        # Checked before the network is built: a bad setting fails fast.
        self.mixer = BatchMixer(mixup, num_classes, self.label_smoothing) if mixup else None
        ema_opts = _ema_options(ema)
        self.model: nn.Module = build_model(model)
        # The weight average (timm ModelEmaV3) is a submodule so checkpoints carry it; validation,
        # test and the export use it (the paper evaluates the averaged weights).
        # A structure-only build (meta device: plan checks, parameter counts) has no weights to
        # average, and timm's EMA cannot be made there (it seeds a generator on the model's device).
        meta = any(p.is_meta for p in self.model.parameters())
        self.ema = ModelEmaV3(self.model, **ema_opts) if ema_opts is not None and not meta else None
        if self.ema is not None:  # never trained: no gradients (DDP would wait for them)
            self.ema.requires_grad_(False)
        self.train_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def export_model(self) -> nn.Module:
        """The network to evaluate and export: the weight average when ``method.ema`` is set."""
        return self.ema.module if self.ema is not None else self.model

    def reset_ema(self) -> None:
        """Restart the weight average at the current weights (after ``init=`` loaded them)."""
        if self.ema is not None:
            self.ema.module.load_state_dict(self.model.state_dict())

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy against class indices (label-smoothed) or against the soft targets of a
        mixed batch (method.mixup), which carry their smoothing already."""
        if y.ndim == 2:
            return F.cross_entropy(logits, y)
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        """The method's hook: how a training batch (pixels in [0, 1], labels) becomes a loss.
        Nominal training: cross-entropy on the clean batch."""
        return self.supervised_step(x, y)

    def supervised_step(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        """Label-smoothed cross-entropy of ``self.model(x)`` against ``y``: the building block of
        methods that only change the inputs (corrupt them, attack them)."""
        logits = self.model(x)
        return StepOutput(loss=self.loss(logits, y), logits=logits, target=y)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.mixer is not None:
            x, y = self.mixer(x, y)
        out = self.step(x, y)
        if not isinstance(out, StepOutput):
            raise TypeError(f"{type(self).__name__}.step must return a StepOutput, got {type(out).__name__}")
        for name, (value, n) in out.logs.items():
            self.log(name, value, on_step=False, on_epoch=True, batch_size=n)
        n = len(out.target)
        self.train_acc(out.logits.detach(), hard_labels(out.target))
        self.log("train/loss", out.loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=n)
        self.log("train/acc", self.train_acc, prog_bar=True, on_step=False, on_epoch=True, batch_size=n)
        return out.loss

    def on_fit_start(self) -> None:
        self.seed_generators_for_rank(self.global_rank)

    def seed_generators_for_rank(self, rank: int) -> None:
        """Give this process its own random stream: every private ``torch.Generator`` the method holds
        as an attribute (corruption draws, attack starts, norm sampling, augmentations) is reseeded from
        (its seed, ``rank``). Rank 0 keeps its stream untouched, so single-process runs do not change;
        under DDP the other ranks stop repeating rank 0's draws. Called when fitting starts, the first
        point where the rank is known."""
        if rank == 0:
            return
        # The seeds the generators were built with, kept so a second fit derives the same stream.
        base = self.__dict__.setdefault("_generator_base_seeds", {})
        seen: set[int] = set()
        for name, gen in list(vars(self).items()):
            if isinstance(gen, torch.Generator) and id(gen) not in seen:
                seen.add(id(gen))
                seed = base.setdefault(name, gen.initial_seed())
                gen.manual_seed(rank_seed(seed, rank))

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update(self.model, step=self.global_step)

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], metric: MulticlassAccuracy, prefix: str) -> None:
        x, y = batch
        logits = self.export_model()(x)
        metric(logits, y)
        self.log(f"{prefix}/loss", F.cross_entropy(logits, y), on_epoch=True, batch_size=len(y), sync_dist=True)
        self.log(f"{prefix}/acc", metric, prog_bar=True, on_epoch=True, batch_size=len(y))

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.val_acc, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.test_acc, "test")

    def configure_optimizers(self) -> Any:
        # Frozen parameters (a distillation student's trunk) are left out of the optimizer.
        optimizer = build_optimizer([p for p in self.model.parameters() if p.requires_grad], self.hparams["optim"])
        sched_cfg = self.hparams["sched"]
        if str(sched_cfg.get("name", "none")).lower() == "none" and not sched_cfg.get("warmup_epochs"):
            return optimizer
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        epochs = max(int(self.trainer.max_epochs or 1), 1)
        steps_per_epoch = max(total // epochs, 1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, total, sched_cfg, steps_per_epoch))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def rank_seed(seed: int, rank: int) -> int:
    """The seed of process ``rank``'s private stream: ``seed`` itself for rank 0, else 63 bits of
    sha256("rws-rank-stream:<seed>:<rank>") (distinct per rank, unrelated to nearby seeds' streams)."""
    if rank == 0:
        return int(seed)
    digest = hashlib.sha256(f"rws-rank-stream:{int(seed)}:{int(rank)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


EMA_KEYS = ("decay", "warmup", "update_after_step")


def _ema_options(ema: dict | None) -> dict[str, Any] | None:
    """``method.ema`` ({decay, warmup, update_after_step} or null) as ModelEmaV3 keyword arguments."""
    if not ema:
        return None
    unknown = sorted(set(ema) - set(EMA_KEYS))
    if unknown:
        raise ValueError(f"method.ema has unknown keys {unknown}; valid keys: {', '.join(EMA_KEYS)}")
    decay = float(ema.get("decay", 0.9999))
    if not 0.0 < decay < 1.0:
        raise ValueError(f"method.ema.decay must be in (0, 1), got {decay}")
    return {"decay": decay, "use_warmup": bool(ema.get("warmup", False)),
            "update_after_step": int(ema.get("update_after_step", 0))}
