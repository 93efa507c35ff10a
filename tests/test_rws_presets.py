"""The RWS experiment presets compose and build. The CPU-scale chain's plan is checked without running
it in tests/test_pipelines.py; it runs end to end in tests/test_pipeline_smoke.py (-m pipeline)."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from rws.config import CONF_DIR

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
