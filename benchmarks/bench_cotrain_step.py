"""Co-training step (Eq. 2, PGD-2) vs a clean step plus a PGD-2 adversarial step, on the same model.

    python benchmarks/bench_cotrain_step.py                       # vit_cpu_patch4_32 + cls_token if available
    python benchmarks/bench_cotrain_step.py --model small_cnn     # small_cnn with a two-mode input offset
    python benchmarks/bench_cotrain_step.py --device cuda --batch-size 256

Co-training (``CoTrainModule.step``, one backward and one optimizer step) does the work of a clean
nominal step and an adversarial step (PGD-2 in robust mode) run back to back, minus one backward
launch and one optimizer step, so it should cost no more than the two together. Per-step times are
steady-state medians (after warmup), interleaved over rounds so machine noise hits both sides
alike. Goal: ratio (co-training / separate) <= 1.10.

On CPU, glibc malloc hands the co-training step's larger peak (the clean graph stays alive through
the attack and the adversarial forward) back to the OS and faults it in again every step, which the
separate steps never do; the page-fault column shows it. That is an allocator artifact (a GPU's
caching allocator reuses its blocks): with ``MALLOC_MMAP_THRESHOLD_=1073741824
MALLOC_TRIM_THRESHOLD_=4294967296`` in the environment both sides run fault-free and time alike.

Without rws.models.adapters (the real adapter models), or with ``--model`` set to a plain model,
the benchmark wraps the plain model in a minimal two-mode network (a per-mode additive input
offset: the cheapest possible adapter), so the timing is that of the shared network.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from rws.methods.cotrain import CoTrainModule
from rws.models.contracts import mix_weights, using_mode

OPTIM = {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0}
SCHED = {"name": "none"}
WRAPPED = "bench_two_mode"


class TwoModeOffset(nn.Module):
    """A plain network with one learned input offset per mode (clean, robust)."""

    modes = ("clean", "robust")

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.offset = nn.ParameterDict({m: nn.Parameter(torch.zeros(3, 1, 1)) for m in self.modes})
        self._mode: Any = "clean"

    @property
    def mode(self) -> Any:
        return self._mode

    def set_mode(self, mode: Any) -> None:
        mix_weights(mode, self.modes)
        self._mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w0, w1 = mix_weights(self._mode, self.modes)
        return self.net(x + w0 * self.offset["clean"] + w1 * self.offset["robust"])


def _register_wrapped(base: str) -> None:
    from rws.models import registry
    from rws.models.registry import lookup

    entry, arch = lookup(base)

    def build(num_classes: int, drop_rate: float = 0.0, **kw: Any) -> nn.Module:
        args = () if arch is None else (arch,)
        options = {"drop_rate": drop_rate, **kw}
        if entry.width:
            options.setdefault("width", 1.0)
        return TwoModeOffset(entry.build(*args, num_classes, **options))

    registry._ENTRIES[WRAPPED] = registry.ModelEntry(WRAPPED, build, width=False)


def model_config(model: str, adapter: str | None) -> tuple[dict, str]:
    """(model config, label): the real adapter model when rws.models.adapters exists, else ``model``
    (small_cnn if it is not registered yet) wrapped in ``TwoModeOffset``."""
    cfg = {"_target_": "rws.models.create_model", "name": model, "num_classes": 10}
    if adapter is not None and _importable("rws.models.adapters") and _has(model):
        return {**cfg, "adapter": adapter}, f"{model} + {adapter}"
    base = model if _has(model) else "small_cnn"
    _register_wrapped(base)
    return {**cfg, "name": WRAPPED}, f"{base} (two-mode input offset)"


def _importable(module: str) -> bool:
    import importlib

    try:
        importlib.import_module(module)
        return True
    except ImportError:
        return False


def _has(model: str) -> bool:
    from rws.models.registry import lookup

    try:
        lookup(model)
        return True
    except ValueError:
        return False


def make_module(cfg: dict, device: str, alpha: float) -> CoTrainModule:
    torch.manual_seed(0)
    m = CoTrainModule(model=cfg, optim=OPTIM, sched=SCHED, alpha=alpha,
                      threat={"norm": "linf", "eps": 4 / 255}, attack_steps=2, step_size=0.625)
    return m.to(device).train()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


FAULTS: dict[str, list[int]] = {"cotrain": [], "separate": []}


def _minor_faults() -> int:
    try:
        import resource
    except ImportError:  # not on every platform
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _timed(step: Callable[[torch.Tensor, torch.Tensor], None], batches: list, warmup: int, device: str,
           side: str) -> list[float]:
    times = []
    for i, (x, y) in enumerate(batches):
        _sync(device)
        faults, t = _minor_faults(), time.perf_counter()
        step(x, y)
        _sync(device)
        times.append(time.perf_counter() - t)
        if i >= warmup:
            FAULTS[side].append(_minor_faults() - faults)
    return times[warmup:]


def cotrain_loop(module: CoTrainModule, batches: list, warmup: int, device: str) -> list[float]:
    opt = torch.optim.SGD(module.model.parameters(), lr=0.01, momentum=0.9)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        module.step(x, y).loss.backward()
        opt.step()

    return _timed(step, batches, warmup, device, "cotrain")


def separate_loop(module: CoTrainModule, batches: list, warmup: int, device: str) -> list[float]:
    """A nominal step in clean mode, then an adversarial step (the same PGD-2) in robust mode."""
    model, attack = module.model, module.attack
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        with using_mode(model, "clean"):
            F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        with using_mode(model, "robust"):
            x_adv = attack(model, x, y)
            F.cross_entropy(model(x_adv), y).backward()
        opt.step()

    return _timed(step, batches, warmup, device, "separate")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vit_cpu_patch4_32")
    p.add_argument("--adapter", default="cls_token", help="adapter kind; 'off' wraps the plain model instead")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg, name = model_config(a.model, None if a.adapter == "off" else a.adapter)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.rand(a.batch_size, 3, 32, 32, generator=g).to(a.device),
                torch.randint(10, (a.batch_size,), generator=g).to(a.device)) for _ in range(a.steps)]
    co, sep = [], []
    for _ in range(a.rounds):
        co += cotrain_loop(make_module(cfg, a.device, 0.5), batches, a.warmup, a.device)
        sep += separate_loop(make_module(cfg, a.device, 0.5), batches, a.warmup, a.device)
    mc, ms = statistics.median(co), statistics.median(sep)
    fc, fs = statistics.median(FAULTS["cotrain"]), statistics.median(FAULTS["separate"])
    out = {"model": name, "batch_size": a.batch_size, "device": a.device, "threads": torch.get_num_threads(),
           "cotrain_ms": round(mc * 1e3, 2), "separate_ms": round(ms * 1e3, 2), "ratio": round(mc / ms, 3),
           "cotrain_page_faults": fc, "separate_page_faults": fs}
    print("| model | batch | device | co-training ms/step | clean + PGD-2 steps ms | ratio "
          "| page faults/step (co / sep) |\n"
          "|---|---|---|---|---|---|---|\n"
          f"| {name} | {a.batch_size} | {a.device} | {out['cotrain_ms']} | {out['separate_ms']} | {out['ratio']}x "
          f"| {fc:.0f} / {fs:.0f} |")
    if a.json:
        from rws.utils.io import write_json

        write_json(a.json, out)


if __name__ == "__main__":
    main()
