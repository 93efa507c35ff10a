"""End to end on the shared CIFAR-10 JPEGs: train a corruption-augmented small CNN, export it,
evaluate the export on clean + corrupted test images, and read the long-format results back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
        [sys.executable, "evaluate.py", "data=cifar10_jpeg", f"models=[{run}/export]", "test_subset=100",
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
