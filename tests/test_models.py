"""rws.models: factory, normalization wrapper, parameter counts, layer groups, model configs."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from torch import nn

from rws.models import MODEL_NAMES, Normalized, create_model, head_keys, layer_groups, shallow_keys
from rws.config import CONF_DIR

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 7

# Reduced variants keep CPU forwards fast; the layer rules do not depend on width or depth.
SMALL_KW: dict[str, dict] = {
    "vgg16": {"width": 0.25}, "vgg16_bn": {"width": 0.25}, "resnet18_cifar": {"width": 0.25},
    "resnet50_cifar": {"width": 0.25}, "preact_resnet18": {"width": 0.25},
    "wrn28_10": {"depth": 10, "widen_factor": 1}, "small_cnn": {},
    "resnet50": {}, "vit_tiny_patch4_32": {}, "vit_small_patch4_32": {"depth": 2},
}


# Full size where a CPU forward is cheap; the CIFAR ResNets/WRN and ViT-S run reduced and their full
# architectures are pinned by the parameter counts (meta builds).
FULL_FORWARD = ("small_cnn", "vgg16", "vgg16_bn", "resnet50", "vit_tiny_patch4_32")


@functools.lru_cache(maxsize=None)
def _cpu_model(name: str) -> Normalized:
    """One eval-mode CPU build per name, shared by the forward tests (they do not modify it)."""
    torch.manual_seed(0)
    kw = {} if name in FULL_FORWARD else SMALL_KW[name]
    return create_model(name, NUM_CLASSES, **kw).eval()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These forwards are tiny: with two intra-op threads on a busy 2-CPU box, thread hand-offs cost
    # more than the math (measured 30x slower under load), so run this module single-threaded.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
    _cpu_model.cache_clear()  # free the full-size models for the rest of the session


def _meta(name: str, num_classes: int = 10, **kw) -> Normalized:
    with torch.device("meta"):
        return create_model(name, num_classes, **kw)


def _numel(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("name", "num_classes", "expected"), [
    ("vgg16", 10, 14_719_818),
    ("vgg16_bn", 10, 14_728_266),
    ("resnet50", 200, 23_917_832),       # 95.7 MB in fp32
    ("resnet18_cifar", 10, 11_173_962),
    ("wrn28_10", 10, 36_479_194),
    ("preact_resnet18", 10, 11_172_170),
])
def test_param_counts(name: str, num_classes: int, expected: int) -> None:
    assert _numel(_meta(name, num_classes)) == expected


def test_vgg16_is_13_convs_and_one_linear() -> None:
    net = _meta("vgg16").net
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert len(convs) == 13 and all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 256] + [512] * 6
    assert len(linears) == 1 and linears[0].in_features == 512
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    narrow = _meta("vgg16_bn", width=0.25).net
    assert narrow.classifier.in_features == 128


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_shape_32px(name: str) -> None:
    with torch.no_grad():
        out = _cpu_model(name)(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, NUM_CLASSES) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["vgg16", "vgg16_bn", "resnet50"])
def test_forward_shape_64px_keeps_state_dict(name: str) -> None:
    model = _cpu_model(name)
    with torch.no_grad():
        assert model(torch.rand(2, 3, 64, 64)).shape == (2, NUM_CLASSES)
    if name.startswith("vgg"):
        # The global pool keeps the head Linear(512, C) whatever the resolution.
        assert model.net.classifier.weight.shape == (NUM_CLASSES, 512)


def test_small_cnn_handles_8px_digits_and_no_bn() -> None:
    model = create_model("small_cnn", 10).eval()
    assert model(torch.rand(3, 3, 8, 8)).shape == (3, 10)
    plain = create_model("small_cnn", 10, bn=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert _numel(create_model("small_cnn", 10, width=0.5)) < _numel(model)


def test_normalization_inside_and_not_persistent() -> None:
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    model = create_model("small_cnn", 10, mean=mean, std=std).eval()
    assert isinstance(model, Normalized) and isinstance(model.net, nn.Module)
    assert model.mean.shape == (1, 3, 1, 1) and model.std.shape == (1, 3, 1, 1)
    keys = list(model.state_dict())
    assert keys and all(k.startswith("net.") for k in keys)
    assert "mean" not in keys and "std" not in keys
    x = torch.rand(4, 3, 32, 32)
    expected = model.net((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    torch.testing.assert_close(model(x), expected)
    # Weights move between models regardless of their normalization; the buffers stay put.
    other = create_model("small_cnn", 10)
    other.load_state_dict(model.state_dict(), strict=True)
    torch.testing.assert_close(other.std, torch.full((1, 3, 1, 1), 0.5))


def test_normalized_accepts_omegaconf_lists() -> None:
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"mean": [0.1, 0.2, 0.3], "std": [1, 1, 1]})
    model = create_model("small_cnn", 3, mean=cfg.mean, std=cfg.std)
    assert model.mean.flatten().tolist() == pytest.approx([0.1, 0.2, 0.3])


@pytest.mark.parametrize("name", [*MODEL_NAMES, "timm/resnet18", "timm/convnext_atto"])
def test_layer_groups_cover_every_key_once(name: str) -> None:
    model = _meta(name)
    groups = layer_groups(model)
    flat = [k for _, keys in groups for k in keys]
    assert len(flat) == len(set(flat))
    assert set(flat) == set(model.state_dict())
    assert all(keys for _, keys in groups)
    assert head_keys(model) == groups[-1][1]


def test_layer_groups_named_structure() -> None:
    vgg = layer_groups(_meta("vgg16"))
    assert len(vgg) == 14 and vgg[0][1] == ["net.features.0.weight", "net.features.0.bias"]
    assert vgg[-1][1] == ["net.classifier.weight", "net.classifier.bias"]
    bn = layer_groups(_meta("vgg16_bn"))
    assert len(bn) == 14 and "net.features.1.running_var" in bn[0][1]
    assert "net.features.1.num_batches_tracked" in bn[0][1]
    r50 = layer_groups(_meta("resnet50", 200))
    assert [n for n, _ in r50[:6]] == ["stem", "layer1.0", "layer1.1", "layer1.2", "layer2.0", "layer2.1"]
    assert "net.layer1.0.downsample.0.weight" in r50[1][1] and r50[-1][0] == "fc"
    assert len(r50) == 1 + 16 + 1
    assert [n for n, _ in layer_groups(_meta("wrn28_10"))[-2:]] == ["bn", "fc"]
    vit = layer_groups(_meta("vit_tiny_patch4_32"))
    assert vit[0][0] == "embed" and "net.cls_token" in vit[0][1] and "net.pos_embed" in vit[0][1]
    assert [n for n, _ in vit[-2:]] == ["norm", "head"] and len(vit) == 1 + 12 + 2
    assert shallow_keys(_meta("vgg16"), 5) == [k for _, ks in vgg[:5] for k in ks]
    assert shallow_keys(_meta("vgg16"), 0) == []


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_layer_groups_follow_forward_order(name: str) -> None:
    model = _cpu_model(name)
    owner_of = {}
    for mod_name, mod in model.named_modules():
        for k in list(mod.state_dict(keep_vars=True)):
            full = f"{mod_name}.{k}" if mod_name else k
            if "." not in k:  # a tensor registered directly on this module
                owner_of[full] = mod
    first_call: dict[int, int] = {}

    def record(mod: nn.Module, _args: tuple) -> None:
        first_call.setdefault(id(mod), len(first_call))

    hooks = [m.register_forward_pre_hook(record) for m in model.modules()]
    with torch.no_grad():
        model(torch.rand(2, 3, 32, 32))
    for h in hooks:
        h.remove()
    starts = [min(first_call[id(owner_of[k])] for k in keys) for _, keys in layer_groups(model)]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)


def test_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'vgg17'.*vgg16.*resnet50.*timm/"):
        create_model("vgg17", 10)
    with pytest.raises(ValueError, match="width"):
        create_model("resnet50", 10, width=0.5)
    with pytest.raises(ValueError, match="6n\\+4"):
        create_model("wrn28_10", 10, depth=27)
    with pytest.raises(ValueError, match="pretrained"):
        create_model("vgg16", 10, pretrained=True)


def test_timm_passthrough() -> None:
    model = create_model("timm/resnet18", 4).eval()
    assert isinstance(model, Normalized) and model.net.fc.out_features == 4
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 4)


@pytest.mark.parametrize("path", sorted((CONF_DIR / "model").glob("*.yaml")), ids=lambda p: p.stem)
def test_model_configs_instantiate(path: Path) -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    data = {"num_classes": 10, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    cfg = OmegaConf.merge({"data": data}, {"model": OmegaConf.load(path)})
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    assert model_cfg["_target_"] == "rws.models.create_model"
    with torch.device("meta"):
        model = instantiate(model_cfg)
    assert isinstance(model, Normalized)
    assert model.net.state_dict()  # something was built
    if path.stem == "vgg16_bn_narrow":
        assert model.net.classifier.in_features == 128
