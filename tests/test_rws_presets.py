"""The RWS experiment presets compose and build, and the CPU-scale chain runs end to end (slow).
Its plan is checked without running it in tests/test_pipelines.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from rws.config import CONF_DIR

ROOT = Path(__file__).resolve().parents[1]
CONF = str(CONF_DIR)
PAPER = {  # preset -> (data, model, num_classes, lr)
    "vgg16_cifar10": ("cifar10", "vgg16", 10, 0.01),
    "vgg16_cifar100": ("cifar100", "vgg16", 100, 0.01),
    "vgg16_tiny_imagenet": ("tiny_imagenet", "vgg16", 200, 0.01),
    "resnet50_cifar10": ("cifar10", "resnet50", 10, 0.001),
    "resnet50_cifar100": ("cifar100", "resnet50", 100, 0.001),
    "resnet50_tiny_imagenet": ("tiny_imagenet", "resnet50", 200, 0.001),
}


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=False)


def test_every_preset_file_is_covered() -> None:
    files = {p.stem for p in (CONF_DIR / "experiment/rws").glob("*.yaml")}
    assert set(PAPER) | {"cpu", "cpu_tiny"} == files


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_preset_composes_and_builds_on_meta(name: str) -> None:
    data, model, n_cls, lr = PAPER[name]
    cfg = _compose([f"experiment=rws/{name}"])
    assert cfg.data.name == data and cfg.model.name == model
    assert cfg.method.optim.lr == pytest.approx(lr)
    assert cfg.trainer.accelerator == "gpu"
    with torch.device("meta"):  # structure only: no memory, no weight init cost
        net = instantiate(cfg.model)
    assert net.net is not None
    head = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert head.out_features == n_cls
    # the robust step composes on top of the preset (19 corruptions at severity 5)
    rob = _compose([f"experiment=rws/{name}", "method=corruption", "method.severity=5", "init=/tmp/x/export"])
    assert rob.method.corruptions == "all" and rob.method.severity == 5
    assert rob.method.optim.lr == pytest.approx(lr)
    from rws.corruptions import resolve_corruptions

    assert len(resolve_corruptions(rob.method.corruptions)) == 19


@pytest.mark.parametrize("name,size,n_cls", [("cpu", 32, 10), ("cpu_tiny", 64, 200)])
def test_cpu_presets_forward(name: str, size: int, n_cls: int) -> None:
    cfg = _compose([f"experiment=rws/{name}"])
    assert cfg.model.name == "vgg16_bn" and cfg.model.width == 0.25
    assert cfg.trainer.accelerator == "cpu"
    net = instantiate(cfg.model).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3, size, size))
    assert out.shape == (2, n_cls)


def test_cpu_presets_share_shallow_shapes() -> None:
    """CIFAR-10 signatures patch the Tiny-ImageNet model: every non-head key must match in shape."""
    from rws.models import head_keys

    a = instantiate(_compose(["experiment=rws/cpu"]).model)
    b = instantiate(_compose(["experiment=rws/cpu_tiny"]).model)
    sa, sb = a.state_dict(), b.state_dict()
    head = set(head_keys(a))
    assert all(sa[k].shape == sb[k].shape for k in sa if k not in head)


@pytest.mark.slow
def test_rws_cpu_smoke_end_to_end(tmp_path: Path, shared_data_dir: Path) -> None:
    out = tmp_path / "rws"
    env = {**os.environ, "RWS_DATA": str(shared_data_dir), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "rws.pipelines.rws_cpu", "--smoke", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Standard + RWS_shallow" in proc.stdout
    for f in ("table1.md", "table4.md", "alpha_sweep.md", "composition.md", "transfer.md", "tables.json"):
        assert (out / f).is_file(), f
    tables = json.loads((out / "tables.json").read_text())["tables"]
    rows = {r["row"]: r for r in tables["table1"]}
    for label in ("Standard", "All Models (oracle)", "Standard + RWS_shallow", "Standard + RWS_shallow,8bit",
                  "Standard + RWS_shallow, BN recalibrated"):
        assert rows[label]["RA@5"] is not None, label
    assert rows["Standard + RWS_shallow"]["TA"] == rows["Standard"]["TA"]
    assert rows["Standard + RWS_shallow,8bit"]["mb_files"] < rows["Standard + RWS_shallow"]["mb_files"]
    for fig in ("fig2_layer_norms", "fig3_cosine_layers", "fig5_cross_dataset", "fig7_alpha_sweep",
                "fig8_composition", "fig9_feature_maps"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 1000, fig
    # resumable: a second run skips every step
    again = subprocess.run([sys.executable, "-m", "rws.pipelines.rws_cpu", "--smoke", "--out", str(out),
                            "--stages", "train,tiny,extract,eval"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "[run ]" not in again.stdout, again.stdout[-2000:]
