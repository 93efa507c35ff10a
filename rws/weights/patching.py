"""Patch signatures into a live model in place, and take them off again bit-exactly.

    θ = θ_std + Σ_c α_c · RWS_c                       (weights, biases, BN affine of kept layers)

BN running statistics of kept layers follow ``bn_policy``:
  * ``robust``: a convex-style mix of the standard and robust statistics,
        stat = (1 − Σ_c α_c) · stat_std + Σ_c α_c · stat_robust_c
    (one signature: (1 − α)·std + α·robust; α=1 gives the robust model's statistics). The sum runs
    over the signatures that carry that key. running_var is clamped at 0 when Σα > 1 extrapolates.
    ``bn_mix="convex"`` instead divides the robust weights by Σα when Σα > 1 (std weight 0): composing
    several signatures at α=1 then averages their statistics rather than extrapolating past any model
    (measured at CPU scale: the affine rule collapsed 3-5 composed signatures to chance).
  * ``std``: leave the standard model's statistics alone.
  * ``recalibrate``: leave them for ``Patcher.recalibrate(batches)`` / ``recalibrate_patched_bn``.
  * ``official``: the official code's ResNet path (model_patching.py). The signature's ``official``
    keys (names containing ``bn`` or ``downsample``, whole network: BN γ/β/running stats and the
    downsample conv weights; they are not in its RWS) are set to the plain mean of the composed
    signatures' stored robust values, whatever the α. ``Patcher.recalibrate(batches)`` then
    re-estimates the running statistics of EVERY BN layer (cumulative average, momentum=None) and,
    with A = Σ_c α_c (the official code's one α, which it splits as α/n over its n models),
        stat = (1 − A) · stat_after_apply + A · stat_reestimated   if A < 1, else stat_reestimated
    (running_var clamped at 0 if A < 0 extrapolates). Every signature of the Patcher must then use
    ``official``; a signature extracted with it refuses ``robust``/``recalibrate`` (its BN is not in its RWS).
  * ``None`` (Patcher default): each signature's own stored policy.
``num_batches_tracked`` is never touched.

``Patcher.apply`` backs up only the touched tensors first (shallow layers: a few MB at most; the
backup buffers are kept and reused across apply/remove cycles) plus every buffer of the model (BN
statistics: a training-mode forward while patched updates those of every BN layer), so ``remove``
copies them back and the model is bit-for-bit the standard model again.

``apply`` is all or nothing: every signature is checked (fit, finite values, α finite and
representable in the weights' dtype) before anything is touched, and if adding them still fails or
gives non-finite weights, the model is restored before the error propagates.
"""

from __future__ import annotations

import math
import os
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from rws.errors import UserError
from rws.weights.bn import bn_modules, recalibrate
from rws.weights.signature_io import Signature, load_signature

BN_POLICIES = ("robust", "std", "recalibrate", "official")
# Policies whose statistics come from forward passes over calibration data (a patch spec needs a source).
CALIBRATED_POLICIES = ("recalibrate", "official")
BN_MIXES = ("affine", "convex")
SigLike = Signature | str | os.PathLike


class SignatureMismatchError(UserError):
    """A signature does not fit the model (missing key, wrong shape, other architecture)."""


def _as_signature(sig: SigLike) -> Signature:
    return sig if isinstance(sig, Signature) else load_signature(sig)


def check_signature_fits(model_state: Mapping[str, torch.Tensor], sig: Signature) -> None:
    """Raise SignatureMismatchError unless every key ``sig`` patches exists in ``model_state`` with the
    same shape. Only the kept keys must match: a signature from another dataset (other head) is fine."""
    arch = f" (signature architecture: {sig.arch_name or '?'})"
    for k, v in list(sig.rws.items()) + list(sig.stats.items()) + list(sig.official.items()):
        if k not in model_state:
            raise SignatureMismatchError(
                f"{sig.name}: parameter {k!r} does not exist in the model{arch}; is this a signature "
                f"for a different architecture?")
        if tuple(model_state[k].shape) != tuple(v.shape):
            raise SignatureMismatchError(
                f"{sig.name}: parameter {k!r} has shape {tuple(v.shape)} in the signature but "
                f"{tuple(model_state[k].shape)} in the model{arch}")
        if k.endswith("num_batches_tracked"):
            raise SignatureMismatchError(f"{sig.name}: {k!r} must never be patched")


class Patcher:
    """Apply/remove one or many signatures in place; also a context manager.

    >>> with Patcher(model, [(sig_fog, 1.0), (sig_snow, 0.5)]):
    ...     logits = model(x)          # patched
    >>> # here model is bit-exactly the standard model again
    """

    def __init__(self, model: nn.Module, signatures: Sequence[tuple[SigLike, float]] | Sequence[SigLike],
                 bn_policy: str | None = None, bn_mix: str = "affine") -> None:
        if bn_policy is not None and bn_policy not in BN_POLICIES:
            raise ValueError(f"bn_policy must be one of {BN_POLICIES} or None, got {bn_policy!r}")
        if bn_mix not in BN_MIXES:
            raise ValueError(f"bn_mix must be one of {BN_MIXES}, got {bn_mix!r}")
        self.bn_mix = bn_mix
        self.model = model
        self.bn_policy = bn_policy
        self.signatures: list[tuple[Signature, float]] = []
        for item in signatures:
            sig, alpha = item if isinstance(item, tuple) else (item, 1.0)
            sig = _as_signature(sig)
            self.signatures.append((sig, float(alpha)))
        # Once, where the signatures come in (apply may run many times): finite values, and whether
        # Σ|α|·max|signature| comes within 1/1000 of the largest value of the weights' dtype (x2:
        # the BN mix also scales the std statistics). Below that, adding cannot make finite weights
        # infinite and apply skips the per-tensor finiteness pass (it would cost more than the patch).
        reach = sum(abs(alpha) * _check_finite(sig) for sig, alpha in self.signatures)
        dtypes = {p.dtype for p in (*model.parameters(), *model.buffers()) if p.is_floating_point()}
        limit = min((torch.finfo(d).max for d in dtypes), default=float("inf")) * 1e-3
        self._may_overflow = bool(reach * 2 >= limit)
        self._buffer_names = [k for k, _ in model.named_buffers()]
        self._saved: dict[str, torch.Tensor] | None = None
        # Backup buffers outlive remove(): re-allocating them on every apply costs page faults that
        # dominate a patch/unpatch cycle (large tensors are mmap'ed fresh each time).
        self._buffers: dict[str, torch.Tensor] = {}

    @property
    def applied(self) -> bool:
        return self._saved is not None

    def _policy(self, sig: Signature) -> str:
        return self.bn_policy or sig.bn_policy or "robust"

    def _live_state(self) -> dict[str, torch.Tensor]:
        # Parameters and buffers by name, sharing storage with the model (no copies).
        state = {k: p.data for k, p in self.model.named_parameters()}
        state.update({k: b for k, b in self.model.named_buffers() if b is not None})
        return state

    def _stash(self, key: str, live: torch.Tensor) -> torch.Tensor:
        buf = self._buffers.get(key)
        if buf is None or buf.shape != live.shape or buf.dtype != live.dtype or buf.device != live.device:
            buf = self._buffers[key] = live.clone()
        else:
            buf.copy_(live)
        return buf

    def touched_keys(self) -> list[str]:
        keys: dict[str, None] = {}
        for sig, _ in self.signatures:
            keys.update(dict.fromkeys(sig.rws))
            if self._policy(sig) in ("robust", "recalibrate"):
                keys.update(dict.fromkeys(sig.stats))
            if self._policy(sig) == "official":
                keys.update(dict.fromkeys(sig.official))
        return list(keys)

    @property
    def official(self) -> bool:
        """Whether the signatures are patched with bn_policy=official (then all of them are)."""
        return any(self._policy(sig) == "official" for sig, _ in self.signatures)

    @property
    def official_alpha(self) -> float:
        """A = Σ_c α_c, the α of the official statistics mix (see the module docstring)."""
        return sum(alpha for _, alpha in self.signatures)

    def check(self, state: Mapping[str, torch.Tensor] | None = None) -> None:
        """Everything ``apply`` needs, without touching the model: each signature fits, its α is
        finite and fits the dtype of the weights it scales (its values were checked on loading)."""
        state = self._live_state() if state is None else state
        for sig, alpha in self.signatures:
            check_signature_fits(state, sig)
            if self.bn_policy == "robust" and not sig.stats and _stat_keys_of(self.model, sig.rws):
                raise SignatureMismatchError(
                    f"{sig.name}: bn_policy=robust but the signature carries no BN running statistics "
                    f"(it was extracted with bn_policy={sig.bn_policy!r}); use bn_policy=std or re-extract")
            policy = self._policy(sig)
            if policy == "official" and not sig.official and sig.bn_policy != "official":
                raise SignatureMismatchError(
                    f"{sig.name}: bn_policy=official but the signature carries no raw BN/downsample values "
                    f"(it was extracted with bn_policy={sig.bn_policy!r}); re-extract it with bn_policy=official")
            if sig.bn_policy == "official" and policy in ("robust", "recalibrate"):
                raise SignatureMismatchError(
                    f"{sig.name}: extracted with bn_policy=official, so its BN and downsample values are stored "
                    f"raw for averaging, not as RWS; bn_policy={policy} would leave them out. Use bn_policy=official "
                    f"(or std to keep the standard BN), or re-extract with bn_policy={policy}")
            if self.official and policy != "official":
                raise SignatureMismatchError(
                    f"{sig.name}: bn_policy={policy}, but another signature uses bn_policy=official, which "
                    f"averages the BN of every composed signature; compose official signatures only, or pass "
                    f"one bn_policy for all")
            if not math.isfinite(alpha):
                raise ValueError(f"{sig.name}: alpha is {alpha}, expected a finite number")
            for k in list(sig.rws) + list(sig.stats):
                dtype = state[k].dtype
                if dtype.is_floating_point and abs(alpha) > torch.finfo(dtype).max:
                    raise ValueError(f"{sig.name}: alpha {alpha:g} does not fit {dtype} weights "
                                     f"(largest {torch.finfo(dtype).max:g})")

    @torch.no_grad()
    def apply(self) -> nn.Module:
        if self.applied:
            raise RuntimeError("signatures already applied; call remove() first")
        state = self._live_state()
        self.check(state)
        touched = self.touched_keys()
        seen = set(touched)
        buffers = [k for k in self._buffer_names if k in state and k not in seen]
        self._saved = {k: self._stash(k, state[k]) for k in (*touched, *buffers)}
        try:
            self._add(state)
            bad = [k for k in touched if state[k].is_floating_point() and not bool(torch.isfinite(state[k]).all())
                   ] if self._may_overflow else []
            if bad:
                names = ", ".join(f"{sig.name} (alpha {alpha:g})" for sig, alpha in self.signatures)
                raise ValueError(f"patching {names} gives non-finite weights in {bad[0]!r}; use smaller alphas")
        except BaseException:
            self.remove()  # all or nothing: the model is the standard model again
            raise
        return self.model

    def _add(self, state: dict[str, torch.Tensor]) -> None:
        # Σα per stat key, and the robust sum, before touching anything: the mix needs pristine std stats.
        stat_alpha: dict[str, float] = {}
        stat_sum: dict[str, torch.Tensor] = {}
        official_sum: dict[str, torch.Tensor] = {}
        official_n: dict[str, int] = {}
        for sig, alpha in self.signatures:
            for k, v in sig.rws.items():
                state[k].add_(v.to(state[k].device, state[k].dtype), alpha=alpha)
            if self._policy(sig) == "official":  # plain mean, not weighted by α (as the official code)
                for k, v in sig.official.items():
                    v64 = v.to(state[k].device, torch.float64)
                    official_sum[k] = official_sum[k] + v64 if k in official_sum else v64
                    official_n[k] = official_n.get(k, 0) + 1
            if self._policy(sig) == "robust":
                for k, v in sig.stats.items():
                    stat_alpha[k] = stat_alpha.get(k, 0.0) + alpha
                    term = v.to(state[k].device, torch.float64) * alpha
                    stat_sum[k] = stat_sum[k] + term if k in stat_sum else term
        for k, total in stat_alpha.items():
            if self.bn_mix == "convex" and total > 1.0:
                mixed = stat_sum[k] / total
            else:
                mixed = (1.0 - total) * self._saved[k].double() + stat_sum[k]
            if k.endswith("running_var"):
                mixed = mixed.clamp_min(0.0)
            state[k].copy_(mixed.to(state[k].dtype))
        for k, total in official_sum.items():
            state[k].copy_((total / official_n[k]).to(state[k].dtype))

    @torch.no_grad()
    def remove(self) -> nn.Module:
        if self._saved is None:
            raise RuntimeError("nothing to remove: signatures are not applied")
        state = self._live_state()
        for k, v in self._saved.items():
            state[k].copy_(v)
        self._saved = None
        return self.model

    def recalibrate(self, batches: Iterable[Any]) -> nn.Module:
        """Re-estimate the kept BN layers' running stats on ``batches`` (after ``apply``);
        ``remove`` still restores the standard statistics. With bn_policy=official: every BN layer's,
        then mixed with the statistics ``apply`` set (see the module docstring)."""
        if not self.applied:
            raise RuntimeError("apply() before recalibrate()")
        if self.official:
            return recalibrate_official_bn(self.model, batches, self.official_alpha)
        keys = [k for sig, _ in self.signatures for k in list(sig.rws) + list(sig.stats)]
        missing = [k for k in _stat_keys_of(self.model, keys) if k not in self._saved]
        if missing:  # signatures without stored stats: save them now so remove() restores them
            state = self._live_state()
            self._saved.update({k: self._stash(k, state[k]) for k in missing})
        return recalibrate_patched_bn(self.model, batches, keys)

    def __enter__(self) -> nn.Module:
        return self.apply()

    def __exit__(self, *exc: object) -> None:
        if self.applied:
            self.remove()


def _check_finite(sig: Signature) -> float:
    """The largest |value| of the signature; raises if any value is NaN or inf."""
    amax = 0.0
    for k, v in list(sig.rws.items()) + list(sig.stats.items()) + list(sig.official.items()):
        if not v.is_floating_point() or v.numel() == 0:
            continue
        m = float(v.abs().amax())
        if not math.isfinite(m):
            raise SignatureMismatchError(f"{sig.name}: {k!r} holds NaN or inf values; the signature is damaged, "
                                         f"re-extract it")
        amax = max(amax, m)
    return amax


def _bn_modules_for(model: nn.Module, keys: Iterable[str]) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """BN modules that own one of ``keys`` (weight, bias or running stats)."""
    owners = {k.rsplit(".", 1)[0] for k in keys}
    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and name in owners and m.track_running_stats}


def _stat_keys_of(model: nn.Module, keys: Iterable[str]) -> list[str]:
    return [f"{n}.{s}" for n in _bn_modules_for(model, keys) for s in ("running_mean", "running_var")]


@torch.no_grad()
def recalibrate_official_bn(model: nn.Module, batches: Iterable[Any], alpha: float) -> nn.Module:
    """The official code's ResNet-path statistics: re-estimate the running stats of every BN layer
    of ``model`` (reset, cumulative average with momentum=None, ``num_batches_tracked`` kept), then,
    for ``alpha`` < 1, set them to ``(1 − alpha)·before + alpha·re-estimated``, where ``before`` are
    the statistics the model had (after a bn_policy=official apply: the averaged robust ones)."""
    bns = bn_modules(model)
    before = {m: (m.running_mean.to(torch.float64, copy=True), m.running_var.to(torch.float64, copy=True))
              for m in bns}
    recalibrate(model, batches, modules=bns)
    if alpha < 1.0:
        for m, (mean, var) in before.items():
            m.running_mean.copy_(((1.0 - alpha) * mean + alpha * m.running_mean.double()).to(m.running_mean.dtype))
            mixed = ((1.0 - alpha) * var + alpha * m.running_var.double()).clamp_min(0.0)
            m.running_var.copy_(mixed.to(m.running_var.dtype))
    return model


def recalibrate_patched_bn(model: nn.Module, batches: Iterable[Any], keys: Iterable[str]) -> nn.Module:
    """Reset and re-estimate the running stats of the BN layers owning ``keys`` only, keeping
    ``num_batches_tracked`` so removing a patch stays bit-exact (see ``rws.weights.bn.recalibrate``)."""
    return recalibrate(model, batches, modules=_bn_modules_for(model, keys).values())
