"""The adapters paper's tables from result files only (rws.pipelines.adapters_cpu writes them):

    python -m rws.report.adapter_tables outputs/adapters_cpu [--out outputs/adapters_cpu/report]

Reads <root>/table1 (evaluate.py rows: every model in each mode, adversarial suite: clean and
robust accuracy on the same images) and the sweeps <root>/{beta,ensemble,independent} (sweep.py
rows on shared targets), and writes adapters.md (Table 1, the alpha table, the beta table, soup vs
ensemble, independent-model soups, and which of the paper's claims held) plus adapters.json.

The beta table's "mean" is over the clean target and the corruption targets (the paper's Table 3
mean is over distribution shifts; robust accuracy is its own column).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from rws.evaluation.results import read_results
from rws.utils.io import write_json, write_text

Record = dict[str, Any]
TABLE1_ROWS = ("nominal", "adversarial", "cotrain_shared", "cotrain_cls_token", "cotrain_layernorm", "cotrain_dual_bn",
              "cotrain_dualparams_bn")
# A claim "holds" when the gap is at least this many accuracy points (noise at a few hundred images).
MARGIN = 0.05
ONE_POINT = 0.01


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _robust(rows: Iterable[Record]) -> float | None:
    vals = [r["value"] for r in rows if r["suite"] == "adversarial" and r["condition"] not in ("clean", "union")]
    return vals[0] if vals else None


def _clean(rows: Iterable[Record]) -> float | None:
    rows = list(rows)
    vals = [r["value"] for r in rows if r["condition"] == "clean" and r["suite"] == "clean"]
    vals = vals or [r["value"] for r in rows if r["condition"] == "clean"]
    return vals[0] if vals else None


def _by(rows: Iterable[Record], field: str) -> dict[str, list[Record]]:
    out: dict[str, list[Record]] = {}
    for r in rows:
        if r.get("metric") == "acc":
            out.setdefault(str(r[field]), []).append(r)
    return out


# ----- Table 1 and the alpha table ---------------------------------------------------------------
def main_run(root: Path) -> str:
    """The co-trained run the alpha table, the sweeps and the claims are about: <root>/plan.json
    (written by adapters_cpu), else the cls-token run of the default driver."""
    plan = root / "plan.json"
    return json.loads(plan.read_text())["main_run"] if plan.is_file() else "cotrain_cls_token"


def _label(run: str) -> str:
    return run.removeprefix("cotrain_").replace("_", "-")


def table1(rows: list[Record]) -> dict[str, dict[str, float | None]]:
    """{run: {clean_mode_clean, clean_mode_robust, robust_mode_clean, robust_mode_robust}}; a plain
    model has one mode: nominal fills the clean-mode columns, adversarial the robust-mode ones."""
    models = _by(rows, "model")
    table: dict[str, dict[str, float | None]] = {}
    order = {n: i for i, n in enumerate(TABLE1_ROWS)}
    for name in sorted({m.split("@")[0] for m in models}, key=lambda n: (order.get(n, len(order)), n)):
        if name in models:  # a plain model
            c, r = _clean(models[name]), _robust(models[name])
            cols = ("clean_mode", "robust_mode")[name == "adversarial"]
            table[name] = {f"{cols}_clean": c, f"{cols}_robust": r}
            continue
        entry: dict[str, float | None] = {}
        for mode in ("clean", "robust"):
            got = models.get(f"{name}@{mode}", [])
            entry[f"{mode}_mode_clean"], entry[f"{mode}_mode_robust"] = _clean(got), _robust(got)
        table[name] = entry
    return table


def _table1_md(t: dict[str, dict[str, float | None]]) -> str:
    lines = ["| model | clean mode: clean | clean mode: robust | robust mode: clean | robust mode: robust |",
             "|---|---|---|---|---|"]
    for name, e in t.items():
        if name.startswith("cotrain_alpha"):
            continue
        lines.append(f"| {name} | " + " | ".join(_pct(e.get(k)) for k in (
            "clean_mode_clean", "clean_mode_robust", "robust_mode_clean", "robust_mode_robust")) + " |")
    return "\n".join(lines)


def alpha_table(t: dict[str, dict[str, float | None]],
                main: str = "cotrain_cls_token") -> list[tuple[float, float | None, float | None]]:
    """(alpha, clean accuracy in clean mode, robust accuracy in robust mode), alpha ascending; the
    main run is alpha 0.5, adversarial training alpha 0 and nominal training alpha 1."""
    out = []
    for name, e in t.items():
        if name == main:
            out.append((0.5, e.get("clean_mode_clean"), e.get("robust_mode_robust")))
        elif name.startswith("cotrain_alpha"):
            out.append((float(name[len("cotrain_alpha"):]), e.get("clean_mode_clean"), e.get("robust_mode_robust")))
    if "adversarial" in t:
        out.append((0.0, t["adversarial"].get("robust_mode_clean"), t["adversarial"].get("robust_mode_robust")))
    if "nominal" in t:
        out.append((1.0, t["nominal"].get("clean_mode_clean"), t["nominal"].get("clean_mode_robust")))
    return sorted(out)


# ----- sweeps -------------------------------------------------------------------------------------
def sweep_table(sweep_dir: Path) -> list[dict[str, Any]]:
    """One entry per spec of a sweep, in sweep order: label, clean, robust, corruption accuracies,
    their mean and the mean over clean + corruptions."""
    meta = json.loads((sweep_dir / "sweep.json").read_text())
    rows = _by(read_results(sweep_dir), "spec_id")
    out = []
    for sid, label, extra in zip(meta["spec_ids"], meta["labels"], meta["extras"]):
        got = rows.get(sid, [])
        corr = {r["condition"]: r["value"] for r in got if r["suite"] == "corruptions"}
        clean = _clean(got)
        shift = [clean, *corr.values()] if clean is not None else list(corr.values())
        out.append({"label": label, **extra, "clean": clean, "robust": _robust(got), "corruptions": corr,
                    "corruption_mean": sum(corr.values()) / len(corr) if corr else None,
                    "mean": sum(shift) / len(shift) if shift else None})
    return out


def _sweep_md(entries: list[dict[str, Any]], xs: list[Any], x_name: str) -> str:
    corr_names = sorted({c for e in entries for c in e["corruptions"]})
    head = f"| {x_name} | clean | robust | " + " | ".join(corr_names) + " | corruption mean | mean (clean + corr.) |"
    lines = [head, "|" + "---|" * (5 + len(corr_names))]
    for x, e in zip(xs, entries):
        lines.append(f"| {x} | {_pct(e['clean'])} | {_pct(e['robust'])} | "
                     + " | ".join(_pct(e["corruptions"].get(c)) for c in corr_names)
                     + f" | {_pct(e['corruption_mean'])} | {_pct(e['mean'])} |")
    return "\n".join(lines)


def _xs(entries: list[dict[str, Any]], key: str, fallback: Iterable[Any]) -> list[Any]:
    if entries and all(key in e for e in entries):
        return [e[key] for e in entries]
    return list(fallback)[:len(entries)]


# ----- claims -------------------------------------------------------------------------------------
def claims(t: dict[str, dict[str, float | None]], betas: list[float], beta: list[dict[str, Any]],
           main: str = "cotrain_cls_token") -> list[str]:
    """The paper's four claims, each with the numbers that decide it (about ``main``'s adapter)."""
    out = []
    shared = t.get("cotrain_shared", {}).get("robust_mode_robust")
    cls = t.get(main, {}).get("robust_mode_robust")
    name = _label(main)
    adv = t.get("adversarial", {}).get("robust_mode_robust")
    if None not in (shared, cls, adv):
        held = shared < cls - MARGIN and shared < adv - MARGIN  # type: ignore[operator]
        out.append(f"- Fully shared co-training loses robustness: **{'held' if held else 'did not hold'}** "
                   f"(robust accuracy: shared {_pct(shared)}, {name} robust mode {_pct(cls)}, adversarial {_pct(adv)}).")
        held = cls >= adv - MARGIN  # type: ignore[operator]
        out.append(f"- A {name} adapter keeps robustness (within {100 * MARGIN:.0f} points of adversarial training): "
                   f"**{'held' if held else 'did not hold'}** ({_pct(cls)} vs {_pct(adv)}).")
    pairs = [(b, e) for b, e in zip(betas, beta) if e["clean"] is not None and e["robust"] is not None]
    if len(pairs) >= 3:
        inside = [(b, e) for b, e in pairs if 0.0 <= b <= 1.0]
        # Smooth trade-off: clean accuracy rises and robust accuracy falls with beta, allowing
        # steps against the trend up to MARGIN (sampling noise).
        bad_clean = sum(1 for (_, a), (_, c) in zip(inside, inside[1:]) if c["clean"] < a["clean"] - MARGIN)
        bad_robust = sum(1 for (_, a), (_, c) in zip(inside, inside[1:]) if c["robust"] > a["robust"] + MARGIN)
        ends = inside[-1][1]["clean"] - inside[0][1]["clean"], inside[0][1]["robust"] - inside[-1][1]["robust"]
        held = bad_clean == 0 and bad_robust == 0 and ends[0] > 0 and ends[1] > 0
        out.append(f"- Beta trades clean for robust accuracy smoothly: **{'held' if held else 'did not hold'}** "
                   f"(beta 0 -> 1: clean {_pct(inside[0][1]['clean'])} -> {_pct(inside[-1][1]['clean'])}, robust "
                   f"{_pct(inside[0][1]['robust'])} -> {_pct(inside[-1][1]['robust'])}; steps against the trend "
                   f"by more than {100 * MARGIN:.0f} points: {bad_clean} clean, {bad_robust} robust).")
    with_corr = [(b, e) for b, e in zip(betas, beta) if e["corruption_mean"] is not None]
    if with_corr:
        best_b, best = max(with_corr, key=lambda p: p[1]["corruption_mean"])
        ends = [e["corruption_mean"] for b, e in with_corr if b in (0.0, 1.0)]
        gain = best["corruption_mean"] - max(ends) if ends else 0.0
        # A win smaller than ONE_POINT over the better mode is within sampling noise: not a result.
        verdict = ("held" if 0.0 < best_b < 1.0 and gain >= ONE_POINT else
                   "undecided (within 1 point of the better mode)" if 0.0 < best_b < 1.0 else "did not hold")
        out.append(f"- An intermediate beta is best on corruptions: **{verdict}** "
                   f"(best corruption mean {_pct(best['corruption_mean'])} at beta {best_b:g}, "
                   f"{100 * gain:+.1f} points over the better of beta 0 and 1).")
    return out


def _figures(root: Path, out: Path, result: dict[str, Any]) -> list[str]:
    """The figures whose data is there; returns their file names."""
    from rws.report import adapter_figures as figs

    made = []
    if result.get("beta"):
        figs.beta_curves(result["beta"], out / "beta_curves.png")
        made.append("beta_curves.png")
        curves = {"adapter soup (beta)": result["beta"]}
        for name, label in (("ensemble", "mode ensemble (lambda)"), ("independent", "independent soup")):
            if result.get(name):
                curves[label] = result[name]
        figs.soup_vs_ensemble(curves, out / "soup_vs_ensemble.png")
        made.append("soup_vs_ensemble.png")
    plane = root / "plane"
    if (plane / "sweep.json").exists():
        entries = sweep_table(plane)
        meta = json.loads((plane / "sweep.json").read_text())
        points = [tuple(p) for p in meta["generator"]["points"]]
        if all(e["clean"] is not None and e["robust"] is not None for e in entries):
            grids = figs.token_plane(points, [e["clean"] for e in entries], [e["robust"] for e in entries],
                                     out / "token_plane.png")
            best = np.unravel_index(np.nanargmax(grids["normalized_mean"]), grids["normalized_mean"].shape)
            result["plane_best_normalized_mean"] = {"beta1": float(grids["beta1"][best[1]]),
                                                    "beta2": float(grids["beta2"][best[0]])}
            made.append("token_plane.png")
    exports = {name: root / name / "export" for name in ("nominal", "adversarial", "cotrain_alpha0.2",
                                                           main_run(root), "cotrain_alpha0.8")}
    weights = {}
    for name, p in exports.items():
        if (p / "model.safetensors").exists():
            try:
                weights[name] = figs.patch_embed_weight(p)
            except ValueError:  # not a ViT (the --cnn driver): no embedder filters to show
                pass
    if weights:
        figs.embedder_filters(weights, out / "embedder_filters.png")
        made.append("embedder_filters.png")
    return made


def report(root: Path, out: Path) -> dict[str, Any]:
    from rws.pipelines.adapters_cpu import BETAS, ENSEMBLE_WEIGHTS, INDEPENDENT_WS

    main = main_run(root)
    result: dict[str, Any] = {"root": str(root), "main_run": main}
    md = ["# Adapters at CPU scale", "", f"From the result files under `{root}` "
          "(`python -m rws.report.adapter_tables " + str(root) + "`). Accuracies in %.", ""]
    t = table1(read_results(root / "table1")) if (root / "table1").exists() else {}
    result["table1"] = t
    if t:
        md += ["## Table 1 analog (clean and PGD-40 robust accuracy at the run's eps)", "", _table1_md(t), ""]
        alphas = alpha_table(t, main)
        result["alpha"] = alphas
        md += [f"## Co-training weight alpha (Fig. 3 analog; {_label(main)} adapters)", "",
               "| alpha | clean (clean mode) | robust (robust mode) |", "|---|---|---|"]
        md += [f"| {a:g} | {_pct(c)} | {_pct(r)} |" for a, c, r in alphas] + [""]
    beta: list[dict[str, Any]] = []
    betas: list[float] = []
    for name, title, fallback, x_name in (
            ("beta", "Adversarial model soups over beta (Table 7 analog)", BETAS, "beta"),
            ("ensemble", "Ensembles of the clean and robust modes, weight on clean (Fig. 4 / Table 8 analog)",
             ENSEMBLE_WEIGHTS, "lambda"),
            ("independent", "Soups of independent nominal and adversarial models, weight on nominal (Table 9 analog)",
             INDEPENDENT_WS, "beta")):
        d = root / name
        if not (d / "sweep.json").exists():
            continue
        entries = sweep_table(d)
        xs = _xs(entries, "beta", fallback) if name == "beta" else list(fallback)[:len(entries)]
        result[name] = [{x_name: x, **e} for x, e in zip(xs, entries)]
        md += [f"## {title}", "", _sweep_md(entries, xs, x_name), ""]
        if name == "beta":
            beta, betas = entries, [float(x) for x in xs]
            best = max((p for p in zip(xs, entries) if p[1]["mean"] is not None), key=lambda p: p[1]["mean"],
                       default=None)
            if best is not None:
                md += [f"Best beta by the mean over clean + corruptions (Table 3's selection): **{best[0]}** "
                       f"({_pct(best[1]['mean'])}).", ""]
    figures = _figures(root, out, result)
    if figures:
        md += ["## Figures", "", *[f"- `{f}`" for f in figures], ""]
    found = claims(t, betas, beta, main)
    result["claims"] = found
    if found:
        md += ["## Which of the paper's claims held at this scale", "", *found, ""]
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "adapters.md", "\n".join(md))
    write_json(out / "adapters.json", result)
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", help="the adapters_cpu output directory")
    p.add_argument("--out", default=None, help="where adapters.md/json go (default <root>/report)")
    a = p.parse_args(argv)
    root = Path(a.root)
    if not root.is_dir():
        print(f"error: no such directory {root}, root, expected the adapters_cpu output directory", file=sys.stderr)
        raise SystemExit(2)
    report(root, Path(a.out) if a.out else root / "report")
    print((Path(a.out) if a.out else root / "report") / "adapters.md")


if __name__ == "__main__":
    main()
