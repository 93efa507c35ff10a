"""The transfer study over two CIFAR-10 halves sharing a pre-trained θ_init
(rws.pipelines.rws_transfer_halves, rws.report.transfer_halves)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from rws.config import compose
from rws.pipelines import rws_transfer_halves as th
from rws.report import transfer_halves as rep


def _overrides(argv: tuple[str, ...]) -> list[str]:
    return [a for a in argv[2:] if "=" in a and not a.startswith(("hydra.", "paths.", "run_name"))]


def test_plan_shares_one_init_and_splits_the_classes(tmp_path: Path) -> None:
    steps = {s.name: s for s in th.plan(th.Settings.smoke(), tmp_path)}
    assert {"pre", "init", "A/std", "B/std", "A/sigs", "B/sigs", "A/eval", "B/eval", "fig5"} <= set(steps)
    pre = compose("train", _overrides(steps["pre"].argv))
    assert pre.data.name == "cifar10_jpeg" and pre.data.num_classes == 10 and pre.model.name == "vgg16_bn"
    assert pre.data.seed == 1 and pre.data.class_subset is None
    tiny = th.plan(replace(th.Settings.smoke(), pretrain="tiny"), tmp_path)[0]
    tiny_cfg = compose("train", _overrides(tiny.argv))
    assert tiny_cfg.data.name == "tiny_imagenet" and tiny_cfg.data.image_size == 32
    init = compose("train", _overrides(steps["init"].argv))
    assert init.data.num_classes == 5 and list(init.init_skip) == ["head"] and init.trainer.max_epochs == 0
    for half, classes in th.HALVES.items():
        for role in (f"{half}/std", *[f"{half}/robust/{c}" for c in th.CORRUPTIONS]):
            cfg = compose("train", _overrides(steps[role].argv))
            assert list(cfg.data.class_subset) == classes and cfg.model.num_classes == 5
            assert cfg.init == str(tmp_path / "init" / "export")  # every model starts from the one θ_init
    assert set(th.HALVES["A"]).isdisjoint(th.HALVES["B"])
    # B is evaluated with A's signatures (transfer) and its own (oracle), on B's classes
    specs = [yaml.safe_load(t) for t in steps["B/eval"].files.values()]
    sig_paths = {Path(sg["path"]).parent.parent.name for sp in specs if sp["kind"] == "patch" for sg in sp["signatures"]}
    assert sig_paths == {"A", "B"}
    assert "data.class_subset=[5,6,7,8,9]" in steps["B/eval"].argv


def _rows(acc: dict[str, dict[str, float]], level: int = 5, ids: dict[str, str] | None = None) -> list[dict]:
    """Result rows of hand-made accuracies; ``ids``: the plan's spec id per model name."""
    return [{"spec_id": (ids or {}).get(m), "model": m, "suite": "clean" if c == "clean" else "corruptions",
             "condition": c, "level": level, "metric": "acc", "value": v / 100}
            for m, conds in acc.items() for c, v in conds.items()]


def test_direction_summary_and_verdict_by_hand() -> None:
    cs = list(th.CORRUPTIONS)
    acc = {"B/std": {"clean": 70.0, **{c: 40.0 for c in cs}}}
    for i, c in enumerate(cs):
        acc[f"B/std+A:{c}"] = {c: 42.0 + i}      # gains 2, 3, 4, 5 -> 3.5
        acc[f"B/std+B:{c}"] = {c: 47.0}          # oracle gain 7
        acc[f"B/robust/{c}"] = {c: 50.0}
    d = rep.direction_summary(rep.accuracy_at(_rows(acc), 5), "B", cs)
    assert d["transfer_gain"] == pytest.approx(3.5) and d["oracle_gain"] == pytest.approx(7.0)
    assert d["fraction_of_oracle"] == pytest.approx(0.5) and d["holds"] is True
    acc_small = {**acc, **{f"B/std+A:{c}": {c: 40.5} for c in cs}}
    assert rep.direction_summary(rep.accuracy_at(_rows(acc_small), 5), "B", cs)["holds"] is False
    no_oracle = {**acc, **{f"B/std+B:{c}": {c: 40.5} for c in cs}}
    d = rep.direction_summary(rep.accuracy_at(_rows(no_oracle), 5), "B", cs)
    assert d["holds"] is None and d["judged"] == [] and d["transfer_gain_all"] == pytest.approx(3.5)
    # only the corruptions whose own signature gains are judged: here fog alone (oracle +7, transfer +4)
    one = {**no_oracle, "B/std+B:fog": {"fog": 47.0}}
    d = rep.direction_summary(rep.accuracy_at(_rows(one), 5), "B", cs)
    assert d["judged"] == ["fog"] and d["transfer_gain"] == pytest.approx(4.0) and d["oracle_gain"] == pytest.approx(7.0)
    # the weights-only transfer row is summarised when present
    wo = {**acc, **{f"B/std+A:{c}|bn=std": {c: 41.0} for c in cs}}
    assert rep.direction_summary(rep.accuracy_at(_rows(wo), 5), "B", cs)["transfer_weights_only_gain"] == pytest.approx(1.0)
    del acc["B/robust/fog"]
    assert rep.direction_summary(rep.accuracy_at(_rows(acc), 5), "B", cs)["holds"] is None


def test_similarity_same_vs_cross_by_hand() -> None:
    cs = ["a", "b"]
    cos = {"layer0": {"a": {"a": 0.5, "b": 0.1}, "b": {"a": -0.1, "b": 0.3}}}
    sim = rep.similarity(cos, cs)
    assert sim["layer0"]["same"] == pytest.approx(0.4) and sim["layer0"]["cross"] == pytest.approx(0.0)


def test_report_from_hand_made_files(tmp_path: Path) -> None:
    from rws.utils.io import write_text

    cs = list(th.CORRUPTIONS)
    info = th.plan_info(th.Settings(), tmp_path)
    for target, other in (("A", "B"), ("B", "A")):
        acc = {f"{target}/std": {"clean": 70.0, **{c: 40.0 for c in cs}}}
        acc.update({f"{target}/std+{other}:{c}": {"clean": 69.0, c: 43.0} for c in cs})
        acc.update({f"{target}/std+{target}:{c}": {c: 46.0} for c in cs})
        acc.update({f"{target}/robust/{c}": {c: 48.0} for c in cs})
        ids = {name: sid for _label, name, sid in info["rows"][target]}
        rows = _rows(acc, 5, ids) + _rows(acc, 3, ids)
        write_text(tmp_path / target / "eval" / "results.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    cos = {"__all__": {a: {b: (0.3 if a == b else 0.0) for b in cs} for a in cs}}
    write_text(tmp_path / "figure_data" / "fig5_cross_halves.json", json.dumps(cos))
    md = rep.write_report(tmp_path, info)
    assert "Verdict A → B" in md and "**holds** — transfer +3.0, oracle +6.0 points (50% of the oracle gain)." in md
    assert f"| + RWS_fog from A (transfer) | 69.0 | – | – | 43.0 | – |" in md
    assert "| __all__ | 0.300 | 0.000 |" in md
    saved = json.loads((tmp_path / "transfer_halves.json").read_text())
    assert saved["summary"]["A"]["transfer_gain"] == pytest.approx(3.0)
    assert (tmp_path / "figures" / "fig5_halves.png").read_bytes()[:4] == b"\x89PNG"
