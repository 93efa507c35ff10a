"""Robust Weight Signatures tables (paper Table 1, 3, 4, Fig. 7/8 as numbers) from long-format rows.

Every evaluated model has a canonical *name* that encodes its recipe, so a table is a lookup:

    std                                   an export (run directory relative to the pipeline's --out)
    robust/fog                            the dedicated robust model for fog
    std+shallow32:fog@1                   std patched with the shallow 32-bit fog signature at α=1
    std+shallow32:gaussian_noise@1+shallow32:fog@0.5      a composition
    std+shallow32:fog@1|bn=std            same patch, other BN policy (robust is the default)
    tiny/std+shallow32:fog@1              a CIFAR-10 signature on the Tiny-ImageNet model

``patch_name`` builds these names; the driver (rws.pipelines.rws_cpu) gives every spec the name
of its recipe, so the same recipe never appears under two names.

Oracle rows (the paper's Table 1 protocol): "All Models" uses the dedicated robust model on its own
corruption and the standard model on clean data; an RWS row patches the right signature for each
corruption at α=1 and reports the TA of the unpatched standard model (patches come off on clean data).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from rws.evaluation.results import read_results
from rws.utils.io import write_json, write_text

Record = dict[str, Any]
SigRef = tuple[str, str, float]  # (signature set label, corruption, alpha)

# Table 1 rows: (label, signature set, bn policy).
RWS_ROWS = (("Standard + RWS_full", "full32", "robust"),
            ("Standard + RWS_shallow", "shallow32", "robust"),
            ("Standard + RWS_shallow,16bit", "shallow16", "robust"),
            ("Standard + RWS_shallow,8bit", "shallow8", "robust"),
            ("Standard + RWS_shallow, BN std (weights only)", "shallow32", "std"),
            ("Standard + RWS_shallow, BN recalibrated", "shallow32", "recalibrate"))


def _fmt_alpha(a: float) -> str:
    return f"{float(a):g}"


def patch_name(base: str, sigs: Sequence[SigRef], bn: str = "robust") -> str:
    """Canonical model name of ``base`` patched with ``sigs``; α=0 entries are dropped (they are
    no-ops), and with nothing left the name is the base itself."""
    parts = [f"{label}:{c}@{_fmt_alpha(a)}" for label, c, a in sigs if float(a) != 0.0]
    if not parts:
        return base
    name = "+".join([base, *parts])
    return name if bn == "robust" else f"{name}|bn={bn}"


class Results:
    """Accuracy lookups over long-format rows: ``acc(model, condition, level)`` (mean of duplicates)."""

    def __init__(self, rows: Iterable[Mapping[str, Any]]) -> None:
        cells: dict[tuple[str, str, str], list[float]] = {}
        for r in rows:
            if r.get("metric", "acc") != "acc" or r.get("suite") == "adversarial":
                continue
            key = (str(r["model"]), str(r["condition"]), "" if r.get("level") in (None, "") else str(int(r["level"])))
            cells.setdefault(key, []).append(float(r["value"]))
        self.cells = {k: sum(v) / len(v) for k, v in cells.items()}
        self.models = sorted({k[0] for k in self.cells})

    def acc(self, model: str, condition: str = "clean", level: int | str | None = None) -> float | None:
        lv = "" if level in (None, "") else str(int(level))
        return self.cells.get((model, condition, lv))

    def mean(self, pairs: Iterable[tuple[str, str, int]]) -> float | None:
        """Mean accuracy over (model, corruption, severity) cells; None if any is missing, so a
        partially evaluated row is never passed off as a full mean."""
        vals = [self.acc(m, c, s) for m, c, s in pairs]
        if not vals or any(v is None for v in vals):
            return None
        return sum(vals) / len(vals)  # type: ignore[arg-type]


def _ra(res: Results, model_for: Mapping[str, str], corruptions: Sequence[str], severity: int) -> float | None:
    return res.mean((model_for[c], c, severity) for c in corruptions)


def table1(res: Results, corruptions: Sequence[str], severities: Sequence[int] = (3, 5),
           storage: Mapping[str, Mapping[str, float]] | None = None, base: str = "std") -> list[Record]:
    """Table 1: TA, RA (mean over ``corruptions``) at each severity, storage per row.

    ``storage`` maps a row label to {"mb_files": ..., "mb_formula": ...} (computed by the caller from
    the saved files); rows without an entry show no size."""
    storage = storage or {}
    rows: list[tuple[str, float | None, dict[str, str]]] = [
        ("Standard", res.acc(base), {c: base for c in corruptions}),
        ("Data Augmentation", res.acc("augmented"), {c: "augmented" for c in corruptions}),
        ("All Models (oracle)", res.acc(base), {c: f"robust/{c}" for c in corruptions}),
    ]
    for label, sigset, bn in RWS_ROWS:
        rows.append((label, res.acc(base), {c: patch_name(base, [(sigset, c, 1.0)], bn) for c in corruptions}))
    out: list[Record] = []
    for label, ta, model_for in rows:
        rec: Record = {"row": label, "TA": ta}
        for s in severities:
            rec[f"RA@{s}"] = _ra(res, model_for, corruptions, s)
        rec.update({k: v for k, v in (storage.get(label) or {}).items()})
        out.append(rec)
    return out


def _per_corruption(rec: Record, res: Results, model_of: Any, corruptions: Sequence[str],
                    severity: int) -> Record:
    """Fill ``rec`` with each corruption's accuracy of ``model_of(corruption)`` and their mean."""
    for c in corruptions:
        rec[c] = res.acc(model_of(c), c, severity)
    vals = [rec[c] for c in corruptions]
    rec["mean"] = None if any(v is None for v in vals) else sum(vals) / len(vals)
    return rec


def table4(res: Results, corruptions: Sequence[str], severity: int = 5, base: str = "std") -> list[Record]:
    """Per-corruption accuracy (Table 4) at one severity; the RWS rows patch the matching signature."""
    spec = [("Standard", lambda c: base), ("Data Augmentation", lambda c: "augmented"),
            ("All Models (oracle)", lambda c: f"robust/{c}")]
    spec += [(label, (lambda c, s=sigset, b=bn: patch_name(base, [(s, c, 1.0)], b))) for label, sigset, bn in RWS_ROWS]
    out = []
    for label, model_of in spec:
        rec: Record = {"row": label}
        out.append(_per_corruption(rec, res, model_of, corruptions, severity))
    return out


def alpha_table(res: Results, corruptions: Sequence[str], alphas: Sequence[float], severities: Sequence[int] = (3, 5),
                sigset: str = "shallow32", base: str = "std") -> list[Record]:
    """Fig. 7 as numbers: per corruption and α (α=0 is the standard model), clean accuracy of the
    patched model and its accuracy on that corruption at each severity."""
    out = []
    for c in corruptions:
        for a in [0.0, *[a for a in alphas if float(a) != 0.0]]:
            m = patch_name(base, [(sigset, c, a)])
            rec: Record = {"corruption": c, "alpha": float(a), "clean": res.acc(m)}
            for s in severities:
                rec[f"sev{s}"] = res.acc(m, c, s)
            out.append(rec)
    return out


def pair_grid(res: Results, pair: tuple[str, str], alphas: Sequence[float], severity: int = 5,
              sigset: str = "shallow32", base: str = "std") -> list[Record]:
    """Fig. 8: two signatures composed at every (α1, α2); accuracy on each corruption and on clean."""
    c1, c2 = pair
    out = []
    for a1 in alphas:
        for a2 in alphas:
            m = patch_name(base, [(sigset, c1, a1), (sigset, c2, a2)])
            rec: Record = {"alpha_" + c1: float(a1), "alpha_" + c2: float(a2),
                           c1: res.acc(m, c1, severity), c2: res.acc(m, c2, severity), "clean": res.acc(m)}
            both = [rec[c1], rec[c2]]
            rec["mean"] = None if None in both else (both[0] + both[1]) / 2
            out.append(rec)
    return out


def composition_table(res: Results, compositions: Mapping[str, Sequence[SigRef]], corruptions: Sequence[str],
                      severity: int = 5, base: str = "std") -> list[Record]:
    """Multi-signature patches (one row each, named by the caller) on every corruption, plus the
    standard model and the single right signature (oracle) for reference."""
    # (label, model per corruption, model measured on clean data)
    refs: list[tuple[str, Any, str]] = [
        ("Standard (no patch)", lambda c: base, base),
        ("single right signature (oracle)", lambda c: patch_name(base, [("shallow32", c, 1.0)]), base)]
    for label, sigs in compositions.items():
        for bn in ("robust", "recalibrate"):
            m = patch_name(base, sigs, bn)
            if bn == "robust" or any(k[0] == m for k in res.cells):  # recalibrated rows only when measured
                refs.append((label if bn == "robust" else f"{label}, BN recalibrated", (lambda c, m=m: m), m))
    out = []
    for label, model_of, clean_model in refs:
        rec: Record = {"row": label, "clean": res.acc(clean_model)}
        out.append(_per_corruption(rec, res, model_of, corruptions, severity))
    return out


def transfer_table(res: Results, target_base: str, sigset: str, corruptions: Sequence[str],
                   severities: Sequence[int] = (3, 5), bns: Sequence[str] = ("robust", "std")) -> list[Record]:
    """Table 3: per corruption, the target model unpatched vs patched with a signature extracted on
    the other dataset; gain = patched − unpatched (per BN policy)."""
    out = []
    for c in corruptions:
        for s in severities:
            before = res.acc(target_base, c, s)
            rec: Record = {"corruption": c, "severity": s, "unpatched": before}
            for bn in bns:
                after = res.acc(patch_name(target_base, [(sigset, c, 1.0)], bn), c, s)
                rec[f"patched(bn={bn})"] = after
                rec[f"gain(bn={bn})"] = None if after is None or before is None else after - before
            out.append(rec)
    return out


# -- rendering -------------------------------------------------------------------------------------

def _cell(v: Any, scale: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, float):
        return f"{v * scale:.2f}" if scale != 1 else f"{v:.2f}" if abs(v) >= 1 else f"{v:g}"
    return str(v)


def to_markdown(records: Sequence[Record], scale_keys: Iterable[str] | None = None, scale: float = 100.0) -> str:
    """A GitHub table; keys in ``scale_keys`` (default: every float except alphas and MB) are ×100."""
    if not records:
        return "(no rows)\n"
    cols: list[str] = []
    for r in records:
        cols += [k for k in r if k not in cols]
    skip = {c for c in cols if c.startswith("alpha") or c.startswith("mb_") or c == "severity"}
    scaled = set(scale_keys) if scale_keys is not None else set(cols) - skip
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(cols))) + "|"]
    for r in records:
        lines.append("| " + " | ".join(_cell(r.get(c), scale if c in scaled else 1) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def build_all(rows: Iterable[Mapping[str, Any]], plan: Mapping[str, Any]) -> dict[str, Any]:
    """Every table from the rows and the pipeline's plan (corruptions, alphas, pairs, storage, ...)."""
    res = Results(rows)
    cs = list(plan["corruptions"])
    sev = list(plan.get("severities", (3, 5)))
    tables: dict[str, Any] = {
        "table1": table1(res, cs, sev, plan.get("storage")),
        "table4": {f"sev{s}": table4(res, cs, s) for s in sev},
        "alpha_sweep": alpha_table(res, cs, plan.get("alphas", (1.0,)), sev),
    }
    comp: dict[str, Any] = {}
    comp_sev = list(plan.get("composition_severities", sev))  # compositions are measured at fewer levels
    if plan.get("pair"):
        comp["pair"] = {f"sev{s}": pair_grid(res, tuple(plan["pair"]), plan.get("pair_alphas", (0.0, 1.0)), s)
                        for s in comp_sev}
    if plan.get("compositions"):
        comp["multi"] = {f"sev{s}": composition_table(res, {k: [tuple(x) for x in v]
                                                            for k, v in plan["compositions"].items()}, cs, s)
                         for s in comp_sev}
    tables["composition"] = comp
    tr: dict[str, Any] = {}
    if plan.get("transfer"):
        t = plan["transfer"]
        tr["cifar_to_tiny"] = transfer_table(res, t["tiny_base"], t["cifar_sigset"], cs, sev)
        tr["tiny_to_cifar"] = transfer_table(res, "std", t["tiny_sigset"], t["tiny_corruptions"], sev)
        tr["tiny_in_domain"] = transfer_table(res, t["tiny_base"], t["tiny_sigset"], t["tiny_corruptions"], sev,
                                              bns=("robust",))
        tr["tiny_reference"] = [{"model": m, "clean": res.acc(m),
                                 **{f"{c}@{s}": res.acc(m, c, s) for c in t["tiny_corruptions"] for s in sev}}
                                for m in (t["tiny_base"], *t.get("tiny_robust", []))]
    tables["transfer"] = tr
    return tables


def render(tables: Mapping[str, Any], plan: Mapping[str, Any]) -> dict[str, str]:
    """Markdown documents: table1, table4, alpha_sweep, composition, transfer."""
    cs = ", ".join(plan["corruptions"])
    docs = {
        "table1": (f"# Table 1 (CPU scale): TA / RA (%) and storage\n\nRA = mean over {cs}; oracle protocol "
                   f"(the right robust model / signature per corruption, α=1; TA of RWS rows = the unpatched "
                   f"standard model). MB: mb_files = real file sizes (std export + the signatures), mb_formula = "
                   f"the paper's 4N + n_c·N_shallow·b/8 (parameters only, n_c = {len(plan['corruptions'])}).\n\n"
                   + to_markdown(tables["table1"])),
        "table4": "# Table 4 (CPU scale): accuracy (%) per corruption\n\n" + "\n".join(
            f"## severity {k[3:]}\n\n" + to_markdown(v) for k, v in tables["table4"].items()),
        "alpha_sweep": ("# α sweep (Fig. 7): std + α·RWS_shallow (32-bit, BN robust), accuracy (%)\n\n"
                        + to_markdown(tables["alpha_sweep"])),
    }
    comp = ["# Composition (Fig. 8): std + Σ α_c·RWS_c (shallow, 32-bit), accuracy (%)\n"]
    for k, v in (tables["composition"].get("pair") or {}).items():
        comp.append(f"## pair {' + '.join(plan['pair'])}, severity {k[3:]}\n\n" + to_markdown(v))
    for k, v in (tables["composition"].get("multi") or {}).items():
        comp.append(f"## several signatures at once, severity {k[3:]}\n\n" + to_markdown(v))
    docs["composition"] = "\n".join(comp)
    tr = ["# Transfer (Table 3): signatures applied across datasets, accuracy (%) and gain\n"]
    notes = (plan.get("transfer") or {}).get("notes")
    if notes:
        tr.append(notes + "\n")
    titles = {"cifar_to_tiny": "CIFAR-10 signatures on the Tiny-ImageNet standard model",
              "tiny_to_cifar": "Tiny-ImageNet signature on the CIFAR-10 standard model",
              "tiny_in_domain": "Tiny-ImageNet's own signature on its standard model (reference)",
              "tiny_reference": "Tiny-ImageNet models, unpatched"}
    for k, v in tables["transfer"].items():
        tr.append(f"## {titles.get(k, k)}\n\n" + to_markdown(v))
    if not tables["transfer"]:
        tr.append("(transfer skipped)\n")
    docs["transfer"] = "\n".join(tr)
    return docs


def write_all(rows: Iterable[Mapping[str, Any]], plan: Mapping[str, Any], out: str | Path) -> dict[str, Any]:
    """Write <out>/{table1,table4,alpha_sweep,composition,transfer}.md and tables.json."""
    out = Path(out)
    tables = build_all(rows, plan)
    for name, text in render(tables, plan).items():
        write_text(out / f"{name}.md", text)
    write_json(out / "tables.json", {"plan": dict(plan), "tables": tables})
    return tables


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="RWS tables from a results dir and the pipeline's plan.json")
    p.add_argument("results", help="results.jsonl or its directory")
    p.add_argument("--plan", required=True, help="plan.json written by rws.pipelines.rws_cpu")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    plan = json.loads(Path(a.plan).read_text())
    tables = write_all(read_results(a.results), plan, a.out)
    print(to_markdown(tables["table1"]))


if __name__ == "__main__":
    main()
