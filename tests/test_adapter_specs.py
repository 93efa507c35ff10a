"""Post-hoc adapter specs: {kind: adapter} (modes, beta, the token plane), {kind: ensemble}
(probability level) and the beta-grid sweep generator that switches beta in place."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import rws.specs as specs
from rws.models import create_model
from rws.models.contracts import get_mode, using_mode
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
              log=lambda s: None)
    assert len(builds) == 1
    curves = json.loads((out / "sweep.json").read_text())["generator"]
    assert (out / "figures" / "beta_curves.png").is_file() and curves["axes"] == ["beta"]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    acc = {r["model"]: r["value"] for r in rows if r["suite"] == "clean"}
    for beta in (0.0, 1.0):
        model = specs.build(_spec(adapter_export, beta=beta))
        expected = (model(xs).argmax(1) == ys).float().mean().item()
        assert math.isclose(acc[f"beta={beta:g}"], expected), (beta, acc)
    # The sweep's own figure plots those accuracies against beta (no robust target: no robust curve).
    from rws.stages.sweep.run import _adapter_figures

    data = _adapter_figures(out, curves)
    assert data["beta"] == [0.0, 1.0] and data["clean"] == [acc["beta=0"], acc["beta=1"]]
    assert data["robust"] == [None, None]


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
    with pytest.raises(ValueError, match="not both"):
        AdapterBetaGrid(str(adapter_export), betas=[0.5], plane={"low": 0, "high": 1, "step": 0.5})


def test_adapter_and_ensemble_spec_ids_are_pinned() -> None:
    # Result rows and resume are keyed by these ids: a change to canonical() or to the kinds'
    # spelling must be deliberate. beta 0.5 and 0.5 + 1e-13 are one recipe (12 significant digits).
    base = {"kind": "export", "path": "/x/export"}
    assert specs.spec_id({"kind": "adapter", "base": base, "beta": 0.5}) == "1f3ba07e5ff1"
    assert specs.spec_id({"kind": "adapter", "base": base, "beta": 0.5000000000001}) == "1f3ba07e5ff1"
    assert specs.spec_id({"kind": "adapter", "base": base, "beta1": 1, "beta2": 0.5}) == "8b56cfe2c0cd"
    robust = {"kind": "adapter", "base": base, "mode": "robust"}
    assert specs.spec_id(robust) == "676ac81de330"
    ens = {"kind": "ensemble", "members": [{**robust, "mode": "clean"}, robust], "weights": [0.7, 0.3]}
    assert specs.spec_id(ens) == "0b75164cc1aa"
    assert specs.spec_name(ens) == "ensemble[0.7*x@clean, 0.3*x@robust]"
    assert specs.spec_name({"kind": "adapter", "base": base, "beta1": 1, "beta2": 0.5}) == "x@beta=(1,0.5)"


def test_ensemble_members_of_one_export_share_no_tensor(adapter_export: Path) -> None:
    members = [_spec(adapter_export, mode="clean"), _spec(adapter_export, mode="robust")]
    ens = specs.build({"kind": "ensemble", "members": members})
    a, b = ens.members
    assert a is not b and get_mode(a) == "clean" and get_mode(b) == "robust"
    ptrs_a = {t.data_ptr() for t in a.state_dict().values()}
    assert ptrs_a.isdisjoint(t.data_ptr() for t in b.state_dict().values())
    # Attacks use cross-entropy on the forward: it is -log of the mixed probability of the label.
    x, y = _images(4), torch.tensor([0, 1, 2, 3])
    p = 0.5 * (a(x).softmax(-1) + b(x).softmax(-1))
    ce = torch.nn.functional.cross_entropy(ens(x), y, reduction="none")
    assert torch.allclose(ce, -p[torch.arange(4), y].log(), atol=1e-6)


def test_beta_curves_plot_the_entries(tmp_path: Path) -> None:
    from rws.report import adapter_figures as figs

    entries = [{"beta": 0.0, "clean": 0.5, "robust": 0.4, "corruption_mean": None},
               {"beta": 1, "clean": 0.8, "robust": 0.1, "corruption_mean": 0.6}]
    data = figs.beta_curves(entries, tmp_path / "b.png")
    assert data == {"beta": [0.0, 1.0], "clean": [0.5, 0.8], "robust": [0.4, 0.1], "corruption_mean": [None, 0.6]}
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"
    curves = {"soup": entries, "ensemble": [{"clean": 0.7, "robust": 0.2}, {"clean": None, "robust": 0.3}]}
    pts = figs.soup_vs_ensemble(curves, tmp_path / "s.png")
    # Percent, and a point without both accuracies is left out rather than plotted at 0.
    assert pts == {"soup": [(50.0, 40.0), (80.0, 10.0)], "ensemble": [(70.0, 20.0)]}


def test_patch_embed_weight_picks_the_mode(tmp_path: Path) -> None:
    from rws.report.adapter_figures import filter_components, patch_embed_weight

    cfg = {**CFG, "adapter": "patch_embed"}
    torch.manual_seed(0)
    model = create_model(**{k: v for k, v in cfg.items() if k != "_target_"})
    clean, robust = model.net.domain_parameters()["patch_embed.proj.weight"]
    with torch.no_grad():
        robust.mul_(-2.0)
    path = save_export(tmp_path / "pe", model, cfg)
    assert torch.equal(patch_embed_weight(path), clean)
    assert torch.equal(patch_embed_weight(path, "robust"), robust)
    assert filter_components(patch_embed_weight(path)).shape == (28, 4, 4, 3)
    with pytest.raises(ValueError, match="clean or robust"):
        patch_embed_weight(path, "both")


def test_plane_sweep_writes_the_token_plane(tmp_path: Path) -> None:
    from rws.stages.sweep.run import _adapter_figures, run_sweep

    # Token pooling: the cls token is the head's input, so the four corners answer differently.
    cfg = {**CFG, "global_pool": "token"}
    torch.manual_seed(0)
    model = create_model(**{k: v for k, v in cfg.items() if k != "_target_"})
    with torch.no_grad():
        for t in model.net.domain_parameters()["cls_token"]:
            t.normal_(0, 1.0)
    export = save_export(tmp_path / "export", model.eval(), cfg)
    xs = _images(8, seed=2)
    ys = specs.build(_spec(export, mode="clean"))(xs).argmax(1)  # labels the clean mode gets all right
    out = tmp_path / "plane"
    targets = [{"name": "clean", "suite": "clean", "k": 8},
               {"name": "linf", "suite": "adversarial", "threat": {"norm": "linf", "eps": "8/255"}, "k": 4}]
    run_sweep({"adapter": {"base": str(export), "plane": {"low": 0, "high": 1, "step": 1}}, "out": str(out),
               "seed": 0, "targets": targets, "attacks": ["apgd-ce"], "attack_steps": 5, "progress": False},
              x=xs, y=ys, log=lambda s: None)
    assert (out / "figures" / "token_plane.png").is_file()
    assert not (out / "figures" / "beta_curves.png").exists()
    meta = json.loads((out / "sweep.json").read_text())
    grids = _adapter_figures(out, meta["generator"])
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    clean = {r["model"]: r["value"] for r in rows if r["suite"] == "clean"}
    robust = {r["model"]: r["value"] for r in rows if r["suite"] == "adversarial" and r["condition"] == "linf"}
    assert clean["beta=1,0"] == 1.0 and clean["beta=0,1"] < 1.0
    assert list(grids["beta1"]) == [0.0, 1.0] and list(grids["beta2"]) == [0.0, 1.0] and grids["clean"].shape == (2, 2)
    # Row beta2, column beta1: (beta1=1, beta2=0) is the clean mode, (0, 1) the robust one.
    for (b1, b2), (i, j) in {(1, 0): (0, 1), (0, 1): (1, 0), (0, 0): (0, 0), (1, 1): (1, 1)}.items():
        assert math.isclose(grids["clean"][i, j], 100 * clean[f"beta={b1},{b2}"])
        assert math.isclose(grids["robust"][i, j], 100 * robust[f"beta={b1},{b2}"])
    assert np.nanmax(grids["normalized_mean"]) <= 1.0 and np.nanmin(grids["normalized_mean"]) >= 0.0
