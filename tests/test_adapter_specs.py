"""Post-hoc adapter specs: {kind: adapter} (modes, beta, the token plane), {kind: ensemble}
(probability level) and the beta-grid sweep generator that switches beta in place."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import rws.specs as specs
from rws.models import create_model
from rws.models.contracts import using_mode
from rws.specs.registry import SpecError
from rws.weights.export import load_export, save_export

CFG = {"_target_": "rws.models.create_model", "name": "vit_cpu_patch4_32", "num_classes": 10,
       "adapter": "cls_token", "global_pool": "avg"}


def _images(n: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def adapter_export(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create_model(**{k: v for k, v in CFG.items() if k != "_target_"})
    net = model.net
    # Make the two tokens different, as co-training does, so the modes answer differently.
    with torch.no_grad():
        clean, robust = net.domain_parameters()["cls_token"]
        clean.normal_(0, 1.0)
        robust.normal_(0, 1.0)
    return save_export(tmp_path_factory.mktemp("adapter") / "export", model.eval(), CFG)


def _spec(path: Path, **mode) -> dict:
    return {"kind": "adapter", "base": {"kind": "export", "path": str(path)}, **mode}


def test_adapter_spec_builds_each_mode(adapter_export: Path) -> None:
    x = _images()
    ref = load_export(adapter_export).build()
    with using_mode(ref, "clean"):
        clean = ref(x)
    with using_mode(ref, "robust"):
        robust = ref(x)
    assert not torch.allclose(clean, robust)
    assert torch.equal(specs.build(_spec(adapter_export, mode="clean"))(x), clean)
    assert torch.equal(specs.build(_spec(adapter_export, beta=1.0))(x), clean)
    assert torch.equal(specs.build(_spec(adapter_export, beta1=1.0, beta2=0.0))(x), clean)
    assert torch.equal(specs.build(_spec(adapter_export, beta=0.0))(x), robust)
    with using_mode(ref, 0.3):
        mixed = ref(x)
    assert torch.equal(specs.build(_spec(adapter_export, beta=0.3))(x), mixed)


@pytest.mark.parametrize("mode", [{"beta": float("nan")}, {"beta": float("inf")}, {}, {"beta": 0.5, "mode": "clean"},
                                  {"beta1": 0.5}, {"mode": 3}, {"beta": "abc"}])
def test_bad_adapter_specs_are_spec_errors(mode) -> None:
    with pytest.raises(SpecError):
        specs.validate(_spec(Path("/nowhere"), **mode))


def test_adapter_spec_on_a_model_without_modes_is_an_error(tmp_path: Path) -> None:
    cfg = {"_target_": "rws.models.create_model", "name": "small_cnn", "num_classes": 10, "width": 0.25}
    path = save_export(tmp_path / "plain", create_model("small_cnn", num_classes=10, width=0.25), cfg)
    with pytest.raises(SpecError, match="declares no modes"):
        specs.build(_spec(path, mode="clean"))


def test_unknown_mode_name_is_an_error(adapter_export: Path) -> None:
    with pytest.raises(SpecError, match="unknown mode"):
        specs.build(_spec(adapter_export, mode="adversarial"))


def test_ensemble_is_the_weighted_mean_of_probabilities(adapter_export: Path) -> None:
    x = _images()
    members = [_spec(adapter_export, mode="clean"), _spec(adapter_export, mode="robust")]
    pc = specs.build(members[0])(x).softmax(-1)
    pr = specs.build(members[1])(x).softmax(-1)
    ens = specs.build({"kind": "ensemble", "members": members, "weights": [0.7, 0.3]})
    assert torch.allclose(ens(x).exp(), 0.7 * pc + 0.3 * pr, atol=1e-6)
    # Weight 1 on one member is that member's log-probabilities exactly.
    only = specs.build({"kind": "ensemble", "members": members, "weights": [1, 0]})
    assert torch.equal(only(x), specs.build(members[0])(x).log_softmax(-1))
    # The members are separate modules: the robust member stays robust after the clean one ran.
    assert torch.allclose(ens(x).exp(), 0.7 * pc + 0.3 * pr, atol=1e-6)
    default = specs.build({"kind": "ensemble", "members": members})
    assert torch.allclose(default(x).exp(), 0.5 * (pc + pr), atol=1e-6)


@pytest.mark.parametrize("weights", [[1.0], [1.0, float("nan")], [-1.0, 2.0], [0, 0], "abc"])
def test_bad_ensemble_weights_are_spec_errors(weights) -> None:
    with pytest.raises(SpecError):
        specs.validate({"kind": "ensemble", "members": ["/a", "/b"], "weights": weights})


def test_beta_grid_equals_building_each_spec_and_builds_once(adapter_export: Path, tmp_path: Path,
                                                             monkeypatch) -> None:
    from rws.stages.sweep.generators import AdapterBetaGrid
    from rws.stages.sweep.run import run_sweep
    import rws.weights.export as export_mod

    builds = []
    original = export_mod.Export.build
    gen = AdapterBetaGrid(str(adapter_export), betas=[0.0, 0.5, 1.0, 1.05])
    x = _images(6)
    for i, spec in enumerate(gen.specs()):
        assert torch.equal(gen.model(i, torch.device("cpu"))(x), specs.build(spec)(x)), spec
    assert gen.labels()[3] == "beta=1.05" and gen.extras()[1] == {"beta": 0.5}

    # Through the sweep: one build for the whole grid, rows equal the separately built specs.
    def counting(self, *a, **kw):
        builds.append(1)
        return original(self, *a, **kw)

    monkeypatch.setattr(export_mod.Export, "build", counting)
    g = torch.Generator().manual_seed(1)
    xs, ys = torch.rand(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)
    out = tmp_path / "beta"
    run_sweep({"adapter": {"base": str(adapter_export), "betas": [0.0, 1.0]}, "out": str(out), "seed": 0,
               "targets": [{"name": "clean", "suite": "clean", "k": 16}], "progress": False}, x=xs, y=ys,
              figures=False, log=lambda s: None)
    assert len(builds) == 1
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    acc = {r["model"]: r["value"] for r in rows if r["suite"] == "clean"}
    for beta in (0.0, 1.0):
        model = specs.build(_spec(adapter_export, beta=beta))
        expected = (model(xs).argmax(1) == ys).float().mean().item()
        assert math.isclose(acc[f"beta={beta:g}"], expected), (beta, acc)


def test_beta_plane_grid(adapter_export: Path) -> None:
    from rws.stages.sweep.generators import AdapterBetaGrid

    gen = AdapterBetaGrid(str(adapter_export), plane={"low": 0.0, "high": 1.0, "step": 0.5})
    coords, names = gen.coordinates()
    assert names == ["beta1", "beta2"] and coords.shape == (9, 2)
    i = gen.extras().index({"beta1": 1.0, "beta2": 0.0})
    x = _images(4)
    assert torch.equal(gen.model(i, torch.device("cpu"))(x), specs.build(_spec(adapter_export, mode="clean"))(x))
    with pytest.raises(ValueError, match="plane"):
        AdapterBetaGrid(str(adapter_export), plane={"low": 0, "high": 1, "step": 0})
    with pytest.raises(ValueError, match="betas"):
        AdapterBetaGrid(str(adapter_export), betas=[float("nan")])
