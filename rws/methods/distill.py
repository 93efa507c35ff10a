"""Distilling a small robust teacher into a large multi-head student ("Efficiently robustify
pre-trained models"; docs/distill.md).

The student is a pre-trained network (``method.student``: an export, or a timm model with
``model.pretrained=true``) cut into a frozen trunk and per-head copies of its last stages
(``method.heads``, rws/models/multihead.py). Per training batch (pixels in [0, 1], labels):
  - a random fraction ``data_fraction`` (the supplement's a, default 0.5) of the batch is augmented
    (AugMix, optionally Noise2Net first: the augmentation that robustified the teacher);
  - the trunk runs once on clean + augmented images (no gradients reach it);
  - head ``clean``: cross-entropy on the clean images;
  - head ``unclean``: knowledge distillation from the teacher on the augmented images,
    KL(softmax(t/T) ‖ softmax(s/T))·T² (timm's LogitDistillationTask formula), or cross-entropy
    against the labels when ``kd: false`` (the "w/o K.D." ablation);
  - any other head (``combined``): both losses.
The loss is the sum over heads. A single-head student (``heads.names: [combined]``) is the
supplement's single-head ablation. The teacher runs in eval mode under no_grad and is not part
of the checkpoint or the export.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from rws.methods.base import ClassifierModule
from rws.methods.step import StepOutput
from rws.utils.config import to_plain

CLEAN_HEAD, UNCLEAN_HEAD = "clean", "unclean"
AUGMENT_KEYS = ("augmix", "noise2net")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher ‖ student) at temperature T, times T² (the gradient scale of Hinton et al.), batch mean."""
    t = float(temperature)
    return F.kl_div(F.log_softmax(student_logits / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1),
                    reduction="batchmean", log_target=True) * (t * t)


def build_teacher(teacher: Any) -> nn.Module:
    """The teacher: an export directory, or any model spec (a patched or souped model teaches too)."""
    from rws.specs import build

    spec = teacher if isinstance(teacher, Mapping) else {"kind": "export", "path": str(teacher)}
    model = build(dict(spec), device="cpu")
    model.requires_grad_(False)
    return model.eval()


class DistillModule(ClassifierModule):
    def __init__(self, model: dict, teacher: Any = None, student: str | None = None, heads: dict | None = None,
                 temperature: float = 4.0, kd: bool = True, data_fraction: float = 0.5,
                 augment: dict | None = None, seed: int = 0, **kw: Any) -> None:
        from rws.models.multihead import heads_options

        model = to_plain(model)
        heads = heads_options(to_plain(heads))  # checked before anything is built
        if teacher is None and kd:
            raise ValueError("method.teacher: distillation needs a teacher (an export directory or a model spec); "
                             "set method.kd=false for the w/o-KD ablation without one")
        if not 0.0 < float(data_fraction) <= 1.0:
            raise ValueError(f"method.data_fraction must be in (0, 1], got {data_fraction!r}")
        if float(temperature) <= 0:
            raise ValueError(f"method.temperature must be > 0, got {temperature!r}")
        augment = _augment_options(to_plain(augment))
        if student is None and not model.get("pretrained"):
            raise ValueError("method.student: the student starts from a pre-trained network: give an export "
                             "directory (method.student=<run>/export) or a timm model with model.pretrained=true")
        model = {**model, "heads": heads}
        super().__init__(model=model, teacher=to_plain(teacher), student=None if student is None else str(student),
                         heads=heads, temperature=float(temperature), kd=bool(kd),
                         data_fraction=float(data_fraction), augment=augment, seed=int(seed), **kw)
        if student is not None and not any(p.is_meta for p in self.model.parameters()):
            self.model = _student_from_export(model, Path(str(student)))
            self.reset_ema()  # the average restarts at the pre-trained weights
        self.temperature, self.kd, self.data_fraction = float(temperature), bool(kd), float(data_fraction)
        self.augment_cfg = augment
        self._gen = torch.Generator().manual_seed(int(seed))
        # Built at its first use (a structure-only build needs no files); held in a list so it is
        # not a submodule: not trained, not in checkpoints or the export.
        self.teacher_spec = teacher if kd else None
        if kd and not isinstance(teacher, Mapping) and not any(p.is_meta for p in self.model.parameters()):
            if not Path(str(teacher)).exists():
                raise FileNotFoundError(f"method.teacher={teacher}: no such export directory")
        self._teacher: list[nn.Module] = []
        self._augmenter = None

    def on_train_start(self) -> None:
        # The tuned/total parameter counts (the supplement's Table 5) go into metrics.json.
        for key, value in self.model.net.parameter_counts.items():
            self.log(f"student/params_{key}", float(value), on_step=False, on_epoch=True, rank_zero_only=True)

    # ----- the step -----------------------------------------------------------------------------
    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """The augmented view of ``x`` (Noise2Net first when configured, then AugMix)."""
        if self._augmenter is None:
            self._augmenter = make_augmenter(self.augment_cfg, self.model.mean.flatten().tolist(),
                                             self.model.std.flatten().tolist())
        return self._augmenter(x, self._gen)

    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        if not self._teacher:
            self._teacher.append(build_teacher(self.teacher_spec))
        teacher = self._teacher[0]
        if next(teacher.parameters()).device != x.device:
            teacher.to(x.device)
        with torch.no_grad():
            return teacher.eval()(x)

    def unclean_loss(self, logits: torch.Tensor, teacher: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
        return kd_loss(logits, teacher, self.temperature) if self.kd else self.loss(logits, y)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        from rws.models.contracts import head_features, head_names, default_head

        n = len(y)
        k = max(1, round(self.data_fraction * n))
        idx = torch.randperm(n, generator=self._gen)[:k].to(x.device)
        x_aug, y_aug = self.augment(x[idx]), y[idx]
        student = self.model.net  # the MultiHeadStudent inside Normalized
        f = head_features(self.model, torch.cat([x, x_aug]))
        f_clean, f_aug = f[:n], f[n:]
        teacher = self.teacher_logits(x_aug) if self.kd else None
        out_logits: dict[str, torch.Tensor] = {}
        losses: dict[str, torch.Tensor] = {}
        for h in head_names(self.model):
            net = student.head_nets[h]
            if h == CLEAN_HEAD:
                out_logits[h] = net(f_clean)
                losses[h] = self.loss(out_logits[h], y)
            elif h == UNCLEAN_HEAD:
                losses[h] = self.unclean_loss(net(f_aug), teacher, y_aug)
            else:
                both = net(f)
                out_logits[h] = both[:n]
                losses[h] = self.loss(both[:n], y) + self.unclean_loss(both[n:], teacher, y_aug)
        loss = torch.stack(list(losses.values())).sum()
        shown = default_head(self.model)
        logits = out_logits.get(shown)
        if logits is None:  # the default head saw only augmented images: measure it on the clean ones
            with torch.no_grad():
                logits = student.head_nets[shown](f_clean)
        out = StepOutput(loss=loss, logits=logits, target=y)
        for h, value in losses.items():
            out.log(f"train/loss_{h}", value.detach())
        out.log("train/augmented", float(k), n=1)
        return out


def _augment_options(augment: Mapping[str, Any] | None) -> dict[str, Any]:
    augment = dict(augment or {"augmix": {}})
    unknown = sorted(set(augment) - set(AUGMENT_KEYS))
    if unknown:
        raise ValueError(f"method.augment: unknown key(s) {unknown}; keys: {', '.join(AUGMENT_KEYS)} "
                         f"(each a mapping of options, or null)")
    if not any(augment.get(k) is not None for k in AUGMENT_KEYS):
        raise ValueError("method.augment: at least one of augmix / noise2net must be set")
    return {k: (dict(augment[k]) if augment.get(k) is not None else None) for k in AUGMENT_KEYS}


def make_augmenter(cfg: Mapping[str, Any], mean: Any = None, std: Any = None) -> Any:
    """``fn(x, generator) -> augmented x``: Noise2Net on its fraction of the images (when set, with
    the model's normalization), then AugMix on all of them (when set): the teachers' AugMix+DA."""
    from rws.augment.augmix import augmix_batch
    from rws.augment.noise2net import build_perturbation

    noise = build_perturbation("noise2net", cfg.get("noise2net"), mean, std) if cfg.get("noise2net") is not None else None
    augmix = cfg.get("augmix")

    def fn(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if noise is not None:
            x, _ = noise(x, generator)
        if augmix is not None:
            x = augmix_batch(x, generator, **augmix)
        return x

    return fn


def _student_from_export(model_cfg: Mapping[str, Any], student: Path) -> nn.Module:
    """The base network of ``model_cfg`` with the export's weights (strict), cut into heads."""
    from rws.methods.init import load_init
    from rws.models.multihead import MultiHeadStudent
    from rws.models.normalize import Normalized
    from rws.weights.export import build_model

    base = build_model({k: v for k, v in model_cfg.items() if k != "heads"})
    load_init(base, student)
    return Normalized(MultiHeadStudent(base.net, model_cfg["heads"]), mean=base.mean.flatten().tolist(),
                      std=base.std.flatten().tolist())
