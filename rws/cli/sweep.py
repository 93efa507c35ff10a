"""Grid search over model soups: evaluate every soup on every target, pick the best ones, plot.

    python sweep.py members=[runs/linf/export,runs/l2/export,runs/l1/export,runs/nominal/export]
    python sweep.py --help
See docs/soups.md.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="../conf", config_name="sweep", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from hydra.utils import instantiate

    from rws.stages.soup_sweep import run_sweep

    if not cfg.members:
        raise SystemExit("sweep.py: set members=[export_dir,...] (see python sweep.py --help)")
    datamodule = instantiate(cfg.data)
    best = run_sweep(cfg, datamodule=datamodule, figures=bool(cfg.get("figures", True)))
    # Returned so a Hydra sweeper could optimize over sweep settings.
    return best["single"]["average"]


if __name__ == "__main__":
    main()
