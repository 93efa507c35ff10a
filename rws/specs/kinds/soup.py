"""``{kind: soup, members: [{spec: <spec>, weight}, ...], bn: combine|recalibrate, affine: true}``:
θ = Σ w·θ_member over members of one architecture (``rws.weights.soups``).

Members are any specs (exports, patches, other soups): their state dicts come from
``BuildContext.state_dict`` (exports are read, not built). ``bn: recalibrate`` re-estimates every BN
layer's statistics on the ``calibration`` source (rws.specs.calibration); without one, on
``calibration_batches`` (default 20) plain training batches of the context's datamodule.
"""

from __future__ import annotations

import math

from typing import Any, Callable

from torch import nn

from rws.specs.calibration import check_source
from rws.specs.context import BuildContext
from rws.specs.registry import SpecError, SpecKind, register_kind
from rws.weights.export import load_model_config
from rws.weights.soups import SOUP_BN_POLICIES, check_soup_members, load_soup_state, soup_state_dicts

# Batches a `bn: recalibrate` soup without a calibration source uses (the evaluation default).
DEFAULT_CALIBRATION_BATCHES = 20


def check_soup(spec: dict[str, Any], where: str) -> None:
    members = spec["members"]
    if not isinstance(members, list) or not members:
        raise SpecError(f"{where}.members must be a non-empty list of {{spec, weight}}, got {members!r}")
    for i, m in enumerate(members):
        if not isinstance(m, dict) or "spec" not in m:
            raise SpecError(f"{where}.members[{i}]: missing key 'spec': {m!r}")
        w = m.get("weight", 0.0)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise SpecError(f"{where}.members[{i}].weight must be a finite number, got {w!r}")
    bn = spec.get("bn", "combine")
    if bn not in SOUP_BN_POLICIES:
        raise SpecError(f"{where}.bn must be one of {', '.join(SOUP_BN_POLICIES)}, got {bn!r}")
    if bn != "recalibrate":
        extra = [k for k in ("calibration", "calibration_batches") if k in spec]
        if extra:
            raise SpecError(f"{where}: {', '.join(extra)} only apply to bn: recalibrate (bn is {bn!r})")
        return
    if "calibration" in spec:
        if "calibration_batches" in spec:
            raise SpecError(f"{where}: give 'calibration' (a source with its own 'batches') or "
                            f"'calibration_batches', not both")
        check_source(spec["calibration"], f"{where}.calibration")
    else:
        n = spec.get("calibration_batches", DEFAULT_CALIBRATION_BATCHES)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise SpecError(f"{where}.calibration_batches must be a positive integer, got {n!r}")


def soup_calibration(spec: dict[str, Any]) -> dict[str, Any]:
    """The calibration source of a ``bn: recalibrate`` soup. The legacy ``calibration_batches: N``
    means N plain training batches of the default datamodule at its batch size."""
    if "calibration" in spec:
        return spec["calibration"]
    return {"split": "train", "batches": spec.get("calibration_batches", DEFAULT_CALIBRATION_BATCHES)}


def soup_children(spec: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(f".members[{i}].spec", m["spec"]) for i, m in enumerate(spec["members"])]


def build_soup(spec: dict[str, Any], ctx: BuildContext) -> nn.Module:
    from rws.specs.core import spec_name

    members = spec["members"]
    specs = [m["spec"] for m in members]
    names = [str(s["path"]) if s["kind"] == "export" else spec_name(s) for s in specs]
    states = [ctx.state_dict(s) for s in specs]
    check_soup_members(states, names)
    _check_export_configs(specs, names)
    state = soup_state_dicts(states, [m.get("weight", 1.0 / len(members)) for m in members],
                             affine=spec.get("affine", True), names=names)
    # A shell with the right architecture: the first member, rebuilt on the CPU (its weights are
    # overwritten; load_soup_state moves it to the device).
    shell = ctx.with_device("cpu").build(specs[0])
    bn = spec.get("bn", "combine")
    calibration = ctx.calibration_batches(soup_calibration(spec)) if bn == "recalibrate" else None
    return load_soup_state(shell, state, bn, ctx.device, calibration)


def _check_export_configs(specs: list[dict[str, Any]], names: list[str]) -> None:
    """Export members must share one model config: the shell is built from the first member's, so a
    member that differs only in a config field (same tensor shapes) would be silently rebuilt wrong."""
    configs = [(n, _model_config(s["path"])) for s, n in zip(specs, names) if s["kind"] == "export"]
    if not configs:
        return
    (first, cfg0), others = configs[0], configs[1:]
    different = [n for n, c in others if c != cfg0]
    if different:
        raise SpecError(f"soup members have different model configs than {first} ({cfg0}): {different}")


def _model_config(path: str) -> dict[str, Any]:
    return {k: v for k, v in load_model_config(path).items() if k != "_target_"}


def soup_name(spec: dict[str, Any], name_of: Callable[[Any], str]) -> str:
    return f"soup{len(spec.get('members') or [])}"


KIND = register_kind(SpecKind(name="soup", required=("members",), build=build_soup, children=soup_children,
                              check=check_soup, display=soup_name))
