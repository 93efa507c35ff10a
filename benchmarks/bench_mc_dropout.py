"""Benchmark: MC-dropout head selection with the trunk run once vs N full forward passes.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_mc_dropout.py [--samples 10] [--batch 256] [--rounds 3]

The CPU-scale student of rws.pipelines.distill_cpu (resnet18_cifar width 0.25, the last 3 stages
tuned, three heads with dropout 0.25 in front of each head's classifier):
  ours:   HeadSelection(samples=N): the frozen + shared stages once, then each head N times
  naive:  HeadSelection(samples=N, share_trunk=False): N full forward passes of every head
Both draw the same dropout masks in the same order (the trunk has no active dropout), so their
outputs must be identical; the script checks that and prints the time per batch and the ratio
(goal >= 5x). Best of --rounds.
"""

from __future__ import annotations

import argparse
import time

import torch

from rws.models import create_model
from rws.models.contracts import HeadSelection


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--width", type=float, default=0.25)
    a = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model("resnet18_cifar", 10, width=a.width, heads={"tuned_stages": 3}).eval()
    x = torch.rand(a.batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ours = HeadSelection(model, rule="max_logit", samples=a.samples, seed=0)
    naive = HeadSelection(model, rule="max_logit", samples=a.samples, seed=0, share_trunk=False)

    def best(sel: HeadSelection) -> tuple[float, torch.Tensor]:
        times, out = [], None
        for _ in range(a.rounds):
            t0 = time.perf_counter()
            with torch.no_grad():
                out = sel.head_probabilities(x)
            times.append(time.perf_counter() - t0)
        return min(times), out

    t_ours, p_ours = best(ours)
    t_naive, p_naive = best(naive)
    same = torch.equal(p_ours, p_naive)
    max_diff = float((p_ours - p_naive).abs().max())
    print(f"student resnet18_cifar width {a.width}: split {model.net.split}")
    print(f"MC dropout, N={a.samples}, batch {a.batch}: ours {1000 * t_ours:.1f} ms, naive {1000 * t_naive:.1f} ms, "
          f"ratio {t_naive / t_ours:.1f}x; outputs identical: {same} (max |diff| {max_diff:.1e})")


if __name__ == "__main__":
    main()
