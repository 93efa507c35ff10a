"""CPU-scale robust model soups, one command:

    python -m rws.pipelines.soups_cpu [--out outputs/soups_cpu] [--smoke]

Steps (each a real CLI call; finished steps are skipped on re-run):
  1. rws.cli.train experiment=soups/cpu                 theta_inf: PGD l-inf adversarial training
  2. fine-tune theta_inf for a few epochs to l2, l1 and nominal   -> theta_inf->2, ->1, ->nominal
     (the three run concurrently: each is single-threaded)
  3. rws.cli.sweep grid=front  theta_inf <-> theta_inf->2    clean / l-inf / l2 / union accuracy per w (Fig. 1)
  4. rws.cli.sweep grid=convex theta_inf, ->2, ->1           21 soups on the simplex (Fig. 3)
  5. rws.cli.sweep grid=paper  all four members              480 affine soups on corruption shifts,
                                                             best soups + few-shot selection (Table 1, Fig. 7/8)
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from rws.corruptions import CPU_SHIFTS
from rws.pipelines.runner import Step, run

FINETUNES = {  # member name -> overrides on top of experiment=soups/cpu
    "linf_to_l2": ["method.threats=[{norm: l2, eps: 0.5}]"],
    "linf_to_l1": ["method.threats=[{norm: l1, eps: 12}]"],
    "linf_to_nominal": ["method=nominal"],
}
SHIFTS = list(CPU_SHIFTS)


@dataclass(frozen=True)
class Settings:
    """Every size knob of the chain; ``smoke()`` shrinks it to a minutes-long end-to-end check."""
    epochs: int = 12             # epochs of the l-inf model
    finetune_epochs: int = 3
    attack_steps: int = 10       # APGD steps in the sweeps (paper: 40)
    k_adv: int = 200             # examples per adversarial target
    k_shift: int = 1000          # examples per corruption target (few-shot pool)
    extra: tuple[str, ...] = field(default_factory=tuple)  # data/method overrides of every training step
    front_ws: tuple[float, ...] = (-0.2, 0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2)  # the two-model front (Fig. 1)
    simplex_grid: tuple[str, ...] = ()   # overrides of grid=convex (default: step 0.2, 21 soups)
    grid4_grid: tuple[str, ...] = ()     # overrides of grid=paper (default: [-0.4, 1.4] step 0.2, 480 soups)

    @staticmethod
    def smoke() -> "Settings":
        """Every step once, on tiny data and small grids: the 480-soup grid alone would be ~3,000 cells."""
        return Settings(epochs=1, finetune_epochs=1, attack_steps=2, k_adv=16, k_shift=60,
                        extra=("data.subset_per_class=20", "data.val_size=100", "method.attack_steps=2"),
                        front_ws=(0.0, 0.5, 1.0), simplex_grid=("grid.step=0.5",),
                        # 4 members, convex weights in {0, 0.5, 1}: 10 soups (the selection still has a choice)
                        grid4_grid=("grid.low=0", "grid.high=1", "grid.step=0.5"))


def plan(s: Settings, out: Path) -> list[Step]:
    env = {"OMP_NUM_THREADS": "1"}
    epochs, ft_epochs, k_adv, k_shift, steps = s.epochs, s.finetune_epochs, s.k_adv, s.k_shift, s.attack_steps
    extra = list(s.extra)
    common = ["experiment=soups/cpu", f"paths.output_dir={out}", *extra]
    plan_steps = [Step("linf", "1/5 l-inf adversarial training (PGD)",
                       ("-m", "rws.cli.train", *common, f"trainer.max_epochs={epochs}", f"hydra.run.dir={out}/linf",
                        "run_name=linf"),
                       done=out / "linf/export/metrics.json", env=env)]
    # The three fine-tunes are independent and single-threaded: they run at once, each into its log.
    plan_steps += [Step(name, f"2/5 fine-tune theta_inf -> {name}",
                        ("-m", "rws.cli.train", *common, *ovr, f"init={out}/linf/export",
                         f"trainer.max_epochs={ft_epochs}", "method.optim.lr=0.01", f"hydra.run.dir={out}/{name}",
                         f"run_name={name}"),
                        done=out / name / "export/metrics.json", env=env, needs=("linf",), log=out / f"{name}.log")
                   for name, ovr in FINETUNES.items()]

    members = {n: str(out / n / "export") for n in ["linf", *FINETUNES]}
    sweep_common = ["-m", "rws.cli.sweep", "data=cifar10_jpeg", f"paths.output_dir={out}", "data.test_subset=null",
                    f"attack_steps={steps}", "attacks=[apgd-ce]", "device=cpu", *extra[:1]]
    adv = [f"{{name: linf, suite: adversarial, threat: {{norm: linf, eps: 8/255}}, k: {k_adv}}}",
           f"{{name: l2, suite: adversarial, threat: {{norm: l2, eps: 0.5}}, k: {k_adv}}}"]
    clean = f"{{name: clean, suite: clean, k: {k_shift}}}"
    plan_steps.append(Step("front", "3/5 two-model front theta_inf <-> theta_inf->2", (
             *sweep_common, f"members=[{members['linf']},{members['linf_to_l2']}]", "member_names=[linf,linf_to_l2]",
              "grid=front", f"grid.ws=[{','.join(str(w) for w in s.front_ws)}]",
              f"targets=[{clean},{','.join(adv)},{{name: union, suite: union, threats: "
              f"[{{norm: linf, eps: 8/255}}, {{norm: l2, eps: 0.5}}], k: {k_adv}}}]", f"out={out}/front"),
             env=env, needs=("linf", "linf_to_l2")))
    plan_steps.append(Step("simplex", "4/5 three-model convex grid (21 soups)", (
             *sweep_common, f"members=[{members['linf']},{members['linf_to_l2']},{members['linf_to_l1']}]",
              "member_names=[linf,linf_to_l2,linf_to_l1]", "grid=convex", *s.simplex_grid,
              f"targets=[{clean},{','.join(adv)},{{name: l1, suite: adversarial, threat: {{norm: l1, eps: 12}}, "
              f"k: {k_adv}}}]", f"out={out}/simplex"), env=env, needs=("linf", "linf_to_l2", "linf_to_l1")))
    shift_targets = [clean] + [f"{{name: {c}, suite: corruption, corruption: {c}, severity: 3, k: {k_shift}}}"
                               for c in SHIFTS]
    plan_steps.append(Step("grid4", "5/5 four-model grid search on corruption shifts (480 soups) + few-shot selection", (
             *sweep_common, f"members=[{','.join(members.values())}]", f"member_names=[{','.join(members)}]",
              "grid=paper", *s.grid4_grid, f"targets=[{','.join(shift_targets)}]", f"out={out}/grid4"), env=env,
             needs=tuple(members)))
    return plan_steps


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs/soups_cpu")
    p.add_argument("--smoke", action="store_true", help="tiny settings to check the chain runs (minutes)")
    p.add_argument("--epochs", type=int, default=Settings.epochs, help="epochs of the l-inf model")
    p.add_argument("--finetune-epochs", type=int, default=Settings.finetune_epochs)
    p.add_argument("--attack-steps", type=int, default=Settings.attack_steps,
                   help="APGD steps in the sweeps (paper: 40)")
    p.add_argument("--k-adv", type=int, default=Settings.k_adv, help="examples per adversarial target")
    p.add_argument("--k-shift", type=int, default=Settings.k_shift,
                   help="examples per corruption target (few-shot pool)")
    a = p.parse_args(argv)
    out = Path(a.out).resolve()
    s = Settings.smoke() if a.smoke else Settings(a.epochs, a.finetune_epochs, a.attack_steps, a.k_adv, a.k_shift)
    t0 = time.time()
    # 2 cores: the three fine-tunes keep them busy; the sweeps run one after the other (each needs all members).
    run(plan(s, out), record_dir=out / ".steps", jobs=3)
    print(f"\nsoups_cpu finished in {time.time() - t0:.0f}s")
    for name in ("front", "simplex", "grid4"):
        best = out / name / "best.md"
        if best.exists():
            print(f"\n## {name}\n{best.read_text()}")
    (out / "summary.json").write_text(json.dumps({"out": str(out), "seconds": round(time.time() - t0)}, indent=2))


if __name__ == "__main__":
    from rws.cli.entry import script_entry

    script_entry(main)
