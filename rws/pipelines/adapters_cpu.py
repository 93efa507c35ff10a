"""CPU-scale "Revisiting adapters with adversarial training", one command:

    python -m rws.pipelines.adapters_cpu [--out outputs/adapters_cpu] [--smoke | --digits | --cnn] [--print-plan]

Default: a small ViT (vit_cpu_patch4_32, MAE-style mean pooling) on the shared CIFAR-10 JPEGs, l-inf
eps = 4/255, PGD-2 with step 2.5/255 for every training attack (the paper's setting), cls-token and
LayerNorm adapters. ``--cnn``: the half-width small CNN on the embedded digits with dual BatchNorm and
DualParams BatchNorm adapters at eps 32/255 (experiment=adapters/cpu_cnn), where the model learns in
minutes. Steps (each a real CLI call; finished steps are skipped on re-run, two run at once):

  train  nominal, adversarial                     plain models (Table 1 baselines; Table 9 members)
  train  cotrain_shared                           co-training with no adapter (Table 1 "Co-training")
  train  cotrain_<main>, cotrain_<other>          co-training with the main adapter (cls_token; --cnn:
                                                  dual_bn) and the others (layernorm; --cnn: dualparams_bn)
  train  cotrain_alpha<a>                         the main-adapter model at other alphas (Fig. 3)
  eval   table1     every model in each mode: clean and PGD-40 (Adam) robust accuracy on the same images
  sweep  beta       beta in [-0.05, 0, 0.1, ..., 1, 1.05] of the main-adapter model: clean, robust
                    (APGD-CE), 4 corruptions (Table 7, Fig. 5 analog)
  sweep  ensemble   probability-level ensembles of its clean and robust modes (Fig. 4)
  sweep  independent  soups of the independent nominal and adversarial models (Table 9)
  sweep  plane      the (beta1, beta2) plane of its adapters (Fig. 8)
  report tables + figures in <out>/report (rws.report.adapter_tables; <out>/plan.json names the main run)
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from rws.corruptions import CPU_SHIFTS
from rws.pipelines.runner import Step, run, select

EPS = "4/255"
# PGD-2 at eps 4/255 with step 2.5/255 (appendix A); rws step sizes are relative to eps.
PGD2 = ("method.attack=pgd", "method.attack_steps=2", "method.step_size=0.625")
BETAS = (-0.05, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.05)
ENSEMBLE_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
INDEPENDENT_WS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass(frozen=True)
class Settings:
    """Every size knob; ``smoke()`` shrinks the chain to a minutes-long end-to-end check."""
    epochs: int = 3
    subset_per_class: int = 500        # training images per class (5k in all)
    alphas: tuple[float, ...] = (0.2, 0.8)   # extra alphas of the main-adapter model (0.5 is the main run)
    n_robust: int = 400                # Table 1: test images for clean and PGD-40 accuracy
    k_clean: int = 500                 # sweeps: images per clean / corruption target
    k_adv: int = 200                   # sweeps: images per adversarial target
    attack_steps: int = 10             # sweeps: APGD-CE steps
    plane_step: float = 0.5            # token plane grid step over [-0.5, 1.5]^2 (5 x 5 points)
    data: str = "cifar10_jpeg"         # digits: the embedded dataset (a ViT learns it in minutes)
    eps: str = EPS                     # l-inf radius of every training and evaluation attack
    extra: tuple[str, ...] = field(default_factory=tuple)  # overrides of every training step
    experiment: str = "adapters/cpu"   # the preset every training step starts from
    main_adapter: str = "cls_token"    # the adapter of the alpha runs and of the sweeps
    other_adapters: tuple[str, ...] = ("layernorm",)  # more Table 1 rows (co-trained at alpha 0.5)

    @staticmethod
    def digits() -> "Settings":
        """The embedded digits (all ~1,450 training images, 12 epochs, eps 8/255, no extra alphas): the
        small ViT reaches useful accuracy there in minutes, unlike on CIFAR-10 at this budget."""
        return Settings(epochs=12, subset_per_class=0, alphas=(), n_robust=300, k_clean=300, k_adv=150,
                        data="digits", eps="8/255", extra=("data.val_size=0.1", "data.test_subset=null"))

    @staticmethod
    def cnn() -> "Settings":
        """The BN variant (experiment=adapters/cpu_cnn): the half-width small CNN on the embedded
        digits with dual BatchNorm (and DualParams BatchNorm) adapters, 8 epochs, eps 32/255: the
        setting at this budget where the model learns and the two modes come apart."""
        return Settings(epochs=8, subset_per_class=0, n_robust=360, k_clean=360, k_adv=360, data="digits",
                        eps="32/255", extra=("data.val_size=0.1", "data.test_subset=null"),
                        experiment="adapters/cpu_cnn", main_adapter="dual_bn", other_adapters=("dualparams_bn",))

    @property
    def main_run(self) -> str:
        return f"cotrain_{self.main_adapter}"

    @staticmethod
    def smoke() -> "Settings":
        return Settings(epochs=1, subset_per_class=20, alphas=(0.2,), n_robust=16, k_clean=32, k_adv=8,
                        attack_steps=2, plane_step=1.0, extra=("data.val_size=100",))


def _export(out: Path, name: str) -> str:
    return f"{{kind: export, path: {out}/{name}/export}}"


def _adapter(out: Path, name: str, mode: str, label: str) -> str:
    return f"{{kind: adapter, base: {_export(out, name)}, mode: {mode}, name: {label}}}"


def trainings(s: Settings) -> dict[str, tuple[str, ...]]:
    """Run name -> overrides on top of experiment=adapters/cpu."""
    cotrain = ("method=cotrain", f"method.threat={{norm: linf, eps: {s.eps}}}", *PGD2)
    runs: dict[str, tuple[str, ...]] = {
        "nominal": ("method=nominal", "model.adapter=null"),
        "adversarial": ("method=adversarial", f"method.threats=[{{norm: linf, eps: {s.eps}}}]", *PGD2,
                        "model.adapter=null"),
        "cotrain_shared": (*cotrain, "model.adapter=none"),
        s.main_run: (*cotrain, f"model.adapter={s.main_adapter}"),
        **{f"cotrain_{a}": (*cotrain, f"model.adapter={a}") for a in s.other_adapters},
    }
    for a in s.alphas:
        runs[f"cotrain_alpha{a:g}"] = (*cotrain, f"model.adapter={s.main_adapter}", f"method.alpha={a:g}")
    return runs


def _list(values: tuple[float, ...]) -> str:
    return "[" + ",".join(f"{v:g}" for v in values) + "]"


def plan(s: Settings, out: Path) -> list[Step]:
    env = {"OMP_NUM_THREADS": "1"}
    common = [f"experiment={s.experiment}", f"data={s.data}", f"paths.output_dir={out}",
              f"data.subset_per_class={s.subset_per_class}" if s.subset_per_class else "data.subset_per_class=null",
              f"trainer.max_epochs={s.epochs}", *s.extra]
    runs = trainings(s)
    steps = [Step(name, f"train {name}", ("-m", "rws.cli.train", *common, *ovr, f"hydra.run.dir={out}/{name}",
                                          f"run_name={name}"),
                  done=out / name / "export/metrics.json", env=env, log=out / "logs" / f"{name}.log", tag="train")
             for name, ovr in runs.items()]

    # Table 1 / Fig. 3: every model in each of its modes, clean + PGD-40 (Adam) at eps 4/255.
    models = [f"{{kind: export, path: {out}/nominal/export, name: nominal}}",
              f"{{kind: export, path: {out}/adversarial/export, name: adversarial}}"]
    for name in runs:
        if name.startswith("cotrain"):
            models += [_adapter(out, name, "clean", f"{name}@clean"), _adapter(out, name, "robust", f"{name}@robust")]
    # data.test_subset draws a seeded random subset of the test set; a suite's own ``n`` would take the
    # first n images of the stream, and the CIFAR-10 JPEG test set is stored sorted by class.
    adversarial_suite = f"{{name: adversarial, threats: [{{norm: linf, eps: {s.eps}}}], attacks: [pgd40-adam]}}"
    for shard in (0, 1):  # two shards: both cores evaluate
        steps.append(Step(f"table1_{shard}", f"evaluate every model and mode (shard {shard + 1}/2)",
                          ("-m", "rws.cli.evaluate", f"data={s.data}", f"data.test_subset={s.n_robust}",
                           f"paths.output_dir={out}",
                           f"specs=[{','.join(models)}]", f"suites=[{adversarial_suite}]",
                           f"shard={shard}/2", f"out={out}/table1", "print_table=false", "progress=false"),
                          env=env, needs=tuple(runs), log=out / "logs" / f"table1_{shard}.log", tag="eval"))

    # The sweeps share their targets (same images per target), so soups, ensembles and the
    # independent soups are comparable row for row.
    clean = f"{{name: clean, suite: clean, k: {s.k_clean}}}"
    adv = f"{{name: linf, suite: adversarial, threat: {{norm: linf, eps: {s.eps}}}, k: {s.k_adv}}}"
    shifts = [f"{{name: {c}, suite: corruption, corruption: {c}, severity: 3, k: {s.k_clean}}}" for c in CPU_SHIFTS]
    targets = f"targets=[{','.join([clean, adv, *shifts])}]"
    sweep = ["-m", "rws.cli.sweep", f"data={s.data}", f"paths.output_dir={out}", "data.test_subset=null",
             f"attack_steps={s.attack_steps}", "attacks=[apgd-ce]", "device=cpu"]
    main, main_export = s.main_run, f"{out}/{s.main_run}/export"
    steps.append(Step("beta", f"sweep beta of the {s.main_adapter} model (adversarial model soups)",
                      (*sweep, f"adapter.base={main_export}", f"adapter.betas={_list(BETAS)}", targets,
                       f"out={out}/beta"), env=env, needs=(main,), log=out / "logs/beta.log",
                      tag="sweep"))
    ensembles = [f"{{kind: ensemble, name: ensemble{w:g}, members: [{_adapter(out, main, 'clean', 'c')},"
                 f"{_adapter(out, main, 'robust', 'r')}], weights: [{w:g}, {1 - w:g}]}}"
                 for w in ENSEMBLE_WEIGHTS]
    steps.append(Step("ensemble", "sweep probability-level ensembles of the clean and robust modes",
                      (*sweep, f"specs=[{','.join(ensembles)}]", targets, f"out={out}/ensemble"), env=env,
                      needs=(main,), log=out / "logs/ensemble.log", tag="sweep"))
    steps.append(Step("independent", "sweep soups of the independent nominal and adversarial models",
                      (*sweep, f"members=[{out}/nominal/export,{out}/adversarial/export]",
                       "member_names=[nominal,adversarial]", "grid=front", f"grid.ws={_list(INDEPENDENT_WS)}",
                       targets, f"out={out}/independent"), env=env, needs=("nominal", "adversarial"),
                      log=out / "logs/independent.log", tag="sweep"))
    steps.append(Step("plane", "sweep the (beta1, beta2) token plane",
                      (*sweep, f"adapter.base={main_export}", f"adapter.plane={{low: -0.5, high: 1.5, step: {s.plane_step:g}}}",
                       f"targets=[{clean},{adv}]", f"out={out}/plane"), env=env, needs=(main,),
                      log=out / "logs/plane.log", tag="sweep"))
    steps.append(Step("report", "tables and figures",
                      ("-m", "rws.report.adapter_tables", str(out), "--out", str(out / "report")),
                      needs=("table1_0", "table1_1", "beta", "ensemble", "independent", "plane"), tag="report",
                      files={out / "plan.json": json.dumps({"main_run": main, "main_adapter": s.main_adapter,
                                                            "runs": list(runs), "eps": s.eps}, indent=2)}))
    return steps


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs/adapters_cpu")
    p.add_argument("--smoke", action="store_true", help="tiny settings to check the chain runs (minutes)")
    p.add_argument("--digits", action="store_true", help="the embedded-digits variant (Settings.digits)")
    p.add_argument("--cnn", action="store_true",
                   help="the BatchNorm variant: small CNN on digits, dual BN adapters, eps 32/255 (Settings.cnn)")
    p.add_argument("--epochs", type=int, default=Settings.epochs)
    p.add_argument("--subset-per-class", type=int, default=Settings.subset_per_class, help="0: all")
    p.add_argument("--data", default=Settings.data, help="cifar10_jpeg (the shared data) or digits (embedded)")
    p.add_argument("--eps", default=Settings.eps, help="l-inf radius of training and evaluation attacks")
    p.add_argument("--n-robust", type=int, default=Settings.n_robust, help="Table 1 test images")
    p.add_argument("--alphas", default=",".join(f"{x:g}" for x in Settings.alphas),
                   help="extra co-training weights of the main-adapter model, comma-separated ('' for none)")
    p.add_argument("--print-plan", action="store_true", help="print every step's command and exit")
    p.add_argument("--stages", default="train,eval,sweep,report",
                   help="comma-separated stages to run (train, eval, sweep, report); the others are taken as done")
    a = p.parse_args(argv)
    out = Path(a.out).resolve()
    s = Settings.smoke() if a.smoke else Settings.digits() if a.digits else Settings.cnn() if a.cnn else Settings(
        epochs=a.epochs, subset_per_class=a.subset_per_class, n_robust=a.n_robust, data=a.data, eps=a.eps,
        alphas=tuple(float(x) for x in a.alphas.split(",") if x.strip()))
    steps = select(plan(s, out), a.stages.split(","))
    if a.print_plan:
        for st in steps:
            print(f"# {st.title}\n{st.shell()}\n")
        return
    t0 = time.time()
    run(steps, record_dir=out / ".steps", jobs=2)
    print(f"\nadapters_cpu finished in {time.time() - t0:.0f}s")
    report = out / "report" / "adapters.md"
    if report.exists():
        print(report.read_text())
    (out / "summary.json").write_text(json.dumps({"out": str(out), "seconds": round(time.time() - t0)}, indent=2))


if __name__ == "__main__":
    from rws.cli.entry import script_entry

    script_entry(main)
