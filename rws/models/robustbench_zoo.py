"""``robustbench/<model name>``: a published robust model from the RobustBench model zoo.

    create_model("robustbench/Carmon2019Unlabeled", 10, dataset="cifar10", threat_model="Linf")

The weights come through the ``robustbench`` package, an optional dependency (see INSTALL_HINT):
``robustbench.utils.load_model`` reads ``<model_dir>/<dataset>/<threat_model>/<name>.pt`` and
downloads it there first when it is missing (that needs the internet). RobustBench models take
pixels in [0, 1] and normalize inside, so the entry is ``normalizes_inside``: create_model wraps
them with mean 0 / std 1 and the logits are exactly RobustBench's.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from rws.models.layers import detect_blocks
from rws.models.registry import LayerSpec, register_model

DATASET_CLASSES: dict[str, int] = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}
THREAT_MODELS: tuple[str, ...] = ("Linf", "L2", "corruptions", "corruptions_3d")
# Not a pyproject extra: robustbench 1.1.1 (the PyPI release) pins timm==1.0.9 (rws runs on a newer
# timm) and does not import from PyPI packages alone, see docs/models.md "RobustBench".
INSTALL_HINT = ("pip install robustbench; its 1.1.1 release also needs pandas, setuptools<81 (pkg_resources) "
                "and the `autoattack` module of the auto-attack repository (PyPI's pyautoattack installs "
                "as `pyautoattack`)")


def default_model_dir() -> Path:
    """``$RWS_CACHE/robustbench`` (the model configs pass ``${paths.cache_dir}/robustbench``)."""
    from rws.data.cache import default_cache_dir

    return default_cache_dir() / "robustbench"


def weights_file(model_dir: str | Path, name: str, dataset: str, threat_model: str) -> Path:
    """Where robustbench.utils.load_model reads (and downloads) a model's checkpoint."""
    # load_model keeps the corruption models of both suites in one "corruptions" folder.
    return Path(model_dir) / dataset / threat_model.replace("_3d", "") / f"{name}.pt"


def robustbench_blocks(net: nn.Module) -> LayerSpec | None:
    """RobustBench's WideResNet (conv1, block1..3 of ``.layer`` blocks, bn1, fc: most CIFAR Linf
    entries) by residual block, as for our wrn28_10; other zoo architectures by shape (ResNet-like
    or ViT-like), else the generic fallback. Tensors on the root module (the input mean/std many zoo
    models register) join the first group: they are applied first."""
    if hasattr(net, "conv1") and isinstance(getattr(getattr(net, "block1", None), "layer", None), nn.Sequential):
        spec: LayerSpec = [("stem", ["conv1"])]
        i = 1
        while hasattr(net, f"block{i}"):
            blocks = getattr(net, f"block{i}").layer
            spec += [(f"block{i}.layer.{j}", [f"block{i}.layer.{j}"]) for j, _ in enumerate(blocks)]
            i += 1
        # Unused modules some checkpoints carry (sub_block1) are not named: they land just before the head.
        spec += [("bn1", ["bn1"]), ("fc", ["fc"])]
    else:
        detected = detect_blocks(net)
        if detected is None:
            return None
        spec = detected
    own = [n for n, _ in net.named_parameters(recurse=False)] + [n for n, _ in net.named_buffers(recurse=False)]
    return [(spec[0][0], own + spec[0][1]), *spec[1:]]


def _zoo_names(dataset: str, threat_model: str) -> list[str]:
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    return sorted(model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat_model.replace("_3d", ""))])


@register_model("robustbench/", layer_rule=robustbench_blocks, width=False, pretrained=True,
                normalizes_inside=True)
def robustbench_model(arch: str, num_classes: int, pretrained: bool, drop_rate: float, dataset: str | None = None,
                      threat_model: str | None = None, model_dir: str | Path | None = None) -> nn.Module:
    """Load ``arch`` from the zoo of ``dataset`` x ``threat_model``. A RobustBench name *is* its
    published weights, so they always load; ``pretrained`` changes nothing."""
    name = f"robustbench/{arch}"
    if dataset not in DATASET_CLASSES:
        raise ValueError(f"{name}: dataset must be one of {', '.join(DATASET_CLASSES)}, got {dataset!r}")
    if threat_model not in THREAT_MODELS:
        raise ValueError(f"{name}: threat_model must be one of {', '.join(THREAT_MODELS)}, got {threat_model!r}")
    if num_classes != DATASET_CLASSES[dataset]:
        raise ValueError(f"{name}: num_classes={num_classes} but {dataset} models have {DATASET_CLASSES[dataset]}")
    if drop_rate:
        raise ValueError(f"{name}: RobustBench models have no drop_rate option; got {drop_rate}")
    try:
        from robustbench.utils import load_model
    except ImportError as e:  # not installed, or one of its imports missing (it needs pkg_resources)
        raise ImportError(f"{name} needs the robustbench package ({e}); install it with: {INSTALL_HINT}") from e

    model_dir = Path(model_dir).expanduser() if model_dir else default_model_dir()
    try:
        net = load_model(arch, model_dir=str(model_dir), dataset=dataset, threat_model=threat_model)
    except KeyError as e:
        known = _zoo_names(dataset, threat_model)
        if arch not in known:
            raise ValueError(f"unknown RobustBench model {arch!r} for dataset={dataset}, threat_model="
                             f"{threat_model}; known: {', '.join(known)}") from e
        raise
    except Exception as e:
        path = weights_file(model_dir, arch, dataset, threat_model)
        if not path.exists():
            raise RuntimeError(f"{name}: cannot load its weights: {path} is missing and the download failed "
                               f"({type(e).__name__}: {e}); put the checkpoint there or set model_dir") from e
        raise
    # load_model returns eval mode; a fresh create_model model is in train mode like any module,
    # and the caller sets the mode (Export.build and the evaluation engine call eval()).
    return net.train()
