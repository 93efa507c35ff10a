"""Robust accuracy with APGD-CE + APGD-T (pyautoattack, the official AutoAttack code) and
robustness in the union of threat models. ``pgd-adam`` / ``pgd40-adam`` (rws.attacks.pgd_adam, the
adapters paper's PGD-40 with Adam) can be added to, or replace, the APGD attacks.

As in the model-soups paper, the default is 40 iterations per attack (AutoAttack's standard is 100);
for l1 the attacks use AutoAttack's l1 setting (``use_largereps``: start at 3 eps and shrink to eps),
which is what makes l1-APGD reliable. A point counts as robust only if it is classified correctly
clean and every attack fails on it; every returned adversarial point is re-checked against the
threat model, so a perturbation outside the set can never count as a success.
"""

from __future__ import annotations

import re
import warnings
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from rws.attacks.modes import preserve_modes
from rws.attacks.threat import ThreatModel
from rws.weights.functional_soup import predict

EVAL_ATTACKS = ("apgd-ce", "apgd-t")
APGD_ATTACKS = ("apgd-ce", "apgd-t", "apgd-dlr")
# PGD with Adam (rws.attacks.pgd_adam): "pgd-adam" runs n_iter steps, "pgd<k>-adam" (e.g. the
# paper's "pgd40-adam") runs k steps whatever n_iter is.
_PGD_ADAM = re.compile(r"^pgd(\d*)-adam$")


def check_eval_attack(name: str) -> str:
    """``name`` if it is an evaluation attack (apgd-ce, apgd-t, apgd-dlr, pgd-adam, pgd<k>-adam),
    else a ValueError listing them."""
    if name in APGD_ATTACKS or _PGD_ADAM.match(name):
        return name
    raise ValueError(f"unknown evaluation attack {name!r}; expected apgd-ce, apgd-t, apgd-dlr, "
                     f"pgd-adam or pgd<steps>-adam (e.g. pgd40-adam)")


def _run_pgd_adam(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                  n_iter: int, seed: int) -> torch.Tensor | None:
    from rws.attacks.pgd_adam import PGDAdam

    if threat.norm == "l1":
        warnings.warn(f"{name} is a linf/l2 attack; skipped for the l1 threat")
        return None
    steps = int(_PGD_ADAM.match(name).group(1) or n_iter)
    # Its own generator, seeded like APGD's seed: the random start repeats per seed and batch.
    gen = torch.Generator().manual_seed(int(seed))
    return PGDAdam(threat, steps=steps, generator=gen, model_mode="eval")(model, x, y)


def _run_apgd(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
              n_iter: int, seed: int, n_restarts: int, num_classes: int) -> torch.Tensor | None:
    if _PGD_ADAM.match(name):
        return _run_pgd_adam(name, model, x, y, threat, n_iter, seed)
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

    common = dict(n_iter=n_iter, norm=threat.autoattack_norm, eps=threat.eps, seed=seed,
                  n_restarts=n_restarts, device=x.device, verbose=False)
    if name == "apgd-ce":
        atk = APGDAttack(model, loss="ce", **common)
    elif name == "apgd-t":
        # Targeted DLR needs the 4 largest logits; with fewer classes it is undefined.
        if num_classes < 4:
            warnings.warn(f"APGD-T needs >= 4 classes (got {num_classes}); skipped")
            return None
        atk = APGDAttack_targeted(model, n_target_classes=min(9, num_classes - 1), **common)
    elif name == "apgd-dlr":
        atk = APGDAttack(model, loss="dlr", **common)
    else:
        check_eval_attack(name)  # raises, naming the valid attacks
    if threat.norm == "l1":
        atk.use_largereps = True
    return atk.perturb(x, y)


def robust_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                   attacks: Sequence[str] = EVAL_ATTACKS, n_iter: int = 40, seed: int = 0,
                   n_restarts: int = 1, tol: float = 1e-5) -> torch.Tensor:
    """Bool (B,): clean-correct and not broken by any of ``attacks`` within ``threat``.

    The model runs in eval mode (flags restored afterwards). pyautoattack reseeds the global RNG,
    so it runs inside ``fork_rng`` to leave the caller's random stream untouched."""
    threat = ThreatModel.from_config(threat, purpose="eval")
    x, y = x.detach(), y.detach().to(x.device)
    devices = [x.device] if x.device.type == "cuda" else []
    with preserve_modes(model, "eval"), torch.random.fork_rng(devices=devices):
        logits = None
        with torch.no_grad():
            logits = model(x[:1])
        num_classes = logits.shape[1]
        robust = predict(model, x).argmax(1) == y
        for name in attacks:
            idx = robust.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            x_adv = _run_apgd(name, model, x[idx], y[idx], threat, n_iter, seed, n_restarts, num_classes)
            if x_adv is None:
                continue
            delta = x_adv - x[idx]
            valid = (threat.norm_of(delta) <= threat.eps * (1 + tol) + tol) & \
                    (x_adv.flatten(1).amin(1) >= -tol) & (x_adv.flatten(1).amax(1) <= 1 + tol)
            fooled = (predict(model, x_adv).argmax(1) != y[idx]) & valid
            robust[idx[fooled]] = False
    return robust


def union_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threats: Sequence[ThreatModel],
                  **kw: Any) -> torch.Tensor:
    """Bool (B,): robust in every threat model.

    Each threat attacks the full batch and the results are AND-ed, rather than attacking only the
    survivors of the previous threat: APGD's random start depends on the batch it is given, so the
    survivor shortcut could call a point union-robust that the per-norm evaluation breaks."""
    robust = torch.ones(len(x), dtype=torch.bool, device=x.device)
    for t in threats:
        robust &= robust_correct(model, x, y.to(x.device), t, **kw)
    return robust


def _threat_keys(threats: Sequence[ThreatModel]) -> list[str]:
    norms = [t.norm for t in threats]
    return [t.norm if norms.count(t.norm) == 1 else f"{t.norm}@{t.eps:.6g}" for t in threats]


def evaluate_threats(model: nn.Module, data: Iterable[tuple[torch.Tensor, torch.Tensor]] | tuple[torch.Tensor, torch.Tensor],
                     threats: Sequence[ThreatModel | dict], attacks: Sequence[str] = EVAL_ATTACKS,
                     n_iter: int = 40, seed: int = 0, n_max: int | None = None,
                     device: str | torch.device | None = None, batch_size: int = 500,
                     progress: bool = True, **kw: Any) -> dict[str, float]:
    """Clean, per-threat and union robust accuracy over a loader (or an ``(x, y)`` pair).

    Returns ``{"clean", <norm> (or <norm>@<eps> when a norm repeats)..., "union", "n"}``; accuracies
    are fractions in [0, 1]. ``n_max`` caps the number of evaluated points."""
    from tqdm.auto import tqdm

    threats = [ThreatModel.from_config(t, purpose="eval") for t in threats]
    keys = _threat_keys(threats)
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if isinstance(data, (tuple, list)) and len(data) == 2 and torch.is_tensor(data[0]):
        xs, ys = data
        data = [(xs[i:i + batch_size], ys[i:i + batch_size]) for i in range(0, len(xs), batch_size)]
        total = len(xs) if n_max is None else min(len(xs), n_max)
    else:
        total = n_max
    counts = {k: 0 for k in ["clean", *keys, "union"]}
    n = 0
    bar = tqdm(total=total, desc="robust eval", unit="img", disable=not progress)
    for x, y in data:
        if n_max is not None and n >= n_max:
            break
        if n_max is not None:
            x, y = x[: n_max - n], y[: n_max - n]
        x, y = x.to(device), y.to(device)
        with preserve_modes(model, "eval"):
            clean = predict(model, x).argmax(1) == y
        union = clean.clone()
        counts["clean"] += int(clean.sum())
        for key, t in zip(keys, threats):
            r = robust_correct(model, x, y, t, attacks=attacks, n_iter=n_iter, seed=seed, **kw)
            counts[key] += int(r.sum())
            union &= r
        counts["union"] += int(union.sum())
        n += len(y)
        bar.update(len(y))
        bar.set_postfix({k: f"{v / max(n, 1):.3f}" for k, v in counts.items()})
    bar.close()
    out = {k: v / max(n, 1) for k, v in counts.items()}
    out["n"] = n
    return out
