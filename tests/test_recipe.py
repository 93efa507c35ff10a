"""The training-recipe pieces every method shares, all from timm: RandAugment (data.randaugment),
mixup/CutMix with soft targets (method.mixup) and the weight EMA (method.ema)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from rws.data.randaugment import augment_batch, build_randaugment
from rws.methods.mixing import BatchMixer, hard_labels
from rws.methods.nominal import NominalModule

K = 4
OPTIM = {"name": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0, "nesterov": False}
SCHED = {"name": "none", "warmup_epochs": 0}


@pytest.fixture
def linear_registered(monkeypatch):
    from rws.models import registry

    def build(num_classes: int, drop_rate: float = 0.0, **_: object) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, num_classes))

    monkeypatch.setitem(registry._ENTRIES, "test_recipe_linear", registry.ModelEntry("test_recipe_linear", build,
                                                                                     width=False))


MODEL = {"_target_": "rws.models.create_model", "name": "test_recipe_linear", "num_classes": K}


# ----- RandAugment ----------------------------------------------------------------------------------
def test_randaugment_is_timms_policy_image_by_image() -> None:
    """Same Python RNG state: our batched path gives exactly timm's per-image PIL result."""
    from timm.data import rand_augment_transform

    x = (torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    mean = (0.5, 0.4, 0.3)
    policy = build_randaugment("rand-m9-n2-p0.5", 16, mean)
    random.seed(3), np.random.seed(3)  # timm draws ops from numpy, probabilities/magnitudes from random
    ours = augment_batch(policy, x)
    ref_policy = rand_augment_transform("rand-m9-n2-p0.5", {"translate_const": 7, "img_mean": (128, 102, 76)})
    random.seed(3), np.random.seed(3)
    ref = [np.array(ref_policy(Image.fromarray(img))) for img in x.permute(0, 2, 3, 1).numpy()]
    assert ours.dtype == torch.uint8 and ours.shape == x.shape
    assert torch.equal(ours, torch.from_numpy(np.stack(ref)).permute(0, 3, 1, 2))
    assert not torch.equal(ours, x)
    assert [op.name for op in policy.ops][:3] == [op.name for op in ref_policy.ops][:3]
    assert policy.num_layers == 2 and all(op.magnitude == 9 and op.prob == 0.5 for op in policy.ops)


@pytest.mark.parametrize("bad", ["rand-q9", "autoaugment", 3])
def test_bad_randaugment_string_is_a_clear_error(bad) -> None:
    with pytest.raises(ValueError, match="data.randaugment"):
        build_randaugment(bad, 32, (0.5, 0.5, 0.5))
    assert build_randaugment(None, 32, (0.5,) * 3) is None and build_randaugment("", 32, (0.5,) * 3) is None


def test_datamodule_randaugments_train_batches_only() -> None:
    from rws.data import DigitsDataModule

    plain = DigitsDataModule(augment=True, seed=0, batch_size=32)
    ra = DigitsDataModule(augment=True, seed=0, batch_size=32, randaugment="rand-m9-n2-p1.0")
    for dm in (plain, ra):
        dm.setup("fit")
        dm.setup("test")
    idx = list(range(32))
    random.seed(0), np.random.seed(0)
    x_plain, _ = plain.train_dataloader().dataset.__getitems__(idx)
    random.seed(0), np.random.seed(0)
    x_ra, _ = ra.train_dataloader().dataset.__getitems__(idx)
    assert not torch.equal(x_plain, x_ra)
    assert torch.equal(next(iter(plain.test_dataloader()))[0], next(iter(ra.test_dataloader()))[0])


# ----- mixup / CutMix -------------------------------------------------------------------------------
def test_mixer_matches_timm_and_leaves_the_odd_example_unmixed() -> None:
    from timm.data import Mixup

    x = torch.rand(7, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2])
    cfg = {"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "prob": 1.0, "switch_prob": 0.5}
    np.random.seed(5)
    xm, ym = BatchMixer(cfg, K, 0.1)(x, y)
    np.random.seed(5)
    xr, yr = Mixup(**cfg, label_smoothing=0.1, num_classes=K)(x[:6].clone(), y[:6])
    assert torch.equal(xm[:6], xr) and torch.allclose(ym[:6], yr)
    assert torch.equal(xm[6], x[6])
    assert torch.allclose(ym[6], torch.tensor([0.025, 0.025, 0.925, 0.025]))
    assert torch.allclose(ym.sum(1), torch.ones(7)) and not torch.equal(xm[:6], x[:6])
    assert torch.equal(hard_labels(ym[6:]), y[6:]) and torch.equal(hard_labels(y), y)


def test_mixer_config_errors() -> None:
    with pytest.raises(ValueError, match="unknown keys"):
        BatchMixer({"mixup": 0.8}, K, 0.0)
    with pytest.raises(ValueError, match="mixup_alpha > 0 or cutmix_alpha > 0"):
        BatchMixer({"mixup_alpha": 0.0, "cutmix_alpha": 0.0}, K, 0.0)


def test_loss_takes_soft_targets_without_smoothing_them_twice(linear_registered) -> None:
    m = NominalModule(model=MODEL, optim=OPTIM, sched=SCHED, label_smoothing=0.1)
    logits = torch.randn(5, K)
    y = torch.tensor([0, 1, 2, 3, 0])
    soft = torch.full((5, K), 0.1 / K) + 0.9 * F.one_hot(y, K)
    ref = -(soft * logits.log_softmax(1)).sum(1).mean()
    assert torch.allclose(m.loss(logits, soft), ref)
    assert torch.allclose(m.loss(logits, y), ref)  # indices + smoothing 0.1 is the same target


def test_cotrain_with_mixup_attacks_with_hard_labels(monkeypatch) -> None:
    from rws.methods.cotrain import CoTrainModule

    m = CoTrainModule(model={"_target_": "rws.models.create_model", "name": "small_cnn", "num_classes": K,
                             "width": 0.25, "drop_rate": 0.0, "adapter": "dual_bn"},
                      optim=OPTIM, sched=SCHED, threat={"norm": "linf", "eps": 8 / 255}, label_smoothing=0.1,
                      mixup={"mixup_alpha": 0.8, "cutmix_alpha": 1.0})
    seen: list[torch.Tensor] = []
    attack = m.attack
    monkeypatch.setattr(m, "attack", lambda model, x, y: seen.append(y) or attack(model, x, y))
    x, y = torch.rand(8, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    xm, ym = m.mixer(x, y)
    out = m.step(xm, ym)
    assert seen[0].dtype == torch.int64 and torch.equal(seen[0], ym.argmax(1))
    assert torch.isfinite(out.loss) and out.target.shape == (16,)


# ----- EMA ------------------------------------------------------------------------------------------
def test_ema_follows_timms_update_and_is_what_is_evaluated_and_exported(linear_registered, monkeypatch) -> None:
    # timm's first update (step 1, right after the first optimizer step) copies; later ones blend
    monkeypatch.setattr(NominalModule, "global_step", property(lambda self: 5))
    m = NominalModule(model=MODEL, optim=OPTIM, sched=SCHED, ema={"decay": 0.75})
    w0 = m.model.net[1].weight.detach().clone()
    assert torch.equal(m.ema.module.net[1].weight, w0) and m.export_model() is m.ema.module
    with torch.no_grad():
        m.model.net[1].weight.add_(1.0)
    m.on_train_batch_end(None, None, 0)
    assert torch.allclose(m.ema.module.net[1].weight, 0.75 * w0 + 0.25 * (w0 + 1.0))
    assert not any(p.requires_grad for p in m.ema.parameters())
    assert {id(p) for g in m.configure_optimizers().param_groups for p in g["params"]} == \
        {id(p) for p in m.model.parameters()}
    m.reset_ema()
    assert torch.equal(m.ema.module.net[1].weight, m.model.net[1].weight)
    with pytest.raises(ValueError, match="method.ema.decay"):
        NominalModule(model=MODEL, optim=OPTIM, sched=SCHED, ema={"decay": 1.0})
    with pytest.raises(ValueError, match="unknown keys"):
        NominalModule(model=MODEL, optim=OPTIM, sched=SCHED, ema={"momentum": 0.9})
    assert NominalModule(model=MODEL, optim=OPTIM, sched=SCHED).export_model() is not None


def test_ema_of_an_adapter_model_keeps_both_phi_sets() -> None:
    from rws.methods.cotrain import CoTrainModule
    from rws.models.contracts import set_mode

    m = CoTrainModule(model={"_target_": "rws.models.create_model", "name": "vit_cpu_patch4_32", "num_classes": K,
                             "adapter": "cls_token"},
                      optim=OPTIM, sched=SCHED, threat={"norm": "linf", "eps": 8 / 255}, ema={"decay": 0.9})
    keys = set(m.model.state_dict())
    assert set(m.ema.module.state_dict()) == keys and any("robust" in k for k in keys)
    set_mode(m.ema.module, 0.5)  # the average is an adapter model too
    assert m.ema.module(torch.rand(2, 3, 32, 32)).shape == (2, K)


def test_train_with_the_full_recipe_exports_the_average(tmp_path) -> None:
    """Digits, one epoch: RandAugment + mixup/CutMix + EMA through train.py's code path."""
    from rws.config import compose
    from rws.training import train
    from rws.weights.export import load_export

    cfg = compose("train", ["experiment=quickstart", f"paths.output_dir={tmp_path}", "trainer.max_epochs=1",
                            "trainer.enable_progress_bar=false", "data.randaugment=rand-m9-n2-p0.5",
                            "method.mixup={mixup_alpha: 0.8, cutmix_alpha: 1.0}", "method.ema={decay: 0.9}",
                            "data.subset_per_class=20", "logger=[]", f"export_dir={tmp_path}/export"])
    metrics = train(cfg, tmp_path / "run")
    assert np.isfinite(metrics["train/loss_epoch"]) and 0.0 <= metrics["test/acc"] <= 1.0
    ckpt = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True, map_location="cpu")
    ema = {k[len("ema.module."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("ema.module.")}
    live = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    exported = load_export(tmp_path / "export").state_dict
    assert ema and all(torch.equal(exported[k], ema[k]) for k in ema)
    assert any(not torch.equal(ema[k], live[k]) for k in ema if ema[k].is_floating_point())
