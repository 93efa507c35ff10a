"""Where the configs live: inside the package (``rws/conf``), so an installed wheel runs every
entry point outside a checkout. ``compose`` builds a config the way the CLIs do, for pipelines,
stages and tests."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig

CONF_DIR = Path(__file__).resolve().parent / "conf"


def compose(config_name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """The composed config ``config_name`` (e.g. "evaluate") with Hydra ``overrides``, outside a Hydra app."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    # Inside a running Hydra app (e.g. evaluate.py composing a calibration source's data config) the
    # app's own GlobalHydra must survive: set it aside, compose, and put it back.
    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name, overrides=list(overrides), return_hydra_config=False)
    finally:
        restore_gh_from_backup(backup)
