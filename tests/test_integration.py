"""End to end on the shared CIFAR-10 JPEGs: train a corruption-augmented small CNN, export it,
evaluate the export on clean + corrupted test images, and read the long-format results back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_train_corruption_method_on_imagefolder_then_evaluate(tmp_path: Path, shared_data_dir: Path) -> None:
    env_paths = [f"paths.data_dir={shared_data_dir}", f"paths.output_dir={tmp_path}"]
    run = tmp_path / "run"
    train = subprocess.run(
        [sys.executable, "train.py", "data=cifar10_jpeg", "model=small_cnn", "method=corruption",
         "method.corruptions=[gaussian_noise,fog]", "method.severity=[3,5]", "trainer=cpu",
         "trainer.max_epochs=1", "data.subset_per_class=20", "data.val_size=200", "data.test_subset=200",
         "trainer.enable_progress_bar=false", f"hydra.run.dir={run}", *env_paths],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-3000:]
    meta = json.loads((run / "export/metrics.json").read_text())
    assert meta["config"]["method"]["corruptions"] == ["gaussian_noise", "fog"]
    assert meta["config"]["data"]["name"] == "cifar10_jpeg"

    out = tmp_path / "eval"
    ev = subprocess.run(
        # data.test_per_class: the test folder is sorted by class, so the first 100 images alone
        # (test_subset=100) would all be airplanes.
        [sys.executable, "evaluate.py", "data=cifar10_jpeg", "data.test_per_class=10", f"models=[{run}/export]",
         "test_subset=100",
         "suites=[clean,{name: corruptions, corruptions: [gaussian_noise,contrast], severities: [1,5]}]",
         f"out={out}", "progress=false", *env_paths],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert ev.returncode == 0, ev.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    cells = {(r["suite"], r["condition"], str(r["level"])) for r in rows if r["metric"] == "acc"}
    assert ("clean", "clean", "") in cells
    assert {("corruptions", c, s) for c in ("gaussian_noise", "contrast") for s in ("1", "5")} <= cells
    assert all(0.0 <= r["value"] <= 1.0 and r["n"] == 100 for r in rows if r["metric"] == "acc")
    summary = json.loads((out / "summary.json").read_text())
    model = next(iter(summary["models"].values())) if "models" in summary else next(iter(summary.values()))
    assert 0.0 <= model["RA"] <= 1.0 and 0.0 <= model["TA"] <= 1.0

    # The values are the accuracies computed here on the same 100 test images (10 per class, the first
    # 100 of the test loader; contrast has no randomness), and so is each cell's per-example
    # correctness (which pins the images themselves, even for a model that is at chance after this
    # short run); TA is the clean value, RA the mean over the four corruption cells.
    import torch
    from hydra.utils import instantiate

    from rws.config import compose
    from rws.corruptions import corrupt
    from rws.evaluation.cells import Cell
    from rws.evaluation.correctness import CorrectnessStore
    from rws.weights.export import load_export

    dm = instantiate(compose("evaluate", ["data=cifar10_jpeg", "data.test_per_class=10", *env_paths]).data)
    dm.setup("test")
    xs, ys = zip(*dm.test_dataloader())
    x, y = torch.cat(xs)[:100].float(), torch.cat(ys)[:100]
    assert torch.equal(y.bincount(minlength=10), torch.full((10,), 10))
    net = load_export(run / "export").build().eval()

    def correct(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return net(images).argmax(1) == y

    store = CorrectnessStore(out)
    by_cell = {(r["condition"], str(r["level"])): r for r in rows if r["metric"] == "acc"}
    for (cond, level), images in [(("clean", ""), x), (("contrast", "1"), corrupt(x, "contrast", 1, table="cifar")),
                                  (("contrast", "5"), corrupt(x, "contrast", 5, table="cifar"))]:
        r = by_cell[(cond, level)]
        mine = correct(images)
        assert r["value"] == pytest.approx(mine.float().mean().item()), (cond, level)
        stored = store.load(r["spec_id"], Cell(r["suite"], cond, r["level"]), r["settings"])
        assert torch.equal(stored, mine), (cond, level)
    assert model["TA"] == pytest.approx(by_cell[("clean", "")]["value"])
    corr = [r["value"] for (c, _), r in by_cell.items() if c != "clean"]
    assert len(corr) == 4 and model["RA"] == pytest.approx(sum(corr) / 4)
