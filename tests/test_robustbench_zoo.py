"""rws.models.robustbench_zoo without the optional robustbench package: a stand-in ``robustbench``
module (load_model + the zoo's name table) drives the loader's error handling and the layer rule on a
RobustBench-style WideResNet. The real package, where installed: tests/test_models.py."""

from __future__ import annotations

import enum
import sys
import types
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from torch import nn

from rws.models import robustbench_zoo as zoo


class _Block(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[nn.Conv2d(4, 4, 3, padding=1) for _ in range(n)])


class _WRN(nn.Module):
    """RobustBench's WideResNet layout: conv1, block1..3 of ``.layer`` blocks, bn1, fc, and the input
    mean/std registered on the root module as many zoo models do."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mu", torch.zeros(1, 3, 1, 1))
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.block1, self.block2, self.block3 = _Block(2), _Block(1), _Block(2)
        self.bn1 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 10)


def _fake_robustbench(monkeypatch: pytest.MonkeyPatch, load_model: Callable[..., Any],
                      zoo_names: list[str]) -> None:
    class BenchmarkDataset(enum.Enum):
        cifar_10 = "cifar10"

    class ThreatModel(enum.Enum):
        Linf = "Linf"
        corruptions = "corruptions"

    pkg = types.ModuleType("robustbench")
    utils = types.ModuleType("robustbench.utils")
    utils.load_model = load_model
    model_zoo = types.ModuleType("robustbench.model_zoo")
    model_zoo.model_dicts = {BenchmarkDataset("cifar10"): {ThreatModel("Linf"): {n: {} for n in zoo_names},
                                                           ThreatModel("corruptions"): {}}}
    enums = types.ModuleType("robustbench.model_zoo.enums")
    enums.BenchmarkDataset, enums.ThreatModel = BenchmarkDataset, ThreatModel
    for name, mod in {"robustbench": pkg, "robustbench.utils": utils, "robustbench.model_zoo": model_zoo,
                      "robustbench.model_zoo.enums": enums}.items():
        monkeypatch.setitem(sys.modules, name, mod)


def _load(arch: str = "Carmon2019Unlabeled", model_dir: Path | None = None, **kw: Any) -> nn.Module:
    args = {"num_classes": 10, "pretrained": True, "drop_rate": 0.0, "dataset": "cifar10", "threat_model": "Linf",
            "model_dir": model_dir, **kw}
    return zoo.robustbench_model(arch, **args)


def test_weights_file_layout() -> None:
    assert zoo.weights_file("/m", "A", "cifar10", "Linf") == Path("/m/cifar10/Linf/A.pt")
    # the 3D common corruptions share the corruptions folder
    assert zoo.weights_file("/m", "B", "cifar10", "corruptions_3d") == Path("/m/cifar10/corruptions/B.pt")


def test_arguments_are_checked_before_anything_loads() -> None:
    for kw, match in [({"dataset": "svhn"}, "dataset must be one of cifar10, cifar100, imagenet"),
                      ({"threat_model": "L1"}, "threat_model must be one of"),
                      ({"num_classes": 100}, "num_classes=100 but cifar10 models have 10"),
                      ({"drop_rate": 0.1}, "no drop_rate option")]:
        with pytest.raises(ValueError, match=match):
            _load(**kw)


def test_loaded_model_is_in_train_mode_and_read_from_model_dir(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    calls = []

    def load_model(arch: str, model_dir: str, dataset: str, threat_model: str) -> nn.Module:
        calls.append((arch, model_dir, dataset, threat_model))
        return _WRN().eval()

    _fake_robustbench(monkeypatch, load_model, ["Carmon2019Unlabeled"])
    net = _load(model_dir=tmp_path / "rb")
    assert isinstance(net, _WRN) and net.training  # the caller sets the mode, as for any fresh model
    assert calls == [("Carmon2019Unlabeled", str(tmp_path / "rb"), "cifar10", "Linf")]
    monkeypatch.setenv("RWS_CACHE", str(tmp_path / "cache"))
    _load()  # no model_dir: the rws cache
    assert calls[-1][1] == str(tmp_path / "cache" / "robustbench")


def test_unknown_name_lists_the_zoo(monkeypatch: pytest.MonkeyPatch) -> None:
    def load_model(arch: str, **_: Any) -> nn.Module:
        raise KeyError(arch)

    _fake_robustbench(monkeypatch, load_model, ["Wong2020Fast", "Carmon2019Unlabeled"])
    with pytest.raises(ValueError, match=r"unknown RobustBench model 'Nope' for dataset=cifar10, threat_model=Linf; "
                                         r"known: Carmon2019Unlabeled, Wong2020Fast"):
        _load("Nope")
    with pytest.raises(KeyError):  # a known name whose loading fails with a KeyError: not hidden
        _load("Wong2020Fast")


def test_failed_download_names_the_missing_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def load_model(arch: str, **_: Any) -> nn.Module:
        raise OSError("no internet")

    _fake_robustbench(monkeypatch, load_model, ["Carmon2019Unlabeled"])
    expected = tmp_path / "cifar10" / "Linf" / "Carmon2019Unlabeled.pt"
    with pytest.raises(RuntimeError, match="is missing and the download failed") as e:
        _load(model_dir=tmp_path)
    assert str(expected) in str(e.value) and "OSError: no internet" in str(e.value)
    expected.parent.mkdir(parents=True)
    expected.write_bytes(b"damaged")  # the file is there: its own error goes through unchanged
    with pytest.raises(OSError, match="no internet"):
        _load(model_dir=tmp_path)


def test_layer_rule_of_the_robustbench_wideresnet() -> None:
    spec = zoo.robustbench_blocks(_WRN())
    names = [name for name, _ in spec]
    assert names == ["stem", "block1.layer.0", "block1.layer.1", "block2.layer.0", "block3.layer.0",
                     "block3.layer.1", "bn1", "fc"]
    assert spec[0][1] == ["mu", "conv1"]  # root tensors join the first group: they are applied first
    assert dict(spec)["block3.layer.1"] == ["block3.layer.1"] and dict(spec)["fc"] == ["fc"]


def test_layer_rule_of_other_zoo_architectures() -> None:
    from torchvision.models import resnet18

    from rws.models.layers import detect_blocks

    assert zoo.robustbench_blocks(nn.Linear(3, 2)) is None  # nothing to detect: the generic fallback
    net = resnet18(num_classes=10)  # e.g. a zoo ResNet: by shape
    net.register_buffer("std", torch.ones(1, 3, 1, 1))
    spec = zoo.robustbench_blocks(net)
    detected = detect_blocks(net)
    assert [n for n, _ in spec] == [n for n, _ in detected]
    assert spec[0][1] == ["std", *detected[0][1]] and spec[1:] == detected[1:]
