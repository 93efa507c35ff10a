"""Batched tensor AugMix (rws.augment) vs timm's per-image PIL AugMix, and where an AugMix training step's time goes.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_augmix.py --batch-size 128 --repeats 3 \\
        --json outputs/bench_augmix.json

Part 1, AugMix of one batch of CIFAR-size (32x32) images, severity 3, width 3, depth 1-3, alpha 1:
- ours: ``augmix_batch`` on the float (B, 3, 32, 32) tensor (the paper's 9 ops);
- timm: ``augment_and_mix_transform('augmix-m3-w3')`` on each PIL image (timm's own op set:
  13 ops incl. the 4 that overlap the test corruptions, random bilinear/bicubic);
- timm, same ops: timm's ``AugMixAugment`` with the paper's 9 ops and bilinear resampling.
timm is timed from PIL images to PIL images (no tensor conversion, which favours it).

Part 2, one ``method=augmix`` training step (small_cnn, SGD; the step's AugMix views + forward on
3B images + backward + update) vs the AugMix generation alone (two views of B images), and the same
for ``method=augmix_da`` (+ Noise2Net on half the batch) and a nominal step on B clean images.

Everything is best-of-``--repeats`` after one warm-up call, the candidates in alternation, on the CPU
with ``--threads`` torch threads (1: like a DataLoader worker running timm's PIL path).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rws.augment import AUGMIX_OPS, Noise2Net, augmix_batch, augmix_views  # noqa: E402


def _best(fns: dict, repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` seconds per function, after one warm-up call each, run in alternation."""
    for fn in fns.values():
        fn()
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t)
    return best


def _images(n: int, size: int) -> torch.Tensor:
    """Smooth random colour images (noise upsampled), 8-bit values, as float in [0, 1]."""
    rng = np.random.default_rng(0)
    small = torch.from_numpy(rng.random((n, 3, size // 4, size // 4)).astype(np.float32))
    x = torch.nn.functional.interpolate(small, size=size, mode="bilinear", align_corners=False).clamp(0, 1)
    return (x * 255).round() / 255


def bench_augmix(x: torch.Tensor, repeats: int) -> dict:
    from PIL import Image
    from timm.data.auto_augment import AugMixAugment, augment_and_mix_transform, augmix_ops

    pil = [Image.fromarray(im) for im in (x * 255).round().byte().permute(0, 2, 3, 1).numpy()]
    timm_default = augment_and_mix_transform("augmix-m3-w3")  # depth -1 and alpha 1 are its defaults
    names = {"autocontrast": "AutoContrast", "equalize": "Equalize", "posterize": "PosterizeIncreasing",
             "rotate": "Rotate", "solarize": "SolarizeIncreasing", "shear_x": "ShearX", "shear_y": "ShearY",
             "translate_x": "TranslateXRel", "translate_y": "TranslateYRel"}
    hparams = {"translate_pct": 1 / 3, "img_mean": (0, 0, 0), "interpolation": Image.BILINEAR,
               "magnitude_std": float("inf")}
    timm_same = AugMixAugment(augmix_ops(3, hparams, [names[o] for o in AUGMIX_OPS]), alpha=1.0, width=3, depth=-1)
    gen = torch.Generator().manual_seed(0)
    t = _best({"ours": lambda: augmix_batch(x, gen),
               "timm": lambda: [timm_default(im) for im in pil],
               "timm_same_ops": lambda: [timm_same(im) for im in pil]}, repeats)
    return {"batch": len(x), "ours_ms": t["ours"] * 1e3, "timm_ms": t["timm"] * 1e3,
            "timm_same_ops_ms": t["timm_same_ops"] * 1e3,
            "speedup_vs_timm": t["timm"] / t["ours"], "speedup_vs_timm_same_ops": t["timm_same_ops"] / t["ours"]}


def bench_step(x: torch.Tensor, repeats: int) -> dict:
    from rws.methods.augmix import AugMixModule
    from rws.methods.nominal import NominalModule

    model = {"_target_": "rws.models.create_model", "name": "small_cnn", "num_classes": 10}
    optim, sched = {"name": "sgd", "lr": 0.01, "momentum": 0.9}, {"name": "none"}
    y = torch.randint(10, (len(x),), generator=torch.Generator().manual_seed(0))
    modules = {"augmix": AugMixModule(model=model, optim=optim, sched=sched),
               "augmix_da": AugMixModule(model=model, optim=optim, sched=sched, noise2net={"fraction": 0.5}),
               "nominal": NominalModule(model=model, optim=optim, sched=sched)}
    opts = {k: torch.optim.SGD(m.model.parameters(), lr=0.01, momentum=0.9) for k, m in modules.items()}

    def train_step(key: str):
        def run() -> None:
            m, opt = modules[key], opts[key]
            m.train()
            opt.zero_grad(set_to_none=True)
            m.step(x, y).loss.backward()
            opt.step()
        return run

    gen = torch.Generator().manual_seed(0)
    n2n = Noise2Net(fraction=0.5)
    t = _best({"augmix_step": train_step("augmix"), "augmix_views": lambda: augmix_views(x, gen),
               "augmix_da_step": train_step("augmix_da"), "noise2net_half": lambda: n2n(x, gen),
               "nominal_step": train_step("nominal")}, repeats)
    ms = {k + "_ms": v * 1e3 for k, v in t.items()}
    ms["augmix_share_of_step"] = t["augmix_views"] / t["augmix_step"]
    ms["da_share_of_step"] = (t["augmix_views"] + t["noise2net_half"]) / t["augmix_da_step"]
    return ms


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch default)")
    ap.add_argument("--no-step", action="store_true", help="part 1 only (AugMix vs timm)")
    ap.add_argument("--json", default=None, help="write results here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    x = _images(args.batch_size, args.size)
    aug = bench_augmix(x, args.repeats)
    step = None if args.no_step else bench_step(x, args.repeats)
    print(f"AugMix of {aug['batch']} images {args.size}x{args.size}, severity 3, width 3, depth 1-3, "
          f"{torch.get_num_threads()} thread(s), best of {args.repeats}:")
    print("| path | ms / batch | ours faster by |\n|---|---:|---:|")
    print(f"| rws augmix_batch (batched tensors) | {aug['ours_ms']:.1f} | |")
    print(f"| timm augment_and_mix_transform (per-image PIL) | {aug['timm_ms']:.1f} | {aug['speedup_vs_timm']:.1f}x |")
    print(f"| timm AugMixAugment, the paper's 9 ops, bilinear | {aug['timm_same_ops_ms']:.1f} | "
          f"{aug['speedup_vs_timm_same_ops']:.1f}x |")
    out = {"threads": torch.get_num_threads(), "size": args.size, "repeats": args.repeats, "augmix": aug, "step": step}
    if step is None:
        return _write(args.json, out)
    print(f"\nTraining step, small_cnn, batch {args.batch_size} (forward on 3x{args.batch_size} for JSD):")
    print("| what | ms |\n|---|---:|")
    for key, label in (("nominal_step", "nominal step (clean batch)"),
                       ("augmix_views", "AugMix generation alone (2 views)"),
                       ("augmix_step", "method=augmix step (views + 3B forward/backward + SGD)"),
                       ("noise2net_half", "Noise2Net on half the batch alone"),
                       ("augmix_da_step", "method=augmix_da step")):
        print(f"| {label} | {step[key + '_ms']:.1f} |")
    print(f"\nAugMix generation is {100 * step['augmix_share_of_step']:.0f} % of an augmix step; "
          f"AugMix + Noise2Net {100 * step['da_share_of_step']:.0f} % of an augmix_da step.")
    return _write(args.json, out)


def _write(path: str | None, out: dict) -> dict:
    if path:
        from rws.utils.io import write_json

        write_json(path, out)
    return out


if __name__ == "__main__":
    main()
