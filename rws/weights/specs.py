"""Model specs: one small recursive config that says how a model is built from exports.

    {kind: export, path: runs/std/export}
    {kind: patch, base: <spec>, signatures: [{path, alpha}, ...], bn_policy: ...}
    {kind: soup, members: [{spec: <spec>, weight}, ...], bn: combine|recalibrate}
    {kind: adapter, base: <spec>, beta: ...}

A spec's id is a hash of its canonical form, so results and caches can be keyed by the recipe
rather than by whatever file name a run happened to pick.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

# Required keys per kind. Optional keys (alpha, bn_policy, ...) belong to the builders.
KINDS: dict[str, tuple[str, ...]] = {
    "export": ("path",),
    "patch": ("base", "signatures"),
    "soup": ("members",),
    "adapter": ("base",),
}
# Keys that hold file paths: resolved to absolute strings so `./a/../a/export` and `a/export`
# get the same id.
_PATH_KEYS = ("path", "root", "file", "dir")
# Cosmetic keys that do not change the model and must not change its id.
_COSMETIC_KEYS = ("name",)
_FLOAT_DIGITS = 12


class SpecError(ValueError):
    """A malformed model spec."""


def _plain(obj: Any) -> Any:
    """OmegaConf containers, tuples and Paths -> plain JSON-able Python."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, (DictConfig, ListConfig)):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _is_path_key(key: str) -> bool:
    return key in _PATH_KEYS or key.endswith("_path")


def _norm_number(v: float | int) -> float | int:
    # 1, 1.0 and 0.1+0.2-style float noise should all hash alike: round to 12 significant
    # digits and store integral values as ints.
    if isinstance(v, bool):
        return v
    f = float(v)
    if not math.isfinite(f):
        raise SpecError(f"non-finite number in spec: {v!r}")
    f = float(f"{f:.{_FLOAT_DIGITS}g}")
    return int(f) if f.is_integer() else f


def canonical(spec: Any) -> Any:
    """Canonical form: plain dicts with sorted keys, absolute path strings, normalized numbers.
    List order is kept (a member's position can matter to a builder)."""
    spec = _plain(spec)
    if isinstance(spec, dict):
        out: dict[str, Any] = {}
        for k in sorted(spec):
            if k in _COSMETIC_KEYS:
                continue
            v = spec[k]
            if _is_path_key(k) and isinstance(v, str) and v:
                v = str(Path(os.path.expanduser(v)).resolve())
            out[k] = canonical(v)
        return out
    if isinstance(spec, list):
        return [canonical(v) for v in spec]
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return _norm_number(spec)
    return spec


def to_json(spec: Any) -> str:
    """Compact canonical JSON: the string that is hashed and stored in result rows."""
    return json.dumps(canonical(spec), sort_keys=True, separators=(",", ":"))


def spec_id(spec: Any) -> str:
    """First 12 hex chars of sha1(canonical JSON). Identifies the recipe, not the file contents:
    writing new weights to the same path keeps the id, so give a retrained model a new path."""
    return hashlib.sha1(to_json(spec).encode()).hexdigest()[:12]


def validate(spec: Any, where: str = "spec") -> dict[str, Any]:
    """Check kinds and required keys recursively; return the spec as a plain dict."""
    spec = _plain(spec)
    if not isinstance(spec, dict):
        raise SpecError(f"{where}: a model spec must be a mapping with a 'kind', got {spec!r}")
    kind = spec.get("kind")
    if kind is None:
        raise SpecError(f"{where}: missing key 'kind' in spec {spec!r}; kinds: {', '.join(KINDS)}")
    if kind not in KINDS:
        raise SpecError(f"{where}: unknown spec kind {kind!r} in {spec!r}; kinds: {', '.join(KINDS)}")
    for key in KINDS[kind]:
        if key not in spec or spec[key] is None:
            raise SpecError(f"{where}: spec of kind {kind!r} is missing key {key!r}: {spec!r}")
    if kind in ("patch", "adapter"):
        validate(spec["base"], f"{where}.base")
    if kind == "patch":
        sigs = spec["signatures"]
        if not isinstance(sigs, list):
            raise SpecError(f"{where}.signatures must be a list of {{path, alpha}}, got {sigs!r}")
        for i, s in enumerate(sigs):
            if not isinstance(s, dict) or "path" not in s:
                raise SpecError(f"{where}.signatures[{i}]: missing key 'path': {s!r}")
    if kind == "soup":
        members = spec["members"]
        if not isinstance(members, list) or not members:
            raise SpecError(f"{where}.members must be a non-empty list of {{spec, weight}}, got {members!r}")
        for i, m in enumerate(members):
            if not isinstance(m, dict) or "spec" not in m:
                raise SpecError(f"{where}.members[{i}]: missing key 'spec': {m!r}")
            validate(m["spec"], f"{where}.members[{i}].spec")
    return spec


def load_spec(path_or_dict: Any) -> dict[str, Any]:
    """A spec from a dict/DictConfig, a YAML/JSON spec file, or an export directory
    (shorthand for ``{kind: export, path: DIR}``)."""
    if isinstance(path_or_dict, (str, os.PathLike)):
        p = Path(path_or_dict)
        if p.is_dir() or p.name == "model.safetensors":
            return validate({"kind": "export", "path": str(p.parent if p.is_file() else p)})
        if not p.is_file():
            raise FileNotFoundError(f"model spec not found: {p} (expected an export directory or a .yaml/.json spec)")
        if p.suffix == ".json":
            data = json.loads(p.read_text())
        else:
            from omegaconf import OmegaConf

            data = OmegaConf.to_container(OmegaConf.load(p), resolve=True)
        return validate(data, where=str(p))
    return validate(path_or_dict)


def build(spec: Any, device: str | torch.device = "cpu", calibration: Iterable[Any] | None = None) -> nn.Module:
    """Build the module a spec describes, on ``device`` and in eval mode. Nested specs build
    recursively through the kind-specific builders (each of which calls back into ``build``).
    ``calibration`` batches are handed to soups with ``bn: recalibrate``."""
    spec = validate(spec)
    kind = spec["kind"]
    # Builders are imported lazily: each lives in its own module and pulls its own dependencies.
    if kind == "export":
        from rws.weights.export import load_export

        return load_export(spec["path"]).build(device)
    if kind == "patch":
        from rws.weights.patching import build_patch

        model = build_patch(spec)
    elif kind == "soup":
        if all(m["spec"].get("kind") == "export" for m in spec["members"]):
            from rws.weights.soups import build_soup

            if spec.get("bn") == "recalibrate":
                model = build_soup(spec, calibration=calibration, device=device)
            else:
                model = build_soup(spec)
        else:
            model = _build_nested_soup(spec, device, calibration)
    elif kind == "adapter":
        raise NotImplementedError(
            "model specs of kind 'adapter' are not implemented yet: they arrive with the adapter-soups "
            "issue (adapter models in rws.models + rws.weights.adapters, 'Revisiting adapters' paper)")
    else:  # pragma: no cover - validate() rejects unknown kinds
        raise SpecError(f"unknown spec kind {kind!r}; kinds: {', '.join(KINDS)}")
    return model.to(device).eval()


def _build_nested_soup(spec: dict[str, Any], device: str | torch.device,
                       calibration: Iterable[Any] | None) -> nn.Module:
    """A soup whose members are themselves specs (patched models, other soups): build each
    member recursively, then average their state dicts with the soup module's arithmetic."""
    from rws.weights.soups import load_soup_state, soup_state_dicts

    members = spec["members"]
    models = [build(m["spec"], "cpu", calibration) for m in members]
    states = [m.state_dict() for m in models]
    names = [spec_name(m["spec"]) for m in members]
    state = soup_state_dicts(states, [m.get("weight", 1.0 / len(members)) for m in members],
                             affine=spec.get("affine", True), names=names)
    try:
        return load_soup_state(models[0], state, spec, device, calibration)
    except ValueError as e:  # the same rules as a plain soup, reported as a spec error
        raise SpecError(str(e)) from e


def spec_name(spec: Any) -> str:
    """A short human name for tables: the spec's 'name' if given, else derived from its paths."""
    spec = _plain(spec)
    if isinstance(spec, dict) and spec.get("name"):
        return str(spec["name"])
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind == "export":
        return _export_name(str(spec["path"]))
    if kind == "patch":
        return f"{spec_name(spec['base'])}+{len(spec.get('signatures') or [])}sig"
    if kind == "soup":
        return f"soup{len(spec.get('members') or [])}"
    if kind == "adapter":
        return f"{spec_name(spec['base'])}@adapter"
    return str(kind or "model")


def _export_name(path: str) -> str:
    # Exports live at .../<run_name>/<timestamp>/export: skip 'export' and timestamp-like parts.
    parts = [p for p in Path(path).parts if p not in ("export", "model.safetensors", "/", "")]
    for part in reversed(parts):
        if not part[:1].isdigit():
            return part
    return parts[-1] if parts else "model"
