"""Per-model summaries (TA, RA, mCE, per-corruption accuracy) computed from result rows only."""

from __future__ import annotations

from typing import Any, Iterable

from rws.evaluation import metrics


def _models(rows: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(str(r["spec_id"]), []).append(r)
    return groups


def corruption_cells(rows: Iterable[dict[str, Any]], metric: str = "acc") -> dict[tuple[str, int], float]:
    """(corruption, severity) -> accuracy. A cell measured twice (a resumed run) keeps the last row."""
    return {(str(r["condition"]), int(float(r["level"]))): float(r["value"]) for r in rows
            if r.get("suite") == "corruptions" and r.get("metric") == metric}


def clean_accuracy(rows: Iterable[dict[str, Any]]) -> float | None:
    vals = [float(r["value"]) for r in rows
            if r.get("suite") == "clean" and r.get("condition") == "clean" and r.get("metric") == "acc"]
    return vals[-1] if vals else None


def select_baseline(rows: list[dict[str, Any]], model: str | None) -> list[dict[str, Any]]:
    """The baseline's rows, chosen by model name or spec_id; ``model`` may be omitted only when
    the baseline file holds a single model."""
    groups = _models(rows)
    if model:
        picked = [r for r in rows if model in (str(r.get("spec_id")), str(r.get("model")))]
        if not picked:
            names = sorted({f"{r.get('model')} ({r.get('spec_id')})" for r in rows})
            raise ValueError(f"baseline_model {model!r} not in the baseline results; models: {names}")
        return picked
    if len(groups) != 1:
        names = sorted({f"{r.get('model')} ({r.get('spec_id')})" for r in rows})
        raise ValueError(f"the baseline results hold {len(groups)} models; pick one with baseline_model=: {names}")
    return rows


def summarize_model(rows: list[dict[str, Any]], baseline: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    first = rows[0]
    out: dict[str, Any] = {"spec_id": first["spec_id"], "model": first.get("model", ""),
                           "spec": first.get("spec", ""), "TA": clean_accuracy(rows)}
    cells = corruption_cells(rows)
    if cells:
        out["RA"] = metrics.mean_corruption_accuracy(cells)
        base_cells = corruption_cells(baseline) if baseline else None
        name, value = metrics.mce(cells, base_cells)
        out[name] = value
        if name == "mCE":
            out["mCE_unnormalized"] = 1.0 - out["RA"]
            out["CE"] = metrics.corruption_errors(cells, base_cells or {})
        out["n_cells"] = len(cells)
        out["per_corruption"] = metrics.per_corruption_accuracy(cells)
        out["per_severity"] = _per_severity(cells)
    adv = {f"{r['condition']}@{float(r['level']):.6g}" if r.get("level") not in (None, "") else str(r["condition"]):
           float(r["value"]) for r in rows if r.get("suite") == "adversarial" and r.get("metric") == "acc"}
    if adv:
        out["adversarial"] = adv
    return out


def _per_severity(cells: dict[tuple[str, int], float]) -> dict[str, float]:
    groups: dict[int, list[float]] = {}
    for (_c, s), a in cells.items():
        groups.setdefault(s, []).append(a)
    return {str(s): sum(v) / len(v) for s, v in sorted(groups.items())}


def summarize(rows: list[dict[str, Any]], baseline_rows: list[dict[str, Any]] | None = None,
              baseline_model: str | None = None) -> dict[str, dict[str, Any]]:
    """spec_id -> summary. With ``baseline_rows`` the mCE is normalized by that model (Hendrycks)."""
    baseline = select_baseline(baseline_rows, baseline_model) if baseline_rows else None
    return {sid: summarize_model(rs, baseline) for sid, rs in _models(rows).items()}


def format_table(summary: dict[str, dict[str, Any]]) -> str:
    """A small fixed-width table for stdout (percentages)."""
    cols = ["model", "spec_id", "TA", "RA", "mCE"]
    lines = []
    data = []
    for s in summary.values():
        mce_key = "mCE" if "mCE" in s else "mCE_unnormalized"
        data.append([str(s.get("model", "")), str(s["spec_id"]), _pct(s.get("TA")), _pct(s.get("RA")),
                     _pct(s.get(mce_key)) + ("" if mce_key == "mCE" or s.get(mce_key) is None else "*")])
    widths = [max(len(c), *(len(r[i]) for r in data)) if data else len(c) for i, c in enumerate(cols)]
    lines.append("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in data]
    if any(r[4].endswith("*") for r in data):
        lines.append("* mCE_unnormalized = 100 - RA (no baseline_results given)")
    return "\n".join(lines)


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * float(v):.2f}"
