"""Configs ship inside the package: composing works inside a running Hydra app, and a built wheel runs
the entry points from another directory (no checkout, no top-level conf/)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from rws.config import CONF_DIR
from rws.config import compose as rws_compose

ROOT = Path(__file__).resolve().parents[1]


def test_configs_live_in_the_package() -> None:
    assert CONF_DIR == ROOT / "rws" / "conf"
    assert not (ROOT / "conf").exists(), "one source of truth: the configs live in rws/conf"
    for name in ("train", "evaluate", "sweep", "extract", "patch", "storage"):
        assert (CONF_DIR / f"{name}.yaml").is_file()


def test_compose_keeps_a_running_hydra_app_intact() -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        inner = rws_compose("evaluate", ["data=cifar10_jpeg"])
        assert inner.data.name == "cifar10_jpeg"
        assert GlobalHydra.instance().is_initialized()
        assert compose("train").model.name == "small_cnn"  # the app's own Hydra still composes
    assert not GlobalHydra.instance().is_initialized()


@pytest.mark.slow
def test_wheel_runs_the_stages_outside_the_checkout(tmp_path: Path) -> None:
    """Marked slow (a wheel build); .ci/run runs it."""
    # Built from a copy, so the build leaves nothing (build/, *.egg-info) in the checkout.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "rws", src / "rws", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(src)], check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}
    where = subprocess.run([sys.executable, "-c", "import rws; print(rws.__file__)"], cwd=elsewhere, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(target)), where
    storage = subprocess.run([sys.executable, "-m", "rws.stages.storage", f"out={tmp_path / 'storage'}"],
                             cwd=elsewhere, env=env, capture_output=True, text=True)
    assert storage.returncode == 0, storage.stderr[-2000:]
    assert "VGG" in storage.stdout or (tmp_path / "storage").exists()
    for module in ("rws.stages.extract", "rws.cli.train", "rws.cli.evaluate", "rws.cli.sweep"):
        proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=elsewhere, env=env,
                              capture_output=True, text=True)
        assert proc.returncode == 0, (module, proc.stderr[-2000:])
        assert "== Config groups ==" in proc.stdout or "Powered by Hydra" in proc.stdout, module
