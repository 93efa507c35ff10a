"""Head-selection rules of "Efficiently robustify pre-trained models" (docs/distill.md, "Inference").

The supplement names the ingredients (Monte-Carlo dropout uncertainty U_mc, the KL divergence
between the heads' predictive distributions, N = 10 passes through the dropout layers only) and
not the formula; this is our reconstruction, every constant a rule option:

    p̄_h    = mean over the S passes of head h's softmax
    U_mc    = uncertainty of the clean head: entropy of p̄_clean ("entropy", default) or the
              mutual information H(p̄_clean) − mean_s H(p_clean,s) ("mutual_info")
    KL      = KL(p̄_clean ‖ p̄_unclean)
    score   = w_uncertainty · U_mc / u_ref + w_kl · KL / kl_ref
    head    = unclean if score > threshold, else clean; with ``combined_threshold`` set (and a
              combined head), scores in (combined_threshold, threshold] go to the combined head.

A clean input the clean head knows gives a confident clean head that agrees with the unclean
head: low score. A shifted input makes the clean head unsure and the heads disagree: high score.
``u_ref``/``kl_ref`` (None: 1) put both terms on one scale; ``calibrate`` sets them to their mean on clean
held-out data and the thresholds to quantiles (``quantile``, ``combined_quantile``) of the score
there, so ``quantile: 0.9`` sends about 10 % of clean inputs to the unclean head by construction.

Ablations (Table 1 of the supplement): ``w_kl: 0`` (w/o KLD), ``w_uncertainty: 0`` (w/o U_mc), and
the rule ``max_logit`` (the more confident of the clean and unclean heads answers).
"""

from __future__ import annotations

from typing import Any

import torch

from rws.models.contracts import register_selection_rule

UNCERTAINTIES = ("entropy", "mutual_info")
_TINY = 1e-12


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp_min(_TINY).log()).sum(-1)


def uncertainty(probs_head: torch.Tensor, kind: str = "entropy") -> torch.Tensor:
    """(B,) U_mc of one head from its (S, B, C) pass probabilities."""
    if kind not in UNCERTAINTIES:
        raise ValueError(f"select.uncertainty must be one of {', '.join(UNCERTAINTIES)}, got {kind!r}")
    mean_entropy = _entropy(probs_head.mean(0))
    if kind == "entropy":
        return mean_entropy
    return mean_entropy - _entropy(probs_head).mean(0)


def kl_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """(B,) KL(p ‖ q) of (B, C) distributions."""
    return (p * (p.clamp_min(_TINY).log() - q.clamp_min(_TINY).log())).sum(-1)


def _index(heads: tuple[str, ...], name: str, option: str) -> int:
    if name not in heads:
        raise ValueError(f"select.{option}: {name!r} is not a head of the model (heads: {', '.join(heads)})")
    return heads.index(name)


def score_terms(probs: torch.Tensor, heads: tuple[str, ...], uncertainty_kind: str = "entropy",
                clean_head: str = "clean", unclean_head: str = "unclean") -> tuple[torch.Tensor, torch.Tensor]:
    """(U_mc, KL), each (B,), from (S, H, B, C) pass probabilities."""
    pc = probs[:, _index(heads, clean_head, "clean_head")]
    pu = probs[:, _index(heads, unclean_head, "unclean_head")]
    return uncertainty(pc, uncertainty_kind), kl_divergence(pc.mean(0), pu.mean(0))


def selection_score(probs: torch.Tensor, heads: tuple[str, ...], w_uncertainty: float = 1.0, w_kl: float = 1.0,
                    uncertainty: str = "entropy", u_ref: float | None = None, kl_ref: float | None = None,
                    clean_head: str = "clean", unclean_head: str = "unclean") -> torch.Tensor:
    """(B,) the shift score; each weight scales only its own term."""
    u, kl = score_terms(probs, heads, uncertainty, clean_head, unclean_head)
    return combine_terms(u, kl, w_uncertainty, w_kl, u_ref, kl_ref)


def combine_terms(u: torch.Tensor, kl: torch.Tensor, w_uncertainty: float = 1.0, w_kl: float = 1.0,
                  u_ref: float | None = None, kl_ref: float | None = None) -> torch.Tensor:
    """w_uncertainty · U_mc / u_ref + w_kl · KL / kl_ref (a reference of None is 1)."""
    score = torch.zeros_like(u)
    if w_uncertainty:
        score = score + float(w_uncertainty) * u / max(float(u_ref or 1.0), _TINY)
    if w_kl:
        score = score + float(w_kl) * kl / max(float(kl_ref or 1.0), _TINY)
    return score


def mc_dropout_kl(probs: torch.Tensor, heads: tuple[str, ...], w_uncertainty: float = 1.0, w_kl: float = 1.0,
                  uncertainty: str = "entropy", threshold: float | None = None,
                  combined_threshold: float | None = None, u_ref: float | None = None,
                  kl_ref: float | None = None,
                  quantile: float = 0.9, combined_quantile: float | None = None,
                  clean_head: str = "clean", unclean_head: str = "unclean",
                  combined_head: str = "combined") -> torch.Tensor:
    """(B,) head index: unclean when the score passes ``threshold``, clean below, combined in the band
    (``quantile``/``combined_quantile`` are read by ``calibrate_mc_dropout_kl`` only)."""
    if threshold is None:
        raise ValueError("rule mc_dropout_kl needs a threshold: give select.threshold, or a "
                         "select.calibration source (e.g. {split: val, batches: 4}) to set it from clean data")
    if not w_uncertainty and not w_kl:
        raise ValueError("rule mc_dropout_kl: w_uncertainty and w_kl are both 0; nothing to score")
    score = selection_score(probs, heads, w_uncertainty, w_kl, uncertainty, u_ref, kl_ref, clean_head, unclean_head)
    clean, unclean = _index(heads, clean_head, "clean_head"), _index(heads, unclean_head, "unclean_head")
    choice = torch.where(score > float(threshold), unclean, clean)
    if combined_threshold is not None:
        band = (score > float(combined_threshold)) & (score <= float(threshold))
        choice = torch.where(band, _index(heads, combined_head, "combined_head"), choice)
    return choice


def calibrate_mc_dropout_kl(probs: torch.Tensor, heads: tuple[str, ...], **options: Any) -> dict[str, Any]:
    """Reference scales (means of U_mc and KL) and thresholds (quantiles of the score) from the passes
    ``probs`` (S, H, N, C) over clean held-out examples. Explicit ``threshold``/``u_ref``/``kl_ref``
    options are kept as given."""
    kind = options.get("uncertainty", "entropy")
    clean_head, unclean_head = options.get("clean_head", "clean"), options.get("unclean_head", "unclean")
    u, kl = score_terms(probs, heads, kind, clean_head, unclean_head)
    out: dict[str, Any] = {}
    for key, values in (("u_ref", u), ("kl_ref", kl)):
        if options.get(key) is None:
            out[key] = max(float(values.mean()), _TINY)
    merged = {**options, **out}
    score = combine_terms(u, kl, merged.get("w_uncertainty", 1.0), merged.get("w_kl", 1.0), merged.get("u_ref"),
                          merged.get("kl_ref"))
    q = float(options.get("quantile", 0.9))
    if not 0.0 < q < 1.0:
        raise ValueError(f"select.quantile must be in (0, 1), got {q}")
    if options.get("threshold") is None:
        out["threshold"] = float(torch.quantile(score.double(), q))
    cq = options.get("combined_quantile")
    if cq is not None and options.get("combined_threshold") is None:
        if not 0.0 < float(cq) < q:
            raise ValueError(f"select.combined_quantile must be in (0, quantile={q}), got {cq}")
        out["combined_threshold"] = float(torch.quantile(score.double(), float(cq)))
    return out


def max_logit(probs: torch.Tensor, heads: tuple[str, ...], clean_head: str = "clean",
              unclean_head: str = "unclean") -> torch.Tensor:
    """The more confident of the clean and unclean heads (highest mean-softmax maximum; a tie goes to
    clean): the supplement's "Ours (max logit)" ablation, in probabilities since rules see those."""
    clean, unclean = _index(heads, clean_head, "clean_head"), _index(heads, unclean_head, "unclean_head")
    conf = probs.mean(0).amax(-1)
    return torch.where(conf[unclean] > conf[clean], unclean, clean)


register_selection_rule("mc_dropout_kl", mc_dropout_kl, calibrate=calibrate_mc_dropout_kl)
register_selection_rule("max_logit", max_logit)
