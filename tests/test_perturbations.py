"""Perturbation sequences (rws.corruptions.sequences), the flip probability / mFR formulas, the
``perturbations`` suite and the flip-rate table."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from rws.config import CONF_DIR
from rws.corruptions.sequences import (NOISE_PERTURBATIONS, PERTURBATIONS, RANDOM_PERTURBATIONS, SEQUENCE_TABLES,
                                       TEST_PERTURBATIONS, frame_indices, perturbation_sequence, reference_length,
                                       resolve_perturbations)
from rws.evaluation import metrics
from rws.evaluation.cells import Cell, cell_seed, settings_hash
from rws.evaluation.engine import Engine, ModelJob, evaluate_suite, plan_cells, result_rows
from rws.evaluation.results import ResultsWriter, read_results
from rws.evaluation.sources import FixedSubset, TestStream
from rws.evaluation.suites import make_suite
from rws.report.flip_rate import flip_rate_records, flip_rate_table, main as flip_rate_main


@pytest.fixture(scope="module")
def natural() -> torch.Tensor:
    """Eight 32x32 crops of sklearn's two sample photos, (8, 3, 32, 32) in [0, 1]."""
    import cv2
    from sklearn.datasets import load_sample_images

    crops = [cv2.resize(im[y:y + 200, x:x + 200], (32, 32), interpolation=cv2.INTER_AREA)
             for im in load_sample_images().images for y, x in [(0, 0), (100, 200), (200, 300), (150, 50)]]
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255


def _seq(x: torch.Tensor, name: str, seed: int = 0, **kw) -> torch.Tensor:
    return perturbation_sequence(x, name, generator=torch.Generator().manual_seed(seed), **kw)


# --- the formulas ------------------------------------------------------------------------------

def _fp_by_hand(preds: list[list[int]], noise: bool, step: int = 1) -> float:
    """The reference's averaging written out: per sequence the fraction of flips among its
    comparisons (noise: frame j vs frame 0; else, along every stride-`step` chain, frame vs the
    previous frame of the chain), then the mean over sequences."""
    per_seq = []
    for seq in preds:
        if noise:
            outcomes = [seq[j] != seq[0] for j in range(1, len(seq))]
        else:
            outcomes = [seq[j] != seq[j - step] for j in range(step, len(seq))]
        per_seq.append(sum(outcomes) / len(outcomes))
    return sum(per_seq) / len(per_seq)


def test_flip_probability_hand_computed() -> None:
    # Sequence 0 flips once and stays: 4 flips against the first frame, 1 against the previous.
    # Sequence 1 flips away and back: 1 flip against the first frame, 2 against the previous.
    preds = torch.tensor([[1, 2, 2, 2, 2], [0, 0, 1, 0, 0]])
    assert metrics.flip_probability(preds, noise=True) == pytest.approx(5 / 8)
    assert metrics.flip_probability(preds, noise=False) == pytest.approx(3 / 8)
    # Stride 2 (difficulty 2 of a non-noise sequence): pairs (0,2) (1,3) (2,4).
    assert metrics.flip_probability(preds, noise=False, step=2) == pytest.approx(3 / 6)
    # Noise sequences ignore the stride, as the reference does.
    assert metrics.flip_probability(preds, noise=True, step=2) == pytest.approx(5 / 8)
    assert metrics.flip_indicators(preds, noise=False).tolist() == [[True, False, False, False],
                                                                     [False, True, True, False]]
    for noise in (True, False):
        for step in (1, 2, 3):
            assert metrics.flip_probability(preds, noise, step) == pytest.approx(
                _fp_by_hand(preds.tolist(), noise, step))
    # The older (T, N) helper is the non-noise stride-1 case.
    assert metrics.sequence_flip_rate(preds.T) == pytest.approx(metrics.flip_probability(preds, False))
    assert metrics.flip_probability(np.array([[3, 3, 3]]), noise=False) == 0.0
    with pytest.raises(ValueError, match="N, T>=2"):
        metrics.flip_probability(torch.tensor([1, 2, 3]), noise=True)
    with pytest.raises(ValueError, match="step"):
        metrics.flip_probability(preds, noise=False, step=5)


def test_mean_flip_rate_by_hand() -> None:
    fp = {"gaussian_noise": 0.1, "rotate": 0.3}
    assert metrics.mean_flip_rate(fp) == pytest.approx(0.2)
    assert metrics.mean_flip_rate(fp, {"gaussian_noise": 0.2, "rotate": 0.2}) == pytest.approx((0.5 + 1.5) / 2)
    with pytest.raises(ValueError, match="rotate"):
        metrics.mean_flip_rate(fp, {"gaussian_noise": 0.2})
    with pytest.raises(ValueError, match="zero"):
        metrics.mean_flip_rate(fp, {"gaussian_noise": 0.2, "rotate": 0.0})
    with pytest.raises(ValueError, match="no flip"):
        metrics.mean_flip_rate({})


# --- the sequences -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", PERTURBATIONS)
def test_sequence_shape_range_and_seed(natural: torch.Tensor, name: str) -> None:
    x = natural[:4]
    y = _seq(x, name)
    t = reference_length(name)
    assert y.shape == (4, t, 3, 32, 32) and y.dtype == x.dtype and torch.isfinite(y).all()
    assert y.min() >= 0 and y.max() <= 1
    assert torch.equal(y, _seq(x, name))  # deterministic for a seed
    other = _seq(x, name, seed=1)
    if name in RANDOM_PERTURBATIONS:
        assert not torch.equal(y, other)
    else:  # a fixed function of the image, as in the reference
        assert torch.equal(y, other)
    # Other tables, lengths, sizes and float64 work too.
    for table in SEQUENCE_TABLES:
        z = _seq(x[:2], name, table=table, length=5)
        assert z.shape == (2, 5, 3, 32, 32) and z.min() >= 0 and z.max() <= 1
    w = torch.rand(2, 3, 20, 24, dtype=torch.float64)
    assert _seq(w, name, table="imagenet").shape == (2, reference_length(name, "imagenet"), 3, 20, 24)


@pytest.mark.parametrize("name", [n for n in PERTURBATIONS if n not in NOISE_PERTURBATIONS])
def test_non_noise_sequences_change_gradually(natural: torch.Tensor, name: str) -> None:
    y = _seq(natural, name)
    dist_first = (y - y[:, :1]).abs().mean((0, 2, 3, 4))       # mean |frame j - frame 0|
    dist_step = (y[:, 1:] - y[:, :-1]).abs().mean((0, 2, 3, 4))  # mean |frame j - frame j-1|
    t = y.shape[1]
    # The distance from the first frame grows along the sequence ...
    assert dist_first[t // 2] > 2 * dist_first[1]
    assert dist_first[-1] > 1.5 * dist_first[1]
    # ... in steps much smaller than the whole drift.
    assert dist_step.max() < 0.5 * dist_first.max()
    # Most steps move (discrete motion-blur taps can repeat a frame of snow / motion blur).
    assert (dist_step > 0).float().mean() > 0.75


@pytest.mark.parametrize("name", NOISE_PERTURBATIONS)
def test_noise_sequences_start_clean_and_redraw_every_frame(natural: torch.Tensor, name: str) -> None:
    y = _seq(natural, name)
    assert torch.equal(y[:, 0], natural)
    frames = y[0].flatten(1)
    same = (frames[:, None] == frames[None]).all(-1)
    assert torch.equal(same, torch.eye(len(frames), dtype=torch.bool))  # every frame differs from every other
    # Independent draws around the clean image: no drift away from the first frame.
    dist_first = (y - y[:, :1]).abs().mean((0, 2, 3, 4))
    assert dist_first[-1] == pytest.approx(float(dist_first[1]), rel=0.3)
    # Difficulty raises the noise level.
    d = [(_seq(natural, name, difficulty=k)[:, 1:] - natural[:, None]).abs().mean() for k in (1, 2, 3)]
    assert d[0] < d[1] < d[2]


def test_lengths_windows_and_names() -> None:
    assert reference_length("motion_blur") == 21 and reference_length("translate") == 16
    assert reference_length("translate", "imagenet") == 41 and reference_length("rotate") == 31
    assert frame_indices("rotate", 5) == [13, 14, 15, 16, 17]    # centred on the reference's range
    assert frame_indices("zoom_blur", 5) == [0, 1, 2, 3, 4]      # grows from the clean image
    x = torch.rand(1, 3, 16, 16)
    # Non-noise difficulty does not change the frames (it is the comparison stride).
    assert torch.equal(_seq(x, "rotate", difficulty=3), _seq(x, "rotate"))
    assert resolve_perturbations("test") == list(TEST_PERTURBATIONS)
    assert resolve_perturbations("rotate,noise") == ["rotate", "gaussian_noise", "shot_noise", "speckle_noise"]
    with pytest.raises(ValueError, match="unknown perturbation 'bogus'; valid: gaussian_noise, shot_noise"):
        perturbation_sequence(x, "bogus")
    with pytest.raises(ValueError, match="valid: all, test.*gaussian_noise"):
        resolve_perturbations(["rotate", "fog"])
    with pytest.raises(ValueError, match="difficulty"):
        perturbation_sequence(x, "rotate", difficulty=4)
    with pytest.raises(ValueError, match="table"):
        perturbation_sequence(x, "rotate", table="mnist")
    with pytest.raises(ValueError, match="length"):
        perturbation_sequence(x, "rotate", length=1)
    assert perturbation_sequence(x[:0], "rotate").shape == (0, 31, 3, 16, 16)


# --- the suite ---------------------------------------------------------------------------------

class FakeDataModule:
    name, num_classes, image_size, corruption_table = "fake", 10, 32, "cifar"

    def __init__(self, n: int = 24, batch_size: int = 10) -> None:
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.rand(n, 3, 32, 32, generator=g), torch.randint(10, (n,), generator=g)
        self.batch_size = batch_size

    def setup(self, stage: str | None = None) -> None:
        pass

    def test_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x, self.y), batch_size=self.batch_size, shuffle=False)


class Linear(nn.Module):
    """A random linear classifier on the pixels: its top-1 prediction flips now and then."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(10, 3 * 32 * 32, generator=torch.Generator().manual_seed(0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w.T


class Constant(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(x), 10).index_fill_(1, torch.tensor([3]), 1.0)


def _predictions(model: nn.Module, dm: FakeDataModule, name: str, difficulty: int, seed: int) -> torch.Tensor:
    """(N, T) predictions on the frames, regenerated batch by batch with the suite's seeds."""
    out = []
    for i, (x, _y) in enumerate(dm.test_dataloader()):
        g = torch.Generator().manual_seed(cell_seed(seed, name, difficulty, i))
        frames = perturbation_sequence(x, name, difficulty, generator=g)
        with torch.no_grad():
            out.append(model(frames.flatten(0, 1)).argmax(1).view(len(x), -1))
    return torch.cat(out)


@pytest.mark.parametrize("name,difficulty", [("gaussian_noise", 1), ("rotate", 1), ("brightness", 2),
                                             ("spatter", 1)])
def test_suite_rows_equal_the_formula_on_the_predictions(name: str, difficulty: int) -> None:
    dm, model = FakeDataModule(), Linear().eval()
    opts = {"name": "perturbations", "perturbations": [name], "difficulty": difficulty, "seed": 3}
    (res,) = evaluate_suite(model, opts, TestStream(dm))
    assert res.cell == Cell("perturbations", name, difficulty)
    rows = {r["metric"]: r for r in res.rows}
    assert set(rows) == {"flip_prob", "acc_first_frame"}
    assert all(r["suite"] == "perturbations" and r["condition"] == name and r["level"] == difficulty
               and r["n"] == 24 for r in rows.values())
    preds = _predictions(model, dm, name, difficulty, seed=3)
    noise = name in NOISE_PERTURBATIONS
    expected = _fp_by_hand(preds.tolist(), noise, 1 if noise else difficulty)
    assert 0 < expected < 1  # the model does flip: the check is not vacuous
    assert rows["flip_prob"]["value"] == pytest.approx(expected)
    assert rows["acc_first_frame"]["value"] == pytest.approx(float((preds[:, 0] == dm.y).float().mean()))
    # correct: per example, in source order, "no flip anywhere in the sequence".
    step = 1 if noise else difficulty
    no_flip = [not any(metrics.flip_indicators(p[None], noise, step)[0]) for p in preds]
    assert res.correct.dtype == torch.bool and res.correct.tolist() == no_flip
    # Any cell recomputes alone, to the same value.
    (again,) = evaluate_suite(model, opts, TestStream(dm))
    assert again.rows == res.rows


def test_constant_model_never_flips() -> None:
    results = evaluate_suite(Constant(), {"name": "perturbations", "perturbations": ["shot_noise", "translate"]},
                             TestStream(FakeDataModule()))
    for res in results:
        fp = [r for r in res.rows if r["metric"] == "flip_prob"][0]
        assert fp["value"] == 0.0 and res.correct.all()


def test_suite_options_cells_settings_and_errors() -> None:
    src = TestStream(FakeDataModule())
    suite = make_suite({"name": "perturbations", "perturbations": "all", "difficulty": [1, 3]})
    assert len(suite.cells(src)) == 28 and suite.cells(src)[1] == Cell("perturbations", "gaussian_noise", 3)
    assert len(make_suite({"name": "perturbations"}).cells(src)) == len(PERTURBATIONS)
    with pytest.raises(ValueError, match="unknown perturbation or group 'bogus'; valid: .*gaussian_noise"):
        make_suite({"name": "perturbations", "perturbations": ["bogus"]})
    with pytest.raises(ValueError, match="difficulty"):
        make_suite({"name": "perturbations", "difficulty": 5})
    with pytest.raises(ValueError, match="table"):
        make_suite({"name": "perturbations", "table": "mnist"})
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['severities'\]"):
        make_suite({"name": "perturbations", "severities": [1]})
    cell = Cell("perturbations", "rotate", 1)

    def key(opts: dict, source=src) -> str:
        s = make_suite({"name": "perturbations", **opts})
        return settings_hash({"data": source.settings(), "suite": s.settings(cell, source)})

    base = key({})
    assert key({"perturbations": ["rotate"]}) == base
    assert key({"table": "imagenet"}) != base and key({"length": 9}) != base and key({"seed": 1}) != base
    assert key({}, TestStream(FakeDataModule(batch_size=8))) != base
    s = make_suite({"name": "perturbations"})
    assert s.settings(cell, src)["length"] == 31 and s.settings(cell, src)["table"] == "cifar"
    # Table from the data: non-CIFAR images up to 64 px get the Tiny-ImageNet schedule.
    tiny = FakeDataModule()
    tiny.corruption_table, tiny.image_size = "imagenet", 64
    assert s.table(TestStream(tiny)) == "tiny_imagenet"
    tiny.image_size = 224
    assert s.table(TestStream(tiny)) == "imagenet"
    # The sweep's fixed subset: frames seeded per forward chunk, so the chunk size is in the key.
    dm = FakeDataModule()
    sub = lambda bs: FixedSubset(dm.x, dm.y, 12, batch_size=bs)  # noqa: E731
    assert s.settings(cell, sub(4)) != s.settings(cell, sub(6))
    rows = result_rows(evaluate_suite(Linear().eval(), {"name": "perturbations", "perturbations": ["rotate"]}, sub(4)))
    assert [r["n"] for r in rows] == [12, 12]


def test_suite_config_and_engine_resume(tmp_path) -> None:
    opts = yaml.safe_load((CONF_DIR / "suite" / "perturbations.yaml").read_text())
    assert opts["name"] == "perturbations" and opts["n"]
    assert [c.condition for c in make_suite(opts).cells(TestStream(FakeDataModule()))] == list(TEST_PERTURBATIONS)
    plan = plan_cells(make_suite({"name": "perturbations", "perturbations": ["shear", "gaussian_noise"],
                                  "length": 6}), TestStream(FakeDataModule(), 12))
    job = ModelJob("sid", "{}", "lin", lambda: Linear().eval())
    with Engine(tmp_path, progress=False, git="test") as engine:
        assert engine.run([job], plan) == 2
    rows = read_results(tmp_path)
    assert sorted((r["condition"], r["metric"]) for r in rows) == sorted(
        (c, m) for c in ("shear", "gaussian_noise") for m in ("flip_prob", "acc_first_frame"))
    assert all(r["n"] == 12 and r["level"] == 1 for r in rows)
    with Engine(tmp_path, progress=False, git="test") as engine:
        assert engine.run([job], plan) == 0  # resumed: nothing measured again
    assert len(list((tmp_path / "correct").rglob("*.safetensors"))) == 2


# --- the table ---------------------------------------------------------------------------------

def _fp_row(sid: str, model: str, cond: str, level: int, value: float, metric: str = "flip_prob") -> dict:
    return {"spec_id": sid, "spec": "{}", "model": model, "suite": "perturbations", "condition": cond,
            "level": level, "metric": metric, "value": value, "n": 100, "settings": "abc", "seed": 0,
            "git": "g", "timestamp": "t"}


def _table_rows() -> list[dict]:
    return [
        _fp_row("a1", "robust", "gaussian_noise", 1, 0.1), _fp_row("a1", "robust", "rotate", 1, 0.2),
        _fp_row("a1", "robust", "rotate", 2, 0.4),  # only this model has difficulty 2
        _fp_row("a1", "robust", "rotate", 1, 0.9, metric="acc_first_frame"),
        _fp_row("b2", "std", "gaussian_noise", 1, 0.2), _fp_row("b2", "std", "rotate", 1, 0.4),
        {**_fp_row("b2", "std", "clean", "", 0.9, metric="acc"), "suite": "clean"},
    ]


def test_flip_rate_table_from_hand_made_rows() -> None:
    rows = _table_rows()
    unnorm = flip_rate_records(rows)
    # robust: rotate = mean over its difficulties (0.2, 0.4) = 0.3; mFR = (0.1 + 0.3) / 2.
    assert unnorm[0] == {"model": "robust", "gaussian_noise": pytest.approx(0.1), "rotate": pytest.approx(0.3),
                         "mFR (unnormalised)": pytest.approx(0.2)}
    assert unnorm[1]["mFR (unnormalised)"] == pytest.approx(0.3)
    norm = flip_rate_records(rows, baseline="std")
    # Ratios over the difficulties both measured (1): (0.1/0.2 + 0.2/0.4) / 2 = 0.5; the baseline is 1.
    assert norm[0]["mFR"] == pytest.approx(0.5) and norm[1]["mFR"] == pytest.approx(1.0)
    assert flip_rate_records(rows, baseline="b2") == norm  # a spec_id works too
    md = flip_rate_table(rows)
    assert md.splitlines()[0] == "| model | gaussian_noise | rotate | mFR (unnormalised) |"
    assert "| robust | 10.00 | 30.00 | 20.00 |" in md and "| std | 20.00 | 40.00 | 30.00 |" in md
    md = flip_rate_table(rows, baseline="std")
    assert md.splitlines()[0].endswith("| mFR |") and "| robust | 10.00 | 30.00 | 50.00 |" in md
    with pytest.raises(ValueError, match="baseline 'alexnet' has no flip_prob rows; models: robust"):
        flip_rate_table(rows, baseline="alexnet")
    with pytest.raises(ValueError, match="no flip_prob rows for \\['rotate'\\]"):
        flip_rate_table([r for r in rows if not (r["model"] == "std" and r["condition"] == "rotate")],
                        baseline="std")
    assert flip_rate_table([]) == "(no flip_prob rows)\n"


def test_flip_rate_cli(tmp_path, capsys) -> None:
    with ResultsWriter(tmp_path) as w:
        w.write(_table_rows())
    assert flip_rate_main([str(tmp_path), "--baseline", "std"]) == 0
    out = capsys.readouterr().out
    assert "| robust | 10.00 | 30.00 | 50.00 |" in out and "| std | 20.00 | 40.00 | 100.00 |" in out


def test_evaluate_with_the_suite_config(tmp_path, capsys) -> None:
    from rws.config import compose
    from rws.evaluation.pipeline import evaluate
    from rws.models import create_model
    from rws.weights.export import save_export

    torch.manual_seed(0)
    mcfg = {"_target_": "rws.models.create_model", "name": "small_cnn", "num_classes": 10, "width": 0.25}
    export = save_export(tmp_path / "std" / "export", create_model("small_cnn", num_classes=10, width=0.25), mcfg)
    out = tmp_path / "eval"
    overrides = [f"out={out}", "device=cpu", "progress=false", f"++paths.output_dir={tmp_path}",
                 f"models=[{export}]", "suite=[perturbations]", "suite.perturbations.perturbations=[rotate,shot_noise]",
                 "suite.perturbations.length=4", "test_subset=12"]
    if not (CONF_DIR / "data" / "digits.yaml").exists():
        overrides += ["~data"]
    evaluate(compose("evaluate", overrides), datamodule=FakeDataModule())
    rows = read_results(out)
    assert sorted((r["condition"], r["metric"]) for r in rows) == sorted(
        (c, m) for c in ("rotate", "shot_noise") for m in ("flip_prob", "acc_first_frame"))
    assert all(r["n"] == 12 and r["suite"] == "perturbations" and r["settings"] for r in rows)
    capsys.readouterr()
    flip_rate_main([str(out)])
    assert capsys.readouterr().out.splitlines()[0] == "| model | rotate | shot_noise | mFR (unnormalised) |"
