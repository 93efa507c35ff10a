"""The Tiny-ImageNet-C table (Hendrycks' make_tinyimagenet_c.py) and how data=tiny_imagenet selects it;
write_corrupted_arrays truncates to uint8 like the published arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rws.corruptions import CORRUPTIONS, corrupt, write_corrupted_arrays
from rws.corruptions import api
from rws.corruptions.params import CIFAR, IMAGENET, TABLES, TINY_IMAGENET, params


def test_tiny_table_holds_the_reference_literals() -> None:
    """Values read from hendrycks/robustness ImageNet-C/create_c/make_tinyimagenet_c.py."""
    assert set(TABLES) == {"cifar", "tiny_imagenet", "imagenet"} and set(TINY_IMAGENET) == set(CORRUPTIONS)
    assert all(len(v) == 5 for v in TINY_IMAGENET.values())
    assert TINY_IMAGENET["gaussian_noise"] == [0.04, 0.08, 0.12, 0.15, 0.18]
    assert TINY_IMAGENET["shot_noise"] == [250, 100, 50, 30, 15]
    assert TINY_IMAGENET["jpeg_compression"] == [65, 58, 50, 40, 25]
    assert TINY_IMAGENET["saturate"][4] == (30, 0.2)
    assert TINY_IMAGENET["glass_blur"][3] == (0.7, 2, 1)
    assert TINY_IMAGENET["motion_blur"][4] == (12, 3)
    assert TINY_IMAGENET["spatter"][4] == (0.65, 0.1, 0.5, 0.67, 0.6, 1)
    assert TINY_IMAGENET["elastic_transform"][4] == (0.16, 0.03, 0.02)  # × IMSIZE = 64 in the script
    assert TINY_IMAGENET["pixelate"] == [0.9, 0.8, 0.7, 0.6, 0.5]
    # 17 of 19 differ from ImageNet-C's table; brightness and contrast are the same.
    same = sorted(n for n in CORRUPTIONS if TINY_IMAGENET[n] == IMAGENET[n])
    assert same == ["brightness", "contrast"]
    assert TINY_IMAGENET["zoom_blur"] == CIFAR["zoom_blur"]  # the script keeps make_cifar_c's zoom factors


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_each_corruption_reads_the_tiny_table(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    seen: list[tuple] = []
    real = api._FUNCS[name]

    def spy(x, c, g, table):
        seen.append((c, table))
        return real(x, c, g, table)

    monkeypatch.setitem(api._FUNCS, name, spy)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for sev in range(1, 6):
        y = corrupt(x, name, sev, table="tiny_imagenet", generator=torch.Generator().manual_seed(sev))
        assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all()
        assert y.min() >= 0 and y.max() <= 1
        assert seen[-1] == (TINY_IMAGENET[name][sev - 1], "tiny_imagenet")
        assert params(name, sev, "tiny_imagenet") == TINY_IMAGENET[name][sev - 1]


def test_tiny_functions_take_the_make_cifar_c_forms() -> None:
    """make_tinyimagenet_c.py is make_cifar_c.py at 64 px: centred zoom crop, BOX up-sampling in
    pixelate, affine + elastic field in fractions of 64, the first five frost textures shrunk to 30 %."""
    from rws.corruptions import digital, weather

    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 64, 64, generator=g)
    # Same zoom factors as CIFAR and the same (centred) form: identical output; ImageNet's form differs.
    assert torch.equal(corrupt(x, "zoom_blur", 3, "tiny_imagenet"), corrupt(x, "zoom_blur", 3, "cifar"))
    # pixelate: BOX both ways (the ImageNet form up-samples with NEAREST, the same values at these scales).
    assert torch.equal(corrupt(x, "pixelate", 4, "tiny_imagenet"),
                       digital.pixelate(x, 0.6, None, "cifar").clamp(0, 1))
    # elastic severity 1 is the affine step alone (alpha = 0, jitter 0.08 · 64 px): changes the image.
    assert not torch.equal(corrupt(x, "elastic_transform", 1, "tiny_imagenet", torch.Generator().manual_seed(0)), x)
    # frost: five textures at 30 % (64 px crops fit without growing them).
    tex = weather._frost_textures("tiny_imagenet", 64, 64)
    raw = weather._frost_raw()
    assert tex[0].shape[1] == round(raw[0].shape[0] * 0.3)
    # brightness and contrast: same values and forms as ImageNet.
    for name in ("brightness", "contrast"):
        assert torch.equal(corrupt(x, name, 5, "tiny_imagenet"), corrupt(x, name, 5, "imagenet"))


def test_data_tiny_imagenet_composes_with_its_table(tmp_path) -> None:
    from hydra.utils import instantiate

    from rws.attacks.threat import default_eps
    from rws.config import compose
    from rws.evaluation.sources import TestStream

    cfg = compose("train", ["data=tiny_imagenet", f"paths.data_dir={tmp_path}", f"paths.cache_dir={tmp_path}/c"])
    assert cfg.data.corruption_table == "tiny_imagenet"
    dm = instantiate(cfg.data)
    assert dm.corruption_table == "tiny_imagenet"
    # ImageNet radii for attacks, as before (Tiny-ImageNet used the ImageNet table until now).
    assert TestStream(dm).dataset_kind == "imagenet"
    adv = compose("train", ["data=tiny_imagenet", "method=adversarial"])
    assert adv.method.dataset_kind == "tiny_imagenet"
    assert default_eps("linf", adv.method.dataset_kind) == default_eps("linf", "imagenet") == 4 / 255
    rob = compose("train", ["data=tiny_imagenet", "method=corruption"])
    assert rob.method.table == "tiny_imagenet"
    from rws.data import TinyImageNetDataModule

    with pytest.raises(ValueError, match="tiny_imagenet"):
        TinyImageNetDataModule(root=tmp_path, num_classes=2, corruption_table="tiny")


def test_perturbation_suite_keeps_the_tiny_sequence_table() -> None:
    from rws.corruptions.sequences import SEQUENCE_TABLES
    from rws.evaluation.suites.perturbations import PerturbationSuite

    assert "tiny_imagenet" in SEQUENCE_TABLES  # one name for both the C table and the P schedules

    class Source:
        corruption_table = "tiny_imagenet"

    assert PerturbationSuite({}).table(Source()) == "tiny_imagenet"


def test_write_corrupted_arrays_truncates(tmp_path) -> None:
    """Hand-made: contrast keeps the channel mean m and scales (v - m) by c, so on one 2x2 image with
    grey levels 0, 1, 2, 3 (m = 1.5) severity k gives (v - 1.5)·c_k + 1.5, which np.uint8 truncates."""
    x = np.repeat(np.array([0, 1, 2, 3], dtype=np.uint8).reshape(1, 2, 2, 1), 3, axis=3)
    out = write_corrupted_arrays(x, [0], tmp_path, "contrast", table="cifar")
    got = np.load(out["contrast"])[..., 0].reshape(5, 4)
    # c = .75 .5 .4 .3 .15 -> exact values .375 1.125 1.875 2.625 | .75 1.25 1.75 2.25 | .9 1.3 1.7 2.1 |
    # 1.05 1.35 1.65 1.95 | 1.275 1.425 1.575 1.725
    want = np.array([[0, 1, 1, 2], [0, 1, 1, 2], [0, 1, 1, 2], [1, 1, 1, 1], [1, 1, 1, 1]], dtype=np.uint8)
    assert np.array_equal(got, want)
    c = np.array(CIFAR["contrast"]).reshape(5, 1)
    assert np.array_equal(np.uint8((np.arange(4) - 1.5) * c + 1.5), want)  # the reference's rule
    assert not np.array_equal(np.round((np.arange(4) - 1.5) * c + 1.5).astype(np.uint8), want)
