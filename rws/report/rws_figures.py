"""Robust Weight Signatures analysis figures (PNG, matplotlib Agg), from result files only:
``sigs/*/analysis.json`` (per-layer norms and cosines, written by rws.stages.extract),
``figure_data/`` (cross-dataset cosines and feature maps, written by rws.stages.rws_analysis) and
the tables built from ``results.jsonl``.

  fig2_layer_norms.png        per-layer ‖RWS‖ / ‖θ_std‖ per corruption (paper Fig. 2)
  fig3_cosine_layers.png      per-layer cosine similarity between corruptions' RWS (Fig. 3/4)
  fig5_cross_dataset.png      same- vs cross-corruption similarity of CIFAR-10 vs Tiny-ImageNet RWS (Fig. 5)
  fig7_alpha_sweep.png        clean / severity 3 / severity 5 accuracy vs α (Fig. 7)
  fig8_composition.png        two signatures composed over an α grid (Fig. 8)
  fig9_feature_maps.png       first conv block activations: std vs patched on one corrupted image (Fig. 9)

    python -m rws.report.rws_figures OUT      # from OUT/tables.json, OUT/sigs, OUT/figure_data
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _short(layer: str) -> str:
    return layer.replace("net.", "").replace("features.", "f")


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def fig_layer_norms(analysis: Mapping[str, Any], path: str | Path, title: str = "") -> Path:
    """Fig. 2: relative RWS norm per layer; the paper's finding is that it concentrates in shallow layers."""
    layers = list(analysis["layer_order"])
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(layers)), 3.6))
    for c, norms in analysis["relative_norm"].items():
        ax.plot(range(len(layers)), [norms.get(n, np.nan) for n in layers], marker="o", ms=3, label=c)
    ax.set_xticks(range(len(layers)), [_short(n) for n in layers], rotation=60, fontsize=7)
    ax.set_ylabel("‖RWS‖ / ‖θ_std‖ (per layer)")
    ax.set_xlabel("layer (input → output)")
    ax.set_title(title or "Per-layer relative RWS norm")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def fig_cosine_layers(analysis: Mapping[str, Any], path: str | Path, max_layers: int = 16) -> Path:
    """Fig. 3/4: one corruption×corruption cosine matrix per layer (and over all layers)."""
    cos = analysis["cosine"]
    layers = [n for n in analysis.get("layer_order", []) if n in cos] + (["__all__"] if "__all__" in cos else [])
    layers = layers[:max_layers]
    cols = min(5, len(layers))
    rows = math.ceil(len(layers) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.5 * rows), squeeze=False)
    im = None
    for ax, layer in zip(axes.flat, layers):
        names = list(cos[layer])
        m = np.array([[cos[layer][a].get(b, np.nan) for b in names] for a in names], dtype=float)
        im = ax.imshow(m, vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_title("all layers" if layer == "__all__" else _short(layer), fontsize=8)
        ax.set_xticks(range(len(names)), [n[:6] for n in names], rotation=90, fontsize=6)
        ax.set_yticks(range(len(names)), [n[:6] for n in names], fontsize=6)
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=5,
                        color="w" if abs(m[i, j]) > 0.6 else "k")
    for ax in list(axes.flat)[len(layers):]:
        ax.axis("off")
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="cosine similarity")
    fig.suptitle("Cosine similarity between corruptions' RWS, per layer")
    return _save(fig, path)


def fig_cross_dataset(cos: Mapping[str, Mapping[str, Mapping[str, float]]], path: str | Path,
                      label_a: str = "CIFAR-10", label_b: str = "Tiny-ImageNet") -> Path:
    """Fig. 5: for each signature of dataset B, its cosine with the same corruption's signature of
    dataset A vs the mean over A's other corruptions, per layer."""
    layers = [n for n in cos if n != "__all__"] + ["__all__"]
    b_names = list(next(iter(cos[layers[0]].values())))
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(layers)), 3.6))
    width = 0.8 / max(1, 2 * len(b_names))
    x = np.arange(len(layers))
    for j, cb in enumerate(b_names):
        same = [cos[n].get(cb, {}).get(cb, np.nan) for n in layers]
        cross = [np.nanmean([cos[n][ca][cb] for ca in cos[n] if ca != cb] or [np.nan]) for n in layers]
        ax.bar(x + (2 * j) * width, same, width, label=f"{cb}: same corruption")
        ax.bar(x + (2 * j + 1) * width, cross, width, label=f"{cb}: other corruptions (mean)")
    ax.set_xticks(x + width * (len(b_names) - 0.5), ["all" if n == "__all__" else _short(n) for n in layers],
                  rotation=45, fontsize=7)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_ylabel(f"cosine({label_a} RWS, {label_b} RWS)")
    ax.set_title(f"Same- vs cross-corruption RWS similarity across datasets ({label_a} vs {label_b})")
    ax.legend(fontsize=7)
    return _save(fig, path)


def fig_alpha_sweep(records: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Fig. 7: per corruption, bars of clean / severity-3 / severity-5 accuracy over α."""
    corrs = list(dict.fromkeys(r["corruption"] for r in records))
    sev_keys = sorted({k for r in records for k in r if k.startswith("sev")})
    keys = ["clean", *sev_keys]
    colors = {"clean": "#3a9d3a", "sev3": "#b5835a", "sev5": "#6b3e1f"}
    fig, axes = plt.subplots(1, len(corrs), figsize=(3.2 * len(corrs), 3.2), squeeze=False, sharey=True)
    for ax, c in zip(axes[0], corrs):
        rs = [r for r in records if r["corruption"] == c]
        alphas = [r["alpha"] for r in rs]
        x = np.arange(len(alphas))
        w = 0.8 / len(keys)
        for i, k in enumerate(keys):
            vals = [100 * r[k] if r.get(k) is not None else np.nan for r in rs]
            ax.bar(x + i * w, vals, w, label=k if k == "clean" else f"severity {k[3:]}",
                   color=colors.get(k))
        ax.set_xticks(x + w * (len(keys) - 1) / 2, [f"{a:g}" for a in alphas], fontsize=7)
        ax.set_title(c, fontsize=9)
        ax.set_xlabel("α")
    axes[0][0].set_ylabel("accuracy (%)")
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle("std + α·RWS_shallow")
    return _save(fig, path)


def fig_composition(records: Sequence[Mapping[str, Any]], pair: Sequence[str], path: str | Path) -> Path:
    """Fig. 8: heatmaps over (α1, α2) of the accuracy on each corruption, on clean data, and the mean."""
    c1, c2 = pair
    a1s = sorted({r["alpha_" + c1] for r in records})
    a2s = sorted({r["alpha_" + c2] for r in records})
    panels = [c1, c2, "mean", "clean"]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.9 * len(panels), 3.2), squeeze=False,
                             constrained_layout=True)
    for ax, key in zip(axes[0], panels):
        m = np.full((len(a1s), len(a2s)), np.nan)
        for r in records:
            if r.get(key) is not None:
                m[a1s.index(r["alpha_" + c1]), a2s.index(r["alpha_" + c2])] = 100 * r[key]
        im = ax.imshow(m, origin="lower", cmap="viridis")
        for i in range(len(a1s)):
            for j in range(len(a2s)):
                ax.text(j, i, "—" if np.isnan(m[i, j]) else f"{m[i, j]:.1f}", ha="center", va="center",
                        fontsize=7, color="w")
        ax.set_xticks(range(len(a2s)), [f"{a:g}" for a in a2s])
        ax.set_yticks(range(len(a1s)), [f"{a:g}" for a in a1s])
        ax.set_xlabel(f"α {c2}")
        ax.set_ylabel(f"α {c1}")
        ax.set_title({"mean": f"mean of the two", "clean": "clean"}.get(key, f"on {key}"), fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.7)
    fig.suptitle(f"std + α1·RWS_{c1} + α2·RWS_{c2}: accuracy (%)")
    return _save(fig, path)


def fig_feature_maps(maps_file: str | Path, path: str | Path) -> Path:
    """Fig. 9 from rws.stages.rws_analysis's feature-maps file: first-block feature maps of std on the
    clean image, std on the corrupted image, and the patched model on the corrupted image."""
    from rws.utils.io import load_safetensors

    t, meta = load_safetensors(maps_file)
    a_clean = t["act_clean"]
    channels = t["channels"].tolist()
    short = meta["corruption"].replace("_", " ")
    sev = meta["severity"]
    rows = [("clean\nstd", t["image"], a_clean), (f"{short} {sev}\nstd", t["corrupted"], t["act_std"]),
            (f"{short} {sev}\nstd + RWS", t["corrupted"], t["act_patched"])]
    fig, axes = plt.subplots(len(rows), len(channels) + 1, figsize=(1.3 * (len(channels) + 1), 1.5 * len(rows)))
    for i, (label, img, act) in enumerate(rows):
        axes[i][0].imshow(img.permute(1, 2, 0).clamp(0, 1).numpy())
        axes[i][0].set_ylabel(label, fontsize=7)
        for j, c in enumerate(channels):
            vmax = float(max(a_clean[c].max(), 1e-6))  # one scale per channel: the clean activation's
            axes[i][j + 1].imshow(act[c].numpy(), cmap="magma", vmin=0, vmax=vmax)
            if i == 0:
                axes[i][j + 1].set_title(f"ch {c}", fontsize=7)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"First conv block activations; cosine to clean: std {float(meta['cosine_std']):.3f}, "
                 f"patched {float(meta['cosine_patched']):.3f}", fontsize=9)
    return _save(fig, path)


def make_all(out: str | Path, plan: Mapping[str, Any], tables: Mapping[str, Any]) -> list[Path]:
    """Every figure the result files allow, into <out>/figures; skipped ones are listed in figures/NOTES.md.
    Reads sigs/full32/analysis.json (extract), figure_data/ (rws.stages.rws_analysis) and the tables."""
    out = Path(out)
    figs = out / "figures"
    data = out / "figure_data"
    made: list[Path] = []
    notes: list[str] = []
    full = out / "sigs" / "full32" / "analysis.json"
    if full.exists():
        analysis = json.loads(full.read_text())
        made.append(fig_layer_norms(analysis, figs / "fig2_layer_norms.png",
                                    "Per-layer ‖RWS‖/‖θ_std‖ (all layers, CIFAR-10)"))
        made.append(fig_cosine_layers(analysis, figs / "fig3_cosine_layers.png"))
    else:
        notes.append(f"fig2/fig3: {full} missing")
    cross = data / "fig5_cross_dataset.json"
    if cross.exists():
        made.append(fig_cross_dataset(json.loads(cross.read_text()), figs / "fig5_cross_dataset.png"))
    else:
        notes.append(f"fig5: {cross} missing (it needs signatures of two datasets: "
                     "python -m rws.stages.rws_analysis cross-cosines); skipped")
    if tables.get("alpha_sweep"):
        made.append(fig_alpha_sweep(tables["alpha_sweep"], figs / "fig7_alpha_sweep.png"))
    pair = (tables.get("composition") or {}).get("pair") or {}
    if pair:
        key = sorted(pair)[-1]
        made.append(fig_composition(pair[key], plan["pair"], figs / "fig8_composition.png"))
    maps = data / "fig9_feature_maps.safetensors"
    if maps.exists():
        made.append(fig_feature_maps(maps, figs / "fig9_feature_maps.png"))
    else:
        notes.append(f"fig9: {maps} missing (python -m rws.stages.rws_analysis feature-maps); skipped")
    if notes:
        (figs / "NOTES.md").parent.mkdir(parents=True, exist_ok=True)
        (figs / "NOTES.md").write_text("\n".join(f"- {n}" for n in notes) + "\n")
    return made


def log_wandb(paths: Sequence[Path], tables: Mapping[str, Any], out: str | Path, project: str = "rws") -> None:
    """The figures as wandb images and Table 1 as a wandb table (WANDB_MODE=offline works)."""
    import os

    import wandb

    run = wandb.init(project=project, name="rws_cpu-report", job_type="report", dir=str(out),
                     mode=os.environ.get("WANDB_MODE") or None)
    try:
        run.log({p.stem: wandb.Image(str(p)) for p in paths})
        t1 = tables.get("table1") or []
        if t1:
            cols = list(dict.fromkeys(k for r in t1 for k in r))
            run.log({"table1": wandb.Table(columns=cols, data=[[r.get(k) for k in cols] for r in t1])})
    finally:
        wandb.finish()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="RWS figures from a pipeline's result files (rws.pipelines.rws_cpu --out)")
    p.add_argument("out", help="the pipeline's output directory (tables.json, sigs/, figure_data/)")
    a = p.parse_args(argv)
    data = json.loads((Path(a.out) / "tables.json").read_text())
    for path in make_all(a.out, data["plan"], data["tables"]):
        print(path)


if __name__ == "__main__":
    main()
