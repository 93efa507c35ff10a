"""Cost of adversarial training steps relative to a nominal step.

    python benchmarks/bench_attacks.py                       # small_cnn, 32x32, batch 128, CPU
    python benchmarks/bench_attacks.py --device cuda --reps 10

Each row is one full training step (attack + forward + backward + SGD) through
``AdversarialModule.adversarial_batch``, i.e. the code path training uses. The variants are interleaved
over ``--reps`` rounds and the median is reported, so load spikes from other processes hit all rows
alike. Prints a markdown table (seconds per step and multiple of the nominal step).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from rws.methods.adversarial import AdversarialModule

THREATS = {"linf": {"norm": "linf", "eps": 8 / 255}, "l2": {"norm": "l2", "eps": 0.5},
           "l1": {"norm": "l1", "eps": 12.0}}


def variants(steps: int) -> dict[str, dict]:
    return {
        "nominal": {},
        f"PGD-linf ({steps} steps)": {"threats": [THREATS["linf"]]},
        f"PGD-l2 ({steps} steps)": {"threats": [THREATS["l2"]]},
        f"l1-APGD ({steps} steps)": {"threats": [THREATS["l1"]]},
        "FGSM-RS (linf)": {"threats": [THREATS["linf"]], "attack": "fgsm_rs"},
        "N-FGSM (linf)": {"threats": [THREATS["linf"]], "attack": "n_fgsm"},
        f"MAX (linf+l2+l1, {steps} steps each)": {"mode": "max", "threats": list(THREATS.values())},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="small_cnn")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10, help="attack iterations for PGD / l1-APGD")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: leave as is)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    model_cfg = {"_target_": "rws.models.create_model", "name": args.model, "num_classes": 10, "width": args.width}
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch_size, 3, args.image_size, args.image_size, generator=g).to(dev)
    y = torch.randint(0, 10, (args.batch_size,), generator=g).to(dev)

    runs = {}
    for name, kw in variants(args.steps).items():
        torch.manual_seed(0)
        m = AdversarialModule(model=model_cfg, attack_steps=args.steps, mode=kw.get("mode", "single"),
                              threats=kw.get("threats", [THREATS["linf"]]), attack=kw.get("attack", "pgd")).to(dev)
        m.train()
        opt = torch.optim.SGD(m.model.parameters(), lr=0.01, momentum=0.9)
        adversarial = bool(kw)

        def step(m=m, opt=opt, adversarial=adversarial) -> None:
            xb, yb = (m.adversarial_batch(x, y)[0], y) if adversarial else (x, y)
            loss = F.cross_entropy(m.model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        step()  # warmup (allocator, cudnn autotune)
        runs[name] = (step, [])

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for _ in range(args.reps):
        for name, (step, times) in runs.items():
            sync()
            t0 = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - t0)

    med = {name: statistics.median(t) for name, (_, t) in runs.items()}
    base = med["nominal"]
    print(f"\n{args.model} (width {args.width}), {args.image_size}x{args.image_size}, batch {args.batch_size}, "
          f"device {args.device}, torch threads {torch.get_num_threads()}, median of {args.reps}\n")
    print("| training step | s / step | x nominal |")
    print("|---|---:|---:|")
    for name, t in med.items():
        print(f"| {name} | {t:.3f} | {t / base:.1f} |")


if __name__ == "__main__":
    main()
