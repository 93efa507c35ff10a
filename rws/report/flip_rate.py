"""Flip-probability table (ImageNet-P / CIFAR-10-P style) from result rows only.

    python -m rws.report.flip_rate outputs/eval/A [outputs/eval/B ...] [--baseline NAME]

One line per model (rows grouped by ``spec_id``, labelled with ``model``), one column per
perturbation with its flip probability FP (``perturbations`` suite, metric ``flip_prob``; the mean
over the difficulties measured, usually just difficulty 1), then the mean flip rate:

* with ``--baseline NAME`` (a ``model`` name or ``spec_id`` in the rows): ``mFR`` = the mean over
  perturbations of FP / FP_baseline, each ratio over the difficulties both measured (Hendrycks &
  Dietterich normalise by AlexNet; here usually the standard-trained model);
* without: ``mFR (unnormalised)`` = the plain mean of FP, so the two are never mixed up.

Values are printed as percentages (FP x 100; mFR x 100, as the papers do).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Iterable, Sequence

from rws.evaluation.metrics import mean_flip_rate
from rws.evaluation.results import level_str, read_many

Record = dict[str, Any]
SUITE, METRIC = "perturbations", "flip_prob"


def flip_probabilities(rows: Iterable[Record]) -> tuple[dict[str, str], dict[str, dict[tuple[str, str], float]]]:
    """(label per spec_id, {spec_id: {(perturbation, difficulty): FP}}) from ``flip_prob`` rows, in
    first-seen order. A cell measured several times (e.g. other settings) is averaged."""
    labels: dict[str, str] = {}
    acc: dict[str, dict[tuple[str, str], list[float]]] = {}
    for r in rows:
        if r.get("suite") != SUITE or r.get("metric") != METRIC:
            continue
        sid = str(r.get("spec_id") or r.get("model"))
        labels.setdefault(sid, str(r.get("model") or sid))
        key = (str(r["condition"]), level_str(r.get("level")))
        acc.setdefault(sid, {}).setdefault(key, []).append(float(r["value"]))
    return labels, {sid: {k: sum(v) / len(v) for k, v in cells.items()} for sid, cells in acc.items()}


def _per_perturbation(cells: dict[tuple[str, str], float],
                      levels: dict[str, set[str]] | None = None) -> dict[str, float]:
    """FP per perturbation: the mean over its difficulties (only those in ``levels`` when given)."""
    groups: dict[str, list[float]] = {}
    for (p, lvl), v in cells.items():
        if levels is None or lvl in levels.get(p, set()):
            groups.setdefault(p, []).append(v)
    return {p: sum(v) / len(v) for p, v in groups.items()}


def _find_baseline(labels: dict[str, str], name: str) -> str:
    hits = [sid for sid, label in labels.items() if name in (sid, label)]
    if not hits:
        raise ValueError(f"baseline {name!r} has no flip_prob rows; models: "
                         f"{', '.join(f'{label} ({sid})' for sid, label in labels.items()) or 'none'}")
    if len(hits) > 1:
        raise ValueError(f"baseline {name!r} is ambiguous: spec ids {hits}; pass one of them")
    return hits[0]


def flip_rate_records(rows: Iterable[Record], baseline: str | None = None) -> list[Record]:
    """One record per model: ``model``, one FP per perturbation, and ``mFR`` (normalised by
    ``baseline``) or ``mFR (unnormalised)``."""
    labels, fps = flip_probabilities(rows)
    perts = list(dict.fromkeys(p for cells in fps.values() for p, _ in cells))
    base_sid = _find_baseline(labels, baseline) if baseline else None
    out = []
    for sid, cells in fps.items():
        fp = _per_perturbation(cells)
        rec: Record = {"model": labels[sid]}
        rec.update({p: fp.get(p) for p in perts})
        if base_sid is None:
            rec["mFR (unnormalised)"] = mean_flip_rate(fp)
        else:
            base = fps[base_sid]
            # Each perturbation's ratio over the difficulties both models measured.
            shared: dict[str, set[str]] = {}
            for key in cells:
                if key in base:
                    shared.setdefault(key[0], set()).add(key[1])
            missing = sorted(set(fp) - set(shared))
            if missing:
                raise ValueError(f"baseline {baseline!r} has no flip_prob rows for {missing} "
                                 f"(model {labels[sid]!r})")
            rec["mFR"] = mean_flip_rate(_per_perturbation(cells, shared), _per_perturbation(base, shared))
        out.append(rec)
    return out


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{100 * float(v):.2f}"


def flip_rate_table(rows: Iterable[Record], baseline: str | None = None) -> str:
    """Markdown: FP per perturbation per model and the mFR column (see the module docstring)."""
    records = flip_rate_records(rows, baseline)
    if not records:
        return "(no flip_prob rows)\n"
    cols = list(records[0])
    lines = ["| " + " | ".join(cols) + " |", "|---|" + "|".join("---:" for _ in cols[1:]) + "|"]
    lines += ["| " + " | ".join([str(r["model"])] + [_fmt(r.get(c)) for c in cols[1:]]) + " |" for r in records]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rws.report.flip_rate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="results dirs (all shards) or results.jsonl/.csv files")
    p.add_argument("--baseline", default=None, help="model name or spec_id that normalises the mFR")
    a = p.parse_args(argv)
    sys.stdout.write(flip_rate_table(read_many(a.results), a.baseline))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
