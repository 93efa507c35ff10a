"""The README's first command: a standard model and a corruption-augmented one on the embedded
digits, both evaluated on clean data and all 19 corruptions, then a small table.

    python -m rws.pipelines.quickstart [--out outputs/quickstart] [--epochs 12] [--fresh]

Steps (each a real CLI call; a finished step is skipped on re-run):
  1. rws.cli.train  experiment=quickstart                         -> std/export
  2. rws.cli.train  experiment=quickstart method=corruption init=std/export   (all 19, severity 1-5)
  3. rws.cli.evaluate on both: clean + 19 corruptions x severities {1, 3, 5}
  4. table from the result files (rws.report.tables)
"""

from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from rws.pipelines.runner import Step, run


@dataclass(frozen=True)
class Settings:
    epochs: int = 12             # epochs of the standard model
    robust_epochs: int = 6       # epochs of the corruption fine-tuning
    severities: str = "[1,3,5]"  # corruption severities to evaluate (a Hydra list)


def plan(s: Settings, out: Path) -> list[Step]:
    common = ["experiment=quickstart", f"paths.output_dir={out}"]
    specs = (f"[{{kind: export, path: {out}/std/export, name: standard}},"
             f"{{kind: export, path: {out}/augmented/export, name: corruption_augmented}}]")
    return [
        Step("std", "1/4 train the standard model",
             ("-m", "rws.cli.train", *common, f"trainer.max_epochs={s.epochs}", f"hydra.run.dir={out}/std",
              "run_name=std"),
             done=out / "std/export/metrics.json"),
        Step("augmented", "2/4 fine-tune a corruption-augmented model from it (all 19 corruptions, severities 1-5)",
             ("-m", "rws.cli.train", *common, "method=corruption", "method.severity=[1,5]", "method.optim.lr=0.02",
              f"trainer.max_epochs={s.robust_epochs}", f"init={out}/std/export",
              f"hydra.run.dir={out}/augmented", "run_name=augmented"),
             done=out / "augmented/export/metrics.json", needs=("std",)),
        # No done marker: evaluation resumes cell by cell on its own.
        Step("evaluate", "3/4 evaluate both on clean + 19 corruptions",
             ("-m", "rws.cli.evaluate", f"paths.output_dir={out}", f"specs={specs}", f"out={out}/eval",
              f"suites=[clean,{{name: corruptions, corruptions: all, severities: {s.severities}}}]",
              "print_table=false", "progress=true"),
             needs=("std", "augmented")),
        Step("table", "4/4 table",
             ("-m", "rws.report.tables", str(out / "eval"), "--table", "summary", "--out", str(out / "table")),
             needs=("evaluate",)),
    ]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs/quickstart", help="directory for every run, export and result")
    p.add_argument("--epochs", type=int, default=Settings.epochs, help="epochs of the standard model")
    p.add_argument("--robust-epochs", type=int, default=Settings.robust_epochs,
                   help="epochs of the corruption fine-tuning")
    p.add_argument("--severities", default=Settings.severities, help="corruption severities to evaluate")
    p.add_argument("--fresh", action="store_true", help="delete --out first instead of resuming")
    a = p.parse_args(argv)
    out = Path(a.out).resolve()
    if a.fresh and out.exists():
        shutil.rmtree(out)
    t0 = time.time()
    run(plan(Settings(a.epochs, a.robust_epochs, a.severities), out))
    print(f"\n{(out / 'table.md').read_text()}")
    print(f"quickstart finished in {time.time() - t0:.0f}s; results in {out}/eval, table in {out}/table.md")


if __name__ == "__main__":
    main()
