"""Transfer table and Fig. 5 from rws_transfer_halves' result files.

    python -m rws.report.transfer_halves --out outputs/rws_transfer_halves

Per target dataset (A, B): accuracy % of θ_std, θ_std + the other dataset's signature (transfer),
+ its own signature (oracle) and the dedicated robust model, on clean data and each corruption.
Verdict per direction: transfer holds when the other dataset's signatures raise accuracy on their
own corruption by at least ``MIN_GAIN`` points on average over the corruptions (severity 5).
Fig. 5: per layer, the mean cosine between A's and B's signatures of the same corruption vs of
different corruptions. Files: transfer_halves.md, transfer_halves.json, figures/fig5_halves.png.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from rws.evaluation.results import read_results
from rws.report.composition_tables import accuracy_by_model, accuracy_of_plan
from rws.utils.io import write_json, write_text

MIN_GAIN = 1.0  # points, 1,000 test images: 10 images


def accuracy_at(rows: list[dict[str, Any]], severity: int,
                plan_rows: list[list[str]] | None = None) -> dict[str, dict[str, float]]:
    """Accuracy % at ``severity`` (and clean) per model name: the plan's rows by spec_id, else every row by name."""
    kept = [r for r in rows if r["suite"] == "clean" or int(r["level"]) == severity]
    return accuracy_by_model(kept) if plan_rows is None else accuracy_of_plan(kept, plan_rows)


def direction_summary(acc: Mapping[str, Mapping[str, float]], target: str, corruptions: list[str]) -> dict[str, Any]:
    """Per corruption: accuracy on it of θ_std, + transfer signature, + oracle signature, dedicated model."""
    source = "B" if target == "A" else "A"
    std = acc.get(f"{target}/std", {})
    per: dict[str, dict[str, float | None]] = {}
    for c in corruptions:
        per[c] = {"std": std.get(c), "transfer": acc.get(f"{target}/std+{source}:{c}", {}).get(c),
                  "oracle": acc.get(f"{target}/std+{target}:{c}", {}).get(c),
                  "dedicated": acc.get(f"{target}/robust/{c}", {}).get(c)}
        weights_only = acc.get(f"{target}/std+{source}:{c}|bn=std", {}).get(c)
        if weights_only is not None:
            per[c]["transfer_weights_only"] = weights_only
    complete = all(per[c][k] is not None for c in per for k in ("std", "transfer", "oracle", "dedicated"))
    if not complete:
        return {"per_corruption": per, "holds": None}
    # Judged on the corruptions where the target's own signature gains (oracle ≥ MIN_GAIN): elsewhere
    # there is no robustness to transfer. None of them: undecided.
    judged = [c for c in per if per[c]["oracle"] - per[c]["std"] >= MIN_GAIN]  # type: ignore[operator]

    def mean_gain(key: str, cs: list[str]) -> float | None:
        vals = [per[c][key] - per[c]["std"] for c in cs if per[c].get(key) is not None]  # type: ignore[operator]
        return round(sum(vals) / len(vals), 2) if vals and len(vals) == len(cs) else None

    out: dict[str, Any] = {"per_corruption": per, "judged": judged, "clean_std": std.get("clean"),
                           "transfer_gain_all": mean_gain("transfer", list(per)),
                           "oracle_gain_all": mean_gain("oracle", list(per))}
    if not judged:
        return {**out, "holds": None}
    gain, oracle = mean_gain("transfer", judged), mean_gain("oracle", judged)
    out.update(transfer_gain=gain, oracle_gain=oracle, transfer_weights_only_gain=mean_gain("transfer_weights_only", judged),
               fraction_of_oracle=round(gain / oracle, 2) if oracle else None, holds=gain >= MIN_GAIN)
    return out


def similarity(cos: Mapping[str, Mapping[str, Mapping[str, float]]], corruptions: list[str]) -> dict[str, Any]:
    """Per layer: mean cosine of same-corruption pairs (A's c vs B's c) and of different-corruption pairs."""
    out: dict[str, Any] = {}
    for layer, m in cos.items():
        same = [m[c][c] for c in corruptions if c in m and c in m[c]]
        cross = [m[a][b] for a in corruptions for b in corruptions if a != b and a in m and b in m[a]]
        if same and cross:
            out[layer] = {"same": sum(same) / len(same), "cross": sum(cross) / len(cross)}
    return out


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.1f}"


def table_markdown(acc: Mapping[str, Mapping[str, float]], rows: list[list[str]], corruptions: list[str]) -> str:
    cols = ["clean", *corruptions]
    lines = ["| model | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for label, model, *_ in rows:
        a = acc.get(model, {})
        lines.append(f"| {label} | " + " | ".join(_fmt(a.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def figure(sim: Mapping[str, Any], cos_all: Mapping[str, Mapping[str, float]] | None, corruptions: list[str],
           path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [k for k in sim if k != "__all__"] + (["__all__"] if "__all__" in sim else [])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    xs = range(len(layers))
    ax1.bar([x - 0.2 for x in xs], [sim[k]["same"] for k in layers], 0.4, label="same corruption")
    ax1.bar([x + 0.2 for x in xs], [sim[k]["cross"] for k in layers], 0.4, label="different corruptions")
    ax1.set_xticks(list(xs), layers, rotation=45, ha="right", fontsize=7)
    ax1.set_ylabel("cosine, A's vs B's signature")
    ax1.legend(fontsize=8)
    ax1.set_title("Fig. 5: signature similarity across the two datasets", fontsize=9)
    if cos_all:
        grid = [[cos_all[a][b] for b in corruptions] for a in corruptions]
        im = ax2.imshow(grid, cmap="RdBu", vmin=-1, vmax=1)
        ax2.set_xticks(range(len(corruptions)), [f"B {c}" for c in corruptions], rotation=45, ha="right", fontsize=7)
        ax2.set_yticks(range(len(corruptions)), [f"A {c}" for c in corruptions], fontsize=7)
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                ax2.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7)
        ax2.set_title("all signature layers", fontsize=9)
        fig.colorbar(im, ax=ax2, shrink=0.8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(out: Path, info: Mapping[str, Any]) -> str:
    corruptions = list(info["corruptions"])
    parts = [f"## Transfer between CIFAR-10 halves sharing a pre-trained θ_init (`model={info['model']}`, "
             f"θ_pre on {info.get('pretrain', 'cifar10')})", ""]
    summary: dict[str, Any] = {}
    for target, rows in info["rows"].items():
        res = out / target / "eval"
        all_rows = read_results(res) if (res / "results.jsonl").exists() else []
        for sev in info["severities"]:
            acc = accuracy_at(all_rows, int(sev), rows)
            parts += [f"### on {target}, severity {sev} (accuracy %)", "", table_markdown(acc, rows, corruptions), ""]
        acc5 = accuracy_at(all_rows, max(int(s) for s in info["severities"]), rows)
        summary[target] = direction_summary(acc5, target, corruptions)
        d = summary[target]
        src = "B" if target == "A" else "A"
        sev = max(info["severities"])
        if "judged" not in d:
            parts += [f"Verdict {src} → {target}: undecided (results incomplete).", ""]
        elif d["holds"] is None:
            parts += [f"Verdict {src} → {target}: undecided — none of {target}'s own signatures gains "
                      f"{MIN_GAIN:g} point on its corruption at severity {sev}, so there is nothing to transfer "
                      f"(mean over all: oracle {d['oracle_gain_all']:+.1f}, transfer {d['transfer_gain_all']:+.1f}).", ""]
        else:
            wo = d.get("transfer_weights_only_gain")
            parts += [f"Verdict {src} → {target} (mean gain on the signature's own corruption at severity {sev}, over "
                      f"the corruptions whose own signature gains ≥ {MIN_GAIN:g} point: {', '.join(d['judged'])}): "
                      f"**{'holds' if d['holds'] else 'not held'}** — transfer {d['transfer_gain']:+.1f}, oracle "
                      f"{d['oracle_gain']:+.1f} points"
                      + (f" ({d['fraction_of_oracle']:.0%} of the oracle gain)" if d["fraction_of_oracle"] is not None
                         else "")
                      + (f"; weights only (target's BN statistics) {wo:+.1f}" if wo is not None else "") + ".", ""]
    cos_path = out / "figure_data" / "fig5_cross_halves.json"
    if cos_path.exists():
        cos = json.loads(cos_path.read_text())
        sim = similarity(cos, corruptions)
        summary["fig5"] = sim
        parts += ["### Fig. 5: cosine between A's and B's signatures", "", "| layer | same corruption | different |",
                  "|---|---:|---:|"]
        parts += [f"| {k} | {v['same']:.3f} | {v['cross']:.3f} |" for k, v in sim.items()]
        higher = sum(v["same"] > v["cross"] for v in sim.values())
        parts += ["", f"Same-corruption signatures are more similar across datasets than different-corruption "
                      f"ones in {higher} of {len(sim)} rows.", ""]
        figure(sim, cos.get("__all__"), corruptions, out / "figures" / "fig5_halves.png")
    md = "\n".join(parts)
    write_text(out / "transfer_halves.md", md)
    write_json(out / "transfer_halves.json", {"summary": summary, "plan": dict(info)})
    return md


def main(argv: list[str] | None = None) -> None:
    from rws.report.study_cli import report_main

    report_main(argv, __doc__, "outputs/rws_transfer_halves", write_report)


if __name__ == "__main__":
    from rws.cli.entry import script_entry

    script_entry(main)
