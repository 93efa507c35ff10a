"""The BN-policy study (rws.pipelines.rws_bn_policy, rws.report.bn_policy_tables), checked without
training: the plan's steps compose, each policy's rows read the right signatures and calibration,
and the summary table's numbers follow from hand-made result rows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rws.config import compose
from rws.pipelines import rws_bn_policy as bp
from rws.report import bn_policy_tables as bt


def test_plan_composes_and_rows_use_each_policy(tmp_path: Path) -> None:
    s = bp.Settings()
    steps = {st.name: st for st in bp.plan(s, tmp_path)}
    assert list(steps) == ["init", "std", *[f"robust/{c}" for c in bp.CORRUPTIONS], "sigs/robust",
                           "sigs/official", "eval/bn_policy"]
    for st in steps.values():
        app = st.hydra_app()
        assert app is not None
        cfg = compose(*app)
        if app[0] == "train":
            assert cfg.model.name == "resnet18_cifar" and cfg.model.width == 0.25
            assert cfg.data.subset_per_class == 1000
        if app[0] == "extract":
            assert cfg.bn_policy == st.name.split("/")[1] and cfg.layers.k == 5
    assert set(steps["eval/bn_policy"].needs) == {"std", *[f"robust/{c}" for c in bp.CORRUPTIONS],
                                                  "sigs/robust", "sigs/official"}
    specs = [yaml.safe_load(t) for t in steps["eval/bn_policy"].files.values()]
    assert s.calib_batches == (10, 79)  # rws_cpu's 10, and one pass over the 10,000 training images
    assert len(specs) == 1 + len(bp.CORRUPTIONS) * (1 + 1 + 2 * len(s.calib_batches))
    by_name = {sp["name"]: sp for sp in specs}
    robust = by_name["std+fog|bn=robust"]
    assert robust["signatures"][0]["path"].endswith("sigs/robust/fog.safetensors") and "calibration" not in robust
    for n in s.calib_batches:
        recal, official = by_name[f"std+fog|bn=recalibrate|calib={n}"], by_name[f"std+fog|bn=official|calib={n}"]
        assert recal["signatures"][0]["path"].endswith("sigs/robust/fog.safetensors")
        assert official["signatures"][0]["path"].endswith("sigs/official/fog.safetensors")
        for sp, policy in ((recal, "recalibrate"), (official, "official")):
            assert sp["bn_policy"] == policy
            assert sp["calibration"] == {"corruption": "fog", "severity": 5, "batches": n, "seed": bp.CALIB_SEED,
                                         "split": "train"}


def _rows(acc: dict[str, dict[str, float]], ids: dict[str, str]) -> list[dict]:
    """Result rows of hand-made accuracies (model name -> condition -> %), with the plan's spec ids."""
    return [{"spec_id": ids[m], "model": m, "suite": "clean" if c == "clean" else "corruptions", "condition": c,
             "level": 5, "metric": "acc", "value": v / 100} for m, conds in acc.items() for c, v in conds.items()]


def test_report_from_hand_made_rows(tmp_path: Path) -> None:
    corrs = list(bp.CORRUPTIONS)
    acc = {"std": {"clean": 60.0, **{c: 30.0 for c in corrs}}}
    for i, c in enumerate(corrs):
        acc[f"robust/{c}"] = {"clean": 50.0, c: 50.0}                                  # dedicated: +20 on c
        acc[f"std+{c}|bn=robust"] = {"clean": 58.0, c: 40.0}                            # +10, clean −2
        for n in (10, 79):
            acc[f"std+{c}|bn=recalibrate|calib={n}"] = {"clean": 56.0, c: 30.0 + 4.0 * i}   # +0, +4, +8, +12
            acc[f"std+{c}|bn=official|calib={n}"] = {"clean": 61.0, c: 25.0 + (n == 79)}  # −5 / −4, clean +1
    info = bp.plan_info(bp.Settings(), tmp_path)
    ids = {name: sid for _label, name, sid in info["rows"]}
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(acc, ids)))
    (tmp_path / "plan.json").write_text(json.dumps(info))
    md = bt.write_report(tmp_path, info)
    summary = {r["policy"]: r for r in json.loads((tmp_path / "bn_policy.json").read_text())["summary"]}
    assert summary["bn_policy=robust"]["mean gain"] == pytest.approx(10.0)
    assert summary["bn_policy=robust"]["share of dedicated gain"] == pytest.approx(0.5)
    assert summary["bn_policy=robust"]["clean change"] == pytest.approx(-2.0)
    assert [summary["bn_policy=recalibrate, 10 batches"][c] for c in corrs] == pytest.approx([0.0, 4.0, 8.0, 12.0])
    assert summary["bn_policy=official, 10 batches"]["mean gain"] == pytest.approx(-5.0)
    assert summary["bn_policy=official, 79 batches"]["mean gain"] == pytest.approx(-4.0)
    assert summary["bn_policy=official, 79 batches"]["clean change"] == pytest.approx(1.0)
    assert summary["dedicated θ_c"]["mean gain"] == pytest.approx(20.0)
    assert "| bn_policy=robust | +10.0 | +10.0 | +10.0 | +10.0 | +10.0 | 50 % | -2.0 |" in md
    assert "| θ_std (unpatched) | 60.0 | 30.0 | 30.0 | 30.0 | 30.0 |" in md
    # the report's command line rebuilds the same file
    (tmp_path / "bn_policy.md").unlink()
    r = subprocess.run([sys.executable, "-m", "rws.report.bn_policy_tables", "--out", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "bn_policy.md").read_text() == md


def test_report_cli_without_a_plan_is_a_one_line_error(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "rws.report.bn_policy_tables", "--out", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: no plan.json in ") and "Traceback" not in r.stderr


def test_report_finds_cells_resumed_under_another_name(tmp_path: Path) -> None:
    """A spec's name is not part of its id: cells measured when the recipe had another name are
    resumed and keep that name. The report looks rows up by the plan's spec ids, so it still finds them."""
    info = bp.plan_info(bp.Settings(), tmp_path)
    rows = []
    for i, (_label, name, sid) in enumerate(info["rows"]):
        rows += [{"spec_id": sid, "model": f"old name {i}", "suite": "clean", "condition": "clean", "level": "",
                  "metric": "acc", "value": 0.5},
                 {"spec_id": sid, "model": f"old name {i}", "suite": "corruptions", "condition": "fog", "level": 5,
                  "metric": "acc", "value": 0.25 + 0.01 * i}]
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    bt.write_report(tmp_path, info)
    models = json.loads((tmp_path / "bn_policy.json").read_text())["models"]
    assert [m["clean"] for m in models] == pytest.approx([50.0] * len(info["rows"]))
    assert [m["fog"] for m in models] == pytest.approx([25.0 + i for i in range(len(info["rows"]))])


@pytest.mark.parametrize("text, message", [("{not json", "is not JSON"), ("[1, 2]", "is not a study plan"),
                                           ('{"model": "x"}', "has no 'corruptions'")])
def test_report_cli_with_a_bad_plan_is_a_one_line_error(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "plan.json").write_text(text)
    r = subprocess.run([sys.executable, "-m", "rws.report.bn_policy_tables", "--out", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
