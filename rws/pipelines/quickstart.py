"""The README's first command: the project's idea end to end on the embedded digits (no download),
in a few minutes on two CPU cores.

    python -m rws.pipelines.quickstart [--out outputs/quickstart] [--fresh] [--print-plan] [--eps 32/255] [--smoke]

Steps (each a real CLI call with its log under <out>/logs; a finished step is skipped on re-run,
two run at once):
  1. rws.cli.train      θ_init from scratch                                          -> init/export
  2. rws.cli.train      a co-trained model with dual BatchNorm adapters (clean + PGD-2 l-inf, Eq. 2
                        of "Revisiting adapters") from scratch                         -> cotrain/export
  3. rws.cli.train      θ_std: clean fine-tune from θ_init                           -> std/export
  4. rws.cli.train      θ_robust: fine-tune from θ_init on all 19 corruptions (severity 1-5) -> robust/export
  5. rws.stages.extract the Robust Weight Signature of θ_robust (shallow layers, 8 bit) -> sigs/
  6. rws.cli.train      a small robust teacher (quarter width, AugMix + Noise2Net)     -> teacher/export
  7. rws.cli.train      distil it into θ_std ("Efficiently robustify"): θ_std's last stages get clean,
                        unclean and combined heads (the trunk stays frozen)          -> student/export
  8. rws.cli.evaluate   (two shards, one per core) standard, corruption-robust, RWS-patched
                        (θ_std + α·RWS), the two-member soup (θ_std + θ_robust)/2, the co-trained
                        model at five β (β = 1 clean mode ... β = 0 robust mode, β between = adapter soups),
                        and the distilled student answering through MC-dropout + KL head selection,
                        each on clean data, 19 corruptions x severities {1, 3, 5} and PGD-40 (Adam) l-inf
  9. rws.report.tables  one table from the result files                              -> table.md / table.csv
"""

from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from rws.pipelines.runner import Step, run

PRESET = "experiment=quickstart"


@dataclass(frozen=True)
class Settings:
    init_epochs: int = 10          # θ_init from scratch
    std_epochs: int = 3            # θ_std: clean fine-tune from θ_init
    robust_epochs: int = 5         # θ_robust: corruption fine-tune from θ_init
    cotrain_epochs: int = 8        # the adapter model, from scratch
    ft_lr: float = 0.02            # fine-tuning learning rate (θ_std and θ_robust)
    sig_layers: int = 3            # RWS on the first k layer groups (the paper's shallow layers)
    sig_bits: int = 8              # RWS storage precision
    teacher_epochs: int = 10       # the small AugMix+Noise2Net teacher, from scratch
    distill_epochs: int = 3        # the student's heads, from θ_std
    alpha: float = 1.0             # patch strength: θ_std + α·RWS
    betas: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25, 0.0)  # adapter soups: β·φ_clean + (1-β)·φ_robust
    # l-inf radius of co-training and of the PGD-40 evaluation. Digits (8x8 upsampled, two-level
    # strokes) are robust to 8/255 almost for free: both adapter modes get there and beta shows no
    # trade-off; at 32/255 clean and robust modes differ.
    eps: str = "32/255"
    severities: str = "[1,3,5]"    # corruption severities to evaluate (a Hydra list)
    eval_overrides: tuple[str, ...] = ()  # extra overrides of the evaluation steps (the smoke test subset)

    @staticmethod
    def smoke(eps: str = "32/255") -> "Settings":
        """Every step and every table row once, at a fraction of the cost (tests/test_pipeline_smoke.py):
        1-2 epochs, three betas, severity 3 only, 120 test images."""
        return Settings(init_epochs=2, std_epochs=1, robust_epochs=1, cotrain_epochs=1, teacher_epochs=1,
                        distill_epochs=1, betas=(1.0, 0.5, 0.0), eps=eps, severities="[3]",
                        eval_overrides=("data.test_subset=120",))


def _export(out: Path, name: str) -> str:
    return f"{{kind: export, path: {out}/{name}/export}}"


def specs(s: Settings, out: Path) -> list[str]:
    """The rows of the table, as model specs (docs/specs.md), in table order."""
    rows = [f"{{kind: export, path: {out}/std/export, name: standard}}",
            f"{{kind: export, path: {out}/robust/export, name: corruption_robust}}",
            f"{{kind: patch, base: {_export(out, 'std')}, signatures: [{{path: {out}/sigs/all_corruptions.safetensors, "
            f"alpha: {s.alpha:g}}}], name: rws_patched}}",
            f"{{kind: soup, members: [{{spec: {_export(out, 'std')}, weight: 0.5}}, "
            f"{{spec: {_export(out, 'robust')}, weight: 0.5}}], name: soup}}"]
    rows += [f"{{kind: adapter, base: {_export(out, 'cotrain')}, beta: {b:g}, name: 'cotrained beta={b:g}'}}"
             for b in s.betas]
    rows.append(f"{{kind: heads, base: {_export(out, 'student')}, select: {{rule: mc_dropout_kl, samples: 10, seed: 0, "
                f"calibration: {{split: val, batches: 2}}}}, name: distilled}}")
    return rows


def plan(s: Settings, out: Path) -> list[Step]:
    env = {"OMP_NUM_THREADS": "1"}  # two steps run at once, one core each

    def train(name: str, title: str, *overrides: str, needs: tuple[str, ...] = ()) -> Step:
        return Step(name, title, ("-m", "rws.cli.train", PRESET, f"paths.output_dir={out}", f"hydra.run.dir={out}/{name}",
                                  f"run_name={name}", "trainer.enable_progress_bar=false", *overrides),
                    done=out / name / "export/metrics.json", needs=needs, env=env, log=out / "logs" / f"{name}.log",
                    tag="train")

    finetune = (f"init={out}/init/export", f"method.optim.lr={s.ft_lr:g}")
    suites = (f"suites=[clean,{{name: corruptions, corruptions: all, severities: {s.severities}}},"
              f"{{name: adversarial, threats: [{{norm: linf, eps: {s.eps}}}], attacks: [pgd40-adam]}}]")
    steps = [
        train("init", "1/9 train θ_init from scratch", f"trainer.max_epochs={s.init_epochs}"),
        train("cotrain", "2/9 co-train with dual BatchNorm adapters (clean + PGD-2 adversarial, alpha 0.5)",
              "method=cotrain", "model.adapter=dual_bn", f"method.threat={{norm: linf, eps: {s.eps}}}",
              f"trainer.max_epochs={s.cotrain_epochs}"),
        train("std", "3/9 fine-tune θ_std from θ_init (clean)", *finetune, f"trainer.max_epochs={s.std_epochs}",
              needs=("init",)),
        train("robust", "4/9 fine-tune θ_robust from θ_init (all 19 corruptions, severities 1-5)", *finetune,
              "method=corruption", "method.severity=[1,5]", f"trainer.max_epochs={s.robust_epochs}", needs=("init",)),
        Step("sigs", f"5/9 extract the signature RWS = θ_robust - θ_init minus its projection on θ_std - θ_init "
                     f"(first {s.sig_layers} layers, {s.sig_bits} bit)",
             ("-m", "rws.stages.extract", f"init={out}/init/export", f"std={out}/std/export",
              f"robust={{all_corruptions: {out}/robust/export}}", f"out={out}/sigs", f"layers.k={s.sig_layers}",
              f"bits={s.sig_bits}", f"paths.output_dir={out}", f"hydra.run.dir={out}/sigs/hydra"),
             done=out / "sigs/analysis.json", needs=("init", "std", "robust"), env=env, log=out / "logs/sigs.log",
             tag="extract"),
        train("teacher", "6/9 train a small robust teacher (quarter width, AugMix + Noise2Net)", "method=augmix_da",
              "model.width=0.25", f"trainer.max_epochs={s.teacher_epochs}"),
        train("student", "7/9 distil the teacher into θ_std's clean / unclean / combined heads", "method=distill",
              f"method.student={out}/std/export", f"method.teacher={out}/teacher/export",
              "method.heads.tuned_stages=3", "method.augment.noise2net={fraction: 0.5}",
              "method.optim.lr=1e-3",  # the preset's SGD rate does not fit the distillation recipe's Adam
              f"trainer.max_epochs={s.distill_epochs}", needs=("std", "teacher")),
    ]
    # No done marker: evaluation resumes cell by cell on its own.
    for shard in (0, 1):
        steps.append(Step(f"evaluate_{shard}", f"8/9 evaluate every row on clean + 19 corruptions + PGD-40 "
                                               f"(shard {shard + 1}/2)",
                          ("-m", "rws.cli.evaluate", f"paths.output_dir={out}", f"specs=[{','.join(specs(s, out))}]",
                           suites, f"shard={shard}/2", f"out={out}/eval", "print_table=false", "progress=false",
                           *s.eval_overrides),
                          needs=("sigs", "cotrain", "student"), env=env, log=out / "logs" / f"evaluate_{shard}.log", tag="eval"))
    steps.append(Step("table", "9/9 table", ("-m", "rws.report.tables", str(out / "eval"), "--table", "summary",
                                             "--out", str(out / "table")),
                      needs=("evaluate_0", "evaluate_1"), tag="report"))
    return steps


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs/quickstart", help="directory for every run, export and result")
    p.add_argument("--fresh", action="store_true", help="delete --out first instead of resuming")
    p.add_argument("--print-plan", action="store_true", help="print every command and exit")
    p.add_argument("--eps", default=Settings.eps, help="l-inf radius of co-training and of the PGD-40 evaluation")
    p.add_argument("--smoke", action="store_true",
                   help="every step and table row at a fraction of the cost (1-2 epochs, severity 3, 120 test images)")
    a = p.parse_args(argv)
    out = Path(a.out).resolve()
    steps = plan(Settings.smoke(a.eps) if a.smoke else Settings(eps=a.eps), out)
    if a.print_plan:
        for st in steps:
            print(f"# {st.title}\n{st.shell()}\n")
        return
    if a.fresh and out.exists():
        shutil.rmtree(out)
    t0 = time.time()
    run(steps, record_dir=out / ".steps", jobs=2)
    print(f"\n{(out / 'table.md').read_text()}")
    print(f"quickstart finished in {time.time() - t0:.0f}s; results in {out}/eval, table in {out}/table.md")


if __name__ == "__main__":
    from rws.cli.entry import script_entry

    script_entry(main)
