"""The README's first command: a standard model and a corruption-augmented one on the embedded
digits, both evaluated on clean data and all 19 corruptions, then a small table.

    python -m rws.pipelines.quickstart [--out outputs/quickstart] [--epochs 12] [--fresh]

Steps (each a real CLI call; a finished step is skipped on re-run):
  1. train.py  experiment=quickstart                         -> std/export
  2. train.py  experiment=quickstart method=corruption init=std/export   (all 19, severity 1-5)
  3. evaluate.py on both: clean + 19 corruptions x severities {1, 3, 5}
  4. table from the result files (rws.report.tables)
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from rws.pipelines.steps import run_step


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs/quickstart", help="directory for every run, export and result")
    p.add_argument("--epochs", type=int, default=12, help="epochs of the standard model")
    p.add_argument("--robust-epochs", type=int, default=6, help="epochs of the corruption fine-tuning")
    p.add_argument("--severities", default="[1,3,5]", help="corruption severities to evaluate")
    p.add_argument("--fresh", action="store_true", help="delete --out first instead of resuming")
    a = p.parse_args(argv)
    out = Path(a.out).resolve()
    if a.fresh and out.exists():
        shutil.rmtree(out)
    t0 = time.time()
    common = ["experiment=quickstart", f"paths.output_dir={out}"]
    run_step("1/4 train the standard model",
             ["train.py", *common, f"trainer.max_epochs={a.epochs}", f"hydra.run.dir={out}/std", "run_name=std"],
             done_marker=out / "std/export/metrics.json")
    run_step("2/4 fine-tune a corruption-augmented model from it (all 19 corruptions, severities 1-5)",
             ["train.py", *common, "method=corruption", "method.severity=[1,5]", "method.optim.lr=0.02",
              f"trainer.max_epochs={a.robust_epochs}", f"init={out}/std/export",
              f"hydra.run.dir={out}/augmented", "run_name=augmented"],
             done_marker=out / "augmented/export/metrics.json")
    specs = (f"[{{kind: export, path: {out}/std/export, name: standard}},"
             f"{{kind: export, path: {out}/augmented/export, name: corruption_augmented}}]")
    run_step("3/4 evaluate both on clean + 19 corruptions",
             ["evaluate.py", f"paths.output_dir={out}", f"specs={specs}", f"out={out}/eval",
              f"suites=[clean,{{name: corruptions, corruptions: all, severities: {a.severities}}}]",
              "print_table=false", "progress=true"])
    run_step("4/4 table", ["-m", "rws.report.tables", str(out / "eval"), "--table", "summary",
                           "--out", str(out / "table")])
    print(f"\n{(out / 'table.md').read_text()}")
    print(f"quickstart finished in {time.time() - t0:.0f}s; results in {out}/eval, table in {out}/table.md")


if __name__ == "__main__":
    main()
