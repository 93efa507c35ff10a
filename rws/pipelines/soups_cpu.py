"""CPU-scale robust model soups, one command:

    python -m rws.pipelines.soups_cpu [--out outputs/soups_cpu] [--smoke]

Steps (each a real CLI call; finished steps are skipped on re-run):
  1. train.py experiment=soups/cpu                      theta_inf: PGD l-inf adversarial training
  2. fine-tune theta_inf for a few epochs to l2, l1 and nominal   -> theta_inf->2, ->1, ->nominal
     (the three run concurrently: each is single-threaded)
  3. sweep.py grid=front  theta_inf <-> theta_inf->2    clean / l-inf / l2 / union accuracy per w (Fig. 1)
  4. sweep.py grid=convex theta_inf, ->2, ->1           21 soups on the simplex (Fig. 3)
  5. sweep.py grid=paper  all four members              480 affine soups on corruption shifts,
                                                        best soups + few-shot selection (Table 1, Fig. 7/8)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from rws.pipelines.steps import ROOT, run_step

FINETUNES = {  # member name -> overrides on top of experiment=soups/cpu
    "linf_to_l2": ["method.threats=[{norm: l2, eps: 0.5}]"],
    "linf_to_l1": ["method.threats=[{norm: l1, eps: 12}]"],
    "linf_to_nominal": ["method=nominal"],
}
SHIFTS = ["gaussian_noise", "defocus_blur", "fog", "contrast", "pixelate"]


def _parallel(steps: list[tuple[str, list[str], Path]]) -> None:
    """Run independent single-threaded training steps at once (2 cores: 2-3 jobs keep them busy)."""
    procs = []
    for title, argv, marker in steps:
        if marker.exists():
            print(f"[skip] {title}: {marker} exists", flush=True)
            continue
        log = marker.parent.parent.with_suffix(".log")
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, *argv]
        print(f"[run ] {title} (log: {log})\n       {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
        procs.append((title, cmd, subprocess.Popen(cmd, cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                                   env={**os.environ, "OMP_NUM_THREADS": "1"})))
    for title, cmd, proc in procs:
        if proc.wait() != 0:
            raise SystemExit(f"step failed ({title}): {' '.join(cmd)}")
        print(f"[done] {title}", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs/soups_cpu")
    p.add_argument("--smoke", action="store_true", help="tiny settings to check the chain runs (minutes)")
    p.add_argument("--epochs", type=int, default=12, help="epochs of the l-inf model")
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument("--attack-steps", type=int, default=10, help="APGD steps in the sweeps (paper: 40)")
    p.add_argument("--k-adv", type=int, default=200, help="examples per adversarial target")
    p.add_argument("--k-shift", type=int, default=1000, help="examples per corruption target (few-shot pool)")
    a = p.parse_args(argv)
    out = Path(a.out).resolve()
    epochs, ft_epochs, k_adv, k_shift, steps = a.epochs, a.finetune_epochs, a.k_adv, a.k_shift, a.attack_steps
    extra: list[str] = []
    if a.smoke:
        epochs, ft_epochs, k_adv, k_shift, steps = 1, 1, 16, 60, 2
        extra = ["data.subset_per_class=20", "data.val_size=100", "method.attack_steps=2"]
    env = {"OMP_NUM_THREADS": "1"}
    t0 = time.time()
    common = ["experiment=soups/cpu", f"paths.output_dir={out}", *extra]
    run_step("1/5 l-inf adversarial training (PGD)",
             ["train.py", *common, f"trainer.max_epochs={epochs}", f"hydra.run.dir={out}/linf", "run_name=linf"],
             done_marker=out / "linf/export/metrics.json", env=env)
    _parallel([(f"2/5 fine-tune theta_inf -> {name}",
                ["train.py", *common, *ovr, f"init={out}/linf/export", f"trainer.max_epochs={ft_epochs}",
                 "method.optim.lr=0.01", f"hydra.run.dir={out}/{name}", f"run_name={name}"],
                out / name / "export/metrics.json") for name, ovr in FINETUNES.items()])

    members = {n: str(out / n / "export") for n in ["linf", *FINETUNES]}
    sweep_common = ["sweep.py", "data=cifar10_jpeg", f"paths.output_dir={out}", "data.test_subset=null",
                    f"attack_steps={steps}", "attacks=[apgd-ce]", "device=cpu", *extra[:1]]
    adv = [f"{{name: linf, suite: adversarial, threat: {{norm: linf, eps: 8/255}}, k: {k_adv}}}",
           f"{{name: l2, suite: adversarial, threat: {{norm: l2, eps: 0.5}}, k: {k_adv}}}"]
    clean = f"{{name: clean, suite: clean, k: {k_shift}}}"
    run_step("3/5 two-model front theta_inf <-> theta_inf->2",
             [*sweep_common, f"members=[{members['linf']},{members['linf_to_l2']}]", "member_names=[linf,linf_to_l2]",
              "grid=front", "grid.ws=[-0.2,0.0,0.2,0.4,0.6,0.8,1.0,1.2]",
              f"targets=[{clean},{','.join(adv)},{{name: union, suite: union, threats: "
              f"[{{norm: linf, eps: 8/255}}, {{norm: l2, eps: 0.5}}], k: {k_adv}}}]", f"out={out}/front"],
             env=env)
    run_step("4/5 three-model convex grid (21 soups)",
             [*sweep_common, f"members=[{members['linf']},{members['linf_to_l2']},{members['linf_to_l1']}]",
              "member_names=[linf,linf_to_l2,linf_to_l1]", "grid=convex",
              f"targets=[{clean},{','.join(adv)},{{name: l1, suite: adversarial, threat: {{norm: l1, eps: 12}}, "
              f"k: {k_adv}}}]", f"out={out}/simplex"], env=env)
    shift_targets = [clean] + [f"{{name: {c}, suite: corruption, corruption: {c}, severity: 3, k: {k_shift}}}"
                               for c in SHIFTS]
    run_step("5/5 four-model grid search on corruption shifts (480 soups) + few-shot selection",
             [*sweep_common, f"members=[{','.join(members.values())}]", f"member_names=[{','.join(members)}]",
              "grid=paper", f"targets=[{','.join(shift_targets)}]", f"out={out}/grid4"], env=env)
    print(f"\nsoups_cpu finished in {time.time() - t0:.0f}s")
    for name in ("front", "simplex", "grid4"):
        best = out / name / "best.md"
        if best.exists():
            print(f"\n## {name}\n{best.read_text()}")
    (out / "summary.json").write_text(json.dumps({"out": str(out), "seconds": round(time.time() - t0)}, indent=2))


if __name__ == "__main__":
    main()
