"""In-place signature patching vs reloading a full state dict, on ResNet-50 (200 classes).

    .venv/bin/python benchmarks/bench_patch.py [--repeats 20] [--k 5]

Switching robust <-> standard needs one patch and one unpatch; the alternative is two full
``load_state_dict`` calls (from an in-memory copy, or from safetensors files on disk).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from rws.models import create_model
from rws.utils.io import load_safetensors, save_safetensors
from rws.weights.layer_select import model_groups, select_layers
from rws.weights.patching import Patcher
from rws.weights.signature_io import Signature


def best_of(fn: Callable[[], None], repeats: int) -> tuple[float, float]:
    """(min wall seconds, min CPU seconds). Minimums, because on a shared machine the noise is
    all on the slow side; CPU time is reported too because it ignores time spent descheduled."""
    fn()  # warm-up: first-touch page faults and allocator growth are not what we measure
    walls, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--k", type=int, default=5)
    # 1 thread by default: on a shared, oversubscribed CPU every OpenMP parallel region waits for a
    # descheduled worker, which turns a 30 µs copy into milliseconds and measures the neighbours.
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = create_model("resnet50", 200).eval()
    std = {k: v.clone() for k, v in model.state_dict().items()}
    layers, keys = select_layers(model_groups(model), list(std), k=args.k)
    g = torch.Generator().manual_seed(0)
    rws = {k: torch.randn(std[k].shape, generator=g) * 1e-3 for k in keys
           if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    stats = {k: std[k] + 0.1 for k in keys if k.endswith(("running_mean", "running_var"))}
    sig = Signature(rws=rws, stats=stats, layers=layers, bn_policy="robust")
    n_sig = sum(v.numel() for v in list(rws.values()) + list(stats.values()))
    n_all = sum(v.numel() for v in std.values())
    print(f"ResNet-50/200: {n_all:,} state-dict elements; signature on {layers}: {n_sig:,} ({n_sig / n_all:.1%})")

    patcher = Patcher(model, [(sig, 1.0)])

    def patch_cycle() -> None:
        patcher.apply()
        patcher.remove()

    robust_sd = {k: v.clone() for k, v in std.items()}

    def reload_memory() -> None:
        model.load_state_dict(robust_sd)
        model.load_state_dict(std)

    with tempfile.TemporaryDirectory() as tmp:
        f_rob, f_std = Path(tmp) / "robust.safetensors", Path(tmp) / "std.safetensors"
        save_safetensors(robust_sd, f_rob)
        save_safetensors(std, f_std)

        def reload_disk() -> None:
            model.load_state_dict(load_safetensors(f_rob)[0])
            model.load_state_dict(load_safetensors(f_std)[0])

        t_patch = best_of(patch_cycle, args.repeats)
        t_mem = best_of(reload_memory, args.repeats)
        t_disk = best_of(reload_disk, max(3, args.repeats // 4))
    for k, v in model.state_dict().items():
        assert torch.equal(v, std[k]), f"not restored: {k}"
    rows = [("patch+unpatch in place", t_patch), ("2x load_state_dict (in memory)", t_mem),
            ("2x safetensors load + load_state_dict", t_disk)]
    print(f"{'':40s} {'wall ms':>9s} {'cpu ms':>9s} {'ratio(wall)':>12s} {'ratio(cpu)':>11s}")
    for name, (wall, cpu) in rows:
        print(f"{name:40s} {wall * 1e3:9.2f} {cpu * 1e3:9.2f} {wall / t_patch[0]:11.1f}x "
              f"{cpu / max(t_patch[1], 1e-9):10.1f}x")

if __name__ == "__main__":
    main()
