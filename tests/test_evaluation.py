"""Evaluation: results files, metrics, the suite registry and data sources, the engine (resume keys,
shards), evaluate.py, wandb logging, tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from rws.config import CONF_DIR
from rws.evaluation import metrics
from rws.evaluation.cells import cell_seed, settings_hash
from rws.evaluation.engine import evaluate_suite, result_rows
from rws.evaluation.results import ResultsWriter, read_results
from rws.evaluation.shards import Shard, parse_shard
from rws.evaluation.sources import FixedSubset, TestStream, subset_seed
from rws.evaluation.suites import make_suite
from rws.evaluation.summary import summarize

ROOT = Path(__file__).resolve().parents[1]
CORRS = ["gaussian_noise", "contrast"]


class FakeDataModule:
    """The datamodule contract, in memory: 40 random 32x32 images."""

    name, num_classes, image_size, corruption_table = "fake", 10, 32, "cifar"
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)

    def __init__(self, n: int = 40, batch_size: int = 16) -> None:
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.rand(n, 3, 32, 32, generator=g), torch.randint(10, (n,), generator=g)
        self.batch_size = batch_size

    def setup(self, stage: str | None = None) -> None:
        pass

    def test_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x, self.y), batch_size=self.batch_size, shuffle=False)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.AvgPool2d(8), nn.Flatten(), nn.Linear(3 * 16, 10)).eval()


class SeparableDataModule(FakeDataModule):
    """FakeDataModule with learnable labels: a fixed 4x4 colour pattern per class (8x8 blocks) plus
    pixel noise, so a trained tiny_model is right on most images (92.5 % of the 40) but not all."""

    def __init__(self, n: int = 40, batch_size: int = 16, seed: int = 2) -> None:
        self.x, self.y = separable(n, seed)
        self.batch_size = batch_size


def separable(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    patterns = torch.rand(10, 3, 4, 4, generator=torch.Generator().manual_seed(1234)) - 0.5
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(10, (n,), generator=g)
    blocks = patterns[y].repeat_interleave(8, 2).repeat_interleave(8, 3)
    return (0.5 + 0.15 * blocks + 0.6 * torch.randn(n, 3, 32, 32, generator=g)).clamp(0, 1), y


@pytest.fixture(scope="module")
def trained_tiny() -> nn.Module:
    """tiny_model with its linear layer fitted on 2000 separable images (on the pooled features: fast)."""
    model = tiny_model()
    x, y = separable(2000, 1)
    with torch.no_grad():
        feats = model[:2](x)
    opt = torch.optim.Adam(model[2].parameters(), 0.05)
    for _ in range(200):
        loss = nn.functional.cross_entropy(model[2](feats), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval().requires_grad_(False)


def independent_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def _row(sid: str, suite: str, cond: str, level, value: float, model: str = "m") -> dict:
    return {"spec_id": sid, "spec": json.dumps({"kind": "export", "path": f"/{model}"}), "model": model,
            "suite": suite, "condition": cond, "level": level, "metric": "acc", "value": value, "n": 10,
            "settings": "abc", "seed": 0, "git": "abc", "timestamp": "t"}


def _rows(name: str, opts: dict, source, model=None, **kw) -> list[dict]:
    return result_rows(evaluate_suite(model or tiny_model(), {"name": name, **opts}, source, **kw))


# --- results -----------------------------------------------------------------------------------

def test_results_round_trip_and_resume_keys(tmp_path: Path) -> None:
    rows = [_row("s1", "clean", "clean", "", 0.9), _row("s1", "corruptions", "fog", 3, 0.5),
            _row("s1", "adversarial", "linf", 0.0314, 0.2)]
    with ResultsWriter(tmp_path) as w:
        assert w.existing_keys() == set()
        w.write(rows[:2])
    with ResultsWriter(tmp_path) as w:  # append-only: a second writer continues the file
        assert w.existing_keys() == {("s1", "clean", "clean", "", "abc"), ("s1", "corruptions", "fog", "3", "abc")}
        w.write(rows[2:])
    from_jsonl, from_csv = read_results(tmp_path), read_results(tmp_path / "results.csv")
    assert from_jsonl == rows
    for a, b in zip(from_jsonl, from_csv):
        assert b["level"] == a["level"] and b["value"] == pytest.approx(a["value"]) and b["n"] == a["n"]
        assert json.loads(b["spec"]) == json.loads(a["spec"]) and b["settings"] == "abc"
    # A truncated last line (crash mid-write) is ignored, not fatal.
    with open(tmp_path / "results.jsonl", "a") as f:
        f.write('{"spec_id": "s2", "val')
    assert len(read_results(tmp_path)) == 3
    assert ("s1", "adversarial", "linf", "0.0314", "abc") in ResultsWriter(tmp_path).existing_keys()


def test_old_rows_without_settings_are_read_but_never_resumed(tmp_path: Path) -> None:
    old = {k: v for k, v in _row("s1", "clean", "clean", "", 0.9).items() if k != "settings"}
    (tmp_path / "results.jsonl").write_text(json.dumps(old) + "\n")
    assert read_results(tmp_path)[0]["value"] == 0.9
    assert ResultsWriter(tmp_path).existing_keys() == {("s1", "clean", "clean", "", "")}


def test_shard_files_are_read_together(tmp_path: Path) -> None:
    assert parse_shard("1/3") == Shard(1, 3) and parse_shard(None) is None
    assert Shard(1, 3).select(list(range(7))) == [1, 4]
    for bad in ("3/3", "a/b", "2"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)
    with ResultsWriter(tmp_path, Shard(1, 2)) as w:
        w.write([_row("b", "clean", "clean", "", 0.5)])
    with ResultsWriter(tmp_path, Shard(0, 2)) as w:
        w.write([_row("a", "clean", "clean", "", 0.7)])
        assert {k[0] for k in w.existing_keys()} == {"a", "b"}  # a shard sees the others' cells
    assert (tmp_path / "results.shard-0-of-2.jsonl").is_file() and (tmp_path / "results.shard-1-of-2.csv").is_file()
    assert [r["spec_id"] for r in read_results(tmp_path)] == ["a", "b"]


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


# --- suites and data sources ---------------------------------------------------------------------

def test_clean_and_corruption_suites_rows(trained_tiny) -> None:
    from rws.corruptions import corrupt

    dm = SeparableDataModule()
    opts = {"corruptions": CORRS, "severities": [1, 5], "seed": 3}
    rows = (_rows("clean", {}, TestStream(dm), model=trained_tiny)
            + _rows("corruptions", opts, TestStream(dm), model=trained_tiny))
    assert len(rows) == 1 + len(CORRS) * 2
    assert rows[0]["condition"] == "clean" and rows[0]["level"] == ""
    assert [(r["condition"], r["level"]) for r in rows[1:]] == [(c, s) for c in CORRS for s in (1, 5)]
    assert all(r["n"] == 40 and r["metric"] == "acc" for r in rows)
    # Every value is the accuracy computed here on the same images: the clean ones, and each batch
    # corrupted with the stream's per-batch seed.
    assert rows[0]["value"] == pytest.approx(independent_accuracy(trained_tiny, dm.x, dm.y))
    assert 0.8 < rows[0]["value"] < 1.0
    for r in rows[1:]:
        c, s = r["condition"], r["level"]
        xc = torch.cat([corrupt(dm.x[i:i + 16], c, s, table="cifar",
                                generator=torch.Generator().manual_seed(cell_seed(3, c, s, i // 16)))
                        for i in range(0, 40, 16)])
        assert r["value"] == pytest.approx(independent_accuracy(trained_tiny, xc, dm.y)), (c, s)
    assert min(r["value"] for r in rows[1:]) < rows[0]["value"]  # severity 5 costs accuracy
    # Subset: first n images only; the value is the fraction of the per-example correctness.
    (res,) = evaluate_suite(tiny_model(), {"name": "clean"}, TestStream(dm, 25))
    assert res.rows[0]["n"] == 25 == len(res.correct) and res.rows[0]["value"] == int(res.correct.sum()) / 25


def test_test_stream_seeds_noise_per_batch() -> None:
    """evaluate.py's scheme: batch i of a cell is corrupted with cell_seed(seed, corruption, severity, i)."""
    from rws.corruptions import corrupt

    dm = FakeDataModule()
    got = [x for x, _y in TestStream(dm, 30).corrupted_batches("gaussian_noise", 3, 7, "cifar", torch.device("cpu"))]
    assert [len(x) for x in got] == [16, 14]
    for i, (x, _y) in enumerate(TestStream(dm, 30).batches()):
        g = torch.Generator().manual_seed(cell_seed(7, "gaussian_noise", 3, i))
        assert torch.equal(got[i], corrupt(x, "gaussian_noise", 3, table="cifar", generator=g))


def test_fixed_subset_seeds_noise_once_per_condition_and_caches() -> None:
    """sweep.py's scheme: the first k examples corrupted at once with seed*1_000_003 + sha256 digest."""
    from rws.corruptions import corrupt

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(20, 3, 32, 32, generator=g), torch.randint(10, (20,), generator=g)
    src = FixedSubset(x, y, seed=3, batch_size=4).prefix(10)
    got = torch.cat([b for b, _y in src.corrupted_batches("fog", 2, 3, "cifar", torch.device("cpu"))])
    ref = corrupt(x[:10], "fog", 2, table="cifar", generator=torch.Generator().manual_seed(subset_seed(3, "fog", 2)))
    assert torch.equal(got, ref) and len(src._cache) == 1
    assert [len(b) for b, _y in src.batches()] == [4, 4, 2] and len(next(src.attack_batches())[1]) == 10
    assert src.settings()["k"] == 10 and src.prefix(5).settings() != src.settings()


def test_on_the_fly_corruptions_are_repeatable_and_seeded() -> None:
    dm = FakeDataModule()
    seen: list[torch.Tensor] = []

    def spy(x, name, severity, table="cifar", generator=None):
        from rws.corruptions import corrupt
        out = corrupt(x, name, severity, table=table, generator=generator)
        seen.append(out)
        return out

    opts = {"corruptions": ["gaussian_noise"], "severities": [3], "seed": 0}
    runs = [_rows("corruptions", opts, TestStream(dm), corrupt_fn=spy) for _ in range(2)]
    assert runs[0] == runs[1]
    n_batches = len(seen) // 2
    assert all(torch.equal(a, b) for a, b in zip(seen[:n_batches], seen[n_batches:]))
    seen.clear()
    _rows("corruptions", {**opts, "seed": 1}, TestStream(dm), corrupt_fn=spy)
    _rows("corruptions", opts, TestStream(dm), corrupt_fn=spy)
    assert not torch.equal(seen[0], seen[n_batches])  # another seed, other noise


def test_suite_registry_cells_and_errors() -> None:
    src = TestStream(FakeDataModule())
    assert len(make_suite({"name": "corruptions", "corruptions": "all", "severities": [1, 2, 3, 4, 5]}).cells(src)) == 95
    with pytest.raises(ValueError, match="unknown suite 'bogus'"):
        make_suite({"name": "bogus"})
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['severity'\]"):
        make_suite({"name": "corruptions", "severity": 3})
    with pytest.raises(ValueError, match="needs 'root'"):
        make_suite({"name": "corruptions", "source": "arrays"})
    # The settings key changes with what changes a value, and only with that.
    s = make_suite({"name": "corruptions", "corruptions": ["fog"], "severities": [3]})
    (cell,) = s.cells(src)
    key = lambda suite, source: settings_hash({"data": source.settings(), "suite": suite.settings(cell, source)})
    assert key(s, src) == key(make_suite({"name": "corruptions", "corruptions": ["fog"], "severities": [3]}), src)
    assert key(s, src) != key(s, TestStream(FakeDataModule(), 10))
    assert key(s, src) != key(make_suite({"name": "corruptions", "corruptions": ["fog"], "seed": 1}), src)
    assert key(s, src) != key(make_suite({"name": "corruptions", "corruptions": ["fog"], "table": "imagenet"}), src)
    assert key(s, src) != key(s, TestStream(FakeDataModule(batch_size=8)))  # per-batch noise
    clean = make_suite({"name": "clean"})
    (c,) = clean.cells(src)
    clean_key = lambda source: settings_hash({"data": source.settings(), "suite": clean.settings(c, source)})
    assert clean_key(TestStream(FakeDataModule(batch_size=8))) == clean_key(src)  # forward-only: batching is irrelevant


def test_corruption_suite_from_arrays(tmp_path: Path) -> None:
    import numpy as np

    dm = FakeDataModule()
    imgs = (dm.x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    np.save(tmp_path / "fog.npy", np.concatenate([imgs] * 5))  # 5 severities stacked
    np.save(tmp_path / "labels.npy", dm.y.numpy())
    opts = {"corruptions": ["fog"], "severities": [2], "source": "arrays", "root": str(tmp_path), "batch_size": 7}
    (row,) = _rows("corruptions", opts, TestStream(dm, 30))
    (clean,) = _rows("clean", {}, TestStream(dm, 30))
    assert row["suite"] == "corruptions" and row["n"] == 30
    assert row["value"] == pytest.approx(clean["value"])  # same images, uint8-rounded
    # The sweep's subset picks the same examples out of the arrays as out of the test split.
    sub = FixedSubset(dm.x[:20][torch.randperm(20, generator=torch.Generator().manual_seed(0))],
                      dm.y[:20][torch.randperm(20, generator=torch.Generator().manual_seed(0))], seed=0, pool=20)
    (arr,) = _rows("corruption_arrays", {k: v for k, v in opts.items() if k != "source"}, sub.prefix(12))
    (cl,) = _rows("clean", {}, sub.prefix(12))
    assert arr["n"] == 12 and arr["value"] == pytest.approx(cl["value"])


def test_adversarial_suite_rows(trained_tiny) -> None:
    """On a trained model at radii that break some points and not others (measured: clean 92.5 %,
    linf 3/255 50 %, l2 0.4 62.5 %, union 50 %): clean is the accuracy computed here, each threat's
    per-example correctness is robust_correct's on the same batches, the union is their per-example
    AND, and each threat is strictly below clean (an attack that does nothing would equal it)."""
    from rws.attacks import ThreatModel
    from rws.attacks.evaluate import robust_correct

    dm = SeparableDataModule()
    threats = [ThreatModel("linf", 3 / 255), ThreatModel("l2", 0.4)]
    opts = {"threats": [{"norm": t.norm, "eps": t.eps} for t in threats], "n_iter": 2, "seed": 1}
    res = evaluate_suite(trained_tiny, {"name": "adversarial", **opts}, TestStream(dm))
    rows = result_rows(res)
    assert [(r["condition"], r["level"]) for r in rows] == [
        ("clean", ""), ("linf", pytest.approx(3 / 255)), ("l2", 0.4), ("union", "")]
    assert all(r["n"] == 40 for r in rows)
    with torch.no_grad():
        clean = trained_tiny(dm.x).argmax(1) == dm.y
    assert torch.equal(res[0].correct, clean) and rows[0]["value"] == pytest.approx(clean.float().mean().item())
    # Per threat: the attacks (APGD-CE + APGD-T, 2 steps, seed 1) run per loader batch of 16.
    per = [torch.cat([robust_correct(trained_tiny, dm.x[i:i + 16], dm.y[i:i + 16], t, n_iter=2, seed=1)
                      for i in range(0, 40, 16)]) for t in threats]
    for r, res_t, mask in zip(rows[1:3], res[1:3], per):
        assert torch.equal(res_t.correct, mask) and r["value"] == pytest.approx(mask.float().mean().item())
        assert not (mask & ~clean).any()            # a point wrong when clean is never robust
        assert r["value"] < rows[0]["value"] < 1.0  # strictly: the attack broke points
    assert torch.equal(res[3].correct, per[0] & per[1])
    assert rows[3]["value"] == pytest.approx((per[0] & per[1]).float().mean().item())
    assert rows[3]["value"] <= min(rows[1]["value"], rows[2]["value"]) < max(rows[1]["value"], rows[2]["value"])


# --- evaluate.py -------------------------------------------------------------------------------

def _compose(overrides: list[str]):
    from rws.config import compose

    return compose("evaluate", overrides)


def _export(tmp_path: Path, name: str = "std", seed: int = 0) -> Path:
    from rws.models import create_model
    from rws.weights.export import save_export

    torch.manual_seed(seed)
    mcfg = {"_target_": "rws.models.create_model", "name": "small_cnn", "num_classes": 10, "width": 0.25}
    return save_export(tmp_path / name / "export", create_model("small_cnn", num_classes=10, width=0.25), mcfg)


def _eval_cfg(tmp_path: Path, out: Path, extra: list[str]):
    overrides = [f"out={out}", "device=cpu", "progress=false", f"++paths.output_dir={tmp_path}", *extra]
    if not (CONF_DIR / "data" / "digits.yaml").exists():
        overrides += ["~data"]
    return _compose(overrides)


def test_evaluate_composes_runs_and_resumes(tmp_path: Path, capsys) -> None:
    from rws.evaluation.pipeline import evaluate

    export = _export(tmp_path)
    out = tmp_path / "eval"
    cfg = _eval_cfg(tmp_path, out, [
        f"models=[{export}]", f"specs=[{{kind: export, path: {export}}}]",  # same spec twice: deduplicated
        "suites=[clean,{name: corruptions, corruptions: [gaussian_noise,contrast], severities: [2,4]}]",
        "test_subset=24"])
    assert cfg.suite.corruptions.severities == [1, 2, 3, 4, 5]  # the group still composes
    summary = evaluate(cfg, datamodule=FakeDataModule())
    rows = read_results(out)
    assert len(rows) == 1 + 2 * 2 and {r["n"] for r in rows} == {24} and all(r["settings"] for r in rows)
    assert (out / "results.csv").is_file() and len(read_results(out / "results.csv")) == len(rows)
    s = json.loads((out / "summary.json").read_text())
    (m,) = s["models"].values()
    assert m["model"] == "std" and set(m["per_corruption"]) == {"gaussian_noise", "contrast"}
    assert m["mCE_unnormalized"] == pytest.approx(1 - m["RA"]) and "versions" in s and "git_commit" in s
    assert summary["models"] == s["models"] and s["complete"] is True
    assert "std" in capsys.readouterr().out
    # Per-example correctness of every cell sits next to the rows.
    assert len(list((out / "correct").glob("*/*.safetensors"))) == len(rows)

    def no_build(*a, **k):
        raise AssertionError("resume should not build finished models")
    # Resume: nothing left to do, no model is built, no rows are added.
    evaluate(cfg, build_fn=no_build, datamodule=FakeDataModule())
    assert len(read_results(out)) == len(rows)
    # Another test_subset is another cell: only that is measured, the first rows are kept.
    cfg40 = _eval_cfg(tmp_path, out, [f"models=[{export}]", "suites=[clean]", "test_subset=40"])
    evaluate(cfg40, datamodule=FakeDataModule())
    clean = [r for r in read_results(out) if r["suite"] == "clean"]
    assert sorted(r["n"] for r in clean) == [24, 40]
    evaluate(cfg40, build_fn=no_build, datamodule=FakeDataModule())
    # A different data batch size changes the per-batch noise: the corruption cells are new cells.
    before = len(read_results(out))
    evaluate(cfg, datamodule=FakeDataModule(batch_size=8))
    assert len(read_results(out)) == before + 4


def test_adding_a_threat_evaluates_only_it(tmp_path: Path, monkeypatch) -> None:
    import rws.attacks.evaluate as ev
    from rws.evaluation.pipeline import evaluate

    calls: list[str] = []
    real = ev.robust_correct

    def counting(model, x, y, threat, **kw):
        calls.append(threat.norm)
        return real(model, x, y, threat, **kw)

    monkeypatch.setattr(ev, "robust_correct", counting)
    export, out = _export(tmp_path), tmp_path / "adv"
    linf, l2 = "{norm: linf, eps: 0.03}", "{norm: l2, eps: 0.5}"

    def run(threats: str) -> list[dict]:
        cfg = _eval_cfg(tmp_path, out, [f"models=[{export}]", "test_subset=8",
                                        f"suites=[{{name: adversarial, threats: [{threats}], n_iter: 2, attacks: [apgd-ce]}}]"])
        evaluate(cfg, datamodule=FakeDataModule(batch_size=4))
        return read_results(out)

    rows = run(linf)
    assert calls == ["linf", "linf"]  # two batches of 4
    assert [r["condition"] for r in rows] == ["clean", "linf", "union"]
    calls.clear()
    rows = run(f"{linf}, {l2}")
    assert calls == ["l2", "l2"]  # linf comes from its stored correctness
    assert [r["condition"] for r in rows[3:]] == ["l2", "union"]
    union = {r["settings"]: r["value"] for r in rows if r["condition"] == "union"}
    assert len(union) == 2  # the new union (linf and l2) is its own cell
    linf_v, l2_v = (next(r["value"] for r in rows if r["condition"] == c) for c in ("linf", "l2"))
    assert rows[-1]["value"] <= min(linf_v, l2_v)


def test_sharded_evaluate_gives_the_unsharded_rows(tmp_path: Path) -> None:
    from rws.evaluation.pipeline import evaluate

    exports = [_export(tmp_path, f"m{i}", seed=i) for i in range(3)]
    common = [f"models=[{','.join(map(str, exports))}]", "test_subset=20",
              "suites=[clean,{name: corruptions, corruptions: [fog], severities: [3]}]"]
    evaluate(_eval_cfg(tmp_path, tmp_path / "one", common), datamodule=FakeDataModule())
    s0 = evaluate(_eval_cfg(tmp_path, tmp_path / "sharded", [*common, "shard=0/2"]), datamodule=FakeDataModule())
    assert s0["complete"] is False and s0["missing_cells"] == 2  # shard 1's model is still missing
    s1 = evaluate(_eval_cfg(tmp_path, tmp_path / "sharded", [*common, "shard=1/2"]), datamodule=FakeDataModule())
    assert s1["complete"] is True and not (tmp_path / "sharded" / "results.jsonl").exists()

    def cells(d: Path) -> dict:
        return {(r["spec_id"], r["suite"], r["condition"], str(r["level"]), r["settings"]): (r["value"], r["n"])
                for r in read_results(d)}
    one, sharded = cells(tmp_path / "one"), cells(tmp_path / "sharded")
    assert one == sharded and len(one) == 6
    assert s1["models"].keys() == json.loads((tmp_path / "one" / "summary.json").read_text())["models"].keys()


def test_evaluate_logs_a_wandb_table_offline(tmp_path: Path, monkeypatch) -> None:
    from rws.evaluation.pipeline import evaluate

    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "wb"
    cfg = _eval_cfg(tmp_path, out, [f"models=[{_export(tmp_path)}]", "suites=[clean]", "test_subset=16", "logger=wandb"])
    evaluate(cfg, datamodule=FakeDataModule())
    (table,) = out.glob("wandb/offline-run-*/files/media/table/results_*.table.json")
    data = json.loads(table.read_text())
    assert data["columns"][:4] == ["spec_id", "model", "suite", "condition"] and len(data["data"]) == 1


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


def test_summary_table_adds_threat_columns_and_keeps_the_spec_order(tmp_path: Path) -> None:
    """One robust-accuracy column per threat (eps in 255ths), no clean/union repeats for one threat;
    rows in the order of the evaluate call's summary.json, not the order rows arrived (shards)."""
    from rws.report.tables import main, spec_order, summary_table

    eps = 32 / 255
    rows = [_row("b", "clean", "clean", "", 0.8, "b"), _row("b", "adversarial", "linf", eps, 0.3, "b"),
            _row("b", "adversarial", "clean", "", 0.8, "b"), _row("b", "adversarial", "union", "", 0.3, "b"),
            _row("a", "clean", "clean", "", 0.9, "a"), _row("a", "adversarial", "linf", eps, 0.1, "a")]
    t = summary_table(rows, order=["a", "b"])
    assert [r["model"] for r in t] == ["a", "b"]
    assert [r["linf 32/255"] for r in t] == [0.1, 0.3] and "union" not in t[0] and "clean" not in t[0]
    assert [r["model"] for r in summary_table(rows)] == ["b", "a"]  # no order: as the rows come
    two = rows + [_row("b", "adversarial", "l2", 0.5, 0.2, "b")]
    t2 = summary_table(two)
    assert t2[0]["l2@0.5"] == 0.2 and t2[0]["union"] == 0.3 and t2[1]["union"] is None

    with ResultsWriter(tmp_path / "r") as w:
        w.write(rows)
    (tmp_path / "r" / "summary.json").write_text(json.dumps({"models": {"a": {}, "b": {}}}))
    assert spec_order([str(tmp_path / "r"), str(tmp_path / "missing")]) == ["a", "b"]
    assert main([str(tmp_path / "r"), "--out", str(tmp_path / "t")]) == 0
    md = (tmp_path / "t.md").read_text().splitlines()
    assert md[0].endswith("| linf 32/255 |") and md[2].startswith("| a |") and md[3].startswith("| b |")
