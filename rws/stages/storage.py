"""Storage report: the N_param column of the paper's Table 1, computed from parameter counts.

    python -m rws.stages.storage [out=DIR]

Sizes are decimal MB (1e6 bytes) truncated to one decimal:
    Standard                    4·N
    Standard + 19 RWS_full      4·N + 19·4·N            (= All Models)
    Standard + 19 RWS_shallow   4·N + 19·N_shallow·b/8  for b = 32, 16, 8
    All Models                  20·4·N
N counts parameters only (BN running stats are not in the paper's numbers); the 8-bit scale and
zero point (8 bytes per tensor) are left out like the paper does. Models are built on the meta
device, so nothing is allocated and the report is deterministic.

Shallow rules:
  * VGG-16 (plain, no BN, one Linear(512, C) head): the first five conv layers, weight + bias
    (1792+36928+73856+147584+295168 = 555,328 parameters) -> 101.0 / 79.9 / 69.4 exactly.
  * ResNet-50 (torchvision layout, 200 classes): no single count reproduces the paper's three
    numbers (131.4 / 113.6 / 104.7) at once. The closest rule we found: the conv weights of the
    stem, the three layer1 blocks (incl. layer1.0's downsample conv) and layer2.0's three convs
    (not its downsample): 468,160 parameters -> 131.2 / 113.4 / 104.5 (within 0.3 MB).
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from rws.cli.entry import hydra_entry
from rws.errors import UserError
from rws.models.vgg import VGG16_CFG
from rws.utils.io import write_json, write_text

log = logging.getLogger(__name__)
N_CORRUPTIONS = 19


def plain_vgg16(num_classes: int) -> nn.Module:
    """The paper's VGG-16 for 32px inputs: 13 conv+ReLU, 5 pools, one Linear(512, C)."""
    layers: list[nn.Module] = []
    c_in = 3
    for v in VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c_in, int(v), 3, padding=1), nn.ReLU(inplace=True)]
            c_in = int(v)
    return nn.Sequential(nn.Sequential(*layers), nn.Flatten(), nn.Linear(512, num_classes))


def tv_resnet50(num_classes: int) -> nn.Module:
    from torchvision.models import resnet50

    return resnet50(num_classes=num_classes)


def vgg_shallow(model: nn.Module, k: int = 5) -> list[str]:
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)][:k]
    return [f"{n}.{p}" for n in convs for p in ("weight", "bias")]


_RESNET50_SHALLOW = re.compile(r"^(conv1|layer1\.\d+\.(conv\d|downsample\.0)|layer2\.0\.conv\d)\.weight$")


def resnet50_shallow(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters() if _RESNET50_SHALLOW.match(n)]


# name -> (builder, num_classes, shallow rule, paper's numbers)
PRESETS: dict[str, tuple[Callable[[int], nn.Module], int, Callable[[nn.Module], list[str]], dict[str, float]]] = {
    "vgg16_cifar10": (plain_vgg16, 10, vgg_shallow,
                      {"standard": 58.8, "shallow_32": 101.0, "shallow_16": 79.9, "shallow_8": 69.4,
                       "full": 1177.6, "all_models": 1177.6}),
    "vgg16_tinyimagenet": (plain_vgg16, 200, vgg_shallow,
                           {"standard": 59.2, "shallow_32": 101.4, "shallow_16": 80.3, "shallow_8": 69.7,
                            "full": 1184.0, "all_models": 1184.0}),
    "resnet50_tinyimagenet": (tv_resnet50, 200, resnet50_shallow,
                              {"standard": 95.7, "shallow_32": 131.4, "shallow_16": 113.6, "shallow_8": 104.7,
                               "full": 1913.6, "all_models": 1913.6}),
}


def mb(n_bytes: int) -> float:
    """Decimal MB truncated (not rounded) to one decimal, as in Table 1."""
    return math.floor(n_bytes / 1e5) / 10


def storage_rows(n_total: int, n_shallow: int, n_sig: int = N_CORRUPTIONS) -> dict[str, dict[str, Any]]:
    std = 4 * n_total
    rows = {"standard": std, "full": std + n_sig * 4 * n_total,
            **{f"shallow_{b}": std + n_sig * n_shallow * b // 8 for b in (32, 16, 8)},
            "all_models": (n_sig + 1) * std}
    return {k: {"bytes": v, "mb": mb(v), "x_standard": round(v / std, 2)} for k, v in rows.items()}


def count(model: nn.Module, keys: list[str]) -> tuple[int, int]:
    params = dict(model.named_parameters())
    return sum(p.numel() for p in params.values()), sum(params[k].numel() for k in keys)


def report_preset(name: str) -> dict[str, Any]:
    builder, num_classes, rule, paper = PRESETS[name]
    with torch.device("meta"):
        model = builder(num_classes)
    keys = rule(model)
    n_total, n_shallow = count(model, keys)
    return {"name": name, "n_params": n_total, "n_shallow": n_shallow, "shallow_keys": keys,
            "rows": storage_rows(n_total, n_shallow), "paper": paper}


def report_rws_model(name: str, num_classes: int, k: int = 5, **kw: Any) -> dict[str, Any]:
    """Same report for an rws.models model, shallow = its first k layer groups' parameters."""
    from rws.models import create_model
    from rws.weights.layer_select import model_groups, select_layers

    with torch.device("meta"):
        model = create_model(name, num_classes, **kw)
    params = dict(model.named_parameters())
    _, keys = select_layers(model_groups(model), list(model.state_dict()), k=k)
    keys = [key for key in keys if key in params]
    n_total, n_shallow = count(model, keys)
    return {"name": f"rws:{name}/{num_classes}/k={k}", "n_params": n_total, "n_shallow": n_shallow,
            "shallow_keys": keys, "rows": storage_rows(n_total, n_shallow), "paper": {}}


LABELS = {"standard": "Standard", "full": "Standard + 19 RWS_full", "shallow_32": "Standard + 19 RWS_shallow",
          "shallow_16": "Standard + 19 RWS_shallow,16bit", "shallow_8": "Standard + 19 RWS_shallow,8bit",
          "all_models": "All Models (std + 19 full models)"}


def markdown(reports: list[dict[str, Any]]) -> str:
    lines = []
    for r in reports:
        lines += [f"### {r['name']}  (N = {r['n_params']:,} params, N_shallow = {r['n_shallow']:,})", "",
                  "| Option | MB (ours) | × Standard | MB (paper) |", "|---|---:|---:|---:|"]
        for key, label in LABELS.items():
            row = r["rows"][key]
            paper = r["paper"].get(key)
            lines.append(f"| {label} | {row['mb']:.1f} | {row['x_standard']:.2f}× | "
                         f"{'' if paper is None else f'{paper:.1f}'} |")
        lines.append("")
    return "\n".join(lines)


def check_inputs(presets: list[str] | None, models: list[Mapping[str, Any]] | None) -> None:
    """Known preset names; each extra model a mapping with a name, an integer num_classes and k."""
    for p in presets or []:
        if p not in PRESETS:
            raise UserError(f"unknown preset {p!r}", "option presets", f"names from {', '.join(PRESETS)}")
    for i, m in enumerate(models or []):
        if not isinstance(m, Mapping) or "name" not in m or "num_classes" not in m:
            raise UserError(f"models[{i}] is {m!r}", f"option models[{i}]",
                            "a mapping {name: <model>, num_classes: <int>, k: <int>}")
        for key in ("num_classes", "k"):
            v = m.get(key, 5)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"{key}={v!r} is not a positive integer", f"option models[{i}].{key}",
                                "an integer >= 1")


def storage_report(out: str | Path | None = None, presets: list[str] | None = None,
                   models: list[Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    check_inputs(presets, models)
    reports = [report_preset(p) for p in (presets if presets is not None else list(PRESETS))]
    reports += [report_rws_model(**dict(m)) for m in (models or [])]
    if out is not None:
        out = Path(out)
        write_json(out / "storage.json", reports)
        write_text(out / "storage.md", markdown(reports))
    return reports


@hydra_entry("storage")
def main(cfg: DictConfig) -> None:
    reports = storage_report(cfg.out, presets=list(cfg.presets),
                             models=OmegaConf.to_container(cfg.models, resolve=True) or [])
    print(markdown(reports))
    log.info("storage report written to %s", cfg.out)


if __name__ == "__main__":
    main()
