"""Linear 16-bit signatures (the paper's linear quantization) next to float16: error bound, the
comparison with float16, the signature file round trip, old float16 files, and the extract config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rws.utils.io import load_safetensors, save_safetensors, write_text
from rws.weights.quantize import SCALE, ZERO_POINT, dequantize_state, quantize_tensor, resolve_quant
from rws.weights.signature_io import Signature, load_signature, save_signature


def _max_err(t: torch.Tensor, bits: int, quant: str | None) -> tuple[float, dict]:
    q = quantize_tensor("w", t, bits, quant)
    back = dequantize_state(q)["w"]
    assert back.shape == t.shape and back.dtype == torch.float32
    return (float((back - t).abs().max()) if t.numel() else 0.0), q


def _bound(q: dict, t: torch.Tensor) -> float:
    # scale/2 from the grid, plus the float32 cast of the float64 reconstruction (half an ulp)
    return float(q["w" + SCALE]) / 2 + 2.0 ** -24 * float(t.abs().max())


def test_linear16_error_at_most_half_a_step() -> None:
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(4096, generator=g) * 3 + 1, torch.rand(64, 3, 3, generator=g) * 1e-3,
               torch.randn(1000, generator=g) * 1e-4,
               1000 + torch.rand(256, generator=g) * 1e-3,  # far from 0: the zero point is ~ -6.6e7
               torch.full((5,), 0.25), torch.zeros(0)]
    for t in tensors:
        err, q = _max_err(t, 16, "linear")
        assert q["w"].dtype == torch.int16 and set(q) == {"w", "w" + SCALE, "w" + ZERO_POINT}
        assert q["w" + SCALE].dtype == q["w" + ZERO_POINT].dtype == torch.float64
        if t.numel():
            assert err <= _bound(q, t), (err, float(q["w" + SCALE]))
            assert int(q["w"].min()) == -32768 and (t.max() == t.min() or int(q["w"].max()) == 32767)
    # float16 at 16 bits stays the default; 8 bits stays uint8
    assert quantize_tensor("w", tensors[0], 16)["w"].dtype == torch.float16
    assert quantize_tensor("w", tensors[0], 8)["w"].dtype == torch.uint8


def test_linear16_beats_float16_on_a_wide_range() -> None:
    g = torch.Generator().manual_seed(1)
    for t in (torch.randn(10000, generator=g) * 1000,    # float16's step is 2 at 2048-4096
              torch.randn(10000, generator=g) * 2e-3):   # signature-sized deltas
        lin, _ = _max_err(t, 16, "linear")
        f16, _ = _max_err(t, 16, "float")
        assert lin < f16 / 4, (lin, f16)


def test_quant_choices() -> None:
    assert [resolve_quant(b) for b in (32, 16, 8)] == ["float", "float", "linear"]
    assert resolve_quant(16, "linear") == "linear"
    for bits, quant in ((8, "float"), (32, "linear"), (16, "int")):
        with pytest.raises(ValueError, match="not offered"):
            resolve_quant(bits, quant)


def _sig(quant: str | None) -> Signature:
    g = torch.Generator().manual_seed(2)
    rws = {"0.weight": torch.randn(4, 3, 3, 3, generator=g) * 1e-2, "0.bias": torch.rand(4, generator=g) * 1e-3}
    stats = {"1.running_mean": torch.randn(4, generator=g)}
    return Signature(rws=rws, stats=stats, layers=["0"], bits=16, quant=quant, corruption="fog", severity="5")


def test_linear16_signature_file_round_trip(tmp_path: Path) -> None:
    sig = _sig("linear")
    path = save_signature(tmp_path / "fog.safetensors", sig)
    stored, meta = load_safetensors(path)
    assert meta["bits"] == "16" and meta["quant"] == "linear"
    assert stored["0.weight"].dtype == torch.int16 and stored["0.weight" + SCALE].dtype == torch.float64
    back = load_signature(path)
    assert back.bits == 16 and back.quant == "linear"
    for k, v in sig.rws.items():
        scale = float(stored[k + SCALE])
        assert back.rws[k].dtype == torch.float32
        assert float((back.rws[k] - v).abs().max()) <= scale / 2 + 2.0 ** -24 * float(v.abs().max())
    assert torch.equal(back.stats["1.running_mean"], sig.stats["1.running_mean"])


def test_float16_files_stay_loadable(tmp_path: Path) -> None:
    sig = _sig(None)
    path = save_signature(tmp_path / "fog.safetensors", sig)
    back = load_signature(path)
    assert back.quant == "float" and torch.equal(back.rws["0.weight"], sig.rws["0.weight"].half().float())
    # a file written before the quant key existed (bits=16, no "quant"): float16 as before
    stored, meta = load_safetensors(path)
    old = {k: v for k, v in meta.items() if k != "quant"}
    save_safetensors(stored, tmp_path / "old.safetensors", metadata=old)
    legacy = load_signature(tmp_path / "old.safetensors")
    assert legacy.quant == "float" and torch.equal(legacy.rws["0.bias"], sig.rws["0.bias"].half().float())


def test_extract_stage_linear16(tmp_path: Path) -> None:
    from rws.config import compose
    from rws.stages.extract import extract_all

    cfg = compose("extract", ["init=a", "std=b", "out=c", "bits=16", "quant=linear"])
    assert cfg.bits == 16 and cfg.quant == "linear" and compose("extract", ["init=a", "std=b", "out=c"]).quant is None
    g = torch.Generator().manual_seed(3)
    init = {"0.weight": torch.randn(4, 3, 3, 3, generator=g), "0.bias": torch.randn(4, generator=g),
            "1.weight": torch.randn(2, 4, generator=g), "1.bias": torch.randn(2, generator=g)}
    paths = {}
    for i, name in enumerate(("init", "std", "fog")):
        state = {k: v + 0.01 * i * torch.randn(v.shape, generator=g) for k, v in init.items()}
        d = tmp_path / name
        save_safetensors(state, d / "model.safetensors", metadata={"format": "rws-export-v1"})
        write_text(d / "model.yaml", "_target_: rws.models.create_model\nname: __handmade__\nnum_classes: 2\n")
        paths[name] = str(d)
    summary = extract_all(paths["init"], paths["std"], {"fog": paths["fog"]}, tmp_path / "sigs",
                          layers={"k": 1}, bits=16, quant="linear", analysis=False)
    assert summary["quant"] == "linear"
    sig = load_signature(tmp_path / "sigs" / "fog.safetensors")
    assert sig.bits == 16 and sig.quant == "linear" and set(sig.rws) == {"0.weight", "0.bias"}
    assert json.loads((tmp_path / "sigs" / "analysis.json").read_text())["quant"] == "linear"
    with pytest.raises(ValueError, match="not offered"):
        extract_all(paths["init"], paths["std"], {"fog": paths["fog"]}, tmp_path / "bad", bits=8, quant="float")
