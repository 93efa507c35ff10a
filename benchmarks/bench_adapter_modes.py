"""Benchmark: switching an adapter model's beta in place vs rebuilding it from its export.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_adapter_modes.py [--export DIR] [--betas 13] [--batch 256]

switch:   DualModeNetwork.set_mode(beta) on one built model (what sweep.py adapter.base=... does).
rebuild:  load_export(DIR).build() + set_mode(beta) per beta (what a list of adapter specs would do).
forward:  one forward pass of a batch, the per-beta cost floor of a beta sweep.
Prints seconds per beta and the ratios rebuild/switch (goal >= 100) and (switch + forward)/forward.
Without --export, a vit_cpu_patch4_32 cls-token export is written to a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from rws.models import create_model
from rws.models.contracts import set_mode
from rws.weights.export import load_export, save_export


def _export(tmp: Path) -> Path:
    cfg = {"_target_": "rws.models.create_model", "name": "vit_cpu_patch4_32", "num_classes": 10,
           "adapter": "cls_token"}
    torch.manual_seed(0)
    return save_export(tmp / "export", create_model(**{k: v for k, v in cfg.items() if k != "_target_"}), cfg)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--export", default=None)
    p.add_argument("--betas", type=int, default=13)
    p.add_argument("--batch", type=int, default=256)
    a = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(a.export) if a.export else _export(Path(tmp))
        betas = [-0.05 + i * 1.1 / max(a.betas - 1, 1) for i in range(a.betas)]
        x = torch.rand(a.batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        model = load_export(path).build().requires_grad_(False)

        t0 = time.perf_counter()
        for b in betas:
            set_mode(model, b)
        switch = (time.perf_counter() - t0) / len(betas)

        t0 = time.perf_counter()
        for b in betas:
            rebuilt = load_export(path).build().requires_grad_(False)
            set_mode(rebuilt, b)
        rebuild = (time.perf_counter() - t0) / len(betas)

        with torch.no_grad():
            model(x)  # warm-up
            t0 = time.perf_counter()
            for b in betas:
                set_mode(model, b)
                model(x)
            switch_forward = (time.perf_counter() - t0) / len(betas)
            t0 = time.perf_counter()
            for _ in betas:
                model(x)
            forward = (time.perf_counter() - t0) / len(betas)
        # Same outputs either way: the switched model is the rebuilt one.
        set_mode(model, betas[-1])
        with torch.no_grad():
            assert torch.equal(model(x[:8]), rebuilt(x[:8]))
    print(json.dumps({"switch_s": switch, "rebuild_s": rebuild, "rebuild_over_switch": rebuild / switch,
                      "switch_plus_forward_s": switch_forward, "forward_s": forward,
                      "per_beta_over_forward": switch_forward / forward}, indent=2))


if __name__ == "__main__":
    main()
