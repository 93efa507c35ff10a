"""The soups experiment presets compose, and their models build (on the meta device: no memory)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from rws.training import build_method
from rws.config import CONF_DIR

ROOT = Path(__file__).resolve().parents[1]
PRESETS = {  # preset -> (data, model name, num_classes, first threat norm)
    "cpu": ("cifar10_jpeg", "small_cnn", 10, "linf"),
    "wrn28_10_cifar10": ("cifar10", "wrn28_10", 10, "linf"),
    "vit_b16_imagenet": ("imagenet", "timm/vit_base_patch16_224", 1000, "linf"),
    "resnet50_imagenet": ("imagenet", "resnet50", 1000, "linf"),
}
# preset -> (parameter count, model class, training radius). The counts are the architectures' published
# ones (WRN-28-10 36.5M, ViT-B/16 86.6M, ResNet-50 25.6M; small_cnn measured): a wrong width, depth,
# patch size or head shows as another count.
BUILT = {
    "cpu": (391_466, "SmallCNN", 8 / 255),
    "wrn28_10_cifar10": (36_479_194, "WideResNet", 8 / 255),
    "vit_b16_imagenet": (86_567_656, "VisionTransformer", 4 / 255),
    "resnet50_imagenet": (25_557_032, "ResNet", 4 / 255),
}


def test_every_soups_preset_is_covered() -> None:
    assert {p.stem for p in (CONF_DIR / "experiment/soups").glob("*.yaml")} == set(PRESETS)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_soups_preset_composes_and_builds(name: str) -> None:
    data, model, num_classes, norm = PRESETS[name]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment=soups/{name}"])
    assert cfg.data.name == data and cfg.model.name == model and cfg.data.num_classes == num_classes
    assert cfg.method.name == "adversarial" and cfg.method.threats[0].norm == norm
    with torch.device("meta"):
        module = build_method(cfg)
    n_params = sum(p.numel() for p in module.model.parameters())
    count, cls, eps = BUILT[name]
    assert n_params == count and type(module.model.net).__name__ == cls, (n_params, type(module.model.net))
    assert [t.norm for t in module.threats] == [norm] and module.threats[0].eps == pytest.approx(eps)
    assert OmegaConf.to_container(cfg.method, resolve=True)["dataset_kind"] in ("cifar", "imagenet")
