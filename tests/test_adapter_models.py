"""rws.models.adapters: dual-parameter adapter models (the modes contract), the CPU ViT, ViT pooling and
patch stride, ResNet GN+WS."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from rws.models import create_model, layer_groups
from rws.models.adapters import ADAPTER_KINDS, DualModeNetwork, apply_adapter
from rws.models.contracts import ModeView, get_mode, has_modes, mode_names, set_mode, using_mode
from rws.models.normalize import Normalized

NUM_CLASSES = 5
# The smallest model each kind fits; kw for create_model.
KIND_MODELS: dict[str, tuple[str, dict]] = {
    "cls_token": ("vit_cpu_patch4_32", {"depth": 1}),
    "pos_embed": ("vit_cpu_patch4_32", {"depth": 1}),
    "patch_embed": ("vit_cpu_patch4_32", {"depth": 1}),
    "layernorm": ("vit_cpu_patch4_32", {"depth": 1}),
    "none": ("vit_cpu_patch4_32", {"depth": 1}),
    "dual_bn": ("small_cnn", {"width": 0.25}),
    "dualparams_bn": ("small_cnn", {"width": 0.25}),
    "dual_gn": ("resnet18_cifar", {"width": 0.125, "norm": "gn_ws"}),
}
MIXING_KINDS = [k for k in ADAPTER_KINDS if k != "none"]


def _cfg(kind: str | None, base_kind: str) -> dict:
    name, kw = KIND_MODELS[base_kind]
    return {"name": name, "num_classes": NUM_CLASSES, **kw, "adapter": kind}


def _build(kind: str | None, base_kind: str | None = None, seed: int = 0) -> Normalized:
    torch.manual_seed(seed)
    return create_model(**_cfg(kind, base_kind or kind))


def _x(n: int = 4) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _perturb_robust(model: Normalized) -> None:
    """Make phi_robust differ from phi_clean (they start equal); variances stay positive."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, (_, robust) in model.net.domain_parameters().items():
            noise = 0.3 * torch.randn(robust.shape, generator=g)
            robust.add_(noise.abs() if name.endswith("running_var") else noise)


def _plain_reference(model: Normalized, kind: str, w: tuple[float, float]) -> Normalized:
    """A plain model (no adapter) with psi of ``model`` and phi = w0 * phi_clean + w1 * phi_robust,
    computed here from the domain tensors."""
    plain = _build(None, kind, seed=99)
    pairs = model.net.domain_parameters()
    state = model.state_dict()
    new = {}
    for key in plain.state_dict():
        inner = key[len("net."):]
        if inner in pairs:
            clean, robust = pairs[inner]
            value = w[0] * clean.detach() + w[1] * robust.detach()
            new[key] = value.clamp_min(0) if inner.endswith("running_var") else value
            continue
        parent, _, leaf = inner.rpartition(".")
        candidates = [f"net.net.{inner}", f"net.net.{parent}.bn.{leaf}", f"net.net.{parent}.clean.{leaf}"]
        new[key] = state[next(c for c in candidates if c in state)]
    plain.load_state_dict(new, strict=True)
    return plain.eval()


# ----- the contract -----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ADAPTER_KINDS)
def test_every_kind_declares_modes_and_clean_mode_is_the_plain_model(kind: str) -> None:
    model = _build(kind).eval()
    plain = _build(None, kind).eval()  # same seed: the same architecture draws the same init
    assert isinstance(model.net, DualModeNetwork) and model.net.adapter_kind == kind
    assert has_modes(model) and mode_names(model) == ("clean", "robust") and get_mode(model) == "clean"
    x = _x()
    with torch.no_grad():
        out = model(x)
        assert out.shape == (4, NUM_CLASSES) and torch.isfinite(out).all()
        assert torch.equal(out, plain(x))  # conversion does not change the clean function
        set_mode(model, "robust")  # phi_robust is a clone of phi_clean: the same function at init
        assert torch.equal(model(x), out)
    assert (model.net.domain_parameters() == {}) == (kind == "none")


@pytest.mark.parametrize("kind", ADAPTER_KINDS)
def test_switching_mode_changes_only_the_mixing_weights(kind: str) -> None:
    model = _build(kind).eval()
    _perturb_robust(model)
    before = {k: (t, t.detach().clone()) for k, t in model.state_dict(keep_vars=True).items()}
    x = _x()
    outputs = []
    with torch.no_grad():
        for mode in ["robust", 0.3, (0.2, 1.4), 1.05, "clean"]:
            set_mode(model, mode)
            outputs.append(model(x))
            after = model.state_dict(keep_vars=True)
            assert list(after) == list(before)
            for k, (tensor, value) in before.items():
                assert after[k] is tensor and torch.equal(tensor, value), k  # same objects, same values
    if kind != "none":
        assert not torch.equal(outputs[0], outputs[-1])  # the modes do differ once phi differs
    else:
        assert all(torch.equal(o, outputs[0]) for o in outputs)


@pytest.mark.parametrize("kind", MIXING_KINDS)
def test_beta_endpoints_are_the_modes_bit_exactly(kind: str) -> None:
    model = _build(kind).eval()
    _perturb_robust(model)
    x = _x()
    with torch.no_grad():
        set_mode(model, "clean")
        clean = model(x)
        set_mode(model, "robust")
        robust = model(x)
        for mode, expected in [(1.0, clean), (1, clean), ((1.0, 0.0), clean), (0.0, robust), ((0, 1), robust)]:
            set_mode(model, mode)
            assert torch.equal(model(x), expected), mode
            assert get_mode(model) == mode or get_mode(model) == tuple(map(float, mode))
        assert not torch.equal(clean, robust)


@pytest.mark.parametrize("kind", MIXING_KINDS)
@pytest.mark.parametrize("mode", [0.5, 1.05, -0.2, (0.6, 0.7), (1.0, 0.0)])
def test_mix_is_the_plain_model_with_mixed_phi(kind: str, mode) -> None:
    """beta * phi_clean + (1 - beta) * phi_robust (extrapolation too), pairs b1 * phi_clean + b2 * phi_robust;
    dual_bn mixes affine and running statistics."""
    model = _build(kind).eval()
    _perturb_robust(model)
    set_mode(model, mode)
    w = (mode, 1.0 - mode) if isinstance(mode, float) else mode
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(model(x), _plain_reference(model, kind, w)(x), rtol=1e-5, atol=1e-5)


def test_mode_contract_through_normalized_modeview_and_errors() -> None:
    model = _build("cls_token").eval()
    _perturb_robust(model)
    x = _x()
    with torch.no_grad():
        clean = model(x)
        robust = ModeView(model, "robust")(x)
        assert get_mode(model) == "clean"  # a ModeView leaves the model's mode as it was
        with using_mode(model, 0.0):
            assert torch.equal(model(x), robust)
        assert get_mode(model) == "clean" and torch.equal(model(x), clean)
    with pytest.raises(ValueError, match="unknown mode 'adv'"):
        set_mode(model, "adv")
    with pytest.raises(ValueError, match="finite"):
        model.net.set_mode(float("nan"))
    assert get_mode(model) == "clean"


# ----- parameter counts --------------------------------------------------------------------------
def _numel(tensors) -> int:
    return sum(t.numel() for t in tensors)


def _stat_buffers(model: nn.Module) -> int:
    return _numel(b for n, b in model.named_buffers() if "running" in n)


@pytest.mark.parametrize("kind", ADAPTER_KINDS)
def test_parameter_counts_per_kind(kind: str) -> None:
    model, plain = _build(kind), _build(None, kind)
    net = plain.net
    extra = _numel(model.parameters()) - _numel(plain.parameters())
    if kind in ("cls_token", "pos_embed"):
        expected = getattr(net, kind).numel()
        assert kind != "cls_token" or expected == 96  # embed_dim of vit_cpu_patch4_32
    elif kind == "patch_embed":
        expected = _numel(net.patch_embed.parameters())
    elif kind == "layernorm":
        expected = _numel(p for m in net.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters())
        assert expected == (2 * 1 + 1) * 2 * 96  # norm1, norm2 of one block + fc_norm, scale and offset
    elif kind in ("dual_bn", "dualparams_bn"):
        expected = _numel(p for m in net.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    elif kind == "dual_gn":
        expected = _numel(p for m in net.modules() if isinstance(m, nn.GroupNorm) for p in m.parameters())
    else:
        expected = 0
    assert extra == expected and (expected > 0) == (kind != "none")
    # Statistics: doubled only by dual_bn (AdvProp); DualParams BN shares them.
    assert _stat_buffers(model) == (2 if kind == "dual_bn" else 1) * _stat_buffers(plain)
    pairs = model.net.domain_parameters()
    assert _numel(r for c, r in pairs.values() if isinstance(r, nn.Parameter)) == expected


# ----- BatchNorm adapters --------------------------------------------------------------------------
def _bn_states(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def test_dualparams_bn_shares_stats_and_robust_branch_uses_running_stats_in_train_mode() -> None:
    model = _build("dualparams_bn")
    _perturb_robust(model)
    x = _x(8)
    # One running_mean per BN: the statistics are shared.
    bns = [m for m in model.net.net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len([k for k in model.state_dict() if k.endswith("running_mean")]) == len(bns) > 0
    model.train()
    set_mode(model, "robust")
    stats = _bn_states(model)
    with torch.no_grad():
        train_out = model(x)
    assert all(torch.equal(v, stats[k]) for k, v in _bn_states(model).items())  # no update in the robust branch
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), train_out)  # running statistics in train mode = eval mode
    model.train()
    set_mode(model, "clean")
    with torch.no_grad():
        clean_train = model(x)
    changed = [k for k, v in _bn_states(model).items() if not torch.equal(v, stats[k])]
    assert changed and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed)
    model.eval()
    with torch.no_grad():
        assert not torch.equal(model(x), clean_train)  # the clean branch trains on batch statistics


def test_dual_bn_each_mode_updates_only_its_own_stats() -> None:
    model = _build("dual_bn").train()
    x = _x(8)
    for mode, other in [("robust", ".clean."), ("clean", ".robust.")]:
        set_mode(model, mode)
        stats = _bn_states(model)
        with torch.no_grad():
            model(x)
        changed = {k for k, v in _bn_states(model).items() if not torch.equal(v, stats[k])}
        own = f".{mode}."
        assert changed and all(own in k for k in changed) and not any(other in k for k in changed)
    set_mode(model, 0.5)  # a mix in train mode: batch statistics, no domain's running stats move
    stats = _bn_states(model)
    with torch.no_grad():
        model(x)
    assert all(torch.equal(v, stats[k]) for k, v in _bn_states(model).items())


# ----- gradients ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", MIXING_KINDS)
def test_gradients_reach_only_the_modes_phi(kind: str) -> None:
    model = _build(kind).train()
    pairs = model.net.domain_parameters()
    phi_clean = {id(c) for c, r in pairs.values() if isinstance(c, nn.Parameter)}
    phi_robust = {id(r) for c, r in pairs.values() if isinstance(r, nn.Parameter)}
    x = _x()
    for mode, own, other in [("clean", phi_clean, phi_robust), ("robust", phi_robust, phi_clean)]:
        model.zero_grad(set_to_none=True)
        set_mode(model, mode)
        model(x).logsumexp(1).sum().backward()
        for p in model.parameters():
            if id(p) in other:
                assert p.grad is None, mode
            elif id(p) in own:
                assert p.grad is not None and p.grad.abs().sum() > 0, mode
        psi = [p for p in model.parameters() if id(p) not in phi_clean | phi_robust]
        assert psi and all(p.grad is not None for p in psi)


# ----- exports and layer groups ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ADAPTER_KINDS)
def test_export_round_trip(kind: str, tmp_path: Path) -> None:
    from rws.weights.export import build_model, load_export, load_state_strict, save_export

    cfg = {"_target_": "rws.models.create_model", **_cfg(kind, kind)}
    model = build_model(cfg).eval()
    _perturb_robust(model)
    path = save_export(tmp_path / "export", model, cfg)
    rebuilt = load_export(path).build()
    again = build_model(cfg)
    load_state_strict(again, model.state_dict(), source="test")
    copied = copy.deepcopy(model)  # EMA-style copies keep both phi sets and the mode
    x = _x()
    with torch.no_grad():
        for mode in ["clean", "robust", 0.4]:
            for m in (model, rebuilt, again.eval(), copied):
                set_mode(m, mode)
            expected = model(x)
            assert all(torch.equal(m(x), expected) for m in (rebuilt, again, copied)), mode
    assert get_mode(rebuilt) == 0.4 and get_mode(load_export(path).build()) == "clean"  # the mode is not exported


@pytest.mark.parametrize("kind", ADAPTER_KINDS)
def test_layer_groups_cover_every_key_of_an_adapter_model(kind: str) -> None:
    model = _build(kind)
    flat = [k for _, keys in layer_groups(model) for k in keys]
    assert sorted(flat) == sorted(model.state_dict()) and len(flat) == len(set(flat))


# ----- errors ---------------------------------------------------------------------------------------
def test_unknown_kind_and_nothing_to_adapt_are_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown adapter 'cls'.*cls_token, pos_embed.*none"):
        create_model("small_cnn", 10, adapter="cls")
    cases = [("small_cnn", "cls_token", "cls_token"), ("small_cnn", "pos_embed", "pos_embed"),
             ("small_cnn", "patch_embed", "patch_embed"), ("small_cnn", "layernorm", "LayerNorm"),
             ("small_cnn", "dual_gn", "GroupNorm"), ("vit_cpu_patch4_32", "dual_bn", "no BatchNorm"),
             ("vit_cpu_patch4_32", "dualparams_bn", "no BatchNorm")]
    for name, kind, what in cases:
        with pytest.raises(ValueError, match=rf"adapter '{kind}'.*{what}"):
            create_model(name, 10, adapter=kind)
    with pytest.raises(ValueError, match="no BatchNorm"):
        create_model("small_cnn", 10, bn=False, adapter="dual_bn")
    with pytest.raises(ValueError, match="track_running_stats"):
        apply_adapter(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)), "dualparams_bn")
    converted = apply_adapter(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), "dual_bn")
    with pytest.raises(ValueError, match="already converted"):
        apply_adapter(converted, "dual_bn")


# ----- architectures ---------------------------------------------------------------------------------
def test_vit_cpu_size_pooling_and_stride() -> None:
    torch.manual_seed(0)
    model = create_model("vit_cpu_patch4_32", 10).eval()
    net = model.net
    assert sum(p.numel() for p in model.parameters()) == 311_338
    assert net.global_pool == "avg" and net.pos_embed.shape == (1, 65, 96) and len(net.blocks) == 4
    x = _x(2)
    with torch.no_grad():
        tokens = net.forward_features((x - 0.5) / 0.5)
        # MAE-style head: mean of the final tokens except the CLS token, then fc_norm and the classifier.
        expected = net.head(net.fc_norm(tokens[:, 1:].mean(1)))
        torch.testing.assert_close(model(x), expected)
    strided = create_model("vit_cpu_patch4_32", 10, patch_stride=2)
    assert strided.net.patch_embed.num_patches == 15 * 15 and strided.net.pos_embed.shape == (1, 226, 96)
    assert strided.net.patch_embed.proj.stride == (2, 2) and strided(x).shape == (2, 10)
    with pytest.raises(ValueError, match="patch_stride"):
        create_model("vit_cpu_patch4_32", 10, patch_stride=5)
    with pytest.raises(ValueError, match="global_pool"):
        create_model("vit_cpu_patch4_32", 10, global_pool="mean")


def test_vit_defaults_unchanged() -> None:
    import timm

    torch.manual_seed(0)
    ours = create_model("vit_tiny_patch4_32", 10).net
    torch.manual_seed(0)
    ref = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=4)
    assert ours.global_pool == "token" and ours.patch_embed.proj.stride == (4, 4)
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), ref.state_dict().values()))


@pytest.mark.parametrize("name", ["resnet18_cifar", "resnet50_cifar", "resnet50"])
def test_resnet_gn_ws(name: str) -> None:
    from timm.layers import StdConv2d

    kw = {} if name == "resnet50" else {"width": 0.25}
    with torch.device("meta"):
        bn, gn = create_model(name, 10, **kw), create_model(name, 10, norm="gn_ws", **kw)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gn.modules())
    convs = [m for m in gn.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(isinstance(c, StdConv2d) for c in convs)
    assert all(m.num_groups == 32 or m.num_channels % 32 for m in gn.modules() if isinstance(m, nn.GroupNorm))
    assert sum(p.numel() for p in gn.parameters()) == sum(p.numel() for p in bn.parameters())
    assert [n for n, _ in layer_groups(gn)] == [n for n, _ in layer_groups(bn)]
    with pytest.raises(ValueError, match="unknown norm 'ln'"):
        create_model(name, 10, norm="ln", **kw)


def test_gn_ws_forward_and_standardized_weights() -> None:
    torch.manual_seed(0)
    model = create_model("resnet18_cifar", 10, width=0.125, norm="gn_ws").eval()
    with torch.no_grad():
        out = model(_x(2))
        scaled = model.net.conv1.weight.mul_(3.0).add_(1.0)  # WS: per-filter affine changes of a weight do nothing
        assert scaled is model.net.conv1.weight
        torch.testing.assert_close(model(_x(2)), out, rtol=1e-4, atol=1e-4)


def test_adapter_config_composes() -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from rws.config import compose

    cfg = compose("train", ["model=vit_cpu_patch4_32", "model.adapter=cls_token"])
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    assert model_cfg["global_pool"] == "avg" and model_cfg["patch_stride"] is None
    model = instantiate(model_cfg)
    assert has_modes(model) and model.net.adapter_kind == "cls_token"
    plain = instantiate({**model_cfg, "adapter": None})
    assert not has_modes(plain)
