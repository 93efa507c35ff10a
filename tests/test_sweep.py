import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rws.stages import soup_sweep
from rws.stages.soup_sweep import TargetEvaluator, best_soups, few_shot_study, run_sweep
from rws.weights.export import save_export

ROOT = Path(__file__).resolve().parents[1]
CFG = {"name": "small_cnn", "num_classes": 10, "width": 0.25}


def _exports(tmp_path: Path, n: int) -> list[str]:
    from rws.models import create_model

    paths = []
    for i in range(n):
        torch.manual_seed(i)
        m = create_model(**CFG)
        paths.append(str(save_export(tmp_path / f"m{i}" / "export", m, CFG)))
    return paths


def _cfg(members, out, **kw):
    cfg = {"members": members, "out": str(out), "grid": {"kind": "grid", "low": 0, "high": 1, "step": 0.5},
           "targets": [{"name": "clean", "suite": "clean", "k": 16}], "seed": 0, "attack_steps": 2}
    cfg.update(kw)
    return cfg


class Counting(TargetEvaluator):
    calls = 0

    def __call__(self, model, target):
        Counting.calls += 1
        return super().__call__(model, target)


def _data(n=32):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_sweep_outputs_and_resume(tmp_path):
    members = _exports(tmp_path, 3)
    x, y = _data()
    out = tmp_path / "sweep"
    targets = [{"name": "clean", "suite": "clean", "k": 16},
               {"name": "noise", "suite": "corruption", "corruption": "gaussian_noise", "severity": [1, 3], "k": 8}]
    cfg = _cfg(members, out, targets=targets)
    Counting.calls = 0
    best = run_sweep(cfg, x=x, y=y, evaluator=Counting(x, y), log=lambda s: None)
    assert Counting.calls == 6 * 2  # 6 convex soups (step 0.5) x 2 targets
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len({r["spec_id"] for r in rows}) == 6
    for key in ("spec_id", "spec", "suite", "condition", "level", "metric", "value", "n", "seed", "git", "timestamp"):
        assert key in rows[0]
    assert {r["condition"] for r in rows if r["target"] == "noise"} == {"gaussian_noise", "mean"}
    assert set(best["per_target"]) == {"clean", "noise"}
    assert (out / "best.md").read_text().startswith("| model |")
    from safetensors.torch import load_file

    mats = load_file(str(out / "correctness.safetensors"))
    assert mats["clean"].shape == (6, 16) and mats["noise"].shape == (6, 16)
    assert (out / "figures" / "simplex_clean.png").is_file() and (out / "figures" / "top5.png").is_file()

    # Re-run: nothing to evaluate. Adding a target evaluates only the new cells.
    Counting.calls = 0
    run_sweep(cfg, x=x, y=y, evaluator=Counting(x, y), figures=False, log=lambda s: None)
    assert Counting.calls == 0
    cfg["targets"] = targets + [{"name": "clean8", "suite": "clean", "k": 8}]
    run_sweep(cfg, x=x, y=y, evaluator=Counting(x, y), figures=False, log=lambda s: None)
    assert Counting.calls == 6


def test_front_and_adversarial(tmp_path):
    pytest.importorskip("rws.attacks")
    members = _exports(tmp_path, 2)
    x, y = _data(8)
    out = tmp_path / "front"
    targets = [{"name": "linf", "suite": "adversarial", "threat": {"norm": "linf", "eps": "8/255"}, "k": 4},
               {"name": "union", "suite": "union", "threats": [{"norm": "linf", "eps": "8/255"},
                                                              {"norm": "l2", "eps": 0.5}], "k": 4}]
    cfg = _cfg(members, out, grid={"kind": "front", "ws": [0, 0.5, 1]}, targets=targets, attacks=["apgd-ce"])
    best = run_sweep(cfg, x=x, y=y, log=lambda s: None)
    # The union is robust to every threat, so it can never beat the l_inf-only robust accuracy.
    scores = {r["spec_id"]: r["value"] for r in map(json.loads, (out / "results.jsonl").read_text().splitlines()) if r["target"] == "linf"}
    for r in map(json.loads, (out / "results.jsonl").read_text().splitlines()):
        if r["target"] == "union":
            assert r["value"] <= scores[r["spec_id"]]
    assert (out / "figures" / "front.png").is_file() and (out / "figures" / "front_scatter.png").is_file()


def test_selection_and_few_shot_shapes():
    scores = torch.tensor([[0.5, 0.9], [0.8, 0.2], [0.75, 0.7]], dtype=torch.float64)
    best = best_soups(scores, [[1, 0], [0, 1], [0.5, 0.5]], ["a", "b", "c"], ["t1", "t2"])
    assert best["per_target"]["t1"]["spec_id"] == "b" and best["per_target"]["t2"]["spec_id"] == "a"
    assert best["single"]["spec_id"] == "c"
    g = torch.Generator().manual_seed(0)
    correct = torch.rand(20, 1000, generator=g) < torch.linspace(0.3, 0.8, 20)[:, None]
    study = few_shot_study(correct, trials=5)
    assert set(study["k"]) == {"10", "30", "100", "300", "500"}
    assert study["k"]["500"]["trials"] == 5 and study["n_test"] == 500
    assert study["k"]["500"]["mean"] >= study["k"]["10"]["mean"] - 0.05


def test_few_shot_figure(tmp_path):
    from rws.report.soup_figures import plot_few_shot

    g = torch.Generator().manual_seed(1)
    correct = torch.rand(12, 1000, generator=g) < torch.linspace(0.3, 0.8, 12)[:, None]
    path = plot_few_shot({"t": few_shot_study(correct, trials=3)}, tmp_path / "few_shot.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_sweep_help_runs():
    r = subprocess.run([sys.executable, "sweep.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "480" in r.stdout and "members" in r.stdout


def test_sweep_cli_on_digits(tmp_path):
    members = _exports(tmp_path, 2)
    out = tmp_path / "cli"
    r = subprocess.run([sys.executable, "sweep.py", f"members=[{members[0]},{members[1]}]", f"out={out}",
                        "grid=front", "grid.ws=[0,0.5,1]", "targets=[{name: clean, suite: clean, k: 32}]",
                        f"paths.cache_dir={tmp_path / 'cache'}", "figures=false"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "3 soups x 1 targets" in r.stdout
    assert json.loads((out / "best.json").read_text())["per_target"]["clean"]["score"] >= 0
