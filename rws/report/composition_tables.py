"""Composition tables and figure (the RWS paper's Fig. 8) from rws_composition's result files.

    python -m rws.report.composition_tables --out outputs/rws_composition

Per network: one row per evaluated model (θ_std, the dedicated θ_c, each single signature, the
coefficient sets), accuracy % on clean data, on each composed corruption, their mean, and the mean
over the corruptions that were not composed. A verdict per network says whether the paper's claim
holds there: some composition with Σα ≤ 1 gains on the composed corruptions (mean, ≥ 1 point over
θ_std) while clean and not-composed accuracy drop by at most ``TOLERANCE`` points. A second line
says whether composing adds up at all: which compositions with Σα ≤ 1 beat the best single
signature's composed mean by ``MIN_GAIN`` points, whatever their clean cost.
Files: composition.md, composition.json, figures/composition.png (gain over θ_std per condition).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from rws.evaluation.results import read_results
from rws.utils.io import write_json, write_text

# Points of clean / not-composed accuracy a composition may lose and still count as "minimal loss",
# and the least mean gain on the composed corruptions that counts as a gain (the study's 2,000 test
# images: one point is 20 images; every model is evaluated on the same images).
TOLERANCE = 2.0
MIN_GAIN = 1.0
# θ_std must be clearly above chance (here: twice chance) for any verdict: a network that has not
# learned has no robustness to add up, whatever the patched rows do.
CHANCE_FACTOR = 2.0


def accuracy_by_model(rows: list[dict[str, Any]], key: str = "model") -> dict[str, dict[str, float]]:
    """model name (or another row field, e.g. spec_id) -> condition ('clean' or a corruption) -> accuracy in %."""
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        if r.get("metric") != "acc" or r.get(key) is None:  # the engine's accuracy metric (CONTRACTS "Result row")
            continue
        cond = "clean" if r["suite"] == "clean" else str(r["condition"])
        out.setdefault(str(r[key]), {})[cond] = 100.0 * float(r["value"])
    return out


def accuracy_of_plan(rows: list[dict[str, Any]], plan_rows: list[list[str]]) -> dict[str, dict[str, float]]:
    """Plan model name -> condition -> accuracy %, for the plan's rows ``[label, name, spec_id]``.
    Looked up by spec_id: a spec's name is cosmetic (not part of its id), so cells resumed from a run
    that named the same recipe differently keep that run's name in ``model``. Rows without a spec_id
    (plans written before it was recorded) are looked up by name."""
    by_name, by_id = accuracy_by_model(rows), accuracy_by_model(rows, key="spec_id")
    out: dict[str, dict[str, float]] = {}
    for row in plan_rows:
        name, sid = row[1], (row[2] if len(row) > 2 else None)
        out[name] = by_id.get(sid, {}) if sid is not None else by_name.get(name, {})
    return out


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals and len(vals) == len(values) else None


def network_table(acc: Mapping[str, Mapping[str, float]], rows: list[list[str]], composed: list[str],
                  others: list[str]) -> list[dict[str, Any]]:
    """Records of one network's table, in the plan's row order."""
    records = []
    for label, model, *_ in rows:
        a = acc.get(model, {})
        rec: dict[str, Any] = {"row": label, "model": model, "clean": a.get("clean")}
        rec.update({c: a.get(c) for c in composed})
        rec["composed mean"] = _mean([a.get(c) for c in composed])
        rec["others mean"] = _mean([a.get(c) for c in others])
        records.append(rec)
    return records


def single_gain(records: list[dict[str, Any]], composed: list[str]) -> float | None:
    """Mean over the composed corruptions of (single RWS_c at α = 1 on c) − (θ_std on c), in points."""
    base = records[0]
    gains = []
    for c in composed:
        rec = next((r for r in records if r["row"] == f"single RWS_{c}, α = 1"), None)
        if rec is None or rec.get(c) is None or base.get(c) is None:
            return None
        gains.append(rec[c] - base[c])
    return sum(gains) / len(gains) if gains else None


def verdict(records: list[dict[str, Any]], coefficient_sets: Mapping[str, list[float]],
            composed: list[str] | None = None, num_classes: int = 10) -> dict[str, Any]:
    """Whether some composition with Σα ≤ 1 gains on the composed corruptions at minimal loss.
    Undecided when θ_std has not learned (clean < twice chance) or when the single signatures
    themselves do not gain (nothing to compose)."""
    base = records[0]
    if base["clean"] is None or base["composed mean"] is None:
        return {"holds": None, "why": "θ_std has no results"}
    floor = CHANCE_FACTOR * 100.0 / num_classes
    if base["clean"] < floor:
        return {"holds": None, "why": f"θ_std reaches {base['clean']:.1f} % clean accuracy (< {floor:g} %, twice "
                                      f"chance): the network has not learned, there is nothing to compose"}
    single = single_gain(records, composed) if composed else None
    if single is not None and single < MIN_GAIN:
        return {"holds": None, "single_gain": round(single, 2),
                "why": f"the single signatures gain {single:+.1f} points on their own corruptions on average "
                       f"(< {MIN_GAIN:g}): there is no robustness to compose"}
    checked = []
    for rec in records:
        coefs = coefficient_sets.get(rec["row"])
        if coefs is None or sum(coefs) > 1.0 + 1e-9 or rec["composed mean"] is None:
            continue
        gain = rec["composed mean"] - base["composed mean"]
        clean_drop = base["clean"] - rec["clean"]
        other_drop = (base["others mean"] - rec["others mean"]) if rec["others mean"] is not None else 0.0
        ok = gain >= MIN_GAIN and clean_drop <= TOLERANCE and other_drop <= TOLERANCE
        checked.append({"row": rec["row"], "gain": round(gain, 2), "clean_drop": round(clean_drop, 2),
                        "others_drop": round(other_drop, 2), "holds": ok})
    holding = [c for c in checked if c["holds"]]
    return {"holds": bool(holding), "compositions": checked,
            "rule": f"Σα ≤ 1, composed mean +{MIN_GAIN:g} points or more, clean and others down ≤ {TOLERANCE:g}",
            "beyond_singles": beyond_singles(records, coefficient_sets, composed or [])}


def beyond_singles(records: list[dict[str, Any]], coefficient_sets: Mapping[str, list[float]],
                   composed: list[str]) -> dict[str, Any] | None:
    """Whether composing adds up: the compositions with Σα ≤ 1 whose composed mean beats the best
    single signature's (at α = 1) by ``MIN_GAIN`` or more, whatever they cost on clean data. None when
    the table has no single-signature rows."""
    singles = [r for r in records if r["row"] in {f"single RWS_{c}, α = 1" for c in composed}
               and r["composed mean"] is not None]
    if not singles:
        return None
    best = max(singles, key=lambda r: r["composed mean"])
    rows = [{"row": r["row"], "composed mean": round(r["composed mean"], 2),
             "over best single": round(r["composed mean"] - best["composed mean"], 2)}
            for r in records
            if r["row"] in coefficient_sets and sum(coefficient_sets[r["row"]]) <= 1.0 + 1e-9
            and r["composed mean"] is not None and r["composed mean"] - best["composed mean"] >= MIN_GAIN]
    return {"best_single": best["row"], "best_single_composed_mean": round(best["composed mean"], 2),
            "compositions": rows}


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.1f}"


def to_markdown(net: str, model: str, records: list[dict[str, Any]], composed: list[str], v: Mapping[str, Any]) -> str:
    cols = ["clean", *composed, "composed mean", "others mean"]
    lines = [f"### {net} (`model={model}`)", "", "| model | " + " | ".join(cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for rec in records:
        lines.append(f"| {rec['row']} | " + " | ".join(_fmt(rec[c]) for c in cols) + " |")
    if v.get("holds") is None:
        lines += ["", f"Verdict: undecided ({v.get('why')})."]
    else:
        good = [c["row"] for c in v["compositions"] if c["holds"]]
        lines += ["", f"Verdict ({v['rule']}): " + (f"**holds** for {', '.join(good)}." if good else "**not held**.")]
        beyond = v.get("beyond_singles")
        if beyond is not None:
            found = ", ".join(f"{r['row']} ({r['composed mean']:.1f}, {r['over best single']:+.1f})"
                              for r in beyond["compositions"])
            lines += ["", f"Beyond the single signatures (composed mean of the best one, {beyond['best_single']}: "
                          f"{beyond['best_single_composed_mean']:.1f}; compositions with Σα ≤ 1 at least "
                          f"{MIN_GAIN:g} point above it, whatever their clean cost): " + (found or "none") + "."]
    return "\n".join(lines)


def figure(tables: Mapping[str, list[dict[str, Any]]], composed: list[str], others: list[str], path: Path) -> Path:
    """Gain over θ_std (points) per row and condition, one heatmap per network."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conds = ["clean", *composed, *[f"others mean"]]
    fig, axes = plt.subplots(1, len(tables), figsize=(5.2 * len(tables), 5.5), squeeze=False)
    for ax, (net, recs) in zip(axes[0], tables.items()):
        base = recs[0]
        grid = [[(r[c] - base[c]) if r[c] is not None and base[c] is not None else float("nan") for c in conds]
                for r in recs[1:]]
        im = ax.imshow(grid, cmap="RdBu", vmin=-20, vmax=20, aspect="auto")
        ax.set_xticks(range(len(conds)), conds, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(recs) - 1), [r["row"] for r in recs[1:]], fontsize=7)
        ax.set_title(f"{net}: accuracy − θ_std (points)", fontsize=9)
        for i, row in enumerate(grid):
            for j, val in enumerate(row):
                if val == val:
                    ax.text(j, i, f"{val:+.0f}", ha="center", va="center", fontsize=6)
        fig.colorbar(im, ax=ax, shrink=0.6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(out: Path, info: Mapping[str, Any]) -> str:
    composed, others = list(info["composed"]), list(info["others"])
    parts = [f"## Composition (Fig. 8 protocol), severity {info['severity']}, accuracy %", ""]
    tables: dict[str, list[dict[str, Any]]] = {}
    verdicts: dict[str, Any] = {}
    for net, meta in info["networks"].items():
        res_dir = out / net / "eval"
        rows = read_results(res_dir) if (res_dir / "results.jsonl").exists() else []
        recs = network_table(accuracy_of_plan(rows, meta["rows"]), meta["rows"], composed, others)
        tables[net] = recs
        verdicts[net] = verdict(recs, info["coefficient_sets"], composed, int(info.get("num_classes", 10)))
        parts += [to_markdown(net, meta["model"], recs, composed, verdicts[net]), ""]
    md = "\n".join(parts)
    write_text(out / "composition.md", md)
    write_json(out / "composition.json", {"tables": tables, "verdicts": verdicts, "plan": dict(info)})
    if any(r["clean"] is not None for recs in tables.values() for r in recs):
        figure(tables, composed, others, out / "figures" / "composition.png")
    return md


def main(argv: list[str] | None = None) -> None:
    from rws.report.study_cli import report_main

    report_main(argv, __doc__, "outputs/rws_composition", write_report)


if __name__ == "__main__":
    from rws.cli.entry import script_entry

    script_entry(main)
