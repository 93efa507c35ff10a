"""``{kind: mode, base: <spec>, mode: robust}``: a model with modes (adapters), in one mode;
``mode: 0.9`` is the mix β·φ_first + (1 − β)·φ_second and ``mode: [b1, b2]`` a free pair
(rws.models.contracts).

The mode is set on the built base itself rather than wrapped in a ``ModeView``: the mode is model
state by contract (switching never rebuilds), ``ctx.build`` gives this spec its own fresh module,
and the state-dict keys stay the export's, so weight-arithmetic kinds (a patch, i.e. a signature
on an adapter model) can nest on top and the result keeps the mode. A soup keeps its first
member's mode: to soup and then pick a mode, put the mode kind outermost.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from rws.models.contracts import check_mode_value, has_modes, mode_names, set_mode
from rws.specs.context import BuildContext
from rws.specs.registry import SpecError, SpecKind, register_kind


def check_mode_spec(spec: dict[str, Any], where: str) -> None:
    mode = spec["mode"]
    if isinstance(mode, str):
        return  # the names are known only once the base is built
    try:
        check_mode_value(mode, (), f"{where}.mode")
    except ValueError as e:
        raise SpecError(str(e)) from None


def mode_children(spec: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(".base", spec["base"])]


def build_mode(spec: dict[str, Any], ctx: BuildContext) -> nn.Module:
    from rws.specs.core import spec_name

    model = ctx.build(spec["base"])
    if not has_modes(model):
        raise SpecError(f"spec kind 'mode': the base {spec_name(spec['base'])!r} ({type(model).__name__}) "
                        f"declares no modes; only models with mode-specific parameters (adapters) have modes")
    try:
        check_mode_value(spec["mode"], mode_names(model), "mode spec: mode")
    except ValueError as e:
        raise SpecError(f"{e} (base {spec_name(spec['base'])!r})") from None
    set_mode(model, spec["mode"])
    return model


def mode_name(spec: dict[str, Any], name_of: Callable[[Any], str]) -> str:
    mode = spec["mode"]
    shown = "/".join(f"{b:g}" for b in mode) if isinstance(mode, (list, tuple)) else (
        mode if isinstance(mode, str) else f"{mode:g}")
    return f"{name_of(spec['base'])}@{shown}"


KIND = register_kind(SpecKind(name="mode", required=("base", "mode"), build=build_mode, children=mode_children,
                              check=check_mode_spec, display=mode_name))
