"""RWS tables from hand-made result rows (selection by spec fields, oracle selection, RA means), the
figure writers, and the analysis stage that computes what the figures need from models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rws.report import rws_figures as F
from rws.report import rws_tables as T
from rws.stages import rws_analysis as A

CS = ["gaussian_noise", "fog"]
ROOT = "/runs/rws"


def _export(role: str) -> dict:
    return {"kind": "export", "path": f"{ROOT}/{role}/export"}


def _patch(base: str, sigs: list[tuple[str, str, float]], bn: str | None = "robust", **extra) -> dict:
    def sig_path(label: str, c: str) -> str:
        if label.startswith("tiny/"):
            return f"{ROOT}/tiny/sigs/{label[5:]}/{c}.safetensors"
        return f"{ROOT}/sigs/{label}/{c}.safetensors"

    spec = {"kind": "patch", "base": _export(base),
            "signatures": [{"path": sig_path(label, c), "alpha": a} for label, c, a in sigs], **extra}
    if bn is not None:
        spec["bn_policy"] = bn
    return spec


def _row(spec: dict, condition: str, level, value: float, model: str = "a label the tables never read") -> dict:
    return {"spec": json.dumps(spec, sort_keys=True), "model": model,
            "suite": "clean" if condition == "clean" else "corruptions", "condition": condition,
            "level": level, "metric": "acc", "value": value, "n": 100}


def _rows() -> list[dict]:
    rows = [_row(_export("std"), "clean", "", 0.90), _row(_export("augmented"), "clean", "", 0.80)]
    for i, c in enumerate(CS):
        other = CS[1 - i]
        for s in (3, 5):
            base = 0.1 * i + (0.02 if s == 3 else 0.0)
            rows += [_row(_export("std"), c, s, 0.30 + base), _row(_export("augmented"), c, s, 0.50 + base),
                     _row(_export(f"robust/{c}"), c, s, 0.70 + base),
                     # the wrong robust model / signature on this corruption: must never be picked
                     _row(_export(f"robust/{other}"), c, s, 0.01),
                     _row(_patch("std", [("shallow32", other, 1.0)]), c, s, 0.02),
                     _row(_patch("std", [("shallow32", c, 1.0)]), c, s, 0.60 + base),
                     _row(_patch("std", [("shallow32", c, 1.0)], "std"), c, s, 0.35 + base),
                     _row(_patch("std", [("shallow8", c, 1.0)]), c, s, 0.58 + base),
                     _row(_patch("std", [("shallow32", c, 0.5)]), c, s, 0.45 + base),
                     # same recipe with convex BN mixing: a different model, never a Table 1 cell
                     _row(_patch("std", [("shallow32", c, 1.0)], bn_mix="convex"), c, s, 0.99),
                     _row(_patch("std", [("shallow32", c, 1.0)], "recalibrate",
                                 calibration={"corruption": c, "severity": 5, "batches": 2, "split": "train"}),
                          c, s, 0.62 + base)]
        rows += [_row(_export(f"robust/{c}"), "clean", "", 0.5),
                 _row(_patch("std", [("shallow32", c, 1.0)]), "clean", "", 0.7),
                 _row(_patch("std", [("shallow32", c, 0.5)]), "clean", "", 0.8)]
    return rows


def test_parse_recipe_reads_spec_fields() -> None:
    root = Path(ROOT)
    assert T.parse_recipe(json.dumps(_export("robust/fog")), root) == T.export("robust/fog")
    r = T.parse_recipe(_patch("tiny/std", [("tiny/shallow32", "gaussian_noise", 1), ("shallow8", "fog", 0.5)], "std"),
                       root)
    assert r == T.Recipe("tiny/std", (("tiny/shallow32", "gaussian_noise", 1.0), ("shallow8", "fog", 0.5)), "std")
    # α=0 signatures are no-ops: a patch with none left is its base
    assert T.parse_recipe(_patch("std", [("shallow32", "fog", 0.0)]), root) == T.export("std")
    assert T.patch("std", [("s", "a", 0.0), ("s", "b", 0.5)]) == T.Recipe("std", (("s", "b", 0.5),), "robust")
    # 1/3 as the plan writes it (6 digits) and as a spec stores it (12 digits) is one α
    assert T.patch("std", [("s", "a", round(1 / 3, 6))]) == T.patch("std", [("s", "a", 0.333333333333)])
    assert T.parse_recipe(_patch("std", [("shallow32", "fog", 1)], bn_mix="convex"), root).bn_mix == "convex"
    soup = {"kind": "soup", "members": [{"spec": _export("std"), "weight": 1.0}]}
    assert T.parse_recipe(soup, root) is None
    assert T.infer_root(_rows()) == root


def test_results_select_by_spec_not_by_model_name() -> None:
    rows = [_row(_export("std"), "clean", "", 0.9, model="robust/fog"),
            _row(_export("robust/fog"), "clean", "", 0.1, model="std")]
    res = T.Results(rows, ROOT)
    assert res.acc(T.export("std")) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="spec"):
        T.Results([{"model": "std", "condition": "clean", "level": "", "value": 0.5}], ROOT)


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
    assert t["Standard + RWS_shallow, BN recalibrated"]["RA@5"] == pytest.approx((0.62 + 0.72) / 2)
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


def test_composition_recalibrated_rows_only_when_measured() -> None:
    sigs = [("shallow32", c, 1.0) for c in CS]
    rows = _rows() + [_row(_patch("std", sigs), c, 5, 0.2) for c in CS]
    labels = [r["row"] for r in T.composition_table(T.Results(rows), {"both": sigs}, CS, 5)]
    assert labels == ["Standard (no patch)", "single right signature (oracle)", "both"]
    rows += [_row(_patch("std", sigs, "recalibrate", calibration={"corruptions": CS, "batches": 2}), c, 5, 0.3)
             for c in CS]
    t = {r["row"]: r for r in T.composition_table(T.Results(rows), {"both": sigs}, CS, 5)}
    assert t["both, BN recalibrated"]["mean"] == pytest.approx(0.3) and t["both"]["mean"] == pytest.approx(0.2)


def test_transfer_gain() -> None:
    rows = [_row(_export("tiny/std"), "fog", 5, 0.10), _row(_patch("tiny/std", [("shallow32", "fog", 1)]), "fog", 5, 0.15),
            _row(_patch("tiny/std", [("shallow32", "fog", 1)], "std"), "fog", 5, 0.08),
            # the Tiny-ImageNet signature set is not the CIFAR-10 one
            _row(_patch("tiny/std", [("tiny/shallow32", "fog", 1)]), "fog", 5, 0.50)]
    t = T.transfer_table(T.Results(rows, ROOT), "tiny/std", "shallow32", ["fog"], (5,))
    assert t[0]["gain(bn=robust)"] == pytest.approx(0.05) and t[0]["gain(bn=std)"] == pytest.approx(-0.02)


def test_write_all_and_cli(tmp_path: Path) -> None:
    plan = {"corruptions": CS, "severities": [3, 5], "alphas": [0.5, 1.0], "pair": CS, "pair_alphas": [0.0, 1.0],
            "compositions": {"both": [["shallow32", c, 1.0] for c in CS]}}
    T.write_all(_rows(), plan, tmp_path / "a")
    for f in ("table1.md", "table4.md", "alpha_sweep.md", "composition.md", "transfer.md"):
        assert (tmp_path / "a" / f).read_text().startswith("#")
    assert json.loads((tmp_path / "a" / "tables.json").read_text())["tables"]["table1"][0]["row"] == "Standard"
    # the CLI over two result files and the tables.json's plan gives the same files
    rows = _rows()
    for name, part in (("r1", rows[:20]), ("r2", rows[20:])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    T.main([str(tmp_path / "r1"), str(tmp_path / "r2"), "--plan", str(tmp_path / "a" / "tables.json"),
            "--out", str(tmp_path / "b"), "--root", ROOT])
    for f in ("table1.md", "table4.md", "composition.md", "tables.json"):
        assert (tmp_path / "a" / f).read_text() == (tmp_path / "b" / f).read_text(), f


def _analysis() -> dict:
    layers = ["net.features.0", "net.features.3", "net.classifier"]
    # a different off-diagonal cosine per layer (0.3, 0.5, 0.7; -0.2 over all layers)
    cos = {l: {a: {b: (1.0 if a == b else v) for b in CS} for a in CS}
           for l, v in zip([*layers, "__all__"], [0.3, 0.5, 0.7, -0.2])}
    return {"layer_order": layers, "relative_norm": {c: {l: 0.1 / (i + 1) + 0.05 * j for i, l in enumerate(layers)}
                                                     for j, c in enumerate(CS)},
            "cosine": cos}


@pytest.fixture
def figures(monkeypatch) -> list:
    """The matplotlib figures the writers save, in order (closing a figure only unregisters it from
    pyplot: its axes and data stay readable)."""
    made = []
    real = F._save

    def keep(fig, path):
        made.append(fig)
        return real(fig, path)

    monkeypatch.setattr(F, "_save", keep)
    return made


def _bars(ax):
    """Heights of each ``ax.bar`` call, in call order, as an array (one row per call)."""
    import numpy as np

    return np.array([[float(v) for v in c.datavalues] for c in ax.containers])


def _image(ax):
    import numpy as np

    (im,) = ax.images
    return np.ma.filled(np.ma.asarray(im.get_array(), dtype=float), np.nan)


def test_figures_plot_their_tables(tmp_path: Path, figures: list) -> None:
    """Each figure's plotted data (lines, bars, heatmaps), labels and ticks are the table's values."""
    import numpy as np

    res = T.Results(_rows())
    analysis, layers = _analysis(), _analysis()["layer_order"]
    alpha = T.alpha_table(res, CS, (0.5, 1.0))
    grid = T.pair_grid(res, tuple(CS), (0.0, 1.0))
    b_names, a_names = ["fog", "snow"], ["fog", "gaussian_noise", "snow"]
    cross = {layer: {ca: {cb: round(0.1 * (i + 1) + 0.2 * a + 0.05 * b, 3) for b, cb in enumerate(b_names)}
                     for a, ca in enumerate(a_names)} for i, layer in enumerate(["net.features.0", "__all__"])}
    paths = [F.fig_layer_norms(analysis, tmp_path / "a.png"), F.fig_cosine_layers(analysis, tmp_path / "b.png"),
             F.fig_alpha_sweep(alpha, tmp_path / "c.png"), F.fig_composition(grid, CS, tmp_path / "d.png"),
             F.fig_cross_dataset(cross, tmp_path / "e.png")]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    norms_fig, cos_fig, alpha_fig, comp_fig, cross_fig = figures

    # Fig. 2: one line per corruption through its relative norms, in layer order
    ax = norms_fig.axes[0]
    assert [line.get_label() for line in ax.lines] == CS
    for line, c in zip(ax.lines, CS):
        assert list(line.get_xdata()) == [0, 1, 2]
        assert list(line.get_ydata()) == pytest.approx([analysis["relative_norm"][c][l] for l in layers])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["f0", "f3", "classifier"]

    # Fig. 3: per layer (then all layers) the corruption x corruption cosine matrix
    panels = [ax for ax in cos_fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["f0", "f3", "classifier", "all layers"]
    for ax, layer in zip(panels, [*layers, "__all__"]):
        assert _image(ax) == pytest.approx(np.array([[analysis["cosine"][layer][a][b] for b in CS] for a in CS]))
        assert [t.get_text() for t in ax.get_yticklabels()] == [c[:6] for c in CS]

    # Fig. 7: per corruption, clean / severity 3 / severity 5 bars (%) over alpha
    for ax, c in zip(alpha_fig.axes, CS):
        rs = [r for r in alpha if r["corruption"] == c]
        assert ax.get_title() == c and len(rs) == 3
        assert [b.get_label() for b in ax.containers] == ["clean", "severity 3", "severity 5"]
        assert _bars(ax) == pytest.approx(np.array([[100 * r[k] for r in rs] for k in ("clean", "sev3", "sev5")]))
        assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "0.5", "1"]

    # Fig. 8: heatmaps (rows alpha of CS[0], columns alpha of CS[1]) of each corruption, mean, clean
    panels = [ax for ax in comp_fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == [f"on {CS[0]}", f"on {CS[1]}", "mean of the two", "clean"]
    for ax, key in zip(panels, [*CS, "mean", "clean"]):
        m = _image(ax)
        assert m.shape == (2, 2)
        for r in grid:
            v = m[int(r["alpha_" + CS[0]]), int(r["alpha_" + CS[1]])]  # alphas 0 and 1 are the indices
            assert np.isnan(v) if r[key] is None else v == pytest.approx(100 * r[key]), (key, r)

    # Fig. 5: per B corruption, its cosine with A's same corruption and the mean over A's others
    ax = cross_fig.axes[0]
    expected = []
    for cb in b_names:
        expected.append([cross[n][cb][cb] for n in cross])
        expected.append([np.mean([cross[n][ca][cb] for ca in a_names if ca != cb]) for n in cross])
    assert _bars(ax) == pytest.approx(np.array(expected))
    assert [b.get_label() for b in ax.containers] == [f"{cb}: {kind}" for cb in b_names
                                                      for kind in ("same corruption", "other corruptions (mean)")]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["f0", "all"]


def _signatures(tmp_path: Path) -> dict[str, Path]:
    from rws.models import create_model
    from rws.weights.export import save_export
    from rws.weights.layer_select import model_groups, select_from_cfg
    from rws.weights.signature_io import Signature, save_signature
    from rws.weights.signatures import extract_signature

    torch.manual_seed(0)
    cfg = {"_target_": "rws.models.create_model", "name": "small_cnn", "num_classes": 10}
    models = [create_model("small_cnn", num_classes=10) for _ in range(4)]  # init, std, robust fog, robust contrast
    save_export(tmp_path / "std", models[1], cfg)
    groups = model_groups(models[1])
    names, keys = select_from_cfg(groups, list(models[1].state_dict()), {"k": 2})
    sigs = {}
    for c, robust in (("fog", models[2]), ("contrast", models[3])):
        rws, stats = extract_signature(models[0].state_dict(), models[1].state_dict(), robust.state_dict(), keys,
                                       "per_tensor", groups)
        sigs[c] = save_signature(tmp_path / "sigs" / f"{c}.safetensors",
                                 Signature(rws=rws, stats=stats, layers=names, corruption=c, model_cfg=cfg,
                                           bn_policy="robust"))
    return sigs


def test_analysis_stage_feature_maps_and_cross_cosines(tmp_path: Path) -> None:
    """The stage writes result files; the report plots them without models or data."""
    sigs = _signatures(tmp_path)
    cos = A.cross_dataset_cosines(sigs, {"fog": sigs["fog"]})
    assert cos["__all__"]["fog"]["fog"] == pytest.approx(1.0)
    assert set(cos["__all__"]) == {"fog", "contrast"}
    # By hand: the cosine of the two signatures' weight tensors, per layer over the layer's keys and
    # over all keys (fog and contrast share init and std but not the robust model: about 0.5).
    from rws.models import create_model, layer_groups
    from rws.weights.signature_io import load_signature

    fog, contrast = (load_signature(sigs[c]).rws for c in ("fog", "contrast"))

    def cos_of(keys: list[str]) -> float:
        a, b = (torch.cat([t[k].double().flatten() for k in keys]) for t in (contrast, fog))
        return float(a @ b / (a.norm() * b.norm()))

    assert 0.2 < cos_of(list(fog)) < 0.9
    assert cos["__all__"]["contrast"]["fog"] == pytest.approx(cos_of(list(fog)), rel=1e-6)
    layers = [(name, [k for k in keys if k in fog]) for name, keys in layer_groups(create_model("small_cnn", 10))]
    layers = [(name, keys) for name, keys in layers if keys]
    assert list(cos) == [name for name, _ in layers] + ["__all__"] and len(layers) == 2
    for name, keys in layers:
        assert cos[name]["contrast"]["fog"] == pytest.approx(cos_of(keys), rel=1e-6), name
    A.main(["cross-cosines", "--a", str(tmp_path / "sigs"), "--b", str(tmp_path / "sigs"),
            "--out", str(tmp_path / "data" / "fig5_cross_dataset.json")])
    saved = json.loads((tmp_path / "data" / "fig5_cross_dataset.json").read_text())
    assert saved["__all__"]["contrast"]["contrast"] == pytest.approx(1.0)
    assert saved["__all__"]["fog"]["contrast"] == pytest.approx(cos_of(list(fog)), rel=1e-6)

    tensors, meta = A.feature_maps(tmp_path / "std", sigs["fog"], torch.rand(3, 32, 32), "fog", n_channels=4)
    assert set(tensors) == set(A.FEATURE_MAP_KEYS) and tensors["channels"].numel() == 4
    assert tensors["act_clean"].shape == tensors["act_patched"].shape and tensors["act_clean"].dim() == 3
    # patching changes the first block's output on the corrupted image; the same inputs give the same maps
    assert not torch.equal(tensors["act_std"], tensors["act_patched"])
    again, _ = A.feature_maps(tmp_path / "std", sigs["fog"], tensors["image"], "fog", n_channels=4)
    assert torch.equal(again["act_patched"], tensors["act_patched"])
    assert -1.0 <= float(meta["cosine_patched"]) <= 1.0 and meta["corruption"] == "fog"

    from rws.utils.io import save_safetensors

    maps = save_safetensors(tensors, tmp_path / "data" / "fig9.safetensors", metadata=meta)
    p = F.fig_feature_maps(maps, tmp_path / "f.png")
    assert p.stat().st_size > 1000
