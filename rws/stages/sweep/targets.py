"""Sweep targets: a target is a named selection of suite cells measured on the first ``k`` examples
of the sweep's fixed test subset.

    {name: clean, suite: clean, k: 200}
    {name: noise, suite: corruption, corruption: gaussian_noise, severity: 3, k: 200}
    {name: linf, suite: adversarial, threat: {norm: linf, eps: 8/255}, k: 50}          # the threat's cell
    {name: union, suite: union, threats: [{norm: linf, eps: 8/255}, {norm: l2, eps: 0.5}], k: 50}
    # any registered suite with its own options, optionally keeping only some conditions:
    {name: c, suite: corruptions, corruptions: noise, severities: [3, 5], k: 100}
    {name: lu, suite: adversarial, threats: [...], conditions: [linf, union], k: 50}

Rows use the engine vocabulary (suite clean|corruptions|adversarial, condition clean/<corruption>/
<norm>/union); the target is the selection, recorded in sweep.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from rws.evaluation.cells import Cell
from rws.evaluation.sources import DataSource
from rws.evaluation.suites import Suite, make_suite, suite_names

# The sweep's own shorthands (kept from its first version) on top of the registered suite names.
SHORTHANDS = ("clean", "corruption", "adversarial", "union")
_TARGET_KEYS = ("name", "suite", "k", "conditions")


@dataclass
class Target:
    name: str
    k: int
    options: dict[str, Any]          # the suite's options
    conditions: list[str] | None     # keep only these conditions of the suite (None: all)
    exclude: tuple[str, ...] = ()    # drop these conditions (an adversarial shorthand keeps its threats only)

    def suite(self) -> Suite:
        return make_suite(self.options)

    def cells(self, suite: Suite, source: DataSource) -> list[Cell]:
        cells = suite.cells(source)
        if self.conditions is not None:
            unknown = sorted(set(self.conditions) - {c.condition for c in cells})
            if unknown:
                raise ValueError(f"target {self.name!r}: conditions {unknown} are not cells of suite "
                                 f"{suite.name!r}; it has {sorted({c.condition for c in cells})}")
            cells = [c for c in cells if c.condition in self.conditions]
        return [c for c in cells if c.condition not in self.exclude]


def _threats(t: Mapping[str, Any]) -> list[Any]:
    return list(t.get("threats") or ([t["threat"]] if t.get("threat") else []))


def parse_target(t: Mapping[str, Any], default_k: int, suite_defaults: Mapping[str, Any]) -> Target:
    """One target config -> Target. ``suite_defaults`` (seed, attacks, n_iter) fill the suite options."""
    t = dict(t)
    suite = t.get("suite", "clean")
    name = str(t.get("name") or suite)
    k = int(t.get("k", default_k))
    conditions = t.get("conditions")
    exclude: tuple[str, ...] = ()
    if suite == "corruption":
        opts = {"name": "corruptions", "corruptions": t.get("corruption", "all"),
                "severities": t.get("severity", [1, 2, 3, 4, 5])}
    elif suite in ("adversarial", "union"):
        threats = _threats(t)
        if not threats:
            raise ValueError(f"target {name!r} ({suite}) needs threat: {{norm, eps}} or threats: [...]")
        opts = {"name": "adversarial", "threats": threats,
                **{k2: v for k2, v in t.items() if k2 in ("attacks", "n_iter", "seed")}}
        if suite == "union":
            conditions = ["union"]
        elif conditions is None:
            exclude = ("clean", "union")  # an adversarial target scores its threats
    elif suite in suite_names():
        opts = {"name": suite, **{k2: v for k2, v in t.items() if k2 not in _TARGET_KEYS}}
    else:
        raise ValueError(f"target {name!r}: suite must be one of {', '.join(SHORTHANDS)} or a suite "
                         f"({', '.join(suite_names())}), got {suite!r}")
    suite_name = opts["name"]
    for key, value in suite_defaults.items():
        if key == "seed" or suite_name == "adversarial":
            opts.setdefault(key, value)
    return Target(name, k, opts, None if conditions is None else [str(c) for c in conditions], exclude)


def parse_targets(targets: Sequence[Mapping[str, Any]], default_k: int = 100,
                  suite_defaults: Mapping[str, Any] | None = None) -> list[Target]:
    out = [parse_target(t, default_k, suite_defaults or {}) for t in targets]
    names = [t.name for t in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"target names must be unique, repeated: {dup}")
    if not out:
        raise ValueError("sweep needs at least one target (targets=[{name, suite, k}, ...])")
    return out
