"""RWS transfer across datasets with a *shared* theta_init (Table 3, CPU scale):

    python -m rws.pipelines.rws_transfer [--cifar outputs/rws_cpu] [--out outputs/rws_transfer]

rws_cpu's own transfer table starts the Tiny-ImageNet models from their own theta_init; signatures
then live in unrelated bases and do not transfer. Here the Tiny-ImageNet models start from the
CIFAR-10 theta_init (``init_skip=[head]``: a fresh 200-way head, everything else shared), as a
pre-trained init would be shared in the paper. Steps (real CLI calls, resumable):
  1. Tiny theta_init = CIFAR theta_init + fresh head (train.py with 0 epochs)
  2. Tiny theta_std and theta_gaussian_noise fine-tuned from it (run concurrently)
  3. the Tiny signature for gaussian_noise (rws.stages.extract)
  4. evaluate.py on Tiny-ImageNet: std, std + each CIFAR-10 signature, std + the Tiny signature,
     the dedicated Tiny robust model; clean + the 5 corruptions at severities 3 and 5
  5. the transfer table (<out>/transfer_shared.md)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import yaml

from rws.pipelines.steps import ROOT, run_step
from rws.utils.io import write_text

CORRUPTIONS = ["gaussian_noise", "defocus_blur", "fog", "contrast", "pixelate"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cifar", default="outputs/rws_cpu", help="the rws_cpu output (CIFAR-10 init + signatures)")
    p.add_argument("--out", default="outputs/rws_transfer")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.03)
    p.add_argument("--sigset", default="shallow32", help="which CIFAR-10 signature set (a folder of <cifar>/sigs)")
    a = p.parse_args(argv)
    cifar, out = Path(a.cifar).resolve(), Path(a.out).resolve()
    env = {"OMP_NUM_THREADS": "1"}
    common = ["train.py", "experiment=rws/cpu_tiny", f"paths.output_dir={out}", "trainer.enable_progress_bar=false"]
    run_step("1/5 Tiny theta_init = CIFAR-10 theta_init + a fresh 200-way head",
             [*common, f"init={cifar}/init/export", "init_skip=[head]", "trainer.max_epochs=0",
              "test_after_fit=false", f"hydra.run.dir={out}/init"], out / "init/export/metrics.json", env)
    ft = [f"init={out}/init/export", f"trainer.max_epochs={a.epochs}", f"method.optim.lr={a.lr}"]
    jobs = {"std": [], "robust_gaussian_noise": ["method=corruption", "method.corruptions=gaussian_noise",
                                                 "method.severity=5"]}
    procs = []
    for name, extra in jobs.items():
        if (out / name / "export/metrics.json").exists():
            continue
        cmd = [sys.executable, *common, *ft, *extra, f"hydra.run.dir={out}/{name}"]
        print(f"[run ] 2/5 Tiny {name} (log {out}/{name}.log)", flush=True)
        (out / name).mkdir(parents=True, exist_ok=True)
        procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=open(out / f"{name}.log", "w"),
                                      stderr=subprocess.STDOUT, env={**os.environ, **env}))
    if any(proc.wait() != 0 for proc in procs):
        raise SystemExit(f"a Tiny-ImageNet training step failed; see {out}/*.log")
    run_step("3/5 Tiny signature (gaussian_noise)",
             ["-m", "rws.stages.extract", f"init={out}/init/export", f"std={out}/std/export",
              f"robust={{gaussian_noise: {out}/robust_gaussian_noise/export}}", f"out={out}/sigs", "analysis=false"],
             out / "sigs/gaussian_noise.safetensors", env)
    std = {"kind": "export", "path": f"{out}/std/export", "name": "tiny_std"}
    specs = [std, {"kind": "export", "path": f"{out}/robust_gaussian_noise/export", "name": "tiny_robust_gaussian_noise"}]
    specs += [{"kind": "patch", "name": f"tiny_std+cifar_rws_{c}", "base": std,
               "signatures": [{"path": f"{cifar}/sigs/{a.sigset}/{c}.safetensors", "alpha": 1.0}]} for c in CORRUPTIONS]
    specs.append({"kind": "patch", "name": "tiny_std+tiny_rws_gaussian_noise", "base": std,
                  "signatures": [{"path": f"{out}/sigs/gaussian_noise.safetensors", "alpha": 1.0}]})
    # Spec files rather than inline specs: paths and names stay out of Hydra's override grammar.
    spec_files = []
    for i, spec in enumerate(specs):
        spec_files.append(write_text(out / "specs" / f"{i:02d}.yaml", yaml.safe_dump(spec, sort_keys=False)))
    run_step("4/5 evaluate on Tiny-ImageNet",
             ["evaluate.py", "data=tiny_imagenet", "data.test_subset=1000", f"paths.output_dir={out}",
              f"specs=[{','.join(str(f) for f in spec_files)}]", f"out={out}/eval", "print_table=false",
              "progress=false",
              f"suites=[clean,{{name: corruptions, corruptions: [{','.join(CORRUPTIONS)}], severities: [3,5]}}]"],
             env=env)
    run_step("5/5 table", ["-m", "rws.report.tables", f"{out}/eval", "--rows", "model", "--cols", "condition",
                           "--suite", "corruptions", "--out", f"{out}/transfer_shared"])
    print((out / "transfer_shared.md").read_text())


if __name__ == "__main__":
    main()
