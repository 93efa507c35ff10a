"""Robust Weight Signatures analysis figures (PNG, matplotlib Agg), from the pipeline's files only:
``sigs/*/analysis.json`` (per-layer norms and cosines), signature files, exports and the tables
built from ``results.jsonl``.

  fig2_layer_norms.png        per-layer ‖RWS‖ / ‖θ_std‖ per corruption (paper Fig. 2)
  fig3_cosine_layers.png      per-layer cosine similarity between corruptions' RWS (Fig. 3/4)
  fig5_cross_dataset.png      same- vs cross-corruption similarity of CIFAR-10 vs Tiny-ImageNet RWS (Fig. 5)
  fig7_alpha_sweep.png        clean / severity 3 / severity 5 accuracy vs α (Fig. 7)
  fig8_composition.png        two signatures composed over an α grid (Fig. 8)
  fig9_feature_maps.png       first conv block activations: std vs patched on one corrupted image (Fig. 9)
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from rws.config import CONF_DIR


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


def _weight_tensors(path: str | Path) -> dict[str, Any]:
    from rws.weights.signature_io import load_signature

    sig = load_signature(path)
    return {k: v.double().flatten() for k, v in sig.rws.items()}


def _key_layers(sig_path: str | Path) -> dict[str, str]:
    """state-dict key -> layer name (rws.models.layer_groups) of the signature's architecture."""
    import torch

    from rws.models import layer_groups
    from rws.weights.export import build_model
    from rws.weights.signature_io import load_signature

    try:
        with torch.device("meta"):
            model = build_model(load_signature(sig_path).model_cfg)
    except Exception:  # no usable model config: fall back to module names
        return {}
    return {k: name for name, keys in layer_groups(model) for k in keys}


def cross_dataset_cosines(sigs_a: Mapping[str, str | Path], sigs_b: Mapping[str, str | Path]
                          ) -> dict[str, dict[str, dict[str, float]]]:
    """Per layer (and '__all__'), cosine between every signature of dataset A and of dataset B, over
    the weight keys both carry (heads differ across datasets and are never in a shallow signature)."""
    import torch

    a = {c: _weight_tensors(p) for c, p in sigs_a.items()}
    b = {c: _weight_tensors(p) for c, p in sigs_b.items()}
    keys = sorted(set.intersection(*[set(t) for t in [*a.values(), *b.values()]]))
    owner = _key_layers(next(iter(sigs_a.values())))
    rank = {k: i for i, k in enumerate(owner)}  # forward order of the network, not string order
    keys.sort(key=lambda k: (rank.get(k, len(rank)), k))
    layers: dict[str, list[str]] = {}
    for k in keys:
        layers.setdefault(owner.get(k, k.rsplit(".", 1)[0]), []).append(k)
    layers["__all__"] = keys
    out: dict[str, dict[str, dict[str, float]]] = {}
    for layer, ks in layers.items():
        out[layer] = {}
        for ca, ta in a.items():
            va = torch.cat([ta[k] for k in ks])
            out[layer][ca] = {}
            for cb, tb in b.items():
                vb = torch.cat([tb[k] for k in ks])
                den = float(va.norm() * vb.norm())
                out[layer][ca][cb] = float(va @ vb) / den if den > 0 else float("nan")
    return out


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


def first_block_activations(model: Any, x: Any) -> Any:
    """Output of the first conv block (conv → BN → ReLU): the first ReLU's output."""
    import torch

    relu = next(m for m in model.modules() if isinstance(m, torch.nn.ReLU))
    acts: list[Any] = []
    h = relu.register_forward_hook(lambda _m, _i, o: acts.append(o.detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        h.remove()
    return acts[0]


def fig_feature_maps(std_export: str | Path, signature: str | Path, image: Any, corruption: str, path: str | Path,
                     severity: int = 5, table: str = "cifar", n_channels: int = 8, seed: int = 0) -> Path:
    """Fig. 9: first-block feature maps of std on the clean image, std on the corrupted image, and the
    patched model on the corrupted image (the patch is taken off again afterwards)."""
    import torch

    from rws.corruptions import corrupt
    from rws.weights.export import load_export
    from rws.weights.patching import Patcher

    model = load_export(std_export).build().eval()
    x = image[None] if image.dim() == 3 else image[:1]
    xc = corrupt(x, corruption, severity, table=table, generator=torch.Generator().manual_seed(seed))
    a_clean = first_block_activations(model, x)[0]
    a_std = first_block_activations(model, xc)[0]
    with Patcher(model, [(signature, 1.0)]):
        a_patch = first_block_activations(model, xc)[0]
    ch = torch.argsort(a_clean.flatten(1).var(1), descending=True)[:n_channels].tolist()
    short = corruption.replace("_", " ")
    rows = [("clean\nstd", x[0], a_clean), (f"{short} {severity}\nstd", xc[0], a_std),
            (f"{short} {severity}\nstd + RWS", xc[0], a_patch)]
    fig, axes = plt.subplots(len(rows), n_channels + 1, figsize=(1.3 * (n_channels + 1), 1.5 * len(rows)))
    for i, (label, img, act) in enumerate(rows):
        axes[i][0].imshow(img.permute(1, 2, 0).clamp(0, 1).numpy())
        axes[i][0].set_ylabel(label, fontsize=7)
        for j, c in enumerate(ch):
            vmax = float(max(a_clean[c].max(), 1e-6))  # one scale per channel: the clean activation's
            axes[i][j + 1].imshow(act[c].numpy(), cmap="magma", vmin=0, vmax=vmax)
            if i == 0:
                axes[i][j + 1].set_title(f"ch {c}", fontsize=7)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    sim = [float(torch.nn.functional.cosine_similarity(a.flatten(), a_clean.flatten(), dim=0)) for a in (a_std, a_patch)]
    fig.suptitle(f"First conv block activations; cosine to clean: std {sim[0]:.3f}, patched {sim[1]:.3f}",
                 fontsize=9)
    return _save(fig, path)


def _test_image(data_args: Sequence[str], index: int = 0) -> tuple[Any, str]:
    """One test image (and the corruption table) from the data config the pipeline evaluated on."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    root = Path(__file__).resolve().parents[2]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("evaluate", overrides=list(data_args))
    dm = instantiate(cfg.data)
    dm.setup()
    x, _ = next(iter(dm.test_dataloader()))
    return x[index], dm.corruption_table


def make_all(out: str | Path, plan: Mapping[str, Any], tables: Mapping[str, Any],
             data_args: Sequence[str] | None = None) -> list[Path]:
    """Every figure the files allow, into <out>/figures; skipped ones are listed in figures/NOTES.md."""
    out = Path(out)
    figs = out / "figures"
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
    tiny_dir = out / "tiny" / "sigs" / "shallow32"
    cifar_dir = out / "sigs" / "shallow32"
    tiny_sigs = {p.stem: p for p in sorted(tiny_dir.glob("*.safetensors"))} if tiny_dir.exists() else {}
    cifar_sigs = {p.stem: p for p in sorted(cifar_dir.glob("*.safetensors"))} if cifar_dir.exists() else {}
    if tiny_sigs and cifar_sigs:
        cos = cross_dataset_cosines(cifar_sigs, tiny_sigs)
        (figs / "fig5_cross_dataset.json").parent.mkdir(parents=True, exist_ok=True)
        (figs / "fig5_cross_dataset.json").write_text(json.dumps(cos, indent=1))
        made.append(fig_cross_dataset(cos, figs / "fig5_cross_dataset.png"))
    else:
        notes.append("fig5: needs signatures of two datasets (CIFAR-10 sigs/shallow32 and tiny/sigs/shallow32); "
                     "skipped")
    if tables.get("alpha_sweep"):
        made.append(fig_alpha_sweep(tables["alpha_sweep"], figs / "fig7_alpha_sweep.png"))
    pair = (tables.get("composition") or {}).get("pair") or {}
    if pair:
        key = sorted(pair)[-1]
        made.append(fig_composition(pair[key], plan["pair"], figs / "fig8_composition.png"))
    c = plan["corruptions"][0]
    std_export = out / "std" / "export"
    sig = cifar_dir / f"{c}.safetensors"
    if std_export.exists() and sig.exists() and data_args is not None:
        img, table = _test_image(data_args)
        made.append(fig_feature_maps(std_export, sig, img, c, figs / "fig9_feature_maps.png", table=table))
    else:
        notes.append("fig9: std export, signature or data missing")
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
