"""``{kind: heads, base: <spec>, head: clean}`` (one head, ``HeadView``) or
``{kind: heads, base: <spec>, select: {rule: max_confidence, samples: 10, seed: 0, ...}}``
(a selection rule per example, ``HeadSelection``; the rule's own options sit beside ``rule``).
``select.calibration`` (a calibration source, e.g. ``{split: val, batches: 4}``) sets a rule's
data-dependent options (``mc_dropout_kl``: thresholds and scales) from clean data at build time.

The result is a wrapper module (its state-dict keys gain a ``model.`` prefix), so put this kind
outermost: weight arithmetic (patch, soup) goes into its base.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from rws.models.contracts import HeadSelection, HeadView, has_heads, head_names, selection_rule_names
from rws.specs.context import BuildContext
from rws.specs.registry import SpecError, SpecKind, register_kind


def check_heads_spec(spec: dict[str, Any], where: str) -> None:
    head, select = spec.get("head"), spec.get("select")
    if (head is None) == (select is None):
        raise SpecError(f"{where}: a heads spec needs exactly one of 'head: <name>' or "
                        f"'select: {{rule: ..., samples: ..., seed: ...}}'")
    if head is not None:
        if not isinstance(head, str) or not head:
            raise SpecError(f"{where}.head must be a head name, got {head!r}")
        return
    if not isinstance(select, dict) or "rule" not in select:
        raise SpecError(f"{where}.select must be a mapping with a 'rule' ({', '.join(selection_rule_names())}), "
                        f"got {select!r}")
    if select["rule"] not in selection_rule_names():
        raise SpecError(f"{where}.select.rule: unknown rule {select['rule']!r}; rules: "
                        f"{', '.join(selection_rule_names())}")
    if select.get("calibration") is not None:
        from rws.specs.calibration import check_source

        check_source(select["calibration"], f"{where}.select.calibration")
    for key in ("samples", "seed"):
        v = select.get(key, 1 if key == "samples" else 0)
        if isinstance(v, bool) or not isinstance(v, int) or (key == "samples" and v < 1):
            raise SpecError(f"{where}.select.{key} must be an integer{' >= 1' if key == 'samples' else ''}, got {v!r}")


def heads_children(spec: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(".base", spec["base"])]


def build_heads(spec: dict[str, Any], ctx: BuildContext) -> nn.Module:
    from rws.specs.core import spec_name

    model = ctx.build(spec["base"])
    base = spec_name(spec["base"])
    if not has_heads(model):
        raise SpecError(f"spec kind 'heads': the base {base!r} ({type(model).__name__}) declares no heads; "
                        f"only multi-head models (e.g. distillation students) have heads")
    try:
        if spec.get("head") is not None:
            return HeadView(model, spec["head"])
        options = dict(spec["select"])
        calibration = options.pop("calibration", None)
        selection = HeadSelection(model, rule=options.pop("rule"), samples=options.pop("samples", 1),
                                  seed=options.pop("seed", 0), **options)
        if calibration is not None:
            # Thresholds and scales from clean held-out data, described in the spec so a result row
            # rebuilds the same selection.
            selection.calibrate(ctx.calibration_batches(calibration))
        return selection
    except ValueError as e:
        raise SpecError(f"heads spec on {base!r} (heads: {', '.join(head_names(model))}): {e}") from None


def heads_name(spec: dict[str, Any], name_of: Callable[[Any], str]) -> str:
    choice = spec["head"] if spec.get("head") is not None else spec["select"]["rule"]
    return f"{name_of(spec['base'])}[{choice}]"


KIND = register_kind(SpecKind(name="heads", required=("base",), build=build_heads, children=heads_children,
                              check=check_heads_spec, display=heads_name))
