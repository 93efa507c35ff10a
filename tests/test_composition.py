"""The composition study (rws.pipelines.rws_composition, rws.report.composition_tables) and the
VGG variants it trains (no norm with the official init, GroupNorm)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from rws.models import create_model, layer_groups
from rws.pipelines import rws_composition as rc
from rws.report import composition_tables as ct


def test_vgg_variants_differ_only_in_their_norm() -> None:
    plain = create_model("vgg16", 10, width=0.25).net
    gn = create_model("vgg16_gn", 10, width=0.25).net
    bn = create_model("vgg16_bn", 10, width=0.25).net
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)) for m in plain.modules())
    gns = [m for m in gn.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(gns) == 13 and all(m.num_channels % m.num_groups == 0 for m in gns)
    assert not [k for k in gn.state_dict() if "running" in k]  # a GN signature is weights only
    assert len(layer_groups(create_model("vgg16_gn", 10, width=0.25))) == len(layer_groups(
        create_model("vgg16_bn", 10, width=0.25)))
    assert sum(p.numel() for p in gn.parameters()) == sum(p.numel() for p in bn.parameters())


def test_official_init_is_kaiming_fan_out_with_zero_bias() -> None:
    torch.manual_seed(0)
    net = create_model("vgg16", 10, width=1.0, init="official").net
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    for m in convs[4:]:  # enough elements for the std to be within 3 %
        expected = math.sqrt(2.0 / (9 * m.out_channels))
        assert abs(float(m.weight.std()) / expected - 1) < 0.03
        assert float(m.bias.abs().max()) == 0.0
    with pytest.raises(ValueError, match="init"):
        create_model("vgg16", 10, init="nope")


def test_plan_trains_extracts_and_evaluates_each_network(tmp_path: Path) -> None:
    steps = rc.plan(replace(rc.Settings.smoke(), networks=list(rc.NETWORKS)), tmp_path)
    names = [s.name for s in steps]
    for net in rc.NETWORKS:
        assert f"{net}/init" in names and f"{net}/std" in names and f"{net}/sigs" in names
        assert all(f"{net}/robust/{c}" in names for c in rc.COMPOSED)
        model = next(s for s in steps if s.name == f"{net}/init").argv
        assert f"model={rc.NETWORKS[net].model}" in model
    ev = next(s for s in steps if s.name == "eval/vgg_composition")
    # every spec file names the run's signatures and base
    specs = [json.loads(json.dumps(__import__("yaml").safe_load(v))) for v in ev.files.values()]
    assert len(specs) == len(rc.row_specs(tmp_path, "vgg"))
    uniform = next(sp for sp in specs if sp.get("name") == rc.spec_name((0.25,) * 4))
    assert [s["alpha"] for s in uniform["signatures"]] == [0.25] * 4
    assert {Path(s["path"]).stem for s in uniform["signatures"]} == set(rc.COMPOSED)
    # the official-code convention: (α/n)² per signature for α = 1, n = 4
    assert rc.COEFFICIENT_SETS["official default ((α/n)², α = 1)"] == ((1 / 4) ** 2,) * 4
    bn_rows = [label for label, _ in rc.row_specs(tmp_path, "vgg_bn")]
    assert "α = 1 each, bn_mix: convex" in bn_rows
    assert "α = 1 each, bn_mix: convex" not in [label for label, _ in rc.row_specs(tmp_path, "vgg")]


@pytest.mark.parametrize("net", list(rc.NETWORKS))
def test_each_network_trains_with_its_recipe(tmp_path: Path, net: str) -> None:
    """The composed configs carry the network's optimizer and learning rates: θ_init at init_lr,
    the clean and the corruption fine-tunes (``method=corruption`` swaps the method group) at ft_lr."""
    from rws.config import compose

    network = rc.NETWORKS[net]
    steps = {s.name: s for s in rc.plan(replace(rc.Settings(), networks=[net]), tmp_path)}
    expected = {f"{net}/init": network.init_lr, f"{net}/std": network.ft_lr, f"{net}/robust/fog": network.ft_lr}
    for name, lr in expected.items():
        app, overrides = steps[name].hydra_app()  # type: ignore[misc]
        cfg = compose(app, overrides)
        assert cfg.model.name == network.model.removesuffix("_narrow") and cfg.model.width == 0.25
        assert cfg.method.optim.name == ("adam" if network.optim else "sgd")
        assert float(cfg.method.optim.lr) == lr
        assert float(cfg.method.optim.weight_decay) == (0.0 if network.optim else 5e-4)
        assert cfg.trainer.max_epochs == (rc.Settings().init_epochs if name.endswith("init") else rc.Settings().ft_epochs)
        assert cfg.data.subset_per_class == 1000 and cfg.data.test_subset == 2000
    robust = compose(*steps[f"{net}/robust/fog"].hydra_app())  # type: ignore[misc]
    assert robust.method.name == "corruption" and robust.method.corruptions == "fog" and robust.method.severity == 5


def _rows(acc: dict[str, dict[str, float]]) -> list[dict]:
    rows = []
    for model, conds in acc.items():
        for cond, v in conds.items():
            suite = "clean" if cond == "clean" else "corruptions"
            rows.append({"model": model, "suite": suite, "condition": cond, "level": 5, "metric": "acc",
                         "value": v / 100})
    return rows


def test_table_and_verdict_from_hand_made_rows(tmp_path: Path) -> None:
    composed, others = list(rc.COMPOSED), list(rc.OTHERS)
    std = {"clean": 60.0, **{c: 30.0 for c in composed}, **{o: 40.0 for o in others}}
    uniform = {"clean": 59.0, **{c: 34.0 for c in composed}, **{o: 39.5 for o in others}}
    strong = {"clean": 40.0, **{c: 45.0 for c in composed}, **{o: 20.0 for o in others}}
    acc = ct.accuracy_by_model(_rows({"std": std, "u": uniform, "s": strong}))
    assert acc["u"]["fog"] == pytest.approx(34.0)
    rows = [["θ_std (unpatched)", "std"], ["uniform (Σα = 1)", "u"], ["α = 1 each (Σα = 4)", "s"]]
    recs = ct.network_table(acc, rows, composed, others)
    assert recs[1]["composed mean"] == pytest.approx(34.0) and recs[1]["others mean"] == pytest.approx(39.5)
    v = ct.verdict(recs, {k: list(c) for k, c in rc.COEFFICIENT_SETS.items()})
    assert v["holds"] is True
    # Σα = 4 is not judged (the paper's claim is about coefficient sets of "different specialties")
    assert [c["row"] for c in v["compositions"]] == ["uniform (Σα = 1)"]
    assert v["compositions"][0] == {"row": "uniform (Σα = 1)", "gain": 4.0, "clean_drop": 1.0,
                                    "others_drop": 0.5, "holds": True}
    # single signatures that do not help their own corruption: nothing to compose, undecided
    singles = [[f"single RWS_{c}, α = 1", f"one_{c}"] for c in composed]
    acc1 = {**acc, **{f"one_{c}": {**std, c: 30.5} for c in composed}}
    recs1 = ct.network_table(acc1, rows[:1] + singles + rows[1:2], composed, others)
    v1 = ct.verdict(recs1, {k: list(c) for k, c in rc.COEFFICIENT_SETS.items()}, composed)
    assert v1["holds"] is None and v1["single_gain"] == pytest.approx(0.5)
    # composing adds up when a Σα ≤ 1 set beats the best single signature on the composed mean
    best_one = {f"one_{c}": {**std, c: 40.0} for c in composed}  # each +10 on its own: composed mean 32.5
    recs2 = ct.network_table({**acc, **best_one}, rows[:1] + singles + rows[1:], composed, others)
    b = ct.verdict(recs2, {k: list(c) for k, c in rc.COEFFICIENT_SETS.items()}, composed)["beyond_singles"]
    assert b["best_single_composed_mean"] == pytest.approx(32.5)
    assert b["compositions"] == [{"row": "uniform (Σα = 1)", "composed mean": 34.0, "over best single": 1.5}]
    assert ct.verdict(recs, {k: list(c) for k, c in rc.COEFFICIENT_SETS.items()})["beyond_singles"] is None
    # a θ_std at chance (CIFAR-10: 12 % < 2 × 10 %) gets no verdict, whatever the patched rows do
    low = {"std": {**std, "clean": 12.0}, "u": {**uniform, "clean": 11.5}}
    recs_low = ct.network_table(ct.accuracy_by_model(_rows(low)), rows[:2], composed, others)
    v_low = ct.verdict(recs_low, {k: list(c) for k, c in rc.COEFFICIENT_SETS.items()}, composed, 10)
    assert v_low["holds"] is None and "has not learned" in v_low["why"]
    # the same gain with 3 points of clean accuracy lost does not count
    lossy = {**uniform, "clean": 57.0}
    recs = ct.network_table(ct.accuracy_by_model(_rows({"std": std, "u": lossy})), rows[:2], composed, others)
    assert ct.verdict(recs, {k: list(c) for k, c in rc.COEFFICIENT_SETS.items()})["holds"] is False


def test_write_report_writes_markdown_json_and_figure(tmp_path: Path) -> None:
    from rws.utils.io import write_text

    info = rc.plan_info(rc.Settings(networks=["vgg"]), tmp_path)
    std_name = info["networks"]["vgg"]["rows"][0][1]
    uni_name = {label: name for label, name, _sid in info["networks"]["vgg"]["rows"]}["uniform (Σα = 1)"]
    composed, others = list(rc.COMPOSED), list(rc.OTHERS)
    ids = {name: sid for _label, name, sid in info["networks"]["vgg"]["rows"]}
    rows = [{**r, "spec_id": ids[r["model"]]} for r in _rows({
        std_name: {"clean": 60.0, **{c: 30.0 for c in composed + others}},
        uni_name: {"clean": 59.5, **{c: 33.0 for c in composed}, **{o: 30.0 for o in others}}})]
    write_text(tmp_path / "vgg" / "eval" / "results.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    md = ct.write_report(tmp_path, info)
    assert "| uniform (Σα = 1) | 59.5 | 33.0 | 33.0 | 33.0 | 33.0 | 33.0 | 30.0 |" in md
    assert "**holds** for uniform (Σα = 1)" in md
    saved = json.loads((tmp_path / "composition.json").read_text())
    assert saved["verdicts"]["vgg"]["holds"] is True
    assert (tmp_path / "figures" / "composition.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
