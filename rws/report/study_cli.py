"""The command line of a study's report: rebuild its tables from an output directory's files.

    python -m rws.report.<study report> --out <the study's --out>

A study driver (rws.pipelines.rws_composition, ...) writes ``plan.json`` (what the report needs) and
the result files; ``report_main`` reads the plan and calls the report's ``write_report(out, plan)``,
so a table can be rebuilt (or re-styled) without re-running anything.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable, Mapping

from rws.errors import UserError

WriteReport = Callable[[Path, Mapping[str, Any]], str]


def report_main(argv: list[str] | None, doc: str | None, default_out: str, write_report: WriteReport) -> None:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=default_out, help="the study's output directory (holds plan.json)")
    a = p.parse_args(argv)
    out = Path(a.out)
    plan = out / "plan.json"
    expected = "the --out of a finished (or running) study of this kind"
    if not plan.is_file():
        raise UserError(f"no plan.json in {out}", "option --out", expected)
    try:
        info = json.loads(plan.read_text())
    except ValueError as e:
        raise UserError(f"{plan} is not JSON ({e})", "option --out", expected) from None
    if not isinstance(info, dict):
        raise UserError(f"{plan} is not a study plan (a JSON object)", "option --out", expected)
    try:
        md = write_report(out, info)
    except KeyError as e:  # a key this report needs is missing: another study's plan
        raise UserError(f"{plan} has no {e} (another study's plan?)", "option --out", expected) from None
    print(md)
