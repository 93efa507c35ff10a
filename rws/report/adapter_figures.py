"""Figures of the adapters paper from result tables (rws.report.adapter_tables) and exports:

- ``beta_curves``: clean, robust and corruption-mean accuracy against beta (Fig. 5 / Table 7 analog)
- ``soup_vs_ensemble``: clean vs robust accuracy of the beta soups, the mode ensembles and the
  independent-model soups (Fig. 4 / Table 9 analog)
- ``token_plane``: clean, robust and the min/max-normalized mean over the (beta1, beta2) plane (Fig. 8)
- ``embedder_filters``: the patch embedder's first 28 principal components as RGB tiles (appendix B)

Each function returns the arrays it plotted (tests check those) and writes the PNG atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from rws.utils.io import atomic_path


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def _figure(ncols: int = 1, width: float = 4.5) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(width * ncols, 3.6), squeeze=False)


def beta_curves(entries: Sequence[dict[str, Any]], path: Path) -> dict[str, list[float | None]]:
    """Accuracy (%) against beta; ``entries`` are adapter_tables' beta rows (beta, clean, robust, corruption_mean)."""
    data = {"beta": [float(e["beta"]) for e in entries],
            "clean": [e["clean"] for e in entries], "robust": [e["robust"] for e in entries],
            "corruption_mean": [e["corruption_mean"] for e in entries]}
    fig, ax = _figure()
    for key, style in (("clean", "o-"), ("robust", "s--"), ("corruption_mean", "^:")):
        pts = [(b, 100 * v) for b, v in zip(data["beta"], data[key]) if v is not None]
        if pts:
            ax[0, 0].plot(*zip(*pts), style, label=key.replace("_", " "))
    ax[0, 0].set_xlabel("beta (1 = clean mode, 0 = robust mode)")
    ax[0, 0].set_ylabel("accuracy (%)")
    ax[0, 0].legend()
    _save(fig, path)
    return data


def soup_vs_ensemble(curves: dict[str, Sequence[dict[str, Any]]], path: Path) -> dict[str, list[tuple[float, float]]]:
    """(clean %, robust %) per point for each named curve (soup, ensemble, independent soup)."""
    data = {name: [(100 * e["clean"], 100 * e["robust"]) for e in entries
                   if e.get("clean") is not None and e.get("robust") is not None]
            for name, entries in curves.items()}
    fig, ax = _figure()
    for (name, pts), style in zip(data.items(), ("o-", "s--", "^:", "d-.")):
        if pts:
            ax[0, 0].plot(*zip(*pts), style, label=name)
    ax[0, 0].set_xlabel("clean accuracy (%)")
    ax[0, 0].set_ylabel("robust accuracy (%)")
    ax[0, 0].legend()
    _save(fig, path)
    return data


def _minmax(a: np.ndarray) -> np.ndarray:
    span = np.nanmax(a) - np.nanmin(a)
    return np.zeros_like(a) if span == 0 else (a - np.nanmin(a)) / span


def token_plane(points: Sequence[tuple[float, float]], clean: Sequence[float], robust: Sequence[float],
                path: Path) -> dict[str, np.ndarray]:
    """Heatmaps over the (beta1, beta2) grid: clean, robust, and the mean of their min/max-normalized
    values (Fig. 8 c). Returns the three (n2, n1) grids (rows beta2, columns beta1) and the axes."""
    b1 = np.array(sorted({p[0] for p in points}))
    b2 = np.array(sorted({p[1] for p in points}))
    grids = {k: np.full((len(b2), len(b1)), np.nan) for k in ("clean", "robust")}
    for (x, y), c, r in zip(points, clean, robust):
        i, j = int(np.searchsorted(b2, y)), int(np.searchsorted(b1, x))
        grids["clean"][i, j], grids["robust"][i, j] = 100 * c, 100 * r
    grids["normalized_mean"] = 0.5 * (_minmax(grids["clean"]) + _minmax(grids["robust"]))
    fig, ax = _figure(3, 4.0)
    for a, (name, g) in zip(ax[0], grids.items()):
        im = a.imshow(g, origin="lower", cmap="RdBu_r", extent=(b1[0], b1[-1], b2[0], b2[-1]), aspect="auto")
        a.set_title(name.replace("_", " "))
        a.set_xlabel("beta1 (clean token)")
        a.set_ylabel("beta2 (robust token)")
        fig.colorbar(im, ax=a)
    _save(fig, path)
    return {**grids, "beta1": b1, "beta2": b2}


def filter_components(weight: torch.Tensor, n: int = 28) -> np.ndarray:
    """Appendix B: standardize the embedder's filters (out, 3, p, p) to zero mean and unit variance,
    take the first ``n`` principal components (over filters) and rescale each to 0..255 as a
    (p, p, 3) image. Returns (n', p, p, 3) uint8, n' = min(n, filters, 3 p²)."""
    w = weight.detach().double().flatten(1).numpy()          # (filters, 3 p²)
    w = (w - w.mean()) / (w.std() or 1.0)
    w = w - w.mean(0, keepdims=True)
    _, _, vt = np.linalg.svd(w, full_matrices=False)          # rows of vt: principal directions
    comps = vt[:n]
    p = weight.shape[-1]
    tiles = []
    for c in comps:
        img = c.reshape(weight.shape[1], p, p).transpose(1, 2, 0)
        lo, hi = img.min(), img.max()
        tiles.append(np.round(255 * (img - lo) / ((hi - lo) or 1.0)).astype(np.uint8))
    return np.stack(tiles)


def embedder_filters(weights: dict[str, torch.Tensor], path: Path, n: int = 28) -> dict[str, np.ndarray]:
    """One row of PCA tiles per model (name -> patch-embed conv weight)."""
    tiles = {name: filter_components(w, n) for name, w in weights.items()}
    cols = max(t.shape[0] for t in tiles.values())
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(tiles), cols, figsize=(0.5 * cols, 0.7 * len(tiles)), squeeze=False)
    for r, (name, t) in enumerate(tiles.items()):
        for c in range(cols):
            a = axes[r, c]
            a.axis("off")
            if c < t.shape[0]:
                a.imshow(t[c], interpolation="nearest")
        axes[r, 0].set_title(name, fontsize=6, loc="left")
    _save(fig, path)
    return tiles


def patch_embed_weight(export_dir: str | Path, mode: str = "clean") -> torch.Tensor:
    """The patch-embed conv weight of a ViT export. For a ``patch_embed`` adapter export ``mode``
    picks its clean copy (the parametrization's ``original``) or its robust copy (``0.robust``);
    a plain ViT has one weight, returned for either mode."""
    from safetensors.torch import load_file

    if mode not in ("clean", "robust"):
        raise ValueError(f"patch_embed_weight: mode must be clean or robust, got {mode!r}")
    state = load_file(str(Path(export_dir) / "model.safetensors"))
    ends = ("proj.weight", "proj.parametrizations.weight.original" if mode == "clean"
            else "proj.parametrizations.weight.0.robust")
    keys = [k for k in state if "patch_embed.proj" in k and k.endswith(ends)]
    if not keys:
        raise ValueError(f"{export_dir}: no patch_embed.proj weight (not a ViT export)")
    return state[sorted(keys)[0]]
