"""Robust Weight Signatures tables (paper Table 1, 3, 4, Fig. 7/8 as numbers) from long-format rows.

A table is a query over the fields of each row's model spec (the ``spec`` column, canonical JSON):

    {kind: export, path: <root>/std/export}                            Recipe("std")
    {kind: patch, base: {kind: export, path: <root>/std/export},
     signatures: [{path: <root>/sigs/shallow32/fog.safetensors, alpha: 1}],
     bn_policy: robust}                                                Recipe("std", (("shallow32", "fog", 1.0),), "robust")

``parse_recipe`` reads a spec into a :class:`Recipe`: the base is the export's run directory
relative to the pipeline's output directory (``root``: std, robust/fog, tiny/std), a signature's set
is its file's directory under ``sigs/`` (``sigs/shallow32`` -> shallow32, ``tiny/sigs/shallow32`` ->
tiny/shallow32) and its corruption the file stem. α=0 signatures are dropped (no-ops), and a patch
with none left is its base. The ``model`` column (a display name) is never read.

Oracle rows (the paper's Table 1 protocol): "All Models" uses the dedicated robust model on its own
corruption and the standard model on clean data; an RWS row patches the right signature for each
corruption at α=1 and reports the TA of the unpatched standard model (patches come off on clean data).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from rws.evaluation.results import read_many
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


def _alpha(a: float) -> float:
    # α compared at 6 significant digits: the plan writes 1/n as round(1/n, 6).
    return float(f"{float(a):g}")


@dataclass(frozen=True)
class Recipe:
    """What a row's model is, in the fields the RWS tables select on. The calibration source of a
    recalibrated patch is not part of it: one row per (base, signatures, BN policy)."""
    base: str                              # the (base) export's run directory relative to the root
    signatures: tuple[SigRef, ...] = ()    # in spec order, α ≠ 0
    bn_policy: str | None = None           # None: an unpatched export (or the signatures' stored policy)
    bn_mix: str = "affine"


def export(base: str) -> Recipe:
    return Recipe(base)


def patch(base: str, sigs: Sequence[SigRef], bn: str = "robust", bn_mix: str = "affine") -> Recipe:
    """``base`` patched with ``sigs``; α=0 entries are dropped, and with none left it is ``base``."""
    kept = tuple((label, c, _alpha(a)) for label, c, a in sigs if float(a) != 0.0)
    return Recipe(base, kept, bn, bn_mix) if kept else Recipe(base)


def _relative(path: str, root: Path) -> Path:
    p = Path(path)
    try:
        return p.relative_to(root)
    except ValueError:  # outside the root: keep it whole
        return p


def _run_dir(export_path: str, root: Path) -> str:
    rel = _relative(export_path, root)
    return (rel.parent if rel.name == "export" else rel).as_posix()


def _sig_ref(sig: Mapping[str, Any], root: Path) -> SigRef:
    rel = _relative(str(sig["path"]), root)
    sigset = "/".join(part for part in rel.parent.parts if part != "sigs")
    return sigset, rel.stem, float(sig.get("alpha", 1.0))


def parse_recipe(spec: str | Mapping[str, Any], root: str | Path) -> Recipe | None:
    """The Recipe of a spec (JSON text or dict); None for specs the RWS tables do not query (soups,
    patches of something other than an export)."""
    sp = json.loads(spec) if isinstance(spec, str) else dict(spec)
    root = Path(root)
    if sp.get("kind") == "export":
        return Recipe(_run_dir(sp["path"], root))
    if sp.get("kind") == "patch" and (sp.get("base") or {}).get("kind") == "export":
        sigs = [_sig_ref(x, root) for x in sp.get("signatures") or []]
        return patch(_run_dir(sp["base"]["path"], root), sigs, sp.get("bn_policy"), sp.get("bn_mix", "affine"))
    return None


def _spec_paths(sp: Any) -> Iterable[str]:
    if isinstance(sp, Mapping):
        for k, v in sp.items():
            if k == "path" and isinstance(v, str):
                yield v
            else:
                yield from _spec_paths(v)
    elif isinstance(sp, list):
        for v in sp:
            yield from _spec_paths(v)


def infer_root(rows: Iterable[Mapping[str, Any]]) -> Path:
    """The deepest directory holding every file the rows' specs name (the pipeline's output
    directory when the rows cover several of its runs); pass ``root`` explicitly otherwise."""
    paths = {p for r in rows for p in _spec_paths(json.loads(_spec_of(r)))}
    if not paths:
        raise ValueError("no result row names a file in its spec: cannot infer the root directory; pass root")
    return Path(os.path.commonpath(sorted(paths)))


def _spec_of(r: Mapping[str, Any]) -> str:
    if not r.get("spec"):
        raise ValueError(f"result row without a 'spec' (the model spec JSON the tables select on): {dict(r)}")
    return str(r["spec"])


class Results:
    """Accuracy lookups over long-format rows: ``acc(recipe, condition, level)`` (mean of duplicates).
    ``root``: the directory spec paths are relative to (default: :func:`infer_root`)."""

    def __init__(self, rows: Iterable[Mapping[str, Any]], root: str | Path | None = None) -> None:
        rows = list(rows)
        root = Path(root) if root is not None else infer_root(rows)
        parsed: dict[str, Recipe | None] = {}
        cells: dict[tuple[Recipe, str, str], list[float]] = {}
        for r in rows:
            if r.get("metric", "acc") != "acc" or r.get("suite") == "adversarial":
                continue
            spec = _spec_of(r)
            if spec not in parsed:
                parsed[spec] = parse_recipe(spec, root)
            recipe = parsed[spec]
            if recipe is None:
                continue
            key = (recipe, str(r["condition"]), "" if r.get("level") in (None, "") else str(int(r["level"])))
            cells.setdefault(key, []).append(float(r["value"]))
        self.root = root
        self.cells = {k: sum(v) / len(v) for k, v in cells.items()}
        self.recipes = {k[0] for k in self.cells}

    def acc(self, recipe: Recipe, condition: str = "clean", level: int | str | None = None) -> float | None:
        lv = "" if level in (None, "") else str(int(level))
        return self.cells.get((recipe, condition, lv))

    def has(self, recipe: Recipe) -> bool:
        """Whether any cell of ``recipe`` was measured."""
        return recipe in self.recipes

    def mean(self, cells: Iterable[tuple[Recipe, str, int]]) -> float | None:
        """Mean accuracy over (recipe, corruption, severity) cells; None if any is missing, so a
        partially evaluated row is never passed off as a full mean."""
        vals = [self.acc(m, c, s) for m, c, s in cells]
        if not vals or any(v is None for v in vals):
            return None
        return sum(vals) / len(vals)  # type: ignore[arg-type]


def _ra(res: Results, model_for: Mapping[str, Recipe], corruptions: Sequence[str], severity: int) -> float | None:
    return res.mean((model_for[c], c, severity) for c in corruptions)


def table1(res: Results, corruptions: Sequence[str], severities: Sequence[int] = (3, 5),
           storage: Mapping[str, Mapping[str, float]] | None = None, base: str = "std") -> list[Record]:
    """Table 1: TA, RA (mean over ``corruptions``) at each severity, storage per row.

    ``storage`` maps a row label to {"mb_files": ..., "mb_formula": ...} (computed by the caller from
    the saved files); rows without an entry show no size."""
    storage = storage or {}
    std = export(base)
    rows: list[tuple[str, float | None, dict[str, Recipe]]] = [
        ("Standard", res.acc(std), {c: std for c in corruptions}),
        ("Data Augmentation", res.acc(export("augmented")), {c: export("augmented") for c in corruptions}),
        ("All Models (oracle)", res.acc(std), {c: export(f"robust/{c}") for c in corruptions}),
    ]
    for label, sigset, bn in RWS_ROWS:
        rows.append((label, res.acc(std), {c: patch(base, [(sigset, c, 1.0)], bn) for c in corruptions}))
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
    rows = [("Standard", lambda c: export(base)), ("Data Augmentation", lambda c: export("augmented")),
            ("All Models (oracle)", lambda c: export(f"robust/{c}"))]
    rows += [(label, (lambda c, s=sigset, b=bn: patch(base, [(s, c, 1.0)], b))) for label, sigset, bn in RWS_ROWS]
    out = []
    for label, model_of in rows:
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
            m = patch(base, [(sigset, c, a)])
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
            m = patch(base, [(sigset, c1, a1), (sigset, c2, a2)])
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
    std = export(base)
    refs: list[tuple[str, Any, Recipe]] = [
        ("Standard (no patch)", lambda c: std, std),
        ("single right signature (oracle)", lambda c: patch(base, [("shallow32", c, 1.0)]), std)]
    for label, sigs in compositions.items():
        for bn in ("robust", "recalibrate"):
            m = patch(base, sigs, bn)
            if bn == "robust" or res.has(m):  # recalibrated rows only when measured
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
            before = res.acc(export(target_base), c, s)
            rec: Record = {"corruption": c, "severity": s, "unpatched": before}
            for bn in bns:
                after = res.acc(patch(target_base, [(sigset, c, 1.0)], bn), c, s)
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


def build_all(rows: Iterable[Mapping[str, Any]], plan: Mapping[str, Any],
              root: str | Path | None = None) -> dict[str, Any]:
    """Every table from the rows and the pipeline's plan (corruptions, alphas, pairs, storage, ...);
    ``root``: the pipeline's output directory the specs' paths are under (default: inferred)."""
    res = Results(rows, root)
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
        tr["tiny_reference"] = [{"model": m, "clean": res.acc(export(m)),
                                 **{f"{c}@{s}": res.acc(export(m), c, s) for c in t["tiny_corruptions"] for s in sev}}
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


def write_all(rows: Iterable[Mapping[str, Any]], plan: Mapping[str, Any], out: str | Path,
              root: str | Path | None = None) -> dict[str, Any]:
    """Write <out>/{table1,table4,alpha_sweep,composition,transfer}.md and tables.json."""
    out = Path(out)
    tables = build_all(rows, plan, root)
    for name, text in render(tables, plan).items():
        write_text(out / f"{name}.md", text)
    write_json(out / "tables.json", {"plan": dict(plan), "tables": tables})
    return tables


def load_plan(path: str | Path) -> dict[str, Any]:
    """A plan from plan.json (rws.pipelines.rws_cpu) or from an earlier tables.json (its "plan", which
    also holds the storage column)."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or "corruptions" not in data.get("plan", data):
        raise ValueError(f"{path}: expected a plan.json (with 'corruptions') or a tables.json (with 'plan')")
    return data["plan"] if "plan" in data and "tables" in data else data


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="RWS tables from result files and the pipeline's plan.json")
    p.add_argument("results", nargs="+", help="results.jsonl files or their directories (e.g. <out>/eval*)")
    p.add_argument("--plan", required=True, help="plan.json written by rws.pipelines.rws_cpu, or a tables.json")
    p.add_argument("--out", required=True, help="directory for the .md tables and tables.json")
    p.add_argument("--root", default=None,
                   help="the pipeline's --out that the specs' paths are under (default: their common directory)")
    a = p.parse_args(argv)
    tables = write_all(read_many(a.results), load_plan(a.plan), a.out, a.root)
    print(to_markdown(tables["table1"]))


if __name__ == "__main__":
    main()
