"""Lightning training step vs a plain torch loop on the same model and batches.

    python benchmarks/bench_train_step.py --model small_cnn --batch-size 128 --steps 60

Both loops run the same forward/backward/SGD step; Lightning's also logs loss and accuracy through
torchmetrics as our ClassifierModule does. Per-step times are taken in steady state (after warmup),
interleaved over several rounds so machine noise hits both sides alike. Goal: ratio <= 1.10.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from rws.methods.nominal import NominalModule


class _StepTimer(pl.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._t = 0.0

    def on_train_batch_start(self, *args, **kwargs) -> None:
        self._t = time.perf_counter()

    def on_train_batch_end(self, *args, **kwargs) -> None:
        self.times.append(time.perf_counter() - self._t)


def make_module(model: str, num_classes: int) -> NominalModule:
    cfg = {"_target_": "rws.models.create_model", "name": model, "num_classes": num_classes}
    return NominalModule(model=cfg, optim={"name": "sgd", "lr": 0.01, "momentum": 0.9}, sched={"name": "none"})


def plain_loop(module: NominalModule, batches: list, warmup: int) -> list[float]:
    model = module.model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    times = []
    for x, y in batches:
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return times[warmup:]


def lightning_loop(module: NominalModule, batches: list, warmup: int) -> list[float]:
    timer = _StepTimer()
    trainer = pl.Trainer(max_steps=len(batches), accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[timer], num_sanity_val_steps=0, limit_val_batches=0)
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    trainer.fit(module, train_dataloaders=loader)
    return timer.times[warmup:]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="small_cnn")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    torch.manual_seed(0)
    batches = [(torch.rand(a.batch_size, 3, 32, 32), torch.randint(10, (a.batch_size,))) for _ in range(a.steps)]
    plain, light = [], []
    for _ in range(a.rounds):
        plain += plain_loop(make_module(a.model, 10), batches, a.warmup)
        light += lightning_loop(make_module(a.model, 10), batches, a.warmup)
    mp, ml = statistics.median(plain), statistics.median(light)
    out = {"model": a.model, "batch_size": a.batch_size, "threads": torch.get_num_threads(),
           "plain_ms": round(mp * 1e3, 2), "lightning_ms": round(ml * 1e3, 2), "ratio": round(ml / mp, 3)}
    print(f"| model | batch | plain torch ms/step | Lightning ms/step | ratio |\n|---|---|---|---|---|\n"
          f"| {a.model} | {a.batch_size} | {out['plain_ms']} | {out['lightning_ms']} | {out['ratio']}x |")
    if a.json:
        from rws.utils.io import write_json

        write_json(a.json, out)


if __name__ == "__main__":
    main()
