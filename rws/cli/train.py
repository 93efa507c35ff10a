"""Train a model with a method from config, then export it.

    python train.py                                   # small CNN on the embedded digits
    python train.py data=cifar10_jpeg model=vgg16_bn_narrow method=corruption method.corruptions=gaussian_noise
    python train.py -m method.optim.lr=0.1,0.05       # Hydra multirun
See README.md for every option.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from rws.cli.entry import hydra_entry
from rws.errors import UserError


def check_inputs(cfg: DictConfig) -> None:
    """What can be checked before Lightning is imported and the run writes anything: the seed, and
    that ``init`` and ``resume`` name files that exist."""
    seed = cfg.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UserError(f"seed must be an integer, got {seed!r}", "option seed", "e.g. seed=0")
    init = cfg.get("init")
    if init:
        p = Path(str(init))
        if not (p.is_dir() or p.name == "model.safetensors" or (p.suffix == ".ckpt" and p.is_file())):
            raise UserError(f"init={p} does not exist" if not p.exists() else f"init={p} is not a model",
                            "option init", "an export directory (with model.safetensors), a model.safetensors "
                            "file or a Lightning .ckpt")
    resume = cfg.get("resume")
    if resume and resume != "auto" and not Path(str(resume)).is_file():
        raise UserError(f"resume={resume}: no such checkpoint", "option resume",
                        "a Lightning .ckpt file, auto (<run dir>/checkpoints/last.ckpt) or null")


@hydra_entry("train")
def main(cfg: DictConfig) -> float | None:
    check_inputs(cfg)
    from hydra.core.hydra_config import HydraConfig

    from rws.training import finish_wandb, train  # imported here: a config error needs no Lightning

    try:
        metrics = train(cfg, run_dir=HydraConfig.get().runtime.output_dir)
    finally:
        finish_wandb()
    # Returned so Hydra sweepers (e.g. Optuna) can optimize it.
    return metrics.get("val/acc")


if __name__ == "__main__":
    main()
