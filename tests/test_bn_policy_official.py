"""bn_policy=official: the official code's ResNet path (model_patching.py of VITA-Group/Robust_Weight_Signatures).

Keys named ``*bn*`` / ``*downsample*`` (whole network) are stored raw at extraction, set to the plain
mean over the composed signatures at patching, then every BN layer's statistics are re-estimated
(cumulative average) and mixed as (1 − A)·averaged + A·re-estimated for A = Σα < 1.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from rws.models import create_model
from rws.weights.bn import recalibrate
from rws.weights.patching import Patcher, SignatureMismatchError
from rws.weights.signature_io import load_signature

CFG = {"name": "resnet18_cifar", "num_classes": 10, "width": 0.25}
CORRUPTIONS = ("fog", "snow")


def perturbed(state: dict[str, torch.Tensor], seed: int, scale: float = 0.05) -> dict[str, torch.Tensor]:
    """Weights, BN affine and BN statistics all moved (running_var kept positive)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in state.items():
        if not v.is_floating_point():
            out[k] = v + seed  # num_batches_tracked differs per model: it must never be patched
        elif k.endswith("running_var"):
            out[k] = v * torch.empty(v.shape).uniform_(0.5, 2.0, generator=g)
        else:
            out[k] = v + scale * torch.randn(v.shape, generator=g)
    return out


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_bit_exact(model: nn.Module, ref: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert set(state) == set(ref)
    for k, v in state.items():
        assert torch.equal(v, ref[k]), k


def expected_official_keys(model: nn.Module) -> set[str]:
    """By structure, not by name: every BN layer's γ, β, running stats, and the downsample convs' weights."""
    keys = set()
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            keys |= {f"{name}.{s}" for s in ("weight", "bias", "running_mean", "running_var")}
        elif isinstance(m, nn.Conv2d) and name.endswith("downsample.0"):
            keys.add(f"{name}.weight")
    return keys


def batches(n: int = 3, size: int = 8, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(size, 3, 32, 32, generator=g), torch.zeros(size, dtype=torch.long)) for _ in range(n)]


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from rws.weights.export import save_export

    root = tmp_path_factory.mktemp("official")
    torch.manual_seed(0)
    model = create_model(**CFG).eval()
    init = snapshot(model)
    paths = {}
    for i, name in enumerate(("init", "std", *CORRUPTIONS)):
        model.load_state_dict(init if i == 0 else perturbed(init, i))
        paths[name] = str(save_export(root / name, model, CFG))
    return paths


@pytest.fixture(scope="module")
def sigs(exports: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from rws.stages.extract import extract_all

    out = tmp_path_factory.mktemp("sigs")
    summary = extract_all(exports["init"], exports["std"], {c: exports[c] for c in CORRUPTIONS}, out,
                          layers={"k": 3}, bits=8, bn_policy="official", analysis=False)
    assert summary["bn_policy"] == "official" and summary["official_keys"]
    return {c: out / f"{c}.safetensors" for c in CORRUPTIONS}


def std_model(exports: dict[str, str]) -> nn.Module:
    from rws.weights.export import load_export

    return load_export(exports["std"]).build().eval()


def robust_state(exports: dict[str, str], c: str) -> dict[str, torch.Tensor]:
    from rws.weights.export import load_export

    return load_export(exports[c]).state_dict


def test_stored_keys_are_exactly_the_official_set(exports: dict[str, str], sigs: dict[str, Path]) -> None:
    from rws.utils.io import load_safetensors

    model = std_model(exports)
    want = expected_official_keys(model)
    assert any("downsample.0" in k for k in want) and any(k.startswith("net.layer4") for k in want)
    for c in CORRUPTIONS:
        sig = load_signature(sigs[c])
        assert sig.bn_policy == "official"
        assert set(sig.official) == want
        _, meta = load_safetensors(sigs[c])
        assert set(json.loads(meta["official_keys"])) == want  # marked in the metadata
        robust = robust_state(exports, c)
        for k, v in sig.official.items():  # raw robust values, float32, not quantized (bits=8 is for the RWS)
            assert v.dtype == torch.float32 and torch.equal(v, robust[k]), k
        # The RWS keeps the kept layers' convs only: nothing the official code averages, no statistics.
        assert sig.rws and not sig.stats and not (set(sig.rws) & want)
        assert all(k.endswith("conv1.weight") or k.endswith("conv2.weight") for k in sig.rws)
        assert not any(k.endswith("num_batches_tracked") for k in sig.keys)


def test_patching_sets_the_mean_of_the_robust_values(exports: dict[str, str], sigs: dict[str, Path]) -> None:
    model = std_model(exports)
    ref = snapshot(model)
    loaded = [load_signature(sigs[c]) for c in CORRUPTIONS]
    robust = [robust_state(exports, c) for c in CORRUPTIONS]
    alphas = (0.5, 0.25)
    p = Patcher(model, list(zip(loaded, alphas)))  # bn_policy None: the stored policy, official
    assert p.official and p.official_alpha == 0.75
    p.apply()
    state = model.state_dict()
    for k in loaded[0].official:  # plain mean, not weighted by α
        want = ((robust[0][k].double() + robust[1][k].double()) / 2).float()
        assert torch.equal(state[k], want), k
    for k in loaded[0].rws:
        want = ref[k] + alphas[0] * loaded[0].rws[k] + alphas[1] * loaded[1].rws[k]
        assert torch.allclose(state[k], want, rtol=0, atol=1e-6), k
    touched = set(loaded[0].official) | set(loaded[0].rws)
    for k in state:
        if k not in touched:
            assert torch.equal(state[k], ref[k]), k  # the head, num_batches_tracked, other convs
    p.remove()
    assert_bit_exact(model, ref)


def test_recalibration_is_a_cumulative_mean_over_every_bn_layer(exports: dict[str, str],
                                                                 sigs: dict[str, Path]) -> None:
    model = std_model(exports)
    ref = snapshot(model)
    p = Patcher(model, [(sigs[c], 1.0) for c in CORRUPTIONS], bn_policy="official")
    p.apply()
    averaged = snapshot(model)
    data = batches(3)
    seen: dict[str, list[torch.Tensor]] = {"net.bn1": [], "net.layer3.0.downsample.1": []}
    mods = dict(model.named_modules())
    hooks = [mods[n].register_forward_pre_hook(lambda m, inp, n=n: seen[n].append(inp[0].detach().clone()))
             for n in seen]
    try:
        p.recalibrate(data)  # A = Σα = 2 ≥ 1: the re-estimated statistics alone
    finally:
        for h in hooks:
            h.remove()
    state = model.state_dict()
    for name, inputs in seen.items():
        assert len(inputs) == len(data)
        # momentum=None: the plain average over the batches of each batch's mean and unbiased variance.
        mean = torch.stack([x.double().mean(dim=(0, 2, 3)) for x in inputs]).mean(0)
        var = torch.stack([x.double().transpose(0, 1).flatten(1).var(1, unbiased=True) for x in inputs]).mean(0)
        assert torch.allclose(state[f"{name}.running_mean"].double(), mean, rtol=1e-5, atol=1e-6), name
        assert torch.allclose(state[f"{name}.running_var"].double(), var, rtol=1e-5, atol=1e-6), name
    bn_names = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    for n in bn_names:  # every BN layer of the network was re-estimated, the deepest ones too
        assert not torch.equal(state[f"{n}.running_mean"], averaged[f"{n}.running_mean"]), n
        assert torch.equal(state[f"{n}.num_batches_tracked"], ref[f"{n}.num_batches_tracked"]), n
        assert torch.equal(state[f"{n}.weight"], averaged[f"{n}.weight"]), n  # γ/β stay averaged
        assert mods[n].momentum == 0.1 and not mods[n].training
    p.remove()
    assert_bit_exact(model, ref)


@pytest.mark.parametrize("alphas", [(0.25, 0.25), (0.3,)])
def test_alpha_mix_of_averaged_and_reestimated(exports: dict[str, str], sigs: dict[str, Path],
                                               alphas: tuple[float, ...]) -> None:
    model = std_model(exports)
    ref = snapshot(model)
    p = Patcher(model, [(sigs[c], a) for c, a in zip(CORRUPTIONS, alphas)], bn_policy="official")
    p.apply()
    averaged = snapshot(model)
    data = batches(2, seed=1)
    reestimated = recalibrate(copy.deepcopy(model), data).state_dict()
    p.recalibrate(data)
    state = model.state_dict()
    A = sum(alphas)
    stat_keys = [k for k in state if k.endswith(("running_mean", "running_var"))]
    assert len(stat_keys) == 2 * sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    for k in stat_keys:
        want = (1 - A) * averaged[k].double() + A * reestimated[k].double()
        assert torch.allclose(state[k].double(), want, rtol=1e-6, atol=1e-7), k
    p.remove()
    assert_bit_exact(model, ref)


def test_unpatch_restores_bit_exactly_after_apply_recalibrate_and_train_forwards(
        exports: dict[str, str], sigs: dict[str, Path]) -> None:
    model = std_model(exports)
    ref = snapshot(model)
    p = Patcher(model, [(sigs["fog"], 0.7)], bn_policy="official")
    for _ in range(2):  # reused backup buffers: twice
        p.apply()
        p.recalibrate(batches(2, seed=2))
        model.train()
        model(batches(1, seed=3)[0][0])  # moves every BN buffer, num_batches_tracked included
        model.eval()
        p.remove()
        assert_bit_exact(model, ref)


def test_policy_mismatches_are_refused(exports: dict[str, str], sigs: dict[str, Path], tmp_path: Path) -> None:
    from rws.stages.extract import extract_all

    extract_all(exports["init"], exports["std"], {"fog": exports["fog"]}, tmp_path, layers={"k": 3}, bits=32,
                bn_policy="robust", analysis=False)
    robust_sig = tmp_path / "fog.safetensors"
    model = std_model(exports)
    ref = snapshot(model)
    with pytest.raises(SignatureMismatchError, match="re-extract it with bn_policy=official"):
        Patcher(model, [robust_sig], bn_policy="official").apply()
    for policy in ("robust", "recalibrate"):
        with pytest.raises(SignatureMismatchError, match="extracted with bn_policy=official"):
            Patcher(model, [sigs["fog"]], bn_policy=policy).apply()
    with pytest.raises(SignatureMismatchError, match="compose official signatures only"):
        Patcher(model, [sigs["fog"], robust_sig]).apply()
    assert_bit_exact(model, ref)
    # std: the convs' RWS only, the standard BN kept.
    with Patcher(model, [sigs["fog"]], bn_policy="std"):
        state = model.state_dict()
        assert all(torch.equal(state[k], ref[k]) for k in load_signature(sigs["fog"]).official)


def test_spec_needs_a_calibration_source(exports: dict[str, str], sigs: dict[str, Path]) -> None:
    from rws.specs import SpecError, build

    base = {"kind": "export", "path": exports["std"]}
    with pytest.raises(SpecError, match=r"bn_policy: official needs a 'calibration' source"):
        build({"kind": "patch", "base": base, "signatures": [{"path": str(sigs["fog"])}], "bn_policy": "official"})
    with pytest.raises(SpecError, match=r"fog.safetensors was extracted with bn_policy=official.*bn_policy: official "
                                        r"with calibration"):
        build({"kind": "patch", "base": base, "signatures": [{"path": str(sigs["fog"])}]})


def test_extract_and_patch_clis(exports: dict[str, str], tmp_path: Path) -> None:
    """``python -m rws.stages.extract ... bn_policy=official`` then ``python -m rws.stages.patch``
    (each stage's main on the composed config, as the command runs it)."""
    from rws.config import compose
    from rws.specs import BuildContext, SpecError
    from rws.stages import extract, patch
    from rws.stages.patch import patch_export
    from rws.weights.export import load_export

    sig_dir = tmp_path / "sigs"
    robust = "{" + ", ".join(f"{c}: {exports[c]}" for c in CORRUPTIONS) + "}"
    extract.main(compose("extract", [f"init={exports['init']}", f"std={exports['std']}", f"robust={robust}",
                                     f"out={sig_dir}", "layers.k=2", "bits=16", "bn_policy=official",
                                     "analysis=false"]))
    model = std_model(exports)
    for c in CORRUPTIONS:
        sig = load_signature(sig_dir / f"{c}.safetensors")
        assert sig.bn_policy == "official" and set(sig.official) == expected_official_keys(model)
    assert json.loads((sig_dir / "analysis.json").read_text())["bn_policy"] == "official"

    source = {"data": "digits", "overrides": [f"paths.cache_dir={tmp_path / 'cache'}"], "corruption": "fog",
              "batches": 2, "batch_size": 8}
    sig_list = ", ".join(f"{{path: {sig_dir / f'{c}.safetensors'}, alpha: 0.25}}" for c in CORRUPTIONS)
    calib = "{data: digits, overrides: ['paths.cache_dir=" + str(tmp_path / "cache") + \
            "'], corruption: fog, batches: 2, batch_size: 8}"
    patch.main(compose("patch", [f"base={exports['std']}", f"out={tmp_path / 'patched'}", f"signatures=[{sig_list}]",
                                 "bn_policy=official", f"calibration={calib}"]))
    out = load_export(tmp_path / "patched")
    record = out.metrics["config"]["patch"]
    assert record["bn_policy"] == "official" and record["calibration"] == source
    # The same model through the API: apply, recalibrate on the source's batches, A = 0.5.
    ref = snapshot(model)
    p = Patcher(model, [(sig_dir / f"{c}.safetensors", 0.25) for c in CORRUPTIONS], bn_policy="official")
    p.apply()
    p.recalibrate(BuildContext().calibration_batches(source))
    assert_bit_exact(model.eval(), out.state_dict)
    p.remove()
    assert_bit_exact(model, ref)
    with pytest.raises(SpecError, match="calibration"):
        patch_export(exports["std"], [{"path": str(sig_dir / "fog.safetensors")}], tmp_path / "nocal",
                     bn_policy="official")
