"""Strength of our training l1-APGD against the official AutoAttack APGD-L1 at equal budget.

    OMP_NUM_THREADS=1 python benchmarks/bench_l1_apgd.py                 # small_cnn on digits, eps 12, 200 images
    OMP_NUM_THREADS=1 python benchmarks/bench_l1_apgd.py --steps 10 20 40 --n 360

Trains ``small_cnn`` on the embedded digits set (seeded, a few CPU-seconds), then attacks the first
``--n`` test images with ``rws.attacks.L1APGD`` and with ``pyautoattack``'s ``APGDAttack(norm="L1")``
(CE loss, one restart, same seed, same number of iterations). Robust accuracy counts an image as
robust if the returned point is still classified correctly (and the clean image was). Prints a
markdown table: clean accuracy, then robust accuracy of ours and AutoAttack per step budget.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from rws.attacks import L1APGD
from rws.data.digits import digits_splits
from rws.models import create_model


def train_small_cnn(epochs: int, width: float, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = create_model("small_cnn", num_classes=10, width=width)
    x, y = digits_splits(32)["train"]
    x = x.float() / 255
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=g).split(64):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 20])
    ap.add_argument("--eps", type=float, default=12.0)
    ap.add_argument("--n", type=int, default=200, help="test images attacked")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from pyautoattack.autopgd_base import APGDAttack

    torch.set_num_threads(1)
    model = train_small_cnn(args.epochs, args.width, args.seed)
    x, y = digits_splits(32)["test"]
    x, y = x[: args.n].float() / 255, y[: args.n]
    with torch.no_grad():
        clean = model(x).argmax(1) == y

    def robust(x_adv: torch.Tensor) -> float:
        with torch.no_grad():
            return 100 * ((model(x_adv).argmax(1) == y) & clean).float().mean().item()

    print(f"small_cnn (width {args.width}) on digits, {args.n} test images, l1 eps {args.eps}: "
          f"clean {100 * clean.float().mean():.1f}\n")
    print("| steps | ours | AutoAttack APGD-L1 |\n|---:|---:|---:|")
    for steps in args.steps:
        ours = L1APGD({"norm": "l1", "eps": args.eps}, steps=steps,
                      generator=torch.Generator().manual_seed(args.seed))(model, x, y)
        ref = APGDAttack(model, n_iter=steps, norm="L1", eps=args.eps, loss="ce", n_restarts=1,
                         seed=args.seed, device=x.device).perturb(x, y)
        print(f"| {steps} | {robust(ours):.1f} | {robust(ref):.1f} |")


if __name__ == "__main__":
    main()
