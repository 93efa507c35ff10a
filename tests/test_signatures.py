"""Signature extraction math, quantization, layer selection and the signature file format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from rws.utils.io import load_safetensors, save_safetensors, write_text
from rws.weights.layer_select import fallback_groups, select_layers
from rws.weights.quantize import SCALE, ZERO_POINT, dequantize_state, quantize_state, quantize_tensor
from rws.weights.signature_io import Signature, arch_hash, load_signature, save_signature
from rws.weights.signatures import blocks_for, extract_signature, layer_cosines, project_out


def tiny_net(num_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3),
                         nn.BatchNorm2d(5), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(5, num_classes))


def perturbed(state: dict[str, torch.Tensor], seed: int, scale: float = 0.1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in state.items():
        if v.is_floating_point():
            noise = torch.randn(v.shape, generator=g) * scale
            out[k] = (v + noise).abs() if k.endswith("running_var") else v + noise
        else:
            out[k] = v.clone()
    return out


@pytest.fixture()
def triple() -> tuple[dict, dict, dict, list]:
    init = {k: v.clone() for k, v in tiny_net().state_dict().items()}
    std, rob = perturbed(init, 1), perturbed(init, 2)
    return init, std, rob, fallback_groups(init)


def test_project_out_closed_form() -> None:
    # v=(3,4), b=(1,1): <v,b>/<b,b> = 7/2, residual = (3-3.5, 4-3.5)
    assert torch.allclose(project_out(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 1.0])), torch.tensor([-0.5, 0.5]))
    assert torch.equal(project_out(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 0.0])), torch.tensor([0.0, 2.0]))
    # b = 0: nothing to project onto
    assert torch.equal(project_out(torch.tensor([1.0, 2.0]), torch.zeros(2)), torch.tensor([1.0, 2.0]))


def test_granularities_by_hand() -> None:
    # Two one-layer tensors a (2 elems) and b (1 elem); v_base = (1,0 | 1), v_c = (1,1 | 3).
    init = {"l.a": torch.zeros(2), "l.b": torch.zeros(1), "h.w": torch.zeros(1)}
    std = {"l.a": torch.tensor([1.0, 0.0]), "l.b": torch.tensor([1.0]), "h.w": torch.zeros(1)}
    rob = {"l.a": torch.tensor([1.0, 1.0]), "l.b": torch.tensor([3.0]), "h.w": torch.zeros(1)}
    groups = [("l", ["l.a", "l.b"]), ("h", ["h.w"])]
    per_t, _ = extract_signature(init, std, rob, ["l.a", "l.b"], "per_tensor", groups)
    assert torch.allclose(per_t["l.a"], torch.tensor([0.0, 1.0])) and torch.allclose(per_t["l.b"], torch.tensor([0.0]))
    # per_layer: v=(1,1,3), b=(1,0,1): coef = 4/2 = 2 -> (1-2, 1, 3-2) = (-1, 1, 1)
    per_l, _ = extract_signature(init, std, rob, ["l.a", "l.b"], "per_layer", groups)
    assert torch.allclose(per_l["l.a"], torch.tensor([-1.0, 1.0])) and torch.allclose(per_l["l.b"], torch.tensor([1.0]))
    glob, _ = extract_signature(init, std, rob, ["l.a", "l.b"], "global", groups)
    assert torch.allclose(glob["l.a"], per_l["l.a"])  # one layer kept: global == per_layer


@pytest.mark.parametrize("granularity", ["per_tensor", "per_layer", "global"])
def test_residual_orthogonal_per_block(triple, granularity: str) -> None:
    init, std, rob, groups = triple
    keys = [k for k in init if not k.endswith("num_batches_tracked")]
    rws, stats = extract_signature(init, std, rob, keys, granularity, groups)
    wkeys = list(rws)
    assert set(stats) == {k for k in keys if k.endswith(("running_mean", "running_var"))}
    for k, v in stats.items():
        assert torch.equal(v, rob[k])  # robust stats carried as they are
    for block in blocks_for(wkeys, granularity, groups):
        r = torch.cat([rws[k].double().flatten() for k in block])
        b = torch.cat([(std[k] - init[k]).double().flatten() for k in block])
        assert abs(float(r @ b)) <= 1e-5 * float(r.norm() * b.norm())


def test_zero_base_block_left_unprojected(triple) -> None:
    init, _, rob, groups = triple
    rws, _ = extract_signature(init, init, rob, ["0.weight"], "per_tensor", groups)
    assert torch.allclose(rws["0.weight"], rob["0.weight"] - init["0.weight"])


def test_layer_cosines_self_is_one(triple) -> None:
    init, std, rob, groups = triple
    keys = [k for k in init if not k.endswith("num_batches_tracked")]
    r1, _ = extract_signature(init, std, rob, keys, "per_tensor", groups)
    cos = layer_cosines({"a": r1, "b": {k: -v for k, v in r1.items()}}, groups)
    assert cos["0"]["a"]["a"] == pytest.approx(1.0) and cos["__all__"]["a"]["b"] == pytest.approx(-1.0)


def test_layer_cosines_by_hand() -> None:
    """Per layer over the layer's keys concatenated, and over every key (``__all__``); a zero vector
    has no cosine (NaN)."""
    groups = [("l1", ["l1.w", "l1.b"]), ("l2", ["l2.w"])]
    t = lambda *v: torch.tensor(v)
    sigs = {"a": {"l1.w": t(1.0, 0.0), "l1.b": t(0.0), "l2.w": t(1.0, 1.0)},
            "b": {"l1.w": t(1.0, 1.0), "l1.b": t(1.0), "l2.w": t(-1.0, 1.0)},
            "c": {"l1.w": t(3.0, 0.0), "l1.b": t(0.0), "l2.w": t(2.0, 2.0)},
            "z": {"l1.w": t(0.0, 0.0), "l1.b": t(0.0), "l2.w": t(0.0, 0.0)}}
    cos = layer_cosines(sigs, groups)
    # l1: a=(1,0,0), b=(1,1,1), c=(3,0,0): a.b = 1, |a| = 1, |b| = sqrt 3; c is parallel to a
    assert cos["l1"]["a"]["b"] == pytest.approx(1 / 3 ** 0.5) == cos["l1"]["b"]["a"]
    assert cos["l1"]["a"]["c"] == pytest.approx(1.0) and cos["l1"]["b"]["c"] == pytest.approx(1 / 3 ** 0.5)
    assert cos["l1"]["a"]["a"] == pytest.approx(1.0)
    # l2: (1,1) and (-1,1) are orthogonal, (2,2) parallel to (1,1)
    assert cos["l2"]["a"]["b"] == pytest.approx(0.0, abs=1e-12) and cos["l2"]["a"]["c"] == pytest.approx(1.0)
    # all keys: a=(1,0,0,1,1), b=(1,1,1,-1,1), c=(3,0,0,2,2): a.b = 1, a.c = 7, |a|^2 = 3, |b|^2 = 5, |c|^2 = 17
    assert cos["__all__"]["a"]["b"] == pytest.approx(1 / 15 ** 0.5)
    assert cos["__all__"]["a"]["c"] == pytest.approx(7 / 51 ** 0.5)
    assert cos["__all__"]["b"]["c"] == pytest.approx((3 - 2 + 2) / 85 ** 0.5)
    assert cos["l1"]["a"]["z"] != cos["l1"]["a"]["z"]  # NaN


def test_layer_selection() -> None:
    groups = [("conv1", ["c1.weight", "c1.bias", "bn1.running_mean", "bn1.num_batches_tracked"]),
              ("conv2", ["c2.weight"]), ("head", ["fc.weight"])]
    keys = [k for _, g in groups for k in g]
    names, kept = select_layers(groups, keys, k=2)
    assert names == ["conv1", "conv2"] and "fc.weight" not in kept
    assert "bn1.num_batches_tracked" not in kept and "bn1.running_mean" in kept
    with pytest.raises(ValueError, match="non-head"):
        select_layers(groups, keys, k=3)  # the head is never a shallow layer
    assert select_layers(groups, keys, k="all")[1] == [k for k in keys if "num_batches" not in k]
    assert select_layers(groups, keys, names=["conv2"])[1] == ["c2.weight"]
    assert select_layers(groups, keys, regex=r"^c\d\.weight$")[1] == ["c1.weight", "c2.weight"]
    with pytest.raises(ValueError, match="unknown layer"):
        select_layers(groups, keys, names=["nope"])


def test_quantize_8bit_error_bound() -> None:
    g = torch.Generator().manual_seed(0)
    for t in (torch.randn(1000, generator=g) * 3 + 1, torch.rand(64, generator=g) * 1e-3, torch.full((5,), 0.25)):
        q = quantize_tensor("w", t, 8)
        assert q["w"].dtype == torch.uint8 and set(q) == {"w", "w" + SCALE, "w" + ZERO_POINT}
        back = dequantize_state(q)["w"]
        scale = float(q["w" + SCALE])
        assert (back - t).abs().max() <= scale / 2 * (1 + 1e-4) + 1e-7 * float(t.abs().max())


def test_quantize_8bit_bound_small_range_far_from_zero(tmp_path: Path) -> None:
    # float32 scale/zero point gave 0.61·scale on the first and scale 0 on the second
    for t in (1 + torch.linspace(0, 1e-4, 1000), torch.tensor([0.0, 1e-44])):
        q = quantize_tensor("w", t, 8)
        assert q["w" + SCALE].dtype == q["w" + ZERO_POINT].dtype == torch.float64
        scale = float(q["w" + SCALE])
        assert scale > 0
        back = dequantize_state(q)["w"]
        # the grid gives scale/2 in float64; the float32 cast of the result adds half an ulp (2^-24 relative)
        assert float((back - t).abs().max()) <= scale / 2 + 2.0 ** -24 * float(t.abs().max())
    # a signature file written with float32 scale/zero point (before the change) still loads
    g = torch.Generator().manual_seed(0)
    sig = Signature(rws={"0.weight": torch.randn(4, 3, generator=g) * 1e-2}, stats={}, layers=["0"], bits=8,
                    corruption="fog", severity="5")
    path = save_signature(tmp_path / "fog.safetensors", sig)
    stored, meta = load_safetensors(path)
    old = {k: (v.float() if v.dtype == torch.float64 else v) for k, v in stored.items()}
    save_safetensors(old, tmp_path / "old.safetensors", metadata=meta)
    back = load_signature(tmp_path / "old.safetensors").rws["0.weight"]
    scale = float(old["0.weight" + SCALE])
    assert float((back - sig.rws["0.weight"]).abs().max()) <= scale / 2 * (1 + 1e-4) + 1e-9


def test_quantize_16_and_32() -> None:
    t = torch.randn(100)
    q16 = quantize_state({"w": t}, 16)
    assert q16["w"].dtype == torch.float16
    assert torch.equal(dequantize_state(q16)["w"], t.half().float())
    assert torch.equal(dequantize_state(quantize_state({"w": t}, 32))["w"], t)
    with pytest.raises(ValueError):
        quantize_tensor("w", t, 4)


@pytest.mark.parametrize("bits", [32, 16, 8])
def test_signature_file_round_trip(tmp_path: Path, triple, bits: int) -> None:
    init, std, rob, groups = triple
    keys = ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"]
    rws, stats = extract_signature(init, std, rob, keys, "per_layer", groups)
    sig = Signature(rws=rws, stats=stats, layers=["0", "1"], granularity="per_layer", bits=bits,
                    corruption="fog", severity="5", bn_policy="robust", arch_name="tiny",
                    arch_hash=arch_hash(std), model_cfg={"name": "tiny"},
                    sources={"std": {"path": "x", "sha256": "0" * 64}})
    path = save_signature(tmp_path / "fog.safetensors", sig)
    back = load_signature(path)
    assert back.path == path and back.corruption == "fog" and back.bits == bits and back.severity == "5"
    assert back.layers == ["0", "1"] and back.arch_hash == arch_hash(std) and back.sources == sig.sources
    assert list(back.rws) == list(rws) and list(back.stats) == list(stats)
    for k, v in stats.items():
        assert torch.equal(back.stats[k], v)  # stats always full precision
    for k, v in rws.items():
        if bits == 32:
            assert torch.equal(back.rws[k], v)
        elif bits == 16:
            assert torch.equal(back.rws[k], v.half().float())
        else:
            assert torch.allclose(back.rws[k], v, atol=float(v.max() - v.min()) / 255 / 2 * 1.001 + 1e-7)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        assert meta["format"] == "rws-signature-v1" and json.loads(meta["keys"]) == list(rws)
        assert (bits == 8) == ("0.weight" + SCALE in f.keys())


def _write_export(path: Path, state: dict[str, torch.Tensor]) -> Path:
    save_safetensors(state, path / "model.safetensors", metadata={"format": "rws-export-v1"})
    write_text(path / "model.yaml", "_target_: rws.models.create_model\nname: __handmade__\nnum_classes: 3\n")
    return path


def test_extract_stage_end_to_end(tmp_path: Path, triple) -> None:
    from rws.stages.extract import extract_all

    init, std, rob, _ = triple
    rob2 = perturbed(rob, 3, scale=0.05)  # near fog's: their signatures' cosines are far from 0
    paths = {n: _write_export(tmp_path / n, sd) for n, sd in
             [("init", init), ("std", std), ("fog", rob), ("snow", rob2)]}
    summary = extract_all(str(paths["init"]), str(paths["std"]), {"fog": str(paths["fog"]), "snow": str(paths["snow"])},
                          tmp_path / "sigs", layers={"k": 1}, granularity="per_tensor", bits=16, bn_policy="robust")
    assert summary["layers"] == ["0"]
    sig = load_signature(tmp_path / "sigs" / "fog.safetensors")
    assert set(sig.rws) == {"0.weight", "0.bias"}
    assert sig.bits == 16 and sig.bn_policy == "robust"
    assert sig.sources["robust"]["path"].endswith("fog") and len(sig.sources["std"]["sha256"]) == 64
    analysis = json.loads((tmp_path / "sigs" / "analysis.json").read_text())
    assert set(analysis["relative_norm"]) == {"fog", "snow"} and "8" in analysis["relative_norm_mean"]
    assert analysis["cosine"]["0"]["fog"]["fog"] == pytest.approx(1.0)
    # By hand, per tensor: r = v - (v.b / b.b) b with v = robust - init, b = std - init; per layer the
    # cosine of the concatenated r and the norm ratio ||r|| / ||std||.
    def rws_by_hand(robust: dict, key: str) -> torch.Tensor:
        v, b = (robust[key] - init[key]).double().flatten(), (std[key] - init[key]).double().flatten()
        return v - (v @ b) / (b @ b) * b

    for layer, keys in (("0", ["0.weight", "0.bias"]), ("3", ["3.weight", "3.bias"])):
        fog = torch.cat([rws_by_hand(rob, k) for k in keys])
        snow = torch.cat([rws_by_hand(rob2, k) for k in keys])
        expected = float(fog @ snow / (fog.norm() * snow.norm()))
        assert 0.3 < expected < 0.99
        assert analysis["cosine"][layer]["fog"]["snow"] == pytest.approx(expected, rel=1e-6, abs=1e-9), layer
        norm_std = torch.cat([std[k].double().flatten() for k in keys]).norm()
        assert analysis["relative_norm"]["fog"][layer] == pytest.approx(float(fog.norm() / norm_std), rel=1e-6)
