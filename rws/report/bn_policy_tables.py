"""Tables of the BN-policy study (rws.pipelines.rws_bn_policy) from its result files.

    python -m rws.report.bn_policy_tables --out outputs/rws_bn_policy

Two tables, accuracy %: every evaluated model on clean data and each corruption (severity 5); and per
policy, the gain of θ_std + RWS_c over θ_std on c itself (each corruption and the mean), the share of
the dedicated θ_c's gain that the patch recovers, and the mean change of clean accuracy.
Files: bn_policy.md, bn_policy.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from rws.evaluation.results import read_results
from rws.report.composition_tables import accuracy_of_plan
from rws.utils.io import write_json, write_text


def _fmt(v: float | None, sign: bool = False) -> str:
    return "–" if v is None else (f"{v:+.1f}" if sign else f"{v:.1f}")


def _mean(values: list[float | None]) -> float | None:
    return None if not values or any(v is None for v in values) else sum(values) / len(values)  # type: ignore[arg-type]


def model_table(acc: Mapping[str, Mapping[str, float]], rows: list[list[str]], corruptions: list[str]) -> list[dict[str, Any]]:
    """One record per evaluated model, in the plan's order: clean and each corruption."""
    return [{"row": label, "model": model, **{c: acc.get(model, {}).get(c) for c in ["clean", *corruptions]}}
            for label, model, *_ in rows]


def policy_summary(acc: Mapping[str, Mapping[str, float]], corruptions: list[str],
                   variants: list[list[Any]]) -> list[dict[str, Any]]:
    """Per variant ([label, bn_policy, calibration batches]): gain on the patched corruption over θ_std
    (each c, mean), recovered share of the dedicated model's gain (mean gain over the mean dedicated
    gain) and the mean clean change. The dedicated models are the last row."""
    from rws.pipelines.rws_bn_policy import model_name

    std = acc.get("std", {})

    def gain(model: str, c: str) -> float | None:
        a, b = acc.get(model, {}).get(c), std.get(c)
        return None if a is None or b is None else a - b

    def clean_change(model: str) -> float | None:
        a, b = acc.get(model, {}).get("clean"), std.get("clean")
        return None if a is None or b is None else a - b

    dedicated_gains = [gain(f"robust/{c}", c) for c in corruptions]
    out = []
    for label, model_of in [*[(label, lambda c, p=p, n=n: model_name(c, p, n)) for label, p, n in variants],
                            ("dedicated θ_c", lambda c: f"robust/{c}")]:
        gains = [gain(model_of(c), c) for c in corruptions]
        mean_gain, mean_dedicated = _mean(gains), _mean(dedicated_gains)
        out.append({"policy": label, **{c: g for c, g in zip(corruptions, gains)}, "mean gain": mean_gain,
                    "share of dedicated gain": (mean_gain / mean_dedicated
                                                if mean_gain is not None and mean_dedicated else None),
                    "clean change": _mean([clean_change(model_of(c)) for c in corruptions])})
    return out


def to_markdown(models: list[dict[str, Any]], summary: list[dict[str, Any]], corruptions: list[str],
                info: Mapping[str, Any]) -> str:
    cols = ["clean", *corruptions]
    lines = [f"## BN policies on `{info['model']}`, severity {info['severity']}, accuracy %", "",
             "| model | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    lines += [f"| {r['row']} | " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in models]
    scols = [*corruptions, "mean gain"]
    lines += ["", "Gain on the patched corruption over θ_std (points), α = 1; clean change: mean over the "
              "four patched models (the re-estimating policies on severity-5 training batches of 128 of the "
              "patched corruption).", "",
              "| | " + " | ".join(scols) + " | share of dedicated gain | clean change |",
              "|---|" + "---:|" * (len(scols) + 2)]
    for r in summary:
        share = r["share of dedicated gain"]
        lines.append(f"| {r['policy']} | " + " | ".join(_fmt(r[c], sign=True) for c in scols)
                     + f" | {'–' if share is None else f'{100 * share:.0f} %'} | {_fmt(r['clean change'], sign=True)} |")
    return "\n".join(lines)


def write_report(out: Path, info: Mapping[str, Any]) -> str:
    corruptions, variants = list(info["corruptions"]), list(info["variants"])
    res = out / "eval"
    acc = accuracy_of_plan(read_results(res) if (res / "results.jsonl").exists() else [], info["rows"])
    models = model_table(acc, info["rows"], corruptions)
    summary = policy_summary(acc, corruptions, variants)
    md = to_markdown(models, summary, corruptions, info)
    write_text(out / "bn_policy.md", md)
    write_json(out / "bn_policy.json", {"models": models, "summary": summary, "plan": dict(info)})
    return md


def main(argv: list[str] | None = None) -> None:
    from rws.report.study_cli import report_main

    report_main(argv, __doc__, "outputs/rws_bn_policy", write_report)


if __name__ == "__main__":
    from rws.cli.entry import script_entry

    script_entry(main)
