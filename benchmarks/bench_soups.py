"""Benchmark: evaluating N soups in place vs the naive loop vs the forward-only floor.

    .venv/bin/python benchmarks/bench_soups.py --model resnet18_cifar --width 0.5 --k 200 --soups 20

naive:  per soup, deepcopy the model, build the soup state dict, load_state_dict, eval, forward.
fast:   rws.weights.functional_soup.InPlaceSoup (one model, foreach ops into its tensors), forward.
floor:  the same forwards with fixed weights (no soup work at all).
Prints seconds per soup and the ratios naive/fast (goal >= 3) and fast/floor (goal <= 1.15).
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from rws.models import create_model
from rws.weights.functional_soup import InPlaceSoup, predict
from rws.weights.grid import GridSpec
from rws.weights.soups import soup_state_dicts


def _members(name: str, width: float, n: int) -> tuple[torch.nn.Module, list[dict]]:
    states = []
    for i in range(n):
        torch.manual_seed(i)
        m = create_model(name, 10, width=width)
        # Non-trivial BN stats so the soup touches real buffers.
        for k, v in m.state_dict().items():
            if k.endswith("running_var"):
                v.uniform_(0.5, 2.0)
            elif k.endswith("running_mean"):
                v.normal_(0, 0.1)
        states.append({k: v.clone() for k, v in m.state_dict().items()})
    base = create_model(name, 10, width=width).eval()
    return base, states


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet18_cifar")
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--soups", type=int, default=20)
    ap.add_argument("--k", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="best-of repeats per soup and variant")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    base, states = _members(args.model, args.width, args.members)
    grid = list(GridSpec.make(args.members, -0.4, 1.4, 0.2))
    weights = [grid[i * len(grid) // args.soups] for i in range(args.soups)]
    x = torch.rand(args.k, 3, 32, 32)

    def naive(w) -> torch.Tensor:
        m = copy.deepcopy(base)
        m.load_state_dict(soup_state_dicts(states, w), strict=True)
        m.eval()
        return predict(m, x, args.batch_size)

    fast_model = copy.deepcopy(base)
    soup = InPlaceSoup(fast_model, states)

    def fast(w) -> torch.Tensor:
        return predict(soup.set(w), x, args.batch_size)

    floor_model = copy.deepcopy(base).eval()

    def floor(w) -> torch.Tensor:
        return predict(floor_model, x, args.batch_size)

    # Other jobs share these CPUs: time every soup under every variant back to back, repeat, and keep
    # the per-soup minimum, so a burst of outside load inflates one sample rather than one variant.
    variants = {"naive": naive, "fast": fast, "floor": floor}
    best = {v: [float("inf")] * len(weights) for v in variants}
    outs: dict[str, list[torch.Tensor]] = {v: [] for v in variants}
    floor(weights[0])  # warm-up (allocator, kernels)
    for r in range(args.repeats):
        for i, w in enumerate(weights):
            for v, fn in variants.items():
                t0 = time.perf_counter()
                o = fn(w)
                best[v][i] = min(best[v][i], time.perf_counter() - t0)
                if r == 0:
                    outs[v].append(o)
    t_naive, t_fast, t_floor = (sum(best[v]) for v in ("naive", "fast", "floor"))
    same = all(torch.equal(a, b) for a, b in zip(outs["fast"], outs["naive"]))
    res = {"model": args.model, "width": args.width, "members": args.members, "soups": args.soups,
           "k": args.k, "threads": args.threads,
           "s_per_soup": {"naive": t_naive / args.soups, "fast": t_fast / args.soups, "floor": t_floor / args.soups},
           "naive_over_fast": t_naive / t_fast, "fast_over_floor": t_fast / t_floor,
           "fast_equals_naive_logits": same}
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
