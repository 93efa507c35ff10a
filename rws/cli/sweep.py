"""Sweep specs (a soup grid, or a list of specs) over named targets, pick the best ones, plot.

    python sweep.py members=[runs/linf/export,runs/l2/export,runs/l1/export,runs/nominal/export]
    python sweep.py -m shard=0/2,1/2 hydra/launcher=local members=[...] out=outputs/sweeps/x
    python sweep.py --help
See docs/soups.md.
"""

from __future__ import annotations

from omegaconf import DictConfig

from rws.cli.entry import hydra_entry
from rws.errors import UserError


@hydra_entry("sweep")
def main(cfg: DictConfig) -> float | None:
    from hydra.utils import instantiate

    from rws.stages.sweep import run_sweep

    if not cfg.members and not cfg.specs and not (cfg.get("adapter") or {}).get("base"):
        raise UserError("nothing to sweep", "members, specs and adapter.base are all empty",
                        "members=[export_dir,...], specs=[...] or adapter.base=<adapter export> (python sweep.py --help)")
    datamodule = instantiate(cfg.data)
    best = run_sweep(cfg, datamodule=datamodule, figures=bool(cfg.get("figures", True)))
    # Returned so a Hydra sweeper could optimize over sweep settings (None while other shards run).
    return best["single"]["average"] if best else None


if __name__ == "__main__":
    main()
