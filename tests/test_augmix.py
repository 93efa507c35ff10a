"""AugMix + DeepAugment teachers: the JSD loss, each AugMix op against PIL, the batched AugMix, Noise2Net,
the image-to-image hook, the training step and one train.py epoch per method (docs/teachers.md)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from rws.augment import augmix as A
from rws.augment import AUGMIX_OPS, EXCLUDED_OPS, ImageToImagePerturbation, Noise2Net, augmix_batch, augmix_views
from rws.config import compose
from rws.training import build_method

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------
# The loss
# ------------------------------------------------------------------------------------------------

def _hand_jsd(logits: torch.Tensor, y: torch.Tensor, weight: float, smoothing: float) -> torch.Tensor:
    """Hendrycks' formula written out: CE on the clean third + weight * mean_i KL(p_i || M),
    M = mean of the three softmaxes, clamped to [1e-7, 1] before the log (as the reference and timm)."""
    n = len(logits) // 3
    logp = [torch.log_softmax(part.double(), 1) for part in logits.split(n)]
    nll = -logp[0].gather(1, y[:, None]).squeeze(1)
    ce = ((1 - smoothing) * nll + smoothing * (-logp[0].mean(1))).mean()
    p = [lp.exp() for lp in logp]
    log_m = ((p[0] + p[1] + p[2]) / 3).clamp(1e-7, 1).log()
    kl = [(pi * (pi.log() - log_m)).sum() / n for pi in p]
    return ce + weight * sum(kl) / 3


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_jsd_loss_equals_the_hand_formula(smoothing: float) -> None:
    from timm.loss import JsdCrossEntropy

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3 * 6, 10, generator=g) * 3
    logits[12:] += 20 * F.one_hot(torch.arange(6) % 10, 10)  # a confident split: M needs its clamp
    y = torch.randint(10, (6,), generator=g)
    ours = JsdCrossEntropy(num_splits=3, alpha=12, smoothing=smoothing)(logits, y)
    assert torch.allclose(ours.double(), _hand_jsd(logits, y, 12.0, smoothing), atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------------
# Each op against PIL (the reference's ops: google-research/augmix augmentations.py)
# ------------------------------------------------------------------------------------------------

def _images() -> np.ndarray:
    """Fixed uint8 (N, 32, 32, 3) test images: smooth colour, low-contrast, noise, a flat channel,
    and one whose equalize table reaches 256 for its highest occupied bin (PIL clips it to 255)."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(4):
        small = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)
        im = np.array(Image.fromarray(small).resize((32, 32), Image.BILINEAR))
        out.append(im // 4 + 60 if i % 2 else im)
    out.append(rng.integers(0, 256, (32, 32, 3)).astype(np.uint8))
    flat = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
    flat[..., 1] = 77
    out.append(flat)
    edge = rng.integers(0, 200, 1024).astype(np.uint8)
    edge[:513] = 200  # #pixels - #pixels in the top bin = 511 = 255 * 2 + 1 -> lut[200] = 256
    out.append(np.repeat(rng.permutation(edge).reshape(32, 32, 1), 3, axis=2))
    return np.stack(out).astype(np.uint8)


IMAGES = _images()


def _pil(fn) -> np.ndarray:
    return np.stack([np.array(fn(Image.fromarray(im))) for im in IMAGES])


def _ours(name: str, arg: float) -> np.ndarray:
    t = torch.from_numpy(IMAGES).permute(0, 3, 1, 2).contiguous()
    out = A.apply_op(t, name, torch.full((len(t),), float(arg), dtype=torch.float64))
    return out.permute(0, 2, 3, 1).numpy()


def _geometric_reference(name: str, arg: float):
    if name == "rotate":
        return lambda im: im.rotate(arg, resample=Image.BILINEAR)
    data = {"shear_x": (1, arg, 0, 0, 1, 0), "shear_y": (1, 0, 0, arg, 1, 0),
            "translate_x": (1, 0, arg, 0, 1, 0), "translate_y": (1, 0, 0, 0, 1, arg)}[name]
    return lambda im: im.transform((32, 32), Image.AFFINE, data, resample=Image.BILINEAR)


def test_equalize_edge_case_is_in_the_test_images() -> None:
    h = np.bincount(IMAGES[-1, ..., 0].ravel(), minlength=256)
    step = (h.sum() - h[np.nonzero(h)[0][-1]]) // 255
    assert (step // 2 + h[:200].sum()) // step == 256


@pytest.mark.parametrize("name,arg,reference", [
    ("autocontrast", 0, ImageOps.autocontrast),
    ("equalize", 0, ImageOps.equalize),
    *[("posterize", b, (lambda b: lambda im: ImageOps.posterize(im, b))(b)) for b in range(1, 9)],
    *[("solarize", t, (lambda t: lambda im: ImageOps.solarize(im, t))(t))
      for t in (0, 1, 128, 180, 230, 254, 255, 256)],
])
def test_pointwise_op_matches_pil_exactly(name: str, arg: int, reference) -> None:
    assert np.array_equal(_ours(name, arg), _pil(reference))


@pytest.mark.parametrize("name,args", [
    ("rotate", (-30, -8, -5, -1, 0, 1, 3, 8, 17)),
    ("shear_x", (-0.3, -0.09, -0.0471, 0.003, 0.05, 0.0891)),
    ("shear_y", (-0.3, -0.09, -0.0471, 0.003, 0.05, 0.0891)),
    ("translate_x", (-10, -3, -1, 0, 2, 3)),
    ("translate_y", (-10, -3, -1, 0, 2, 3)),
])
def test_geometric_op_matches_pil_bilinear(name: str, args: tuple) -> None:
    """Tolerance: at most 1 grey level anywhere and a mean below 0.01 grey levels (measured: <= 0.0042,
    i.e. < 0.5 % of the values off by one). The differences are values within ~2e-4 below an integer
    (our float32 interpolation) or exact integers that PIL's float64 arithmetic lands just below and
    truncates (192.99999999999997 -> 192). Integer translations and rotate 0 are exact."""
    for arg in args:
        diff = np.abs(_ours(name, arg).astype(int) - _pil(_geometric_reference(name, arg)).astype(int))
        assert diff.max() <= 1 and diff.mean() < 0.01, (name, arg, diff.max(), diff.mean())
        if name.startswith("translate") or arg == 0:
            assert diff.max() == 0, (name, arg)


def test_geometric_ops_on_non_square_images() -> None:
    """Width 40, height 24 (not powers of two): the centre of rotation, the size of the output and the
    translate size (IMAGE_SIZE / 3 of the reference -> width for x, height for y) keep their axes."""
    rng = np.random.default_rng(1)
    ims = np.stack([np.array(Image.fromarray(rng.integers(0, 256, (6, 10, 3)).astype(np.uint8)).resize((40, 24)))
                    for _ in range(3)])
    t = torch.from_numpy(ims).permute(0, 3, 1, 2).contiguous()
    for name, arg, fn in [("rotate", 6, lambda im: im.rotate(6, resample=Image.BILINEAR)),
                          ("shear_x", 0.07, lambda im: im.transform((40, 24), Image.AFFINE, (1, 0.07, 0, 0, 1, 0),
                                                                     resample=Image.BILINEAR)),
                          ("translate_y", -5, lambda im: im.transform((40, 24), Image.AFFINE, (1, 0, 0, 0, 1, -5),
                                                                       resample=Image.BILINEAR))]:
        ours = A.apply_op(t, name, torch.full((3,), float(arg), dtype=torch.float64)).permute(0, 2, 3, 1).numpy()
        diff = np.abs(ours.astype(int) - np.stack([np.array(fn(Image.fromarray(im))) for im in ims]).astype(int))
        assert diff.max() <= (0 if name == "translate_y" else 1) and diff.mean() < 0.01, (name, diff.mean())


def test_a_chain_of_ops_matches_pil() -> None:
    """Pointwise ops and integer translations are exact, so a chain of them is PIL's chain bit for bit
    (the 8-bit rounding between ops is PIL's)."""
    chain = [("translate_x", 2, _geometric_reference("translate_x", 2)),
             ("posterize", 3, lambda im: ImageOps.posterize(im, 3)),
             ("translate_y", -2, _geometric_reference("translate_y", -2)),
             ("autocontrast", 0, ImageOps.autocontrast),
             ("solarize", 200, lambda im: ImageOps.solarize(im, 200)),
             ("equalize", 0, ImageOps.equalize)]
    t = torch.from_numpy(IMAGES).permute(0, 3, 1, 2).contiguous()
    ref = [Image.fromarray(im) for im in IMAGES]
    for name, arg, fn in chain:
        t = A.apply_op(t, name, torch.full((len(t),), float(arg), dtype=torch.float64))
        ref = [fn(im) for im in ref]
    assert np.array_equal(t.permute(0, 2, 3, 1).numpy(), np.stack([np.array(im) for im in ref]))


def test_op_arguments_follow_the_reference_levels() -> None:
    """level -> argument exactly as augmentations.py: int_parameter(level, maxval) = int(level * maxval / 10),
    float_parameter = level * maxval / 10; posterize 4 - int_p(4), solarize 256 - int_p(256),
    rotate int_p(30), shear float_p(0.3), translate int_p(IMAGE_SIZE / 3)."""
    levels = torch.linspace(0.1, 3.0, 301, dtype=torch.float64)[:-1]
    sign = torch.where(torch.arange(len(levels)) % 2 == 0, 1.0, -1.0).double()
    ref = {
        "posterize": [4 - int(v * 4 / 10) for v in levels.tolist()],
        "solarize": [256 - int(v * 256 / 10) for v in levels.tolist()],
        "rotate": [s * int(v * 30 / 10) for v, s in zip(levels.tolist(), sign.tolist())],
        "shear_x": [s * (float(v) * 0.3 / 10.) for v, s in zip(levels.tolist(), sign.tolist())],
        "translate_x": [s * int(v * (32 / 3) / 10) for v, s in zip(levels.tolist(), sign.tolist())],
        "translate_y": [s * int(v * (24 / 3) / 10) for v, s in zip(levels.tolist(), sign.tolist())],
    }
    for name, expected in ref.items():
        assert A.op_arguments(name, levels, sign, 32, 24).tolist() == expected, name
    # at severity 3: posterize keeps 3-4 bits, solarize from 180, rotate up to 8 degrees, translate 3 px
    assert set(ref["posterize"]) == {3, 4} and min(ref["solarize"]) == 180
    assert max(abs(v) for v in ref["rotate"]) == 8 and max(abs(v) for v in ref["translate_x"]) == 3


# ------------------------------------------------------------------------------------------------
# Batched AugMix
# ------------------------------------------------------------------------------------------------

def test_op_list_excludes_the_test_corruption_ops() -> None:
    assert AUGMIX_OPS == ("autocontrast", "equalize", "posterize", "rotate", "solarize",
                          "shear_x", "shear_y", "translate_x", "translate_y")
    assert not set(EXCLUDED_OPS) & set(AUGMIX_OPS)
    assert set(A.GEOMETRIC_OPS) | set(A._POINT_OPS) == set(AUGMIX_OPS)  # nothing else can be applied
    for name in EXCLUDED_OPS:
        with pytest.raises(ValueError, match="overlaps the test corruptions"):
            A.resolve_ops([name])
    with pytest.raises(ValueError, match="valid ops"):
        A.resolve_ops(["cutout"])
    assert A.resolve_ops("all") == AUGMIX_OPS


def test_augmix_shape_range_and_seeds() -> None:
    x = torch.rand(16, 3, 32, 32)
    a = augmix_batch(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and a.dtype == x.dtype and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, augmix_batch(x, torch.Generator().manual_seed(0)))
    b = augmix_batch(x, torch.Generator().manual_seed(1))
    assert not torch.equal(a, b)
    assert not torch.allclose(a, x)
    v1, v2 = augmix_views(x, torch.Generator().manual_seed(0))
    assert v1.shape == v2.shape == x.shape and not torch.equal(v1, v2)
    # each image has its own draws: the same image twice in a batch comes out differently
    twice = augmix_batch(x[:1].repeat(2, 1, 1, 1), torch.Generator().manual_seed(0))
    assert not torch.equal(twice[0], twice[1])
    # a fixed depth and a single op
    one = augmix_batch(x, torch.Generator().manual_seed(0), depth=1, ops=["solarize"])
    assert one.shape == x.shape


def test_augmix_with_one_chain_and_one_identity_op_is_the_input() -> None:
    """Chains of autocontrast on images already spanning [0, 255] in every channel are the 8-bit
    input, so the mix is (1 - m) x + m x8 = x up to 8-bit rounding: the mixing weights sum to 1."""
    x = torch.rand(8, 3, 16, 16)
    x[:, :, 0, 0], x[:, :, 0, 1] = 0.0, 1.0
    x = A.to_uint8(x).float() / 255
    out = augmix_batch(x, torch.Generator().manual_seed(3), width=3, ops=["autocontrast"])
    assert torch.allclose(out, x, atol=1e-6)


def test_mixing_weights() -> None:
    g = torch.Generator().manual_seed(0)
    ws = A.sample_dirichlet(1.0, 20000, 3, g)
    assert torch.allclose(ws.sum(1), torch.ones(20000, dtype=torch.float64), atol=1e-12) and (ws >= 0).all()
    assert torch.allclose(ws.mean(0), torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.01)
    for alpha in (1.0, 0.5, 2.0):  # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)); a < 1 takes the boosted path
        m = A.sample_beta(alpha, 20000, g)
        assert ((m > 0) & (m < 1)).all()
        assert abs(m.mean().item() - 0.5) < 0.01
        assert abs(m.var().item() - 1 / (4 * (2 * alpha + 1))) < 0.01
        w = A.sample_dirichlet(alpha, 100, 4, g)
        assert torch.allclose(w.sum(1), torch.ones(100, dtype=torch.float64), atol=1e-12)


def test_augmix_chains_draw_op_arguments_per_image() -> None:
    """depth 1, translate_x only: every chain is the 8-bit input shifted by its own 0..3 px (severity 3)."""
    x = A.to_uint8(torch.rand(32, 3, 32, 32))
    out = A.augment_chains(x, torch.Generator().manual_seed(0), depth=1, severity=3, ops=["translate_x"])
    shifts = {t: A.apply_op(x, "translate_x", torch.full((32,), float(t), dtype=torch.float64)) for t in range(-3, 4)}
    used = [next(t for t, s in shifts.items() if torch.equal(out[i], s[i])) for i in range(32)]
    assert len(set(used)) >= 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_augmix_on_cuda_matches_cpu() -> None:
    x = torch.rand(8, 3, 32, 32)
    cpu = augmix_batch(x, torch.Generator().manual_seed(0))
    gpu = augmix_batch(x.cuda(), torch.Generator().manual_seed(0))
    assert (gpu.cpu() - cpu).abs().max() < 2 / 255


# ------------------------------------------------------------------------------------------------
# Noise2Net and the image-to-image hook
# ------------------------------------------------------------------------------------------------

def test_noise2net_changes_only_the_chosen_fraction() -> None:
    x = torch.rand(10, 3, 32, 32)
    net = Noise2Net(fraction=0.5)
    out, idx = net(x, torch.Generator().manual_seed(0))
    assert len(idx) == 5 and out.shape == x.shape and 0 <= out.min() and out.max() <= 1
    keep = torch.ones(10, dtype=torch.bool)
    keep[idx] = False
    assert torch.equal(out[keep], x[keep])
    assert all(not torch.allclose(out[i], x[i], atol=1e-3) for i in idx)
    assert 0.375 <= net.last_eps <= 0.75
    for fraction, k in ((0.0, 0), (0.25, 2), (1.0, 10)):
        _, idx = Noise2Net(fraction=fraction)(x, torch.Generator().manual_seed(0))
        assert len(idx) == k


def test_noise2net_fresh_weights_per_batch_and_seeded() -> None:
    x = torch.rand(4, 3, 24, 24)
    net = Noise2Net()
    g = torch.Generator().manual_seed(0)
    a, b = net.perturb(x, g), net.perturb(x, g)
    assert not torch.allclose(a, b, atol=1e-3)  # same input, new weights (and eps)
    arch = net.architecture
    assert len(arch) == 4 and all(len(block) == 3 for block in arch)
    assert all(k in (1, 3) and d in (1, 2, 3) for block in arch for k, d in block)
    net.perturb(x, g)
    assert net.architecture == arch  # kept, as the reference draws it once
    same = Noise2Net()
    g2 = torch.Generator().manual_seed(0)
    assert torch.equal(same.perturb(x, g2), a) and torch.equal(same.perturb(x, g2), b)
    other = Noise2Net().perturb(x, torch.Generator().manual_seed(1))
    assert not torch.allclose(other, a, atol=1e-3)
    # each image has its own weights: two copies of one image come out differently
    twin = Noise2Net().perturb(x[:1].repeat(2, 1, 1, 1), torch.Generator().manual_seed(0))
    assert not torch.allclose(twin[0], twin[1], atol=1e-3)


def test_noise2net_block_matches_a_per_image_res2net() -> None:
    """The grouped (whole-batch) block equals the same Res2Net bottleneck run image by image."""
    from torch import nn

    net = Noise2Net(hidden_planes=4, scale=3)
    convs = [(3, 2), (1, 3)]
    z = torch.randn(1, 2 * 3, 12, 12)
    g = torch.Generator().manual_seed(5)
    state = g.get_state()
    grouped = net._block(z, 2, convs, g)
    g.set_state(state)
    w1 = [(torch.rand((2 * 4 * 3, 3, 1, 1), generator=g) * 2 - 1) / math.sqrt(3)]
    ws = []
    for ks, _ in convs:
        bound = 1 / math.sqrt(4 * ks * ks)
        ws.append(((torch.rand((2 * 4, 4, ks, ks), generator=g) * 2 - 1) * bound,
                   (torch.rand((2 * 4,), generator=g) * 2 - 1) * bound))
    w3 = (torch.rand((2 * 3, 3 * 4, 1, 1), generator=g) * 2 - 1) / math.sqrt(12)
    norm = nn.BatchNorm2d  # train mode, batch of one image: the reference's norm
    for b in range(2):
        x = z[:, 3 * b:3 * b + 3]
        out = F.relu(norm(12)(F.conv2d(x, w1[0][12 * b:12 * b + 12])))
        spx = out.split(4, 1)
        sp, pieces = None, []
        for i, (ks, dil) in enumerate(convs):
            sp = spx[i] if sp is None else sp + spx[i]
            w, bias = ws[i]
            sp = F.relu(norm(4)(F.conv2d(sp, w[4 * b:4 * b + 4], bias[4 * b:4 * b + 4], padding=(ks - 1) // 2 * dil,
                                         dilation=dil)))
            pieces.append(sp)
        ref = norm(3)(F.conv2d(torch.cat(pieces + [spx[2]], 1), w3[3 * b:3 * b + 3]))
        assert torch.allclose(grouped[:, 3 * b:3 * b + 3], ref, atol=1e-5)


class _Negate(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def resample(self, generator: torch.Generator) -> None:
        self.calls += 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(1 - x, scale_factor=2)  # x2 "super-resolution"


def test_image_to_image_hook() -> None:
    x = torch.rand(8, 3, 16, 16)
    net = _Negate()
    hook = ImageToImagePerturbation(net, fraction=0.5)
    out, idx = hook(x, torch.Generator().manual_seed(0))
    assert net.calls == 1 and len(idx) == 4
    keep = torch.ones(8, dtype=torch.bool)
    keep[idx] = False
    assert torch.equal(out[keep], x[keep])
    assert torch.allclose(out[idx], 1 - x[idx], atol=1e-5)  # resized back to 16x16
    ident, _ = ImageToImagePerturbation({"_target_": "torch.nn.Identity"}, fraction=1.0)(x, torch.Generator())
    assert torch.equal(ident, x)
    with pytest.raises(ValueError, match="_target_"):
        ImageToImagePerturbation({"name": "edsr"})


# ------------------------------------------------------------------------------------------------
# The method
# ------------------------------------------------------------------------------------------------

def _plain(v) -> bool:
    if isinstance(v, dict):
        return all(_plain(x) for x in v.values())
    if isinstance(v, (list, tuple)):
        return all(_plain(x) for x in v)
    return v is None or isinstance(v, (int, float, str, bool))


@pytest.mark.parametrize("method", ["augmix", "augmix_da"])
def test_step_is_the_jsd_loss_on_clean_and_two_views(method: str) -> None:
    from timm.loss import JsdCrossEntropy

    cfg = compose("train", [f"method={method}", "model.width=0.25", "method.label_smoothing=0.1"])
    m = build_method(cfg)
    assert _plain(dict(m.hparams))
    assert m.hparams["width"] == 3 and m.hparams["severity"] == 3 and m.hparams["jsd_weight"] == 12.0
    assert (m.hparams["noise2net"] is not None) == (method == "augmix_da")
    x, y = torch.rand(6, 3, 32, 32), torch.randint(10, (6,))
    state = m._gen.get_state()
    out = m.step(x, y)
    # the same draws by hand
    g = torch.Generator()
    g.set_state(state)
    xin = x
    if method == "augmix_da":
        n2n = Noise2Net(fraction=0.5, mean=m.model.mean.flatten(), std=m.model.std.flatten())
        xin, idx = n2n(x, g)
        assert len(idx) == 3
    a1, a2 = augmix_views(xin, g)
    logits = m.model(torch.cat([xin, a1, a2]))
    expected = JsdCrossEntropy(num_splits=3, alpha=12.0, smoothing=0.1)(logits, y)
    assert torch.allclose(out.loss, expected, atol=1e-6)
    assert torch.allclose(out.logits, logits[:6]) and torch.equal(out.target, y)
    clean = F.cross_entropy(logits[:6], y, label_smoothing=0.1)
    assert torch.allclose(out.logs["train/clean_loss"][0], clean, atol=1e-5)
    assert torch.allclose(out.logs["train/jsd"][0], expected - clean, atol=1e-5)
    assert torch.equal(m._gen.get_state(), g.get_state())


def test_step_without_jsd_is_ce_on_one_view() -> None:
    cfg = compose("train", ["method=augmix", "method.jsd=false", "model.width=0.25"])
    m = build_method(cfg)
    x, y = torch.rand(4, 3, 32, 32), torch.randint(10, (4,))
    state = m._gen.get_state()
    out = m.step(x, y)
    g = torch.Generator()
    g.set_state(state)
    logits = m.model(augmix_batch(x, g))
    assert torch.allclose(out.loss, F.cross_entropy(logits, y), atol=1e-6) and not out.logs


def test_bad_settings_fail_fast() -> None:
    from hydra.errors import InstantiationException  # build_method's instantiate wraps the ValueError

    with pytest.raises((ValueError, InstantiationException), match="overlaps"):
        build_method(compose("train", ["method=augmix", "method.ops=[contrast]"]))
    with pytest.raises((ValueError, InstantiationException), match="mixup"):
        build_method(compose("train", ["method=augmix", "method.mixup={mixup_alpha: 0.8}"]))
    with pytest.raises((ValueError, InstantiationException), match="noise2net"):
        build_method(compose("train", ["method=augmix_da", "+method.noise2net.bogus=1"]))
    hook = "method.image_to_image={network: {_target_: torch.nn.Identity}, fraction: 0.5}"
    m = build_method(compose("train", ["method=augmix", hook]))
    assert len(m.perturbations) == 1 and not any("network" in k for k in m.state_dict())


@pytest.mark.parametrize("method", ["augmix", "augmix_da"])
def test_train_py_one_epoch_exports(tmp_path: Path, method: str) -> None:
    from rws.weights.export import load_export

    run = tmp_path / "run"
    cmd = [sys.executable, "train.py", "trainer=cpu", "trainer.max_epochs=1", "data.subset_per_class=10",
           "trainer.enable_progress_bar=false", f"method={method}", f"paths.output_dir={tmp_path}",
           f"hydra.run.dir={run}"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    exp = load_export(run / "export")
    assert exp.metrics["config"]["method"]["name"] == method
    assert exp.build()(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    metrics = json.loads((run / "metrics.json").read_text())
    assert np.isfinite(metrics["train/jsd"]) and metrics["train/jsd"] >= 0 and 0 <= metrics["test/acc"] <= 1
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["jsd"] is True
