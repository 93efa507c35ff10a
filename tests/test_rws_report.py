"""RWS tables from hand-made result rows (oracle selection, RA means) and the figure writers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rws.report import rws_figures as F
from rws.report import rws_tables as T

CS = ["gaussian_noise", "fog"]


def _row(model: str, condition: str, level, value: float) -> dict:
    return {"model": model, "suite": "clean" if condition == "clean" else "corruptions", "condition": condition,
            "level": level, "metric": "acc", "value": value, "n": 100}


def _rows() -> list[dict]:
    rows = [_row("std", "clean", "", 0.90), _row("augmented", "clean", "", 0.80)]
    for i, c in enumerate(CS):
        for s in (3, 5):
            base = 0.1 * i + (0.02 if s == 3 else 0.0)
            rows += [_row("std", c, s, 0.30 + base), _row("augmented", c, s, 0.50 + base),
                     _row(f"robust/{c}", c, s, 0.70 + base),
                     # the wrong robust model / signature on this corruption: must never be picked
                     _row(f"robust/{CS[1 - i]}", c, s, 0.01),
                     _row(T.patch_name("std", [("shallow32", CS[1 - i], 1.0)]), c, s, 0.02),
                     _row(T.patch_name("std", [("shallow32", c, 1.0)]), c, s, 0.60 + base),
                     _row(T.patch_name("std", [("shallow32", c, 1.0)], "std"), c, s, 0.35 + base),
                     _row(T.patch_name("std", [("shallow8", c, 1.0)]), c, s, 0.58 + base),
                     _row(T.patch_name("std", [("shallow32", c, 0.5)]), c, s, 0.45 + base)]
        rows += [_row(f"robust/{c}", "clean", "", 0.5), _row(T.patch_name("std", [("shallow32", c, 1.0)]), "clean", "", 0.7),
                 _row(T.patch_name("std", [("shallow32", c, 0.5)]), "clean", "", 0.8)]
    return rows


def test_patch_name_is_canonical() -> None:
    assert T.patch_name("std", [("shallow32", "fog", 1)]) == "std+shallow32:fog@1"
    assert T.patch_name("std", [("shallow32", "fog", 1.0)], "std") == "std+shallow32:fog@1|bn=std"
    assert T.patch_name("std", [("s", "a", 0.0), ("s", "b", 0.5)]) == "std+s:b@0.5"
    assert T.patch_name("std", [("s", "a", 0)]) == "std"


def test_table1_oracle_selection_and_means() -> None:
    t = {r["row"]: r for r in T.table1(T.Results(_rows()), CS, (3, 5), {"Standard": {"mb_files": 1.5}})}
    assert t["Standard"]["TA"] == pytest.approx(0.90)
    assert t["Standard"]["RA@5"] == pytest.approx((0.30 + 0.40) / 2)
    assert t["Standard"]["RA@3"] == pytest.approx((0.32 + 0.42) / 2)
    assert t["Data Augmentation"]["TA"] == pytest.approx(0.80)
    # All Models: the dedicated model on its own corruption, TA of the standard model
    assert t["All Models (oracle)"]["RA@5"] == pytest.approx((0.70 + 0.80) / 2)
    assert t["All Models (oracle)"]["TA"] == pytest.approx(0.90)
    # RWS: the right signature per corruption; TA is the unpatched std model's, not the patched one's (0.7)
    assert t["Standard + RWS_shallow"]["RA@5"] == pytest.approx((0.60 + 0.70) / 2)
    assert t["Standard + RWS_shallow"]["TA"] == pytest.approx(0.90)
    assert t["Standard + RWS_shallow,8bit"]["RA@5"] == pytest.approx((0.58 + 0.68) / 2)
    assert t["Standard + RWS_shallow, BN std (weights only)"]["RA@5"] == pytest.approx((0.35 + 0.45) / 2)
    # a row with missing cells is not averaged over what happens to exist
    assert t["Standard + RWS_full"]["RA@5"] is None
    assert t["Standard"]["mb_files"] == 1.5
    md = T.to_markdown(T.table1(T.Results(_rows()), CS))
    assert "| Standard | 90.00 | 37.00 | 35.00 |" in md and "—" in md


def test_table4_alpha_and_pair_tables() -> None:
    res = T.Results(_rows())
    t4 = {r["row"]: r for r in T.table4(res, CS, 5)}
    assert t4["All Models (oracle)"]["fog"] == pytest.approx(0.80)
    assert t4["Standard + RWS_shallow"]["gaussian_noise"] == pytest.approx(0.60)
    assert t4["Standard"]["mean"] == pytest.approx(0.35)
    sweep = T.alpha_table(res, CS, (0.5, 1.0), (3, 5))
    fog = [r for r in sweep if r["corruption"] == "fog"]
    assert [r["alpha"] for r in fog] == [0.0, 0.5, 1.0]
    assert fog[0]["clean"] == pytest.approx(0.90) and fog[0]["sev5"] == pytest.approx(0.40)  # α=0 is std
    assert fog[1]["sev5"] == pytest.approx(0.55) and fog[2]["clean"] == pytest.approx(0.7)
    grid = T.pair_grid(res, ("gaussian_noise", "fog"), (0.0, 1.0), 5)
    one = next(r for r in grid if r["alpha_gaussian_noise"] == 1.0 and r["alpha_fog"] == 0.0)
    assert one["gaussian_noise"] == pytest.approx(0.60) and one["fog"] == pytest.approx(0.02)


def test_transfer_gain() -> None:
    rows = [_row("tiny/std", "fog", 5, 0.10), _row("tiny/std+shallow32:fog@1", "fog", 5, 0.15),
            _row("tiny/std+shallow32:fog@1|bn=std", "fog", 5, 0.08)]
    t = T.transfer_table(T.Results(rows), "tiny/std", "shallow32", ["fog"], (5,))
    assert t[0]["gain(bn=robust)"] == pytest.approx(0.05) and t[0]["gain(bn=std)"] == pytest.approx(-0.02)


def test_write_all(tmp_path: Path) -> None:
    plan = {"corruptions": CS, "severities": [3, 5], "alphas": [0.5, 1.0], "pair": CS, "pair_alphas": [0.0, 1.0],
            "compositions": {"both": [["shallow32", c, 1.0] for c in CS]}}
    T.write_all(_rows(), plan, tmp_path)
    for f in ("table1.md", "table4.md", "alpha_sweep.md", "composition.md", "transfer.md"):
        assert (tmp_path / f).read_text().startswith("#")
    assert json.loads((tmp_path / "tables.json").read_text())["tables"]["table1"][0]["row"] == "Standard"


def _analysis() -> dict:
    layers = ["net.features.0", "net.features.3", "net.classifier"]
    cos = {l: {a: {b: (1.0 if a == b else 0.3) for b in CS} for a in CS} for l in [*layers, "__all__"]}
    return {"layer_order": layers, "relative_norm": {c: {l: 0.1 / (i + 1) for i, l in enumerate(layers)} for c in CS},
            "cosine": cos}


def test_figures_write_png(tmp_path: Path) -> None:
    res = T.Results(_rows())
    paths = [F.fig_layer_norms(_analysis(), tmp_path / "a.png"),
             F.fig_cosine_layers(_analysis(), tmp_path / "b.png"),
             F.fig_alpha_sweep(T.alpha_table(res, CS, (0.5, 1.0)), tmp_path / "c.png"),
             F.fig_composition(T.pair_grid(res, tuple(CS), (0.0, 1.0)), CS, tmp_path / "d.png")]
    cross = {"net.features.0": {"fog": {"fog": 0.8}, "gaussian_noise": {"fog": 0.1}},
             "__all__": {"fog": {"fog": 0.7}, "gaussian_noise": {"fog": 0.05}}}
    paths.append(F.fig_cross_dataset(cross, tmp_path / "e.png"))
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_feature_map_figure_and_cross_cosines(tmp_path: Path) -> None:
    from rws.models import create_model
    from rws.weights.export import save_export
    from rws.weights.signatures import extract_signature
    from rws.weights.layer_select import model_groups, select_from_cfg
    from rws.weights.signature_io import Signature, save_signature

    torch.manual_seed(0)
    cfg = {"_target_": "rws.models.create_model", "name": "small_cnn", "num_classes": 10}
    models = [create_model("small_cnn", num_classes=10) for _ in range(3)]
    save_export(tmp_path / "std", models[1], cfg)
    groups = model_groups(models[1])
    names, keys = select_from_cfg(groups, list(models[1].state_dict()), {"k": 2})
    sigs = {}
    for c in ("fog", "contrast"):
        rws, stats = extract_signature(models[0].state_dict(), models[1].state_dict(), models[2].state_dict(), keys,
                                       "per_tensor", groups)
        sigs[c] = save_signature(tmp_path / f"{c}.safetensors",
                                 Signature(rws=rws, stats=stats, layers=names, corruption=c, model_cfg=cfg,
                                           bn_policy="robust"))
    cos = F.cross_dataset_cosines(sigs, {"fog": sigs["fog"]})
    assert cos["__all__"]["fog"]["fog"] == pytest.approx(1.0)
    p = F.fig_feature_maps(tmp_path / "std", sigs["fog"], torch.rand(3, 32, 32), "fog", tmp_path / "f.png",
                           n_channels=4)
    assert p.stat().st_size > 1000
