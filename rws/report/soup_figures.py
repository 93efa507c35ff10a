"""Figures of a soup sweep (matplotlib Agg, PNG).

- ``front.png``: accuracy of each target vs w for w*theta_a + (1-w)*theta_b (paper Fig. 1/2), and
  ``front_scatter.png``: one target against another along the front (robust vs robust).
- ``simplex_<target>.png``: 3-member soups on the weight simplex, coloured by accuracy (Fig. 3/4).
- ``top5.png``: the weights of the 5 best soups per target, plus the best-average soup (Fig. 7).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def plot_front(w: Sequence[float], scores: torch.Tensor, targets: Sequence[str], names: Sequence[str],
               path: str | os.PathLike) -> Path:
    """scores: (S, T); w: the weight of the first member of each soup."""
    plt = _plt()
    order = sorted(range(len(w)), key=lambda i: w[i])
    fig, ax = plt.subplots(figsize=(6, 4))
    for j, t in enumerate(targets):
        ax.plot([w[i] for i in order], [100 * float(scores[i, j]) for i in order], marker="o", label=t)
    ax.set_xlabel(f"w   (w·{names[0]} + (1−w)·{names[1]})")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_front_scatter(w: Sequence[float], a: Sequence[float], b: Sequence[float], label_a: str, label_b: str,
                       path: str | os.PathLike) -> Path:
    """One target against another along the front, points coloured by w (robust-vs-robust trade-off)."""
    plt = _plt()
    order = sorted(range(len(w)), key=lambda i: w[i])
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.plot([100 * a[i] for i in order], [100 * b[i] for i in order], color="0.7", zorder=1)
    sc = ax.scatter([100 * v for v in a], [100 * v for v in b], c=list(w), cmap="viridis", zorder=2)
    fig.colorbar(sc, ax=ax, label="w")
    ax.set_xlabel(f"{label_a} (%)")
    ax.set_ylabel(f"{label_b} (%)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def simplex_xy(weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Barycentric (S, 3) -> 2-D; vertices at (0,0), (1,0), (1/2, sqrt(3)/2). Works outside the triangle."""
    w = weights.double()
    return w[:, 1] + 0.5 * w[:, 2], w[:, 2] * (math.sqrt(3) / 2)


def plot_simplex(weights: torch.Tensor, values: torch.Tensor, names: Sequence[str], title: str,
                 path: str | os.PathLike) -> Path:
    plt = _plt()
    import matplotlib.tri as mtri

    x, y = simplex_xy(weights)
    v = 100 * values.double()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ok = ~torch.isnan(v)
    if int(ok.sum()) >= 3:
        try:
            tri = mtri.Triangulation(x[ok].numpy(), y[ok].numpy())
            tc = ax.tripcolor(tri, v[ok].numpy(), shading="gouraud", cmap="viridis")
            fig.colorbar(tc, ax=ax, label="accuracy (%)")
        except Exception:  # degenerate (collinear) point sets cannot be triangulated
            pass
    ax.scatter(x[ok].numpy(), y[ok].numpy(), c="k", s=6)
    best = int(torch.nan_to_num(v, nan=-1).argmax())
    ax.scatter([float(x[best])], [float(y[best])], marker="*", s=200, c="red", label="best")
    corners = [(0, 0), (1, 0), (0.5, math.sqrt(3) / 2)]
    ax.plot([c[0] for c in corners + corners[:1]], [c[1] for c in corners + corners[:1]], "w--", lw=1)
    for (cx, cy), n in zip(corners, names):
        ax.annotate(n, (cx, cy), textcoords="offset points", xytext=(0, -14 if cy == 0 else 6), ha="center")
    ax.set_title(title)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_top5(weights: torch.Tensor, scores: torch.Tensor, targets: Sequence[str], names: Sequence[str],
              path: str | os.PathLike, top: int = 5) -> Path:
    """A panel per target (plus 'average'): grouped bars of the member weights of its top soups."""
    plt = _plt()
    cols = list(targets) + ["average"]
    cols_scores = torch.cat([scores, scores.mean(1, keepdim=True)], 1)
    n = weights.shape[1]
    fig, axes = plt.subplots(1, len(cols), figsize=(2.6 * len(cols), 3.2), sharey=True, squeeze=False)
    width = 0.8 / top
    for j, (ax, t) in enumerate(zip(axes[0], cols)):
        col = torch.nan_to_num(cols_scores[:, j], nan=-math.inf)
        idx = torch.argsort(col, descending=True, stable=True)[:top]
        for r, i in enumerate(idx.tolist()):
            ax.bar([m + (r - (top - 1) / 2) * width for m in range(n)], weights[i].tolist(), width=width,
                   alpha=1.0 - 0.15 * r, label=f"#{r + 1} {100 * float(cols_scores[i, j]):.1f}%")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(range(n))
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
        ax.set_title(t, fontsize=9)
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("soup weight")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def make_figures(out_dir: str | os.PathLike, weights: torch.Tensor, scores: torch.Tensor,
                 targets: Sequence[str], names: Sequence[str],
                 scatter_pair: tuple[int, int] | None = None) -> list[Path]:
    """Whatever figures fit the sweep: fronts for 2 members, simplices for 3 affine, top-5 always.
    ``scatter_pair``: the two target columns of the front scatter (default: the first two)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    n = weights.shape[1]
    affine = bool(torch.allclose(weights.sum(1), torch.ones(len(weights), dtype=weights.dtype), atol=1e-9))
    if n == 2:
        w = weights[:, 0].tolist()
        paths.append(plot_front(w, scores, targets, names, out / "front.png"))
        if len(targets) >= 2:
            # The paper plots robust vs robust (l_inf vs l_2); the caller passes those columns when it has them.
            a, b = scatter_pair or (0, 1)
            paths.append(plot_front_scatter(w, scores[:, a].tolist(), scores[:, b].tolist(), targets[a], targets[b],
                                            out / "front_scatter.png"))
    if n == 3 and affine:
        for j, t in enumerate(targets):
            paths.append(plot_simplex(weights, scores[:, j], names, t, out / f"simplex_{_safe(t)}.png"))
    paths.append(plot_top5(weights, scores, targets, names, out / "top5.png"))
    return paths


def plot_few_shot(study: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """The paper's Fig. 8: held-out accuracy of the soup picked on k examples, mean ± std over trials,
    one line per target, with the held-out oracle (best soup on the test half) dashed."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (target, res) in enumerate(study.items()):
        ks = sorted(int(k) for k in res["k"])
        mean = [100 * res["k"][str(k)]["mean"] for k in ks]
        std = [100 * res["k"][str(k)]["std"] for k in ks]
        line = ax.errorbar(ks, mean, yerr=std, marker="o", capsize=3, label=target)
        if "oracle" in res:
            ax.axhline(100 * res["oracle"]["mean"], ls="--", lw=0.8, color=line[0].get_color())
    ax.set_xscale("log")
    ax.set_xlabel("k (labelled examples used to pick the soup)")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title("few-shot soup selection (dashed: best soup on the held-out set)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
