"""Train a model with a method from config, then export it.

    python train.py                                   # small CNN on the embedded digits
    python train.py data=cifar10_jpeg model=vgg16_bn_narrow method=corruption method.corruptions=gaussian_noise
    python train.py -m method.optim.lr=0.1,0.05       # Hydra multirun
See README.md for every option.
"""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rws.training import finish_wandb, train


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = train(cfg, run_dir=HydraConfig.get().runtime.output_dir)
    finally:
        finish_wandb()
    # Returned so Hydra sweepers (e.g. Optuna) can optimize it.
    return metrics.get("val/acc")


if __name__ == "__main__":
    main()
