"""In-place patching: linearity, bit-exact removal, BN policies, mismatch errors, recalibration."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from rws.weights.patching import Patcher, SignatureMismatchError, recalibrate_patched_bn
from rws.weights.signature_io import Signature, load_signature, save_signature


def tiny_net(num_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3),
                         nn.BatchNorm2d(5), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(5, num_classes))


def perturbed(state: dict[str, torch.Tensor], seed: int, scale: float = 0.1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: ((v + torch.randn(v.shape, generator=g) * scale).abs() if k.endswith("running_var")
                else v + torch.randn(v.shape, generator=g) * scale) if v.is_floating_point() else v.clone()
            for k, v in state.items()}

KEPT = ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"]


def make_sig(seed: int, bn_policy: str = "robust", keys: list[str] = KEPT, num_classes: int = 3) -> Signature:
    base = tiny_net(num_classes).state_dict()
    noise = perturbed(base, seed)
    rws = {k: noise[k] - base[k] for k in keys if not k.endswith(("running_mean", "running_var"))}
    stats = {k: noise[k] for k in keys if k.endswith(("running_mean", "running_var"))} if bn_policy == "robust" else {}
    return Signature(rws=rws, stats=stats, layers=["0", "1"], bn_policy=bn_policy, corruption=f"c{seed}")


def std_model() -> nn.Module:
    model = tiny_net()
    with torch.no_grad():  # non-trivial BN state so "restored" means something
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
        model[1].num_batches_tracked.fill_(7)
    return model.eval()


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_bit_exact(model: nn.Module, ref: dict[str, torch.Tensor]) -> None:
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref[k]), k


def test_unpatch_bit_exact_multi() -> None:
    model = std_model()
    ref = snapshot(model)
    s1, s2 = make_sig(1), make_sig(2)
    with Patcher(model, [(s1, 0.7), (s2, 0.3)]):
        assert not torch.equal(model[0].weight, ref["0.weight"])
        assert not torch.equal(model[1].running_mean, ref["1.running_mean"])
        assert torch.equal(model[8].weight, ref["8.weight"])  # head untouched
    assert_bit_exact(model, ref)
    p = Patcher(model, [s1])
    for _ in range(3):  # repeated cycles never drift
        p.apply()
        p.remove()
    assert_bit_exact(model, ref)


def test_alpha_is_linear_not_squared() -> None:
    model = std_model()
    ref = snapshot(model)
    sig = make_sig(1)
    for alpha in (0.5, 1.0, 2.0):
        with Patcher(model, [(sig, alpha)]):
            got = model[0].weight - ref["0.weight"]
            assert torch.allclose(got, alpha * sig.rws["0.weight"], atol=1e-6)
            mixed = (1 - alpha) * ref["1.running_mean"] + alpha * sig.stats["1.running_mean"]
            assert torch.allclose(model[1].running_mean, mixed, atol=1e-6)


def test_composition_is_linear() -> None:
    a1, a2 = 0.6, -0.4
    s1, s2 = make_sig(1), make_sig(2)
    combined = Signature(rws={k: a1 * s1.rws[k] + a2 * s2.rws[k] for k in s1.rws}, bn_policy="std")
    m_both, m_comb = std_model(), std_model()
    ref = snapshot(m_both)
    with Patcher(m_both, [(s1, a1), (s2, a2)]), Patcher(m_comb, [(combined, 1.0)]):
        for k in s1.rws:
            assert torch.allclose(m_both.state_dict()[k], m_comb.state_dict()[k], atol=1e-6), k
        expect = (1 - a1 - a2) * ref["1.running_mean"] + a1 * s1.stats["1.running_mean"] + a2 * s2.stats["1.running_mean"]
        assert torch.allclose(m_both[1].running_mean, expect, atol=1e-6)
        assert torch.equal(m_both[1].num_batches_tracked, ref["1.num_batches_tracked"])


def test_bn_policy_std_keeps_stats() -> None:
    model = std_model()
    ref = snapshot(model)
    with Patcher(model, [make_sig(1)], bn_policy="std"):
        assert torch.equal(model[1].running_var, ref["1.running_var"])
        assert not torch.equal(model[1].weight, ref["1.weight"])  # BN affine is a weight: patched
    with pytest.raises(SignatureMismatchError, match="no BN running statistics"):
        Patcher(model, [make_sig(1, bn_policy="std")], bn_policy="robust").apply()
    assert_bit_exact(model, ref)


def test_mismatch_errors_name_key_and_file(tmp_path: Path) -> None:
    path = save_signature(tmp_path / "fog.safetensors", make_sig(1))
    other = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))  # same keys, other shapes
    with pytest.raises(SignatureMismatchError, match=r"fog\.safetensors.*'0\.weight'.*shape"):
        Patcher(other, [path]).apply()
    missing = nn.Sequential(nn.Conv2d(3, 4, 3))
    with pytest.raises(SignatureMismatchError, match=r"fog\.safetensors.*'1\.(weight|bias|running_\w+)'"):
        Patcher(missing, [path]).apply()
    ref = snapshot(other)
    assert_bit_exact(other, ref)  # a failed apply touches nothing


def test_cross_dataset_head_differs(tmp_path: Path) -> None:
    path = save_signature(tmp_path / "fog.safetensors", make_sig(1))
    model = tiny_net(num_classes=200).eval()  # other head: only kept keys must match
    ref = snapshot(model)
    with Patcher(model, [(load_signature(path), 1.0)]):
        pass
    assert_bit_exact(model, ref)


def test_recalibrate_bn_only_kept_layers() -> None:
    model = std_model()
    model[4].running_mean.fill_(3.0)
    ref = snapshot(model)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.rand(8, 3, 8, 8, generator=g), torch.zeros(8)) for _ in range(3)]
    p = Patcher(model, [make_sig(1, bn_policy="std")], bn_policy="recalibrate")
    p.apply()
    p.recalibrate(batches)
    with torch.no_grad():  # equal batch sizes: cumulative average == mean over all samples
        pre = torch.cat([model[0](x) for x, _ in batches])
    assert torch.allclose(model[1].running_mean, pre.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.equal(model[4].running_mean, ref["4.running_mean"])  # not a kept layer
    assert torch.equal(model[1].num_batches_tracked, ref["1.num_batches_tracked"])
    assert model[1].momentum == 0.1 and not any(m.training for m in model.modules())
    p.remove()
    assert_bit_exact(model, ref)
    model.train()
    recalibrate_patched_bn(model, batches[:1], ["1.weight"])
    assert all(m.training for m in model.modules())  # modes restored


@pytest.fixture
def std_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    """A spec kind ``{kind: tiny_std}`` that builds ``std_model()``, registered for one test."""
    from rws.specs import SpecKind, register_kind
    from rws.specs import registry

    monkeypatch.setattr(registry, "_KINDS", dict(registry._KINDS))
    register_kind(SpecKind(name="tiny_std", required=(), build=lambda spec, ctx: std_model()))


def test_patch_spec_builds_like_patcher(tmp_path: Path, std_kind: None) -> None:
    from rws.specs import build

    s1, s2 = make_sig(1), make_sig(2)
    p1, p2 = save_signature(tmp_path / "fog.safetensors", s1), save_signature(tmp_path / "snow.safetensors", s2)
    spec = {"kind": "patch", "base": {"kind": "tiny_std"}, "bn_policy": "std",
            "signatures": [{"path": str(p1), "alpha": 0.5}]}
    model = build(spec)
    ref = std_model().state_dict()
    assert torch.allclose(model[0].weight, ref["0.weight"] + 0.5 * s1.rws["0.weight"], atol=1e-6)
    assert torch.equal(model[1].running_mean, ref["1.running_mean"])
    # bn_mix reaches the Patcher: two signatures at alpha 1, convex averages the robust statistics.
    two = {**spec, "bn_policy": "robust", "signatures": [{"path": str(p1)}, {"path": str(p2)}]}
    for mix in ("affine", "convex"):
        want = std_model()
        with Patcher(want, [(s1, 1.0), (s2, 1.0)], bn_mix=mix):
            assert_bit_exact(build({**two, "bn_mix": mix}), snapshot(want))


def test_recalibrated_patch_spec(tmp_path: Path, std_kind: None) -> None:
    from rws.specs import BuildContext, SpecError, build

    g = torch.Generator().manual_seed(0)
    batches = [(torch.rand(8, 3, 8, 8, generator=g), torch.zeros(8)) for _ in range(3)]

    class DM:
        batch_size, corruption_table = 8, "cifar"

        def calibration_batches(self, n, batch_size=None):
            return iter(batches[:n])

    path = save_signature(tmp_path / "fog.safetensors", make_sig(1, bn_policy="std"))
    spec = {"kind": "patch", "base": {"kind": "tiny_std"}, "signatures": [{"path": str(path)}],
            "bn_policy": "recalibrate", "calibration": {"split": "train", "batches": 3}}
    model = build(spec, context=BuildContext(data=DM()))
    want = std_model()
    p = Patcher(want, [path], bn_policy="recalibrate")
    p.apply()
    p.recalibrate(batches)
    assert_bit_exact(model, snapshot(want))
    with pytest.raises(SpecError, match="needs a 'calibration' source"):
        build({k: v for k, v in spec.items() if k != "calibration"})


def test_real_model_extract_patch_export(tmp_path: Path) -> None:
    """vgg16_bn (narrow) through extract -> signature file -> patch stage -> export."""
    from rws.models import create_model
    from rws.stages.extract import extract_all
    from rws.stages.patch import patch_export
    from rws.weights.export import load_export, save_export

    cfg = {"name": "vgg16_bn", "num_classes": 10, "width": 0.125}
    torch.manual_seed(0)
    model = create_model(**cfg).eval()
    init = snapshot(model)
    paths = {}
    for i, name in enumerate(["init", "std", "fog"]):
        model.load_state_dict(init if i == 0 else perturbed(init, i, 0.01))
        paths[name] = str(save_export(tmp_path / name, model, cfg))
    summary = extract_all(paths["init"], paths["std"], {"fog": paths["fog"]}, tmp_path / "sigs",
                          layers={"k": 5}, granularity="per_layer", bits=8, bn_policy="robust")
    assert len(summary["layers"]) == 5 and not any("classifier" in k for k in summary["keys"])
    sig = load_signature(tmp_path / "sigs" / "fog.safetensors")
    assert any(k.endswith("running_var") for k in sig.stats) and sig.arch_name == "vgg16_bn"
    out = patch_export(paths["std"], [{"path": str(sig.path), "alpha": 1.0}], tmp_path / "patched")
    patched, std = load_export(out).state_dict, load_export(paths["std"]).state_dict
    changed = {k for k in std if not torch.equal(patched[k], std[k])}
    assert changed and changed <= set(sig.keys)
    live = load_export(paths["std"]).build()
    ref = snapshot(live)
    with Patcher(live, [sig]):
        assert not torch.equal(live.state_dict()[sig.keys[0]], ref[sig.keys[0]])
    assert_bit_exact(live, ref)
    # bn_mix reaches the stage: Σα = 2 > 1, so convex (robust stats) and affine (2·robust − std) differ.
    convex = patch_export(paths["std"], [{"path": str(sig.path), "alpha": 2.0}], tmp_path / "convex", bn_mix="convex")
    with Patcher(live, [(sig, 2.0)], bn_mix="convex"):
        assert_bit_exact(load_export(convex).build(), snapshot(live))
    record = load_export(convex).metrics["config"]["patch"]
    assert record["bn_mix"] == "convex" and record["spec"]["bn_mix"] == "convex" and len(record["spec_id"]) == 12
    # bn_policy=recalibrate from the stage: the calibration source names its data (no evaluated datamodule here).
    source = {"data": "digits", "overrides": [f"paths.cache_dir={tmp_path / 'cache'}"], "corruption": "fog",
              "batches": 2, "batch_size": 8}
    recal = load_export(patch_export(paths["std"], [{"path": str(sig.path)}], tmp_path / "recal",
                                     bn_policy="recalibrate", calibration=source)).state_dict
    stat = next(k for k in sig.stats if k.endswith("running_mean"))
    assert not torch.equal(recal[stat], patched[stat]) and not torch.equal(recal[stat], std[stat])
    assert load_export(tmp_path / "recal").metrics["config"]["patch"]["calibration"] == source


def test_patch_cli_accepts_bn_mix_and_calibration() -> None:
    from rws.config import compose

    cfg = compose("patch", ["base=std", "out=patched", "bn_mix=convex", "bn_policy=recalibrate",
                            "calibration={data: digits, split: train, corruption: fog, batches: 2}"])
    assert cfg.bn_mix == "convex" and cfg.calibration.batches == 2
    assert compose("patch", ["base=std", "out=patched"]).bn_mix == "affine"


def test_reused_backup_tracks_current_weights() -> None:
    """Backups are reused across cycles; they must hold the *current* values, not the first ones."""
    model = std_model()
    p = Patcher(model, [make_sig(1)])
    p.apply()
    p.remove()
    with torch.no_grad():
        model[0].weight.mul_(2)  # e.g. the standard model was fine-tuned in between
    ref = snapshot(model)
    p.apply()
    p.remove()
    assert_bit_exact(model, ref)


def test_bn_mix_affine_and_convex() -> None:
    s1, s2 = make_sig(1), make_sig(2)
    model = std_model()
    ref = snapshot(model)
    k = "1.running_mean"
    # one signature at alpha 0.5: both rules give (1 - a) * std + a * robust
    for mix in ("affine", "convex"):
        with Patcher(model, [(s1, 0.5)], bn_mix=mix):
            assert torch.allclose(model[1].running_mean, 0.5 * ref[k] + 0.5 * s1.stats[k], atol=1e-6)
    # two at alpha 1: affine extrapolates (-1 * std + r1 + r2), convex averages (r1 + r2) / 2
    with Patcher(model, [(s1, 1.0), (s2, 1.0)], bn_mix="affine"):
        assert torch.allclose(model[1].running_mean, -ref[k] + s1.stats[k] + s2.stats[k], atol=1e-6)
    with Patcher(model, [(s1, 1.0), (s2, 1.0)], bn_mix="convex"):
        assert torch.allclose(model[1].running_mean, (s1.stats[k] + s2.stats[k]) / 2, atol=1e-6)
    assert_bit_exact(model, ref)
    with pytest.raises(ValueError, match="bn_mix"):
        Patcher(model, [s1], bn_mix="median")


def test_apply_is_all_or_nothing() -> None:
    """An alpha that overflows the weights' dtype, or one that makes them infinite, fails before or
    while patching and leaves the model bit-exactly standard (a later good patch still works)."""
    model = std_model()
    ref = snapshot(model)
    good, bad = make_sig(1), make_sig(2)
    for v in bad.rws.values():
        v.mul_(100.0)  # entries up to ~30: alpha 1e38 fits float32 but the patched weights overflow
    for alpha, match in ((1e39, "does not fit torch.float32"), (float("nan"), "finite"),
                         (1e38, "non-finite weights")):
        p = Patcher(model, [(good, 1.0), (bad, alpha)])
        with pytest.raises(ValueError, match=match):
            p.apply()
        assert not p.applied
        assert_bit_exact(model, ref)
        with pytest.raises(ValueError):
            with Patcher(model, [(good, 1.0), (bad, alpha)]):
                pass
        assert_bit_exact(model, ref)
    with Patcher(model, [good]):
        assert not torch.equal(model[0].weight, ref["0.weight"])
    assert_bit_exact(model, ref)


def test_a_signature_with_nan_is_refused_where_it_comes_in(tmp_path: Path) -> None:
    sig = make_sig(1)
    sig.rws["0.weight"][0, 0, 0, 0] = float("nan")
    with pytest.raises(SignatureMismatchError, match="'0.weight' holds NaN"):
        Patcher(std_model(), [sig])
    path = save_signature(tmp_path / "nan.safetensors", sig)
    with pytest.raises(SignatureMismatchError, match="nan.safetensors"):
        Patcher(std_model(), [path])


def test_remove_restores_bn_statistics_a_train_forward_changed() -> None:
    """Every BN layer's statistics (patched or not) and num_batches_tracked come back bit-exactly."""
    model = std_model()
    ref = snapshot(model)
    with Patcher(model, [make_sig(1)]):
        model.train()
        model(torch.rand(4, 3, 8, 8))
        model.eval()
        assert not torch.equal(model[4].running_mean, ref["4.running_mean"])  # an unpatched layer moved
    assert_bit_exact(model, ref)


def test_a_recalibrate_signature_without_a_source_is_an_error(tmp_path: Path, std_kind: None) -> None:
    """bn_policy null takes each signature's stored policy; a stored 'recalibrate' without a
    calibration source used to patch with the standard statistics silently."""
    from rws.specs import SpecError, build

    sig = make_sig(1, bn_policy="std")
    sig.bn_policy = "recalibrate"
    path = save_signature(tmp_path / "fog.safetensors", sig)
    spec = {"kind": "patch", "base": {"kind": "tiny_std"}, "signatures": [{"path": str(path)}]}
    with pytest.raises(SpecError, match=r"fog.safetensors was extracted with bn_policy=recalibrate"):
        build(spec)
    build({**spec, "bn_policy": "std"})  # an explicit choice is fine
    for bad in (float("nan"), float("inf")):
        with pytest.raises(SpecError, match=r"signatures\[0\].alpha must be a finite number.*fog.safetensors"):
            build({**spec, "bn_policy": "std", "signatures": [{"path": str(path), "alpha": bad}]})
