"""RWS transfer across datasets with a *shared* theta_init (Table 3, CPU scale):

    python -m rws.pipelines.rws_transfer [--cifar outputs/rws_cpu] [--out outputs/rws_transfer] [--smoke]

rws_cpu's own transfer table starts the Tiny-ImageNet models from their own theta_init; signatures
then live in unrelated bases and do not transfer. Here the Tiny-ImageNet models start from the
CIFAR-10 theta_init (``init_skip=[head]``: a fresh 200-way head, everything else shared), as a
pre-trained init would be shared in the paper. Steps (real CLI calls, resumable):
  1. Tiny theta_init = CIFAR theta_init + fresh head (rws.cli.train with 0 epochs)
  2. Tiny theta_std and theta_gaussian_noise fine-tuned from it (run concurrently)
  3. the Tiny signature for gaussian_noise (rws.stages.extract)
  4. rws.cli.evaluate on Tiny-ImageNet: std, std + each CIFAR-10 signature, std + the Tiny signature,
     the dedicated Tiny robust model; clean + the 5 corruptions at severities 3 and 5
  5. the transfer table (<out>/transfer_shared.md)
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import yaml

from rws.corruptions import CPU_SHIFTS
from rws.pipelines.runner import Step, run

TINY_CORRUPTION = "gaussian_noise"  # the one Tiny-ImageNet robust model / signature


@dataclass(frozen=True)
class Settings:
    cifar: Path                  # the rws_cpu output (CIFAR-10 init + signatures)
    epochs: int = 4
    lr: float = 0.03
    sigset: str = "shallow32"    # which CIFAR-10 signature set (a folder of <cifar>/sigs)
    corruptions: tuple[str, ...] = tuple(CPU_SHIFTS)  # CIFAR-10 signatures transferred and corruptions evaluated
    test_subset: int = 1000      # Tiny-ImageNet test images
    tiny_overrides: tuple[str, ...] = ()  # data overrides of the Tiny-ImageNet training steps

    @staticmethod
    def smoke(cifar: Path) -> "Settings":
        """Every step once on a few images, on the output of ``rws_cpu --smoke`` (its 2 corruptions)."""
        return Settings(cifar=cifar, epochs=1, corruptions=("gaussian_noise", "fog"), test_subset=50,
                        tiny_overrides=("data.subset_per_class=3", "data.val_size=20", "data.test_subset=50",
                                        "data.batch_size=50"))


def plan(s: Settings, out: Path) -> list[Step]:
    cifar, tc = s.cifar, TINY_CORRUPTION
    env = {"OMP_NUM_THREADS": "1"}
    common = ("-m", "rws.cli.train", "experiment=rws/cpu_tiny", f"paths.output_dir={out}",
              "trainer.enable_progress_bar=false", *s.tiny_overrides)
    steps = [Step("init", "1/5 Tiny theta_init = CIFAR-10 theta_init + a fresh 200-way head",
                  (*common, f"init={cifar}/init/export", "init_skip=[head]", "trainer.max_epochs=0",
                   "test_after_fit=false", f"hydra.run.dir={out}/init"),
                  done=out / "init/export/metrics.json", env=env)]
    ft = (f"init={out}/init/export", f"trainer.max_epochs={s.epochs}", f"method.optim.lr={s.lr}")
    jobs = {"std": (), f"robust_{tc}": ("method=corruption", f"method.corruptions={tc}", "method.severity=5")}
    for name, extra in jobs.items():
        steps.append(Step(name, f"2/5 Tiny {name}", (*common, *ft, *extra, f"hydra.run.dir={out}/{name}"),
                          done=out / name / "export/metrics.json", env=env, needs=("init",),
                          log=out / f"{name}.log"))
    steps.append(Step("extract", f"3/5 Tiny signature ({tc})",
                      ("-m", "rws.stages.extract", f"init={out}/init/export", f"std={out}/std/export",
                       f"robust={{{tc}: {out}/robust_{tc}/export}}", f"out={out}/sigs", "analysis=false"),
                      done=out / f"sigs/{tc}.safetensors", env=env, needs=tuple(jobs)))
    std = {"kind": "export", "path": f"{out}/std/export", "name": "tiny_std"}
    specs = [std, {"kind": "export", "path": f"{out}/robust_{tc}/export", "name": f"tiny_robust_{tc}"}]
    specs += [{"kind": "patch", "name": f"tiny_std+cifar_rws_{c}", "base": std,
               "signatures": [{"path": f"{cifar}/sigs/{s.sigset}/{c}.safetensors", "alpha": 1.0}]}
              for c in s.corruptions]
    specs.append({"kind": "patch", "name": f"tiny_std+tiny_rws_{tc}", "base": std,
                  "signatures": [{"path": f"{out}/sigs/{tc}.safetensors", "alpha": 1.0}]})
    # Spec files rather than inline specs: paths and names stay out of Hydra's override grammar.
    files = {out / "specs" / f"{i:02d}.yaml": yaml.safe_dump(spec, sort_keys=False) for i, spec in enumerate(specs)}
    steps.append(Step("evaluate", "4/5 evaluate on Tiny-ImageNet",
                      ("-m", "rws.cli.evaluate", "data=tiny_imagenet", f"data.test_subset={s.test_subset}",
                       f"paths.output_dir={out}", f"specs=[{','.join(str(f) for f in files)}]", f"out={out}/eval",
                       "print_table=false", "progress=false",
                       f"suites=[clean,{{name: corruptions, corruptions: [{','.join(s.corruptions)}], "
                       "severities: [3,5]}]"),
                      env=env, files=files, needs=("extract",)))
    steps.append(Step("table", "5/5 table",
                      ("-m", "rws.report.tables", f"{out}/eval", "--rows", "model", "--cols", "condition",
                       "--suite", "corruptions", "--out", f"{out}/transfer_shared"),
                      needs=("evaluate",)))
    return steps


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cifar", default="outputs/rws_cpu", help="the rws_cpu output (CIFAR-10 init + signatures)")
    p.add_argument("--out", default="outputs/rws_transfer")
    p.add_argument("--epochs", type=int, default=Settings.epochs)
    p.add_argument("--lr", type=float, default=Settings.lr)
    p.add_argument("--sigset", default=Settings.sigset, help="which CIFAR-10 signature set (a folder of <cifar>/sigs)")
    p.add_argument("--smoke", action="store_true",
                   help="1 epoch on a few Tiny-ImageNet images, for --cifar from `rws_cpu --smoke` (its 2 corruptions)")
    a = p.parse_args(argv)
    out = Path(a.out).resolve()
    cifar = Path(a.cifar).resolve()
    s = Settings.smoke(cifar) if a.smoke else Settings(cifar, a.epochs, a.lr, a.sigset)
    run(plan(s, out), record_dir=out / ".steps", jobs=2)
    print((out / "transfer_shared.md").read_text())


if __name__ == "__main__":
    from rws.cli.entry import script_entry

    script_entry(main)
