"""The one recursive part of model specs: canonical form and ids, validation, building, names.

    {kind: export, path: runs/std/export}
    {kind: patch, base: <spec>, signatures: [{path, alpha}, ...], bn_policy: ..., calibration: {...}}
    {kind: soup, members: [{spec: <spec>, weight}, ...], bn: combine|recalibrate, calibration: {...}}

What a kind means lives in its plug-in (``rws.specs.kinds``); this module only walks the tree.
A spec's id is a hash of its canonical form, so results and caches are keyed by the recipe rather
than by whatever file name a run happened to pick.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rws.specs.context import BuildContext
from rws.specs.registry import SpecError, get_kind, kind_names
from rws.utils.config import to_plain

# Keys that hold file paths: resolved to absolute strings so `./a/../a/export` and `a/export`
# get the same id.
_PATH_KEYS = ("path", "root", "file", "dir")
# Cosmetic keys that do not change the model and must not change its id.
_COSMETIC_KEYS = ("name",)
_FLOAT_DIGITS = 12


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
    spec = to_plain(spec)
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
    """Check a spec tree: each node's kind is registered, has its required keys and passes the
    kind's own check; then its children, recursively. Returns the spec as a plain dict."""
    spec = to_plain(spec)
    known = ", ".join(kind_names())
    if not isinstance(spec, dict):
        raise SpecError(f"{where}: a model spec must be a mapping with a 'kind', got {spec!r}")
    name = spec.get("kind")
    if name is None:
        raise SpecError(f"{where}: missing key 'kind' in spec {spec!r}; kinds: {known}")
    try:
        kind = get_kind(name)
    except SpecError:
        raise SpecError(f"{where}: unknown spec kind {name!r} in {spec!r}; kinds: {known}") from None
    for key in kind.required:
        if key not in spec or spec[key] is None:
            raise SpecError(f"{where}: spec of kind {name!r} is missing key {key!r}: {spec!r}")
    kind.check(spec, where)
    for suffix, child in kind.children(spec):
        validate(child, f"{where}{suffix}")
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
        try:
            if p.suffix == ".json":
                data = json.loads(p.read_text())
            else:
                from omegaconf import OmegaConf

                data = OmegaConf.to_container(OmegaConf.load(p), resolve=True)
        except Exception as e:  # malformed YAML/JSON (or not text): name the file, not the parser's internals
            if not isinstance(e, (ValueError, UnicodeDecodeError)) and type(e).__module__.split(".")[0] not in (
                    "yaml", "omegaconf"):
                raise
            raise SpecError(f"cannot parse the model spec {p} ({' '.join(str(e).split())})") from None
        return validate(data, where=str(p))
    return validate(path_or_dict)


def build(spec: Any, device: str | torch.device | None = None, context: BuildContext | None = None) -> nn.Module:
    """Build the module a spec describes, on ``device`` and in eval mode.

    ``context`` carries what builders may need besides the spec (the default datamodule for
    calibration, a cache); ``device`` defaults to the context's, else "cpu". Children are built
    through ``context.build`` / ``context.state_dict``, which come back here."""
    spec = validate(spec)
    if context is None:
        context = BuildContext(device=device if device is not None else "cpu")
    elif device is not None and torch.device(device) != torch.device(context.device):
        context = context.with_device(device)
    model = get_kind(spec["kind"]).build(spec, context)
    return model.to(context.device).eval()


def spec_name(spec: Any) -> str:
    """A short human name for tables: the spec's 'name' if given, else the kind's display rule
    (derived from paths and children), else the kind itself."""
    spec = to_plain(spec)
    if isinstance(spec, dict) and spec.get("name"):
        return str(spec["name"])
    name = spec.get("kind") if isinstance(spec, dict) else None
    try:
        kind = get_kind(name) if name is not None else None
    except SpecError:
        kind = None
    if kind is not None and kind.display is not None:
        return kind.display(spec, spec_name)
    return str(name or "model")
