"""Robustness metrics on plain numbers and tensors. Accuracies are fractions in [0, 1].

TA   clean (test) accuracy.
RA   mean corruption accuracy over every (corruption, severity) cell evaluated.
mCE  Hendrycks & Dietterich: CE_c = sum_s E^f_{s,c} / sum_s E^base_{s,c}, averaged over c, when a
     baseline model's results are given; otherwise the unnormalized mean corruption error
     1 - RA, reported as ``mCE_unnormalized`` so the two are never confused.
FP   flip probability over perturbation sequences (Hendrycks & Dietterich, ImageNet-P): noise
     sequences compare every frame with the first, the others consecutive frames.
mFR  mean over perturbations of FP / FP_baseline with a baseline model; otherwise the plain mean
     of FP, reported as "mFR (unnormalised)".
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

Cells = Mapping[tuple[str, int], float]  # (corruption, severity) -> accuracy


def correct(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample bool: is the top-1 prediction right."""
    return logits.argmax(dim=1) == y


def mean_corruption_accuracy(cells: Cells) -> float:
    """RA: the unweighted mean over (corruption, severity) cells."""
    if not cells:
        raise ValueError("no corruption cells to average")
    return float(sum(cells.values()) / len(cells))


def per_corruption_accuracy(cells: Cells) -> dict[str, float]:
    """Mean over severities for each corruption, in first-seen order."""
    groups: dict[str, list[float]] = {}
    for (c, _s), a in cells.items():
        groups.setdefault(c, []).append(a)
    return {c: sum(v) / len(v) for c, v in groups.items()}


def corruption_errors(cells: Cells, baseline: Cells) -> dict[str, float]:
    """CE_c = sum_s (1 - a_{s,c}) / sum_s (1 - b_{s,c}) over the severities both evaluated."""
    out: dict[str, float] = {}
    for c in per_corruption_accuracy(cells):
        sev = [s for (cc, s) in cells if cc == c and (c, s) in baseline]
        if not sev:
            raise ValueError(f"baseline has no results for corruption {c!r}")
        num = sum(1.0 - cells[(c, s)] for s in sev)
        den = sum(1.0 - baseline[(c, s)] for s in sev)
        if den <= 0:
            raise ValueError(f"baseline error on {c!r} is zero; CE is undefined")
        out[c] = num / den
    return out


def mce(cells: Cells, baseline: Cells | None = None) -> tuple[str, float]:
    """Return (metric name, value): ('mCE', mean_c CE_c) with a baseline, else
    ('mCE_unnormalized', 1 - RA)."""
    if baseline:
        ce = corruption_errors(cells, baseline)
        return "mCE", float(sum(ce.values()) / len(ce))
    return "mCE_unnormalized", 1.0 - mean_corruption_accuracy(cells)


def relative_mce(cells: Cells, clean: float, baseline: Cells, baseline_clean: float) -> float:
    """Hendrycks' relative mCE: degradation from clean, normalized by the baseline's degradation."""
    vals = []
    for c in per_corruption_accuracy(cells):
        sev = [s for (cc, s) in cells if cc == c and (c, s) in baseline]
        num = sum(clean - cells[(c, s)] for s in sev)
        den = sum(baseline_clean - baseline[(c, s)] for s in sev)
        if den == 0:
            raise ValueError(f"baseline shows no degradation on {c!r}; relative CE is undefined")
        vals.append(num / den)
    return float(sum(vals) / len(vals))


def union_robust_accuracy(correct_masks: list[torch.Tensor]) -> float:
    """Fraction of samples classified correctly under *every* threat (worst case per sample)."""
    if not correct_masks:
        raise ValueError("no threat results to combine")
    stacked = torch.stack([m.bool().flatten() for m in correct_masks])
    return float(stacked.all(dim=0).float().mean())


def flip_rate(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Fraction of predictions that change between two conditions (e.g. clean vs corrupted)."""
    if reference.shape != other.shape:
        raise ValueError(f"prediction shapes differ: {tuple(reference.shape)} vs {tuple(other.shape)}")
    return float((reference != other).float().mean())


def sequence_flip_rate(preds: torch.Tensor) -> float:
    """Flip probability over perturbation sequences: preds (T, N) are predictions for frames of N
    sequences; the mean over t of P(pred_t != pred_{t-1}). This is the non-noise, stride-1 case
    of ``flip_probability`` (which takes (N, T) and also the noise rule)."""
    if preds.ndim != 2 or preds.shape[0] < 2:
        raise ValueError(f"expected (T>=2, N) predictions, got {tuple(preds.shape)}")
    return float((preds[1:] != preds[:-1]).float().mean())


def flip_indicators(preds: Any, noise: bool, step: int = 1) -> torch.Tensor:
    """Bool (N, C): the comparisons the flip probability counts, for predictions ``preds`` (N, T) on
    N sequences of T frames. Noise sequences: frame j against the first frame, j = 1..T-1 (C = T - 1;
    ``step`` is ignored, as in the reference). Others: frame j against frame j - step, j = step..T-1
    (C = T - step); ``step`` is the reference's difficulty (``step_size`` in ImageNet-P/test.py)."""
    p = torch.as_tensor(preds)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"expected (N, T>=2) predictions, got {tuple(p.shape)}")
    if noise:
        return p[:, 1:] != p[:, :1]
    step = int(step)
    if step < 1 or step >= p.shape[1]:
        raise ValueError(f"step must be in 1..T-1 = 1..{p.shape[1] - 1}, got {step}")
    return p[:, step:] != p[:, :-step]


def flip_probability(preds: Any, noise: bool, step: int = 1) -> float:
    """FP: flips / comparisons over N sequences (preds (N, T) int), see ``flip_indicators``.

    The reference averages per sequence, then over sequences; every sequence has the same number of
    comparisons, so that equals the overall fraction computed here."""
    return float(flip_indicators(preds, noise, step).float().mean())


def mean_flip_rate(fp: Mapping[str, float], baseline: Mapping[str, float] | None = None) -> float:
    """mFR: the mean over perturbations p of FP_p / FP^baseline_p (the paper's baseline is AlexNet),
    or, without a baseline, the unnormalised mean of FP_p (report it as "mFR (unnormalised)")."""
    if not fp:
        raise ValueError("no flip probabilities to average")
    if not baseline:
        return float(sum(fp.values()) / len(fp))
    missing = [p for p in fp if p not in baseline]
    if missing:
        raise ValueError(f"baseline has no flip probability for {missing}")
    zero = [p for p in fp if baseline[p] <= 0]
    if zero:
        raise ValueError(f"baseline flip probability is zero for {zero}; the flip rate is undefined")
    return float(sum(fp[p] / baseline[p] for p in fp) / len(fp))
