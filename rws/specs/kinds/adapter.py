"""``{kind: adapter, base: <spec>, mode: clean|robust}``, ``{kind: adapter, base, beta: 0.9}`` or
``{kind: adapter, base, beta1: 0.5, beta2: 1.0}``: an adapter model (rws.models.adapters) in one
mode, an adversarial model soup ψ ∪ (β·φ_clean + (1 − β)·φ_robust) (β outside [0, 1] extrapolates),
or a point β1·φ_clean + β2·φ_robust of the token plane (the adapters paper, Eq. 3 and appendix D).

The paper's vocabulary over the generic ``mode`` kind: the build is the mode kind's (the mode is
set on the freshly built base, state-dict keys stay the export's); only the spelling differs.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from torch import nn

from rws.specs.context import BuildContext
from rws.specs.kinds.mode import build_mode
from rws.specs.registry import SpecError, SpecKind, register_kind

FORMS = ("mode", "beta", "beta1/beta2")


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise SpecError(f"{where} must be a finite number, got {value!r}")
    return float(value)


def adapter_mode(spec: dict[str, Any], where: str = "adapter spec") -> Any:
    """The spec's mode in the modes contract's terms: a name, a float β or a (β1, β2) pair."""
    given = [k for k in ("mode", "beta", "beta1", "beta2") if spec.get(k) is not None]
    if given == ["mode"]:
        if not isinstance(spec["mode"], str) or not spec["mode"]:
            raise SpecError(f"{where}.mode must be a mode name (clean or robust), got {spec['mode']!r}; "
                            f"use beta: <number> for a soup")
        return spec["mode"]
    if given == ["beta"]:
        return _number(spec["beta"], f"{where}.beta")
    if given == ["beta1", "beta2"]:
        return (_number(spec["beta1"], f"{where}.beta1"), _number(spec["beta2"], f"{where}.beta2"))
    raise SpecError(f"{where}: an adapter spec needs exactly one of 'mode: clean|robust', 'beta: <number>' or "
                    f"'beta1: <number>, beta2: <number>', got {', '.join(given) or 'none'}")


def check_adapter_spec(spec: dict[str, Any], where: str) -> None:
    adapter_mode(spec, where)


def adapter_children(spec: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(".base", spec["base"])]


def build_adapter(spec: dict[str, Any], ctx: BuildContext) -> nn.Module:
    try:
        return build_mode({"base": spec["base"], "mode": adapter_mode(spec)}, ctx)
    except SpecError as e:
        # The mode kind's message names kind 'mode'; say which spec the user actually wrote.
        raise SpecError(f"adapter spec: {e}") from None


def adapter_name(spec: dict[str, Any], name_of: Callable[[Any], str]) -> str:
    mode = adapter_mode(spec)
    shown = mode if isinstance(mode, str) else (f"beta={mode:g}" if isinstance(mode, float)
                                                else f"beta=({mode[0]:g},{mode[1]:g})")
    return f"{name_of(spec['base'])}@{shown}"


KIND = register_kind(SpecKind(name="adapter", required=("base",), build=build_adapter, children=adapter_children,
                              check=check_adapter_spec, display=adapter_name))
