"""Robust Weight Signature extraction (paper Sec. 2.1, Eq. 1).

    v_base = θ_std − θ_init,   v_c = θ_c − θ_init,   RWS_c = v_c − P_{v_base}(v_c)

P is the orthogonal projection onto span(v_base), applied block by block. For one block with
flattened vectors v (from v_c) and b (from v_base):

    RWS = v − (⟨v, b⟩ / ⟨b, b⟩) · b          and RWS = v when b = 0 (nothing to project onto).

The blocks (``granularity``):
  * ``per_tensor``: each state-dict tensor is its own block (what the official code does).
  * ``per_layer``: the kept tensors of one layer group are concatenated into one block.
  * ``global``:    all kept tensors form one vector, one projection.

The residual of each block is orthogonal to that block of v_base; finer blocks remove more.

BN running statistics are not weights and are never projected: the signature carries the
robust model's running stats as they are (see ``patching`` for how they are mixed in).

``bn_policy=official`` follows the official code's ResNet path instead: ``official_keys`` (every key
whose name contains ``bn`` or ``downsample`` and not ``num``, whole network) are not projected; the
signature stores the robust model's raw values of them (``official_values``) and patching replaces
them by the mean over the composed signatures.
Dot products are taken in float64 so orthogonality holds to ~1e-12 relative, not ~1e-6.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from rws.weights.layer_select import Groups, is_stat_key

GRANULARITIES = ("per_tensor", "per_layer", "global")
State = Mapping[str, torch.Tensor]


def official_keys(state: State, keys: Sequence[str] | None = None) -> list[str]:
    """The keys the official code (model_patching.py, ``decompose``) averages over the robust models
    instead of projecting: the name contains ``bn`` or ``downsample`` and not ``num`` (so not
    ``num_batches_tracked``). On a torchvision-style ResNet: γ, β and running statistics of every BN
    layer, and the downsample convs' weights. VGG keys (``features.N``) match none. Only floating-point
    tensors; ``keys`` (default: all of ``state``) fixes the order."""
    keys = list(state) if keys is None else list(keys)
    return [k for k in keys if ("bn" in k or "downsample" in k) and "num" not in k and state[k].is_floating_point()]


def official_values(robust: State, keys: Sequence[str]) -> dict[str, torch.Tensor]:
    """The robust model's raw values of ``keys`` (float32 copies), what a bn_policy=official signature stores."""
    missing = [k for k in keys if k not in robust]
    if missing:
        raise KeyError(f"robust state dict lacks key(s) {missing[:5]}")
    return {k: robust[k].float().clone() for k in keys}


def project_out(v: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """v − (⟨v,b⟩/⟨b,b⟩)·b on flattened tensors; v unchanged when b is all zeros."""
    v64, b64 = v.double().flatten(), b.double().flatten()
    bb = torch.dot(b64, b64)
    if bb == 0:
        return v.clone()
    coef = torch.dot(v64, b64) / bb
    return (v64 - coef * b64).reshape(v.shape).to(v.dtype)


def blocks_for(keys: Sequence[str], granularity: str, groups: Groups | None = None) -> list[list[str]]:
    """Split the kept weight keys into projection blocks."""
    if granularity == "per_tensor":
        return [[k] for k in keys]
    if granularity == "global":
        return [list(keys)] if keys else []
    if granularity == "per_layer":
        if groups is None:
            raise ValueError("granularity=per_layer needs the model's layer groups")
        kept = set(keys)
        blocks = [[k for k in gkeys if k in kept] for _, gkeys in groups]
        covered = {k for blk in blocks for k in blk}
        # Keys a custom regex picked outside any group still get a block of their own.
        blocks += [[k] for k in keys if k not in covered]
        return [b for b in blocks if b]
    raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")


def delta(a: State, b: State, keys: Sequence[str]) -> dict[str, torch.Tensor]:
    """a − b on ``keys`` (float32)."""
    return {k: a[k].float() - b[k].float() for k in keys}


def extract_signature(init: State, std: State, robust: State, keys: Sequence[str],
                      granularity: str = "per_tensor", groups: Groups | None = None
                      ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Return (rws, robust_stats): the projected residual on the kept weight keys (incl. BN affine)
    and the robust model's running statistics on the kept stat keys."""
    for name, sd in (("init", init), ("std", std), ("robust", robust)):
        missing = [k for k in keys if k not in sd]
        if missing:
            raise KeyError(f"{name} state dict lacks kept key(s) {missing[:5]}")
        bad = [k for k in keys if sd[k].shape != std[k].shape]
        if bad:
            raise ValueError(f"{name}: shape of {bad[0]} is {tuple(sd[bad[0]].shape)}, std has {tuple(std[bad[0]].shape)}")
    wkeys = [k for k in keys if not is_stat_key(k) and std[k].is_floating_point()]
    skeys = [k for k in keys if is_stat_key(k)]
    v_base = delta(std, init, wkeys)
    v_c = delta(robust, init, wkeys)
    rws: dict[str, torch.Tensor] = {}
    for block in blocks_for(wkeys, granularity, groups):
        v = torch.cat([v_c[k].flatten() for k in block])
        b = torch.cat([v_base[k].flatten() for k in block])
        r = project_out(v, b)
        offset = 0
        for k in block:
            n = v_c[k].numel()
            rws[k] = r[offset:offset + n].reshape(v_c[k].shape).contiguous()
            offset += n
    rws = {k: rws[k] for k in wkeys}  # state-dict order, whatever the block order
    stats = {k: robust[k].float().clone() for k in skeys}
    return rws, stats


def layer_norms(rws: State, std: State, groups: Groups) -> dict[str, float]:
    """Per layer: ‖RWS‖ / ‖θ_std‖ over that layer's kept weight keys (paper Fig. 2)."""
    out: dict[str, float] = {}
    for name, gkeys in groups:
        ks = [k for k in gkeys if k in rws]
        if not ks:
            continue
        num = torch.sqrt(sum((rws[k].double() ** 2).sum() for k in ks))
        den = torch.sqrt(sum((std[k].double() ** 2).sum() for k in ks))
        out[name] = float(num / den) if den > 0 else float("nan")
    return out


def layer_cosines(signatures: Mapping[str, State], groups: Groups) -> dict[str, dict[str, dict[str, float]]]:
    """Per layer: cosine similarity between every pair of corruptions' RWS (paper Fig. 3/4).
    Also an ``__all__`` entry over all kept weight keys together."""
    names = list(signatures)
    groups = list(groups) + [("__all__", [k for _, g in groups for k in g])]
    out: dict[str, dict[str, dict[str, float]]] = {}
    for layer, gkeys in groups:
        vecs = {}
        for c in names:
            ks = [k for k in gkeys if k in signatures[c]]
            if ks:
                vecs[c] = torch.cat([signatures[c][k].double().flatten() for k in ks])
        if not vecs:
            continue
        out[layer] = {a: {b: _cos(vecs[a], vecs[b]) for b in vecs} for a in vecs}
    return out


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    den = a.norm() * b.norm()
    return float(torch.dot(a, b) / den) if den > 0 else float("nan")
