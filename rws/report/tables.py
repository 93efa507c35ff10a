"""Tables built only from result files, so a paper table is a query over long-format rows.

    python -m rws.report.tables outputs/eval/*/ --table summary
    python -m rws.report.tables outputs/sweeps/soups --table summary        # a sweep: TA / RA per soup
    python -m rws.report.tables outputs/eval/A outputs/eval/B --table corruptions --out tables/cifar_c
    python -m rws.report.tables RESULTS --rows model --cols level --suite corruptions --metric acc
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from rws.evaluation.results import read_many, read_results
from rws.evaluation.summary import summarize
from rws.utils.io import write_text

Record = dict[str, Any]


def _key(v: Any) -> str:
    return "" if v is None else str(v)


def filter_rows(rows: Iterable[Record], **where: Any) -> list[Record]:
    """Rows whose fields equal every given value (compared as strings; None means any)."""
    want = {k: _key(v) for k, v in where.items() if v is not None}
    return [r for r in rows if all(_key(r.get(k)) == v for k, v in want.items())]


def _mean(vals: Sequence[float]) -> float:
    return sum(vals) / len(vals)


def pivot(rows: Iterable[Record], index: str | Sequence[str] = "model", columns: str | None = "condition",
          metric: str | None = "acc", agg: Callable[[Sequence[float]], float] = _mean,
          margin: str | None = None) -> list[Record]:
    """One record per distinct ``index`` value with one key per distinct ``columns`` value,
    aggregating ``value`` of rows with the given ``metric`` (mean by default, e.g. over
    severities). ``margin`` adds a column with the aggregate over all of a record's rows."""
    index = [index] if isinstance(index, str) else list(index)
    cells: dict[tuple[str, ...], dict[str, list[float]]] = {}
    col_order: list[str] = []
    for r in rows:
        if metric is not None and r.get("metric") != metric:
            continue
        rk = tuple(_key(r.get(i)) for i in index)
        ck = _key(r.get(columns)) if columns else "value"
        if ck not in col_order:
            col_order.append(ck)
        bucket = cells.setdefault(rk, {})
        bucket.setdefault(ck, []).append(float(r["value"]))
        if margin:
            bucket.setdefault(f"\0{margin}", []).append(float(r["value"]))
    out = []
    for rk, bucket in cells.items():
        rec: Record = dict(zip(index, rk))
        for c in col_order:
            rec[c] = agg(bucket[c]) if c in bucket else None
        if margin:
            rec[margin] = agg(bucket[f"\0{margin}"])
        out.append(rec)
    return out


def _threat_label(key: str) -> str:
    """``linf@0.0313725`` -> ``linf 8/255`` (eps a whole number of 255ths), else the key."""
    norm, _, eps = key.partition("@")
    try:
        k = float(eps) * 255
    except ValueError:
        return key
    return f"{norm} {round(k)}/255" if abs(k - round(k)) < 1e-3 else key


def summary_table(rows: list[Record], baseline_rows: list[Record] | None = None,
                  baseline_model: str | None = None, order: Sequence[str] = ()) -> list[Record]:
    """TA / RA / mCE per model, then one column per adversarial cell (robust accuracy, named
    ``<threat>@<eps>``) when any model has one."""
    by_id = summarize(rows, baseline_rows, baseline_model)
    rank = {sid: i for i, sid in enumerate(order)}
    summaries = [by_id[sid] for sid in sorted(by_id, key=lambda sid: rank.get(sid, len(rank)))]
    threats = sorted({k for s in summaries for k in s.get("adversarial", {}) if "@" in k})
    # The suite's clean cell repeats TA; its union equals the threat's cell when a model has one threat.
    several = any(sum("@" in k for k in s.get("adversarial", {})) > 1 for s in summaries)
    adversarial = threats + (["union"] if several else [])
    out = []
    for s in summaries:
        rec: Record = {"model": s.get("model", ""), "spec_id": s["spec_id"], "TA": s.get("TA"), "RA": s.get("RA")}
        if "mCE" in s:
            rec["mCE"] = s["mCE"]
        rec["mCE_unnormalized"] = s.get("mCE_unnormalized")
        for k in adversarial:
            rec[_threat_label(k)] = s.get("adversarial", {}).get(k)
        out.append(rec)
    return out


def corruption_table(rows: list[Record], metric: str = "acc") -> list[Record]:
    """Accuracy per corruption (mean over severities) per model, plus the mean (= RA)."""
    return pivot(filter_rows(rows, suite="corruptions"), index=["model", "spec_id"], columns="condition",
                 metric=metric, margin="mean")


def severity_table(rows: list[Record], metric: str = "acc") -> list[Record]:
    """Accuracy per severity (mean over corruptions) per model."""
    return pivot(filter_rows(rows, suite="corruptions"), index=["model", "spec_id"], columns="level",
                 metric=metric, margin="mean")


def _fmt(v: Any, scale: float, digits: int) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v * scale:.{digits}f}"
    return str(v)


def to_markdown(records: list[Record], scale: float = 100.0, digits: int = 2) -> str:
    if not records:
        return "(no rows)\n"
    cols = list(dict.fromkeys(k for r in records for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_fmt(r.get(c), scale, digits) for c in cols) + " |" for r in records]
    return "\n".join(lines) + "\n"


def to_csv(records: list[Record]) -> str:
    cols = list(dict.fromkeys(k for r in records for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    w.writerows(records)
    return buf.getvalue()


def build_table(rows: list[Record], table: str = "summary", index: str | None = None, cols: str | None = None,
                metric: str = "acc", suite: str | None = None, baseline: str | None = None,
                baseline_model: str | None = None, order: Sequence[str] = ()) -> list[Record]:
    if index or cols:
        return pivot(filter_rows(rows, suite=suite), index=(index or "model").split(","), columns=cols,
                     metric=metric)
    if table == "summary":
        return summary_table(rows, read_results(baseline) if baseline else None, baseline_model, order)
    if table == "corruptions":
        return corruption_table(rows, metric)
    if table == "severities":
        return severity_table(rows, metric)
    raise ValueError(f"unknown table {table!r}; tables: summary, corruptions, severities (or --rows/--cols)")


def spec_order(results: Sequence[str]) -> list[str]:
    """Spec ids in the order evaluate.py was given them (its summary.json), dirs in argument order;
    models without one follow in the order their rows come."""
    order: list[str] = []
    for r in results:
        f = Path(r) / "summary.json"
        if f.is_file():
            order += [sid for sid in json.loads(f.read_text()).get("models", {}) if sid not in order]
    return order


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rws.report.tables", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="results dirs (evaluate.py or sweep.py outputs, all shards) "
                                              "or results.jsonl/.csv files")
    p.add_argument("--table", default="summary", choices=["summary", "corruptions", "severities"])
    p.add_argument("--rows", default=None, help="pivot: row field(s), comma-separated (e.g. model,spec_id)")
    p.add_argument("--cols", default=None, help="pivot: column field (e.g. condition, level)")
    p.add_argument("--metric", default="acc")
    p.add_argument("--suite", default=None, help="pivot: keep only this suite")
    p.add_argument("--baseline", default=None, help="results of the mCE baseline model (summary table)")
    p.add_argument("--baseline-model", default=None)
    p.add_argument("--scale", type=float, default=100.0, help="markdown value scale (100 = percent)")
    p.add_argument("--out", default=None, help="write OUT.md and OUT.csv instead of printing")
    a = p.parse_args(argv)
    records = build_table(read_many(a.results), a.table, a.rows, a.cols, a.metric, a.suite, a.baseline,
                          a.baseline_model, spec_order(a.results))
    md = to_markdown(records, scale=a.scale)
    if a.out:
        write_text(Path(a.out).with_suffix(".md"), md)
        write_text(Path(a.out).with_suffix(".csv"), to_csv(records))
        print(f"wrote {a.out}.md and {a.out}.csv")
    else:
        sys.stdout.write(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
