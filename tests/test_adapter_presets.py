"""The adapters presets compose, build their models and co-training modules, and the CPU driver's
plan is valid (every Hydra step composes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rws.config import CONF_DIR, compose
from rws.models.contracts import has_modes
from rws.training import build_method

PRESETS = {  # preset -> (data, model name, adapter, expected extra parameters of the adapter > 0)
    "cpu": ("cifar10_jpeg", "vit_cpu_patch4_32", "cls_token"),
    "cpu_cnn": ("digits", "small_cnn", "dual_bn"),
    "vit_b16_imagenet": ("imagenet", "timm/vit_base_patch16_224", "cls_token"),
    "vit_s_cifar10": ("cifar10", "vit_small_patch4_32", "cls_token"),
    "resnet50_gn_ws_imagenet": ("imagenet", "resnet50", "dual_gn"),
}


def test_every_adapters_preset_is_covered() -> None:
    assert {p.stem for p in (CONF_DIR / "experiment/adapters").glob("*.yaml")} == set(PRESETS)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_adapters_preset_composes_and_builds(name: str) -> None:
    data, model, adapter = PRESETS[name]
    cfg = compose("train", [f"experiment=adapters/{name}"])
    assert cfg.data.name == data and cfg.model.name == model and cfg.model.adapter == adapter
    assert cfg.method.name.startswith("cotrain")
    with torch.device("meta"):
        module = build_method(cfg)
    assert has_modes(module.model)
    pairs = module.model.net.domain_parameters()
    assert pairs and all(c.shape == r.shape for c, r in pairs.values())
    if adapter == "cls_token":
        assert sum(c.numel() for c, _ in pairs.values()) == module.model.net.net.embed_dim


def test_paper_presets_use_the_papers_attack() -> None:
    cfg = compose("train", ["experiment=adapters/vit_b16_imagenet"])
    m = cfg.method
    assert (m.attack, m.attack_steps, m.alpha) == ("pgd", 2, 0.5)
    assert m.threat.norm == "linf" and abs(float(eval(str(m.threat.eps))) - 4 / 255) < 1e-12
    assert abs(m.step_size * 4 / 255 - 2.5 / 255) < 1e-12
    assert list(m.optim.betas) == [0.9, 0.95] and m.optim.weight_decay == 0.3 and m.sched.warmup_epochs == 20
    assert m.label_smoothing == 0.1 and cfg.model.drop_path_rate == 0.1 and cfg.model.global_pool == "avg"
    # the rest of the appendix A recipe (timm): mixup 0.8 + CutMix 1.0, EMA 0.9999, RandAugment(2, 9, p 0.5)
    assert (m.mixup.mixup_alpha, m.mixup.cutmix_alpha, m.ema.decay) == (0.8, 1.0, 0.9999)
    assert cfg.data.randaugment == "rand-m9-n2-p0.5"
    small = compose("train", ["experiment=adapters/vit_s_cifar10", "model=vit_cpu_patch4_32",
                                     "model.patch_stride=null"])
    module = build_method(small)
    assert module.mixer is not None and module.ema is not None and module.export_model() is module.ema.module


def test_cpu_driver_plan_composes(tmp_path: Path) -> None:
    from rws.pipelines.adapters_cpu import Settings, plan

    for settings in (Settings.smoke(), Settings.digits(), Settings.cnn()):
        steps = plan(settings, tmp_path)
        names = [s.name for s in steps]
        main, other = (("cotrain_dual_bn", "cotrain_dualparams_bn") if settings.experiment.endswith("cnn")
                       else ("cotrain_cls_token", "cotrain_layernorm"))
        assert {"nominal", "adversarial", "cotrain_shared", main, other, "beta",
                "ensemble", "independent", "plane", "report"} <= set(names)
        assert all(main in st.shell() for st in steps if st.name in ("beta", "ensemble", "plane"))
        report = next(st for st in steps if st.name == "report")
        assert json.loads(report.files[tmp_path / "plan.json"])["main_run"] == main
        for st in steps:
            app = st.hydra_app()
            if app is not None:
                cfg = compose(app[0], [o for o in app[1] if not o.startswith("hydra.")])
                assert cfg.data.name == settings.data
