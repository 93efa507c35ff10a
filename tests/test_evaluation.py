"""Evaluation: results files, metrics, suites on a fake datamodule, evaluate.py config, tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from rws.evaluation import metrics
from rws.evaluation.results import ResultsWriter, read_results
from rws.evaluation.suites import run_suite, suite_cells
from rws.evaluation.summary import summarize
from rws.config import CONF_DIR

ROOT = Path(__file__).resolve().parents[1]
CORRS = ["gaussian_noise", "contrast"]


class FakeDataModule:
    """The datamodule contract, in memory: 40 random 32x32 images."""

    name, num_classes, image_size, corruption_table = "fake", 10, 32, "cifar"
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)

    def __init__(self, n: int = 40) -> None:
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.rand(n, 3, 32, 32, generator=g), torch.randint(10, (n,), generator=g)

    def setup(self, stage: str | None = None) -> None:
        pass

    def test_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x, self.y), batch_size=16, shuffle=False)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.AvgPool2d(8), nn.Flatten(), nn.Linear(3 * 16, 10)).eval()


def _row(sid: str, suite: str, cond: str, level, value: float, model: str = "m") -> dict:
    return {"spec_id": sid, "spec": json.dumps({"kind": "export", "path": f"/{model}"}), "model": model,
            "suite": suite, "condition": cond, "level": level, "metric": "acc", "value": value, "n": 10,
            "seed": 0, "git": "abc", "timestamp": "t"}


# --- results -----------------------------------------------------------------------------------

def test_results_round_trip_and_resume_keys(tmp_path: Path) -> None:
    rows = [_row("s1", "clean", "clean", "", 0.9), _row("s1", "corruptions", "fog", 3, 0.5),
            _row("s1", "adversarial", "linf", 0.0314, 0.2)]
    with ResultsWriter(tmp_path) as w:
        assert w.existing_keys() == set()
        w.write(rows[:2])
    with ResultsWriter(tmp_path) as w:  # append-only: a second writer continues the file
        assert w.existing_keys() == {("s1", "clean", "clean", ""), ("s1", "corruptions", "fog", "3")}
        w.write(rows[2:])
    from_jsonl, from_csv = read_results(tmp_path), read_results(tmp_path / "results.csv")
    assert from_jsonl == rows
    for a, b in zip(from_jsonl, from_csv):
        assert b["level"] == a["level"] and b["value"] == pytest.approx(a["value"]) and b["n"] == a["n"]
        assert json.loads(b["spec"]) == json.loads(a["spec"]) and b["metric"] == a["metric"]
    # A truncated last line (crash mid-write) is ignored, not fatal.
    with open(tmp_path / "results.jsonl", "a") as f:
        f.write('{"spec_id": "s2", "val')
    assert len(read_results(tmp_path)) == 3
    assert ("s1", "adversarial", "linf", "0.0314") in ResultsWriter(tmp_path).existing_keys()


# --- metrics -----------------------------------------------------------------------------------

def test_metrics_on_hand_made_numbers() -> None:
    cells = {("noise", 1): 0.8, ("noise", 2): 0.6, ("blur", 1): 0.9, ("blur", 2): 0.7}
    base = {("noise", 1): 0.6, ("noise", 2): 0.2, ("blur", 1): 0.8, ("blur", 2): 0.6}
    assert metrics.mean_corruption_accuracy(cells) == pytest.approx(0.75)
    assert metrics.per_corruption_accuracy(cells) == pytest.approx({"noise": 0.7, "blur": 0.8})
    # CE_noise = (0.2+0.4)/(0.4+0.8) = 0.5, CE_blur = (0.1+0.3)/(0.2+0.4) = 2/3
    assert metrics.corruption_errors(cells, base) == pytest.approx({"noise": 0.5, "blur": 2 / 3})
    assert metrics.mce(cells, base) == ("mCE", pytest.approx((0.5 + 2 / 3) / 2))
    assert metrics.mce(cells) == ("mCE_unnormalized", pytest.approx(0.25))
    assert metrics.relative_mce(cells, 0.9, base, 0.9) == pytest.approx(((0.1 + 0.3) / (0.3 + 0.7) + (0 + 0.2) / (0.1 + 0.3)) / 2)
    masks = [torch.tensor([1, 1, 0, 1]), torch.tensor([1, 0, 0, 1])]
    assert metrics.union_robust_accuracy(masks) == pytest.approx(0.5)
    assert metrics.flip_rate(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 0, 3, 0])) == pytest.approx(0.5)
    assert metrics.sequence_flip_rate(torch.tensor([[1, 1], [1, 2], [1, 2]])) == pytest.approx(0.25)


def test_summary_with_and_without_baseline() -> None:
    rows = [_row("a", "clean", "clean", "", 0.9, "a"), _row("a", "corruptions", "fog", 1, 0.6, "a"),
            _row("a", "corruptions", "fog", 2, 0.4, "a")]
    base = [_row("b", "corruptions", "fog", 1, 0.5, "b"), _row("b", "corruptions", "fog", 2, 0.0, "b")]
    s = summarize(rows)["a"]
    assert s["TA"] == 0.9 and s["RA"] == pytest.approx(0.5) and s["mCE_unnormalized"] == pytest.approx(0.5)
    assert "mCE" not in s and s["per_corruption"] == {"fog": pytest.approx(0.5)}
    s = summarize(rows, base, "b")["a"]
    assert s["mCE"] == pytest.approx((0.4 + 0.6) / (0.5 + 1.0))
    with pytest.raises(ValueError, match="not in the baseline"):
        summarize(rows, base, "zzz")


# --- suites ------------------------------------------------------------------------------------

def test_clean_and_corruption_suites_rows() -> None:
    dm, model = FakeDataModule(), tiny_model()
    rows = []
    for name, opts in [("clean", {}), ("corruptions", {"corruptions": CORRS, "severities": [1, 5]})]:
        for _cell, r in run_suite(name, model, dm, opts, device="cpu"):
            rows += r
    assert len(rows) == 1 + len(CORRS) * 2
    assert rows[0]["condition"] == "clean" and rows[0]["level"] == ""
    assert [(r["condition"], r["level"]) for r in rows[1:]] == [(c, s) for c in CORRS for s in (1, 5)]
    assert all(0.0 <= r["value"] <= 1.0 and r["n"] == 40 and r["metric"] == "acc" for r in rows)
    # Subset: first n images only.
    sub = [r for _c, rs in run_suite("clean", model, dm, {"n": 25}) for r in rs]
    assert sub[0]["n"] == 25


def test_on_the_fly_corruptions_are_repeatable_and_seeded() -> None:
    dm, model = FakeDataModule(), tiny_model()
    seen: list[torch.Tensor] = []

    def spy(x, name, severity, table="cifar", generator=None):
        from rws.corruptions import corrupt
        out = corrupt(x, name, severity, table=table, generator=generator)
        seen.append(out)
        return out

    opts = {"corruptions": ["gaussian_noise"], "severities": [3], "seed": 0}
    runs = [[r for _c, rs in run_suite("corruptions", model, dm, opts, corrupt_fn=spy) for r in rs] for _ in range(2)]
    assert runs[0] == runs[1]
    n_batches = len(seen) // 2
    assert all(torch.equal(a, b) for a, b in zip(seen[:n_batches], seen[n_batches:]))
    seen.clear()
    list(run_suite("corruptions", model, dm, {**opts, "seed": 1}, corrupt_fn=spy))
    list(run_suite("corruptions", model, dm, opts, corrupt_fn=spy))
    assert not torch.equal(seen[0], seen[n_batches])  # another seed, other noise


def test_suite_cells_and_unknown_suite() -> None:
    assert len(suite_cells({"name": "corruptions", "corruptions": "all", "severities": [1, 2, 3, 4, 5]})) == 95
    with pytest.raises(ValueError, match="unknown suite 'bogus'"):
        suite_cells({"name": "bogus"})


# --- evaluate.py -------------------------------------------------------------------------------

def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="evaluate", overrides=overrides)


def test_evaluate_composes_runs_and_resumes(tmp_path: Path, capsys) -> None:
    from rws.evaluation.pipeline import evaluate
    from rws.models import create_model
    from rws.weights.export import save_export

    torch.manual_seed(0)
    mcfg = {"_target_": "rws.models.create_model", "name": "small_cnn", "num_classes": 10}
    export = save_export(tmp_path / "std" / "export", create_model("small_cnn", num_classes=10), mcfg)
    out = tmp_path / "eval"
    overrides = [f"models=[{export}]", f"specs=[{{kind: export, path: {export}}}]",  # same spec twice: deduplicated
                 "suites=[clean,{name: corruptions, corruptions: [gaussian_noise,contrast], severities: [2,4]}]",
                 f"out={out}", "device=cpu", "test_subset=24", "progress=false", f"++paths.output_dir={tmp_path}"]
    if not (CONF_DIR / "data" / "digits.yaml").exists():
        overrides += ["~data"]
    cfg = _compose(overrides)
    assert cfg.suite.corruptions.severities == [1, 2, 3, 4, 5]  # the group still composes
    summary = evaluate(cfg, datamodule=FakeDataModule())
    rows = read_results(out)
    assert len(rows) == 1 + 2 * 2 and {r["n"] for r in rows} == {24}
    assert (out / "results.csv").is_file() and len(read_results(out / "results.csv")) == len(rows)
    s = json.loads((out / "summary.json").read_text())
    (m,) = s["models"].values()
    assert m["model"] == "std" and set(m["per_corruption"]) == {"gaussian_noise", "contrast"}
    assert m["mCE_unnormalized"] == pytest.approx(1 - m["RA"]) and "versions" in s and "git_commit" in s
    assert summary["models"] == s["models"]
    assert "std" in capsys.readouterr().out
    # Resume: nothing left to do, no model is built, no rows are added.
    def no_build(*a, **k):
        raise AssertionError("resume should not build finished models")
    evaluate(cfg, build_fn=no_build, datamodule=FakeDataModule())
    assert len(read_results(out)) == len(rows)


def test_tables_from_results(tmp_path: Path) -> None:
    from rws.report.tables import corruption_table, main, pivot, summary_table

    rows = [_row("a", "clean", "clean", "", 0.9, "a"), _row("a", "corruptions", "fog", 1, 0.6, "a"),
            _row("a", "corruptions", "fog", 2, 0.4, "a"), _row("a", "corruptions", "snow", 1, 0.8, "a"),
            _row("b", "clean", "clean", "", 0.8, "b"), _row("b", "corruptions", "fog", 1, 0.2, "b")]
    with ResultsWriter(tmp_path / "r") as w:
        w.write(rows)
    t = summary_table(rows)
    assert [(r["model"], r["TA"]) for r in t] == [("a", 0.9), ("b", 0.8)]
    c = corruption_table(rows)
    assert c[0]["fog"] == pytest.approx(0.5) and c[0]["snow"] == pytest.approx(0.8) and c[1]["snow"] is None
    p = pivot([r for r in rows if r["suite"] == "corruptions"], index="model", columns="level")
    assert p[0] == {"model": "a", "1": pytest.approx(0.7), "2": pytest.approx(0.4)}
    assert main([str(tmp_path / "r"), "--table", "corruptions", "--out", str(tmp_path / "t")]) == 0
    assert "| a | a | 50.00 | 80.00 | 60.00 |" in (tmp_path / "t.md").read_text()
    assert (tmp_path / "t.csv").read_text().startswith("model,spec_id,fog,snow,mean")


def test_corruption_suite_from_arrays(tmp_path: Path) -> None:
    import numpy as np

    dm, model = FakeDataModule(), tiny_model()
    imgs = (dm.x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    np.save(tmp_path / "fog.npy", np.concatenate([imgs] * 5))  # 5 severities stacked
    np.save(tmp_path / "labels.npy", dm.y.numpy())
    opts = {"corruptions": ["fog"], "severities": [2], "source": "arrays", "root": str(tmp_path), "n": 30,
            "batch_size": 7}
    (row,) = [r for _c, rs in run_suite("corruptions", model, dm, opts) for r in rs]
    clean = [r for _c, rs in run_suite("clean", model, dm, {"n": 30}) for r in rs][0]
    assert row["n"] == 30 and row["value"] == pytest.approx(clean["value"])  # same images, uint8-rounded


def test_adversarial_suite_rows() -> None:
    pytest.importorskip("pyautoattack")
    opts = {"threats": [{"norm": "linf", "eps": 8 / 255}], "n": 8, "n_iter": 2}
    rows = [r for _c, rs in run_suite("adversarial", tiny_model(), FakeDataModule(), opts) for r in rs]
    assert [(r["condition"], r["level"]) for r in rows] == [("clean", ""), ("linf", pytest.approx(8 / 255)), ("union", "")]
    assert rows[2]["value"] <= rows[1]["value"] <= rows[0]["value"] and all(r["n"] == 8 for r in rows)
