"""Adversarial training in one or several l_p threat models.

Modes (``mode``):
- ``single``: one threat model (Madry et al. 2018); ``attack: fgsm_rs | n_fgsm`` for the cheap
  one-step l_inf variants.
- ``max``: MAX (Tramer & Boneh 2019): attack every threat model, train each example on the
  perturbation with the highest loss.
- ``sat``: SAT: one threat model per batch, uniformly at random.
- ``eat``: E-AT (Croce & Hein 2022): one threat model per batch, so the norm the model is currently
  worst at gets more batches. ``eat_statistic`` says from what:
  ``cumulative`` (the definition, github.com/fra31/robust-finetuning): p_j proportional to 1 - the
  robust accuracy of norm j accumulated since training began, measured by the attack itself (correct at
  every point the attack evaluated, in the attack's model mode, eval by default); uniform until every
  norm has been attacked once. ``method=adversarial_eat`` pairs it with the definition's attack (APGD
  without random start, l1 initial top-k 0.05).
  ``ema``: p_j proportional to an EMA (``eat_momentum``) of the train-mode error of the batch after the
  attack (clamped at 1e-3, starting at 1, i.e. uniform): this project's earlier rule.

Fine-tuning a robust export to another threat model (theta_p -> theta_q) is ``init=<export>`` with
this method and a short schedule; see docs/attacks.md.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from rws.attacks import build_attack, parse_threats
from rws.attacks.modes import preserve_modes
from rws.methods.base import ClassifierModule
from rws.methods.mixing import hard_labels
from rws.methods.step import StepOutput

MODES = ("single", "max", "sat", "eat")
EAT_STATISTICS = ("cumulative", "ema")


class AdversarialModule(ClassifierModule):
    def __init__(self, model: dict, threats: Sequence[Any] | None = None, mode: str = "single",
                 attack: str = "pgd", attack_steps: int = 10, step_size: float | None = None,
                 clean_weight: float = 0.0, dataset_kind: str = "cifar", model_mode: str = "eval",
                 eat_momentum: float = 0.9, eat_statistic: str = "cumulative",
                 random_start: bool | None = None, l1_sparsity: float | None = None, seed: int = 0,
                 **kw: Any) -> None:
        threats = threats if threats is not None else [{"norm": "linf", "eps": None}]
        parsed = parse_threats(list(threats), dataset_kind, "train")
        if mode not in MODES:
            raise ValueError(f"method.mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "single" and len(parsed) != 1:
            raise ValueError(f"mode=single needs exactly one threat, got {len(parsed)}; use max, sat or eat")
        if not 0.0 <= clean_weight <= 1.0:
            raise ValueError(f"clean_weight must be in [0, 1], got {clean_weight}")
        if eat_statistic not in EAT_STATISTICS:
            raise ValueError(f"method.eat_statistic must be one of {', '.join(EAT_STATISTICS)}, got {eat_statistic!r}")
        # Hyperparameters hold the resolved radii as plain dicts so a checkpoint records what ran.
        super().__init__(model=model, threats=[{"norm": t.norm, "eps": t.eps} for t in parsed], mode=mode,
                         attack=attack, attack_steps=int(attack_steps), step_size=step_size,
                         clean_weight=float(clean_weight), dataset_kind=dataset_kind, model_mode=model_mode,
                         eat_momentum=float(eat_momentum), eat_statistic=eat_statistic,
                         random_start=None if random_start is None else bool(random_start),
                         l1_sparsity=None if l1_sparsity is None else float(l1_sparsity), seed=int(seed), **kw)
        self.threats, self.mode, self.clean_weight = parsed, mode, float(clean_weight)
        self.eat_momentum, self.eat_statistic = float(eat_momentum), eat_statistic
        # A private generator: random starts and norm sampling repeat per seed and do not consume
        # the global RNG used by data augmentation.
        self._gen = torch.Generator().manual_seed(int(seed))
        # (Under DDP the base class reseeds it per rank when fitting starts; rank 0 keeps this stream.)
        self.attacks = [build_attack(t, attack=attack, steps=attack_steps, step_size=step_size,
                                     model_mode=model_mode, generator=self._gen, random_start=random_start,
                                     sparsity=l1_sparsity if t.norm == "l1" else None) for t in parsed]
        self.model_mode = model_mode
        norms = [t.norm for t in parsed]
        self.threat_keys = [t.norm if norms.count(t.norm) == 1 else f"{t.norm}_{i}" for i, t in enumerate(parsed)]
        # E-AT statistics, buffers so they resume with a checkpoint. ema: running training robust
        # error per threat, starting at 1 so sampling starts uniform. cumulative: examples the attack
        # left correctly classified / examples attacked, per threat, since training began.
        self.register_buffer("robust_error_ema", torch.ones(len(parsed)), persistent=True)
        self.register_buffer("eat_correct", torch.zeros(len(parsed), dtype=torch.long), persistent=True)
        self.register_buffer("eat_seen", torch.zeros(len(parsed), dtype=torch.long), persistent=True)

    # ----- norm selection -------------------------------------------------------------------
    def sampling_probs(self) -> torch.Tensor:
        """Per-threat probability for the next batch (sat: uniform; eat: proportional to error)."""
        k = len(self.threats)
        if self.mode == "eat" and self.eat_statistic == "ema":
            err = self.robust_error_ema.detach().float().cpu().clamp_min(1e-3)
            return err / err.sum()
        if self.mode == "eat":
            seen = self.eat_seen.detach().cpu().double()
            if bool((seen > 0).all()):
                err = 1.0 - self.eat_correct.detach().cpu().double() / seen
                if float(err.sum()) > 0:  # every norm fully robust so far: nothing to prefer
                    return (err / err.sum()).float()
        return torch.full((k,), 1.0 / k)

    def _pick_threat(self) -> int:
        if self.mode == "single":
            return 0
        return int(torch.multinomial(self.sampling_probs(), 1, generator=self._gen))

    def update_error_ema(self, j: int, error: float) -> None:
        m = self.eat_momentum
        self.robust_error_ema[j] = m * self.robust_error_ema[j] + (1 - m) * float(error)

    def update_eat_counts(self, j: int, n_correct: int, n: int) -> None:
        """E-AT's cumulative statistic: ``n`` more examples attacked in threat ``j``, ``n_correct`` of
        them still classified correctly by the attack's own evaluation.

        Under DDP the increments of all ranks are summed (one small all-reduce per step, which every
        rank makes once per training step), so every rank holds the same counts over all ranks' batches
        and draws its own norm from them with its own generator. (DDP also broadcasts rank 0's buffers
        before each forward, which without the sum would drop the other ranks' batches.)"""
        inc = torch.zeros(2, len(self.threats), dtype=torch.long, device=self.eat_seen.device)
        inc[0, j], inc[1, j] = int(n_correct), int(n)
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            torch.distributed.all_reduce(inc)
        self.eat_correct += inc[0]
        self.eat_seen += inc[1]

    def eat_errors(self) -> torch.Tensor:
        """The per-threat robust error E-AT samples from (ema: the EMA; cumulative: 1 - accuracy so
        far, NaN for a threat not attacked yet)."""
        if self.eat_statistic == "ema":
            return self.robust_error_ema.detach().clone()
        seen = self.eat_seen.detach().cpu().double()  # float64 on the CPU (MPS has none)
        err = 1.0 - self.eat_correct.detach().cpu().double() / seen.clamp_min(1)
        err = torch.where(seen > 0, err, torch.full_like(err, float("nan")))
        return err.float().to(self.eat_seen.device)

    def _attack_correct(self, j: int, x_adv: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Whether the attack in threat ``j`` left each example correctly classified: its own record
        (``last_correct``: correct at every point it evaluated) when it keeps one, else the attacked
        point scored in the attack's model mode without grad."""
        correct = getattr(self.attacks[j], "last_correct", None)
        if correct is not None and len(correct) == len(labels):
            return correct
        with torch.no_grad(), preserve_modes(self.model, self.model_mode):
            return self.model(x_adv).argmax(1) == labels

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Checkpoints written before the cumulative E-AT counters existed resume with fresh ones.
        state = checkpoint.get("state_dict")
        if state is not None:
            for name in ("eat_correct", "eat_seen"):
                state.setdefault(name, getattr(self, name).detach().clone())
        super().on_load_checkpoint(checkpoint)

    def _loss_per_threat(self, xs: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        # Scored in the attack's model mode without grad: choosing the worst norm must not touch
        # BN statistics or parameter gradients.
        with torch.no_grad(), preserve_modes(self.model, self.model_mode):
            return torch.stack([F.cross_entropy(self.model(xa), y, reduction="none") for xa in xs], 1)

    # ----- the step ---------------------------------------------------------------------------
    def adversarial_batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_adv, threat index per example): max attacks in every threat model and keeps each
        example's highest-loss perturbation; single/sat/eat attack the whole batch in one threat."""
        labels = hard_labels(y)  # attacks take class indices; y may be a mixed batch's soft targets
        if self.mode == "max":
            xs = [atk(self.model, x, labels) for atk in self.attacks]
            worst = self._loss_per_threat(xs, y).argmax(1)
            x_adv = torch.stack(xs, 1)[torch.arange(len(y), device=x.device), worst]
            return x_adv, worst
        j = self._pick_threat()
        ids = torch.full((len(y),), j, device=x.device, dtype=torch.long)
        x_adv = self.attacks[j](self.model, x, labels)
        if self.mode == "eat" and self.eat_statistic == "cumulative":
            self.update_eat_counts(j, int(self._attack_correct(j, x_adv, labels).sum()), len(labels))
        return x_adv, ids

    def step(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        x_adv, ids = self.adversarial_batch(x, y)
        out = self.supervised_step(x_adv, y)
        if self.clean_weight > 0:
            clean = self.loss(self.model(x), y)
            out.log("train/clean_loss", clean, len(y))
            out.loss = (1 - self.clean_weight) * out.loss + self.clean_weight * clean
        self._record_threat_stats(out, ids)
        return out

    def _record_threat_stats(self, out: StepOutput, ids: torch.Tensor) -> None:
        """Robust accuracy per threat model (and the E-AT error update it feeds); for max/sat/eat
        the fraction of examples each threat trained on; for eat the running errors."""
        correct = (out.logits.detach().argmax(1) == hard_labels(out.target)).float()
        for j, key in enumerate(self.threat_keys):
            sel = ids == j
            n = int(sel.sum())
            if n == 0:
                continue
            acc = correct[sel].mean()
            out.log(f"train/adv_acc_{key}", acc, n)
            if self.mode == "eat" and self.eat_statistic == "ema":
                self.update_error_ema(j, 1.0 - float(acc))
        if self.mode in ("max", "sat", "eat"):
            for j, key in enumerate(self.threat_keys):
                out.log(f"train/frac_{key}", (ids == j).float().mean(), len(ids))
            if self.mode == "eat":
                # A copy: the statistics keep moving after this step. Cumulative: only threats
                # attacked so far have an error.
                errors = self.eat_errors()
                for j, key in enumerate(self.threat_keys):
                    if not torch.isnan(errors[j]):
                        out.log(f"train/eat_err_{key}", errors[j])
