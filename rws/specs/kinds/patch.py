"""``{kind: patch, base: <spec>, signatures: [{path, alpha}, ...], bn_policy, bn_mix, calibration}``:
RWS, θ = θ_base + Σ α·signature (``rws.weights.patching.Patcher``).

``bn_policy``: null (each signature's stored policy), robust, std, recalibrate or official.
``recalibrate`` re-estimates the patched layers' BN statistics on the ``calibration`` source
(rws.specs.calibration), which it then requires; ``official`` (the official code's ResNet path:
BN/downsample keys averaged over the signatures, then every BN layer re-estimated and mixed with α)
requires it too. ``bn_mix``: affine (default) or convex (see Patcher).
"""

from __future__ import annotations

import math
from typing import Any, Callable

from torch import nn

from rws.specs.calibration import check_source
from rws.specs.context import BuildContext
from rws.specs.registry import SpecError, SpecKind, register_kind
from rws.weights.patching import BN_MIXES, BN_POLICIES, CALIBRATED_POLICIES, Patcher

_WHY = {"recalibrate": "it re-estimates the patched layers' BN statistics",
        "official": "like the official code, it re-estimates every BN layer's statistics on corrupted training data"}
_EXAMPLE = "{split: train, corruption: fog, severity: 5, batches: 10}"


def check_patch(spec: dict[str, Any], where: str) -> None:
    sigs = spec["signatures"]
    if not isinstance(sigs, list) or not sigs:
        raise SpecError(f"{where}.signatures must be a non-empty list of {{path, alpha}}, got {sigs!r}")
    for i, s in enumerate(sigs):
        if not isinstance(s, dict) or "path" not in s:
            raise SpecError(f"{where}.signatures[{i}]: missing key 'path': {s!r}")
        alpha = s.get("alpha", 1.0)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
            raise SpecError(f"{where}.signatures[{i}].alpha must be a finite number, got {alpha!r} "
                            f"(signature {s['path']})")
    bn_policy = spec.get("bn_policy")
    if bn_policy is not None and bn_policy not in BN_POLICIES:
        raise SpecError(f"{where}.bn_policy must be null or one of {', '.join(BN_POLICIES)}, got {bn_policy!r}")
    if spec.get("bn_mix", "affine") not in BN_MIXES:
        raise SpecError(f"{where}.bn_mix must be one of {', '.join(BN_MIXES)}, got {spec['bn_mix']!r}")
    if bn_policy in CALIBRATED_POLICIES:
        if spec.get("calibration") is None:
            raise SpecError(f"{where}: bn_policy: {bn_policy} needs a 'calibration' source ({_WHY[bn_policy]}), "
                            f"e.g. calibration: {_EXAMPLE}")
        check_source(spec["calibration"], f"{where}.calibration")
    elif "calibration" in spec:
        raise SpecError(f"{where}: 'calibration' is only used with bn_policy: recalibrate or official "
                        f"(bn_policy is {bn_policy!r})")


def patch_children(spec: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(".base", spec["base"])]


def build_patch(spec: dict[str, Any], ctx: BuildContext) -> nn.Module:
    """The base, patched permanently (a fresh module; there is nothing to restore to)."""
    # Weight arithmetic on the CPU, as before specs had contexts: the same tensors on every device.
    model = ctx.with_device("cpu").build(spec["base"])
    sigs = [(s["path"], float(s.get("alpha", 1.0))) for s in spec["signatures"]]
    bn_policy = spec.get("bn_policy")
    patcher = Patcher(model, sigs, bn_policy=bn_policy, bn_mix=spec.get("bn_mix", "affine"))
    if bn_policy is None:  # each signature's stored policy: recalibrate/official need the source the spec lacks
        stored = [(sig.name, sig.bn_policy) for sig, _ in patcher.signatures if sig.bn_policy in CALIBRATED_POLICIES]
        if stored:
            name, policy = stored[0]
            raise SpecError(f"signature {name} was extracted with bn_policy={policy}, but the patch spec "
                            f"gives no calibration source; set bn_policy: {policy} with calibration: {{...}} "
                            f"(e.g. {_EXAMPLE}), or bn_policy: std to keep the standard statistics")
    patcher.apply()
    if bn_policy in CALIBRATED_POLICIES:
        model.to(ctx.device)  # forward passes on the context's device
        patcher.recalibrate(ctx.calibration_batches(spec["calibration"]))
    return model


def patch_name(spec: dict[str, Any], name_of: Callable[[Any], str]) -> str:
    return f"{name_of(spec['base'])}+{len(spec.get('signatures') or [])}sig"


KIND = register_kind(SpecKind(name="patch", required=("base", "signatures"), build=build_patch,
                              children=patch_children, check=check_patch, display=patch_name))
