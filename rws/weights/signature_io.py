"""Signature files: one safetensors file per corruption.

Tensors are keyed like the model's state dict:
  * weight keys (conv/linear weights, biases, BN affine) hold the RWS delta, quantized to ``bits``
    with scheme ``quant`` (linear codes, 8-bit uint8 or 16-bit int16, add ``<key>.__scale`` /
    ``<key>.__zero_point``, see ``quantize``);
  * with ``bn_policy=robust``, ``*.running_mean`` / ``*.running_var`` of the kept layers hold the
    robust model's running statistics themselves (not a delta), always float32;
  * with ``bn_policy=official``, the keys listed in ``official_keys`` (names containing ``bn`` or
    ``downsample``, whole network: BN γ/β/running stats, downsample conv weights) hold the robust
    model's raw values (not a delta, not projected), always float32; patching averages them.

Metadata (all strings; lists/dicts as JSON): format, arch_name, arch_hash (sha256 over the full
"key:shape" list of θ_std), model_cfg, sources (path + sha256 of each model.safetensors), layers,
keys, stat_keys, official_keys (files without it: none), granularity, bits, quant (float | linear;
files without it: linear at 8 bits, float otherwise), corruption, severity, bn_policy, created_by.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from rws.utils.io import load_safetensors, save_safetensors
from rws.weights.quantize import dequantize_state, quantize_state, resolve_quant

FORMAT = "rws-signature-v1"


@dataclass
class Signature:
    """A loaded (dequantized, float32) signature."""
    rws: dict[str, torch.Tensor]
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    # bn_policy=official: the robust model's raw values of rws.weights.signatures.official_keys
    official: dict[str, torch.Tensor] = field(default_factory=dict)
    layers: list[str] = field(default_factory=list)
    granularity: str = "per_tensor"
    bits: int = 32
    quant: str | None = None  # float | linear; None: the default for ``bits`` (rws.weights.quantize)
    corruption: str = ""
    severity: str = ""
    bn_policy: str = "robust"
    arch_name: str = ""
    arch_hash: str = ""
    model_cfg: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def keys(self) -> list[str]:
        return list(self.rws) + list(self.stats) + list(self.official)

    @property
    def name(self) -> str:
        return str(self.path) if self.path else f"<signature {self.corruption or '?'}>"


def arch_hash(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over "key:shape" lines of the whole state dict: equal hashes = same architecture."""
    text = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in state.items())
    return hashlib.sha256(text.encode()).hexdigest()


def save_signature(path: str | os.PathLike, sig: Signature) -> Path:
    quant = resolve_quant(int(sig.bits), sig.quant)
    stored = quantize_state(sig.rws, sig.bits, quant)
    for a, b, ka, kb in ((sig.rws, sig.stats, "rws", "stats"), (sig.rws, sig.official, "rws", "official"),
                         (sig.stats, sig.official, "stats", "official")):
        overlap = set(a) & set(b)
        if overlap:
            raise ValueError(f"keys both in {ka} and {kb}: {sorted(overlap)[:5]}")
    stored.update({k: v.float() for k, v in sig.stats.items()})
    stored.update({k: v.float() for k, v in sig.official.items()})
    meta = {
        "format": FORMAT,
        "arch_name": sig.arch_name,
        "arch_hash": sig.arch_hash,
        "model_cfg": json.dumps(sig.model_cfg, sort_keys=True),
        "sources": json.dumps(sig.sources, sort_keys=True),
        "layers": json.dumps(sig.layers),
        "keys": json.dumps(list(sig.rws)),
        "stat_keys": json.dumps(list(sig.stats)),
        "official_keys": json.dumps(list(sig.official)),
        "granularity": sig.granularity,
        "bits": str(sig.bits),
        "quant": quant,
        "corruption": sig.corruption,
        "severity": str(sig.severity),
        "bn_policy": sig.bn_policy,
        "created_by": "rws.weights.signature_io",
    }
    return save_safetensors(stored, path, metadata=meta)


def load_signature(path: str | os.PathLike) -> Signature:
    path = Path(path)
    stored, meta = load_safetensors(path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not an rws signature file (format={meta.get('format')!r}, expected {FORMAT!r})")
    try:
        keys, stat_keys = json.loads(meta["keys"]), json.loads(meta["stat_keys"])
        official_keys = json.loads(meta.get("official_keys", "[]"))
    except (KeyError, ValueError) as e:
        from rws.errors import UserError

        problem = f"lacks {e}" if isinstance(e, KeyError) else f"is not valid JSON ({e})"
        raise UserError(f"the signature's metadata {problem}", path,
                        "expected a signature written by python -m rws.stages.extract") from None
    raw = set(stat_keys) | set(official_keys)  # float32 as stored, never quantized
    weights = dequantize_state({k: v for k, v in stored.items() if k.split(".__")[0] not in raw})
    missing = [k for k in keys + stat_keys + official_keys if k not in stored]
    if missing:
        raise ValueError(f"{path}: metadata lists key(s) not in the file: {missing[:5]}")
    return Signature(
        rws={k: weights[k] for k in keys},
        stats={k: stored[k].float() for k in stat_keys},
        official={k: stored[k].float() for k in official_keys},
        layers=json.loads(meta.get("layers", "[]")),
        granularity=meta.get("granularity", ""),
        bits=int(meta.get("bits", 32)),
        quant=meta.get("quant") or resolve_quant(int(meta.get("bits", 32))),
        corruption=meta.get("corruption", ""),
        severity=meta.get("severity", ""),
        bn_policy=meta.get("bn_policy", ""),
        arch_name=meta.get("arch_name", ""),
        arch_hash=meta.get("arch_hash", ""),
        model_cfg=json.loads(meta.get("model_cfg", "{}")),
        sources=json.loads(meta.get("sources", "{}")),
        path=path,
    )
