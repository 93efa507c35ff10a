"""rws.models: registry, factory, normalization wrapper, parameter counts, layer groups, model configs,
the RobustBench loader."""

from __future__ import annotations

import functools
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from rws.config import CONF_DIR, compose
from rws.models import (MODEL_NAMES, Normalized, create_model, head_keys, layer_groups, list_families, list_models,
                        register_model, shallow_keys)
from rws.models.registry import MODEL_NAME_ATTR, lookup

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 7

# Reduced variants keep CPU forwards fast; the layer rules do not depend on width or depth.
SMALL_KW: dict[str, dict] = {
    "vgg16": {"width": 0.25}, "vgg16_bn": {"width": 0.25}, "vgg16_gn": {"width": 0.25}, "resnet18_cifar": {"width": 0.25},
    "resnet50_cifar": {"width": 0.25}, "preact_resnet18": {"width": 0.25},
    "wrn28_10": {"depth": 10, "widen_factor": 1}, "small_cnn": {},
    "resnet50": {}, "vit_tiny_patch4_32": {}, "vit_small_patch4_32": {"depth": 2}, "vit_cpu_patch4_32": {},
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
    ("vgg16_gn", 10, 14_728_266),        # GroupNorm has BN's affine parameters, no running statistics
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


def _group_starts(model: nn.Module) -> list[int | None]:
    """For each layer group, when (in module-call order) its first module runs on a forward; None
    for a group none of whose modules runs."""
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
    calls = [[first_call[id(owner_of[k])] for k in keys if id(owner_of[k]) in first_call]
             for _, keys in layer_groups(model)]
    return [min(c) if c else None for c in calls]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_layer_groups_follow_forward_order(name: str) -> None:
    starts = _group_starts(_cpu_model(name))
    assert None not in starts
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
    """``timm/<name>`` is timm's own model with the requested head, behind the normalization: the same
    state dict loads strictly into ``timm.create_model(name)`` and gives the same logits on (x - mean) / std."""
    import timm

    mean, std = (0.1, 0.2, 0.3), (0.5, 0.6, 0.7)
    model = create_model("timm/resnet18", 4, mean=mean, std=std).eval()
    assert isinstance(model, Normalized) and model.net.fc.out_features == 4
    ref = timm.create_model("resnet18", num_classes=4).eval()
    assert type(model.net) is type(ref)
    ref.load_state_dict(model.net.state_dict())  # strict: the same keys and shapes
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ref((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
        assert torch.allclose(model(x), expected, atol=1e-5)


MODEL_CONFIGS = sorted((CONF_DIR / "model").glob("*.yaml"))
# One concrete member per registered family, so the registry loop covers families too.
FAMILY_EXAMPLES = {"timm/": "timm/resnet18", "robustbench/": "robustbench/Carmon2019Unlabeled"}


def _config_of(name: str) -> Path | None:
    from omegaconf import OmegaConf

    return next((p for p in MODEL_CONFIGS if OmegaConf.load(p).name == name), None)


def _composed_model_cfg(path: Path) -> dict:
    """conf/model/<stem>.yaml as the train config composes and resolves it."""
    from omegaconf import OmegaConf

    cfg = compose("train", [f"model={path.stem}"])
    return OmegaConf.to_container(cfg.model, resolve=True)


def test_registry_lists_every_model_once() -> None:
    assert MODEL_NAMES == list_models() and len(set(MODEL_NAMES)) == len(MODEL_NAMES)
    assert MODEL_NAMES[:3] == ("small_cnn", "vgg16", "vgg16_bn")
    assert set(list_families()) == set(FAMILY_EXAMPLES)
    # Every registered name has a cheap variant here, so the loops below cannot skip a new model.
    assert set(SMALL_KW) == set(MODEL_NAMES)
    assert lookup("timm/convnext_atto")[1] == "convnext_atto" and lookup("vgg16")[1] is None
    with pytest.raises(ValueError, match="registered twice"):
        register_model("vgg16")(lambda num_classes, **kw: nn.Linear(1, num_classes))
    with pytest.raises(ValueError, match=r"unknown model 'timm/'.*timm/<name>.*robustbench/<name>"):
        create_model("timm/", 10)


@pytest.mark.parametrize("name", [*MODEL_NAMES, *FAMILY_EXAMPLES.values()])
def test_every_registered_model(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """timm-style loop: a small build forwards to (2, C), its layer groups cover every key exactly
    once, and its model config (if any) composes and builds."""
    kw = dict(SMALL_KW.get(name, {}))
    num_classes = NUM_CLASSES
    if name.startswith("robustbench/"):
        pytest.importorskip("robustbench.utils", reason="robustbench is not installed")
        num_classes = 10
        # The model config's model_dir is ${paths.cache_dir}/robustbench: point the cache here.
        monkeypatch.setenv("RWS_CACHE", str(tmp_path))
        kw = {"dataset": "cifar10", "threat_model": "Linf", "model_dir": tmp_path / "robustbench"}
        _save_robustbench_weights(tmp_path / "robustbench", "Carmon2019Unlabeled", "cifar10", "Linf")
    torch.manual_seed(0)
    model = create_model(name, num_classes, **kw).eval()
    assert getattr(model.net, MODEL_NAME_ATTR) == name
    with torch.no_grad():
        out = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, num_classes) and torch.isfinite(out).all()
    groups = layer_groups(model)
    flat = [k for _, keys in groups for k in keys]
    assert sorted(flat) == sorted(model.state_dict()) and all(keys for _, keys in groups)

    path = _config_of(name)
    if path is None:
        return
    cfg = _composed_model_cfg(path)
    from hydra.utils import instantiate

    assert cfg["_target_"] == "rws.models.create_model" and cfg["name"] == name
    with torch.device("meta"):
        built = instantiate(cfg)
    assert isinstance(built, Normalized) and built.net.state_dict()


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=lambda p: p.stem)
def test_model_configs_instantiate(path: Path) -> None:
    from hydra.utils import instantiate

    model_cfg = _composed_model_cfg(path)
    assert model_cfg["_target_"] == "rws.models.create_model"
    entry, _ = lookup(model_cfg["name"])  # every config names a registered model
    if entry.name == "robustbench/":
        assert model_cfg["model_dir"].endswith("/robustbench") and "mean" not in model_cfg
        pytest.importorskip("robustbench.utils", reason="robustbench is not installed")
        return  # building it needs the published weights; test_every_registered_model covers the build
    # Composed with the default data (digits): mean/std/num_classes come from there.
    assert model_cfg["num_classes"] == 10 and len(model_cfg["mean"]) == 3
    with torch.device("meta"):
        model = instantiate(model_cfg)
    assert isinstance(model, Normalized)
    assert model.net.state_dict()  # something was built
    if path.stem == "vgg16_bn_narrow":
        assert model.net.classifier.in_features == 128


# ---------------------------------------------------------------- RobustBench

class _FakeZooNet(nn.Module):
    """Stands in for a RobustBench model: normalizes inside, returned in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mu", torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1))
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv1(x - self.mu).mean((2, 3)))


@pytest.fixture()
def fake_robustbench(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """A ``robustbench`` package whose load_model records its arguments (no download, no real zoo)."""
    calls: list[dict] = []

    def load_model(model_name, model_dir="./models", dataset="cifar10", threat_model="Linf"):
        calls.append({"model_name": model_name, "model_dir": model_dir, "dataset": dataset,
                      "threat_model": threat_model})
        torch.manual_seed(1)
        return _FakeZooNet().eval()

    package, utils = types.ModuleType("robustbench"), types.ModuleType("robustbench.utils")
    utils.load_model = load_model
    package.utils = utils
    monkeypatch.setitem(sys.modules, "robustbench", package)
    monkeypatch.setitem(sys.modules, "robustbench.utils", utils)
    return calls


def test_robustbench_wrapper_contract(fake_robustbench: list[dict], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    model = create_model("robustbench/Foo2024Bar", 10, dataset="cifar10", threat_model="L2", model_dir=tmp_path)
    assert fake_robustbench == [{"model_name": "Foo2024Bar", "model_dir": str(tmp_path), "dataset": "cifar10",
                                 "threat_model": "L2"}]
    # Pixel space in, no second normalization: the wrapper is the identity (mean 0, std 1) ...
    assert isinstance(model, Normalized) and model.mean.flatten().tolist() == [0.0, 0.0, 0.0]
    assert model.std.flatten().tolist() == [1.0, 1.0, 1.0]
    assert model.training and model.net.training  # one mode for the whole tree, as for every model
    model.eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model.net(x))  # ... so the logits are the zoo model's, bit for bit
    assert list(model.state_dict()) == ["net.mu", "net.conv1.weight", "net.conv1.bias", "net.fc.weight", "net.fc.bias"]
    # No ResNet/ViT/WRN shape: the generic fallback, one group per module.
    assert [n for n, _ in layer_groups(model)] == ["(root)", "conv1", "fc"]
    # model_dir defaults into the rws cache.
    monkeypatch.setenv("RWS_CACHE", str(tmp_path / "cache"))
    create_model("robustbench/Foo2024Bar", 100, dataset="cifar100", threat_model="corruptions")
    assert fake_robustbench[-1]["model_dir"] == str(tmp_path / "cache" / "robustbench")
    assert fake_robustbench[-1]["dataset"] == "cifar100"


def test_robustbench_errors(fake_robustbench: list[dict], monkeypatch: pytest.MonkeyPatch) -> None:
    ok = {"dataset": "cifar10", "threat_model": "Linf"}
    with pytest.raises(ValueError, match="dataset must be one of cifar10, cifar100, imagenet"):
        create_model("robustbench/X", 10, dataset="svhn", threat_model="Linf")
    with pytest.raises(ValueError, match="threat_model must be one of Linf, L2, corruptions"):
        create_model("robustbench/X", 10, dataset="cifar10", threat_model="linf")
    with pytest.raises(ValueError, match="num_classes=100 but cifar10 models have 10"):
        create_model("robustbench/X", 100, **ok)
    with pytest.raises(ValueError, match="normalizes its input itself"):
        create_model("robustbench/X", 10, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26), **ok)
    with pytest.raises(ValueError, match="width"):
        create_model("robustbench/X", 10, width=0.5, **ok)
    with pytest.raises(ValueError, match="drop_rate"):
        create_model("robustbench/X", 10, drop_rate=0.1, **ok)
    assert fake_robustbench == []  # every mistake is caught before loading anything
    monkeypatch.setitem(sys.modules, "robustbench", None)  # not installed
    monkeypatch.setitem(sys.modules, "robustbench.utils", None)
    with pytest.raises(ImportError, match="needs the robustbench package.*pip install robustbench"):
        create_model("robustbench/X", 10, **ok)


def _save_robustbench_weights(model_dir: Path, name: str, dataset: str, threat_model: str) -> dict:
    """Random weights for zoo model ``name``, saved where robustbench.utils.load_model looks, in the
    checkpoint form it unwraps ({'state_dict': {'module.<key>': tensor}}). Returns the plain state dict."""
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    torch.manual_seed(123)
    reference = model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat_model)][name]["model"]()
    state = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
             for k, v in reference.state_dict().items()}
    path = model_dir / dataset / threat_model / f"{name}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    return state


@pytest.mark.parametrize(("name", "groups"), [
    ("Carmon2019Unlabeled", ["stem", "block1.layer.0", "block1.layer.1"]),   # WRN-28-10: our WRN rule
    ("Wong2020Fast", ["stem", "layer1.0", "layer1.1"]),                     # PreAct ResNet-18: ResNet rule
])
def test_robustbench_loads_published_layout(name: str, groups: list[str], tmp_path: Path) -> None:
    """The real robustbench loader, on weights we saved in its layout: same logits as the zoo model."""
    pytest.importorskip("robustbench.utils", reason="robustbench is not installed")
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    state = _save_robustbench_weights(tmp_path, name, "cifar10", "Linf")
    model = create_model(f"robustbench/{name}", 10, dataset="cifar10", threat_model="Linf", model_dir=tmp_path).eval()
    reference = model_dicts[BenchmarkDataset.cifar_10][ThreatModel.Linf][name]["model"]()
    reference.load_state_dict(state)
    reference.eval()
    assert list(model.state_dict()) == [f"net.{k}" for k in state]
    loaded = model.state_dict()
    assert all(torch.equal(loaded[f"net.{k}"], v) for k, v in state.items())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    layer_names = [n for n, _ in layer_groups(model)]
    assert layer_names[:3] == groups and layer_names[-1] == ("fc" if name.startswith("Carmon") else "linear")
    flat = [k for _, keys in layer_groups(model) for k in keys]
    assert sorted(flat) == sorted(model.state_dict())
    # Forward order, leaving out modules the forward never calls (Carmon's checkpoint carries an unused sub_block1).
    starts = [s for s in _group_starts(model) if s is not None]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
