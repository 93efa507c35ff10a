"""Every pipeline end to end at its smoke setting (issue 12): each runs as a subprocess, exactly as a
user types it, into tmp_path, and the test checks what it promises: the files, the rows of its result
files (one per model x condition, values that are accuracies on the stated number of images) and that
its tables agree with those rows. Minutes each: marked ``pipeline`` (deselected by default; CI runs
``pytest -m pipeline``). The plans themselves (every override composes) are checked fast in
tests/test_pipelines.py.

    python -m pytest -m pipeline tests/test_pipeline_smoke.py
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from rws.corruptions import CPU_SHIFTS, CORRUPTIONS

pytestmark = pytest.mark.pipeline

ROOT = Path(__file__).resolve().parents[1]


def _pipeline(module: str, *args: str, data: Path | None = None, timeout: int = 1800) -> str:
    """Run ``python -m rws.pipelines.<module> *args``; fail with the output's tail unless it exits 0."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if data is not None:
        env["RWS_DATA"] = str(data)
    proc = subprocess.run([sys.executable, "-m", f"rws.pipelines.{module}", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{module} {' '.join(args)} exited {proc.returncode}:\n" \
                                 f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def _rows(results_dir: Path) -> list[dict[str, Any]]:
    """Every row of a results directory (``results.jsonl`` or its shards)."""
    files = sorted(results_dir.glob("results*.jsonl"))
    assert files, f"no results*.jsonl in {results_dir}"
    return [json.loads(line) for f in files for line in f.read_text().splitlines() if line.strip()]


def _is_rate(v: Any) -> bool:
    return isinstance(v, (int, float)) and not math.isnan(v) and 0.0 <= v <= 1.0


def _acc(rows: list[dict[str, Any]], model: str, suite: str, condition: str | None = None) -> list[float]:
    return [r["value"] for r in rows if r["model"] == model and r["suite"] == suite and r["metric"] == "acc"
            and (condition is None or r["condition"] == condition)]


def _exports(out: Path, *names: str) -> None:
    for name in names:
        export = out / name / "export"
        assert (export / "model.safetensors").stat().st_size > 1000, name
        metrics = json.loads((export / "metrics.json").read_text())
        assert isinstance(metrics, dict) and metrics, name


def _check_sweep(d: Path, targets: dict[str, int], n_soups: int) -> list[dict[str, Any]]:
    """A sweep directory: one accuracy row per (soup, target) on the target's k images, and best.json
    picks, per target, a soup that really has the highest score on it."""
    rows = [r for r in _rows(d) if r["metric"] == "acc"]
    by_target: dict[str, dict[str, float]] = defaultdict(dict)
    for r in rows:  # a row's condition is its target's name
        assert _is_rate(r["value"]) and r["n"] == targets[r["condition"]], r
        by_target[r["condition"]][r["spec_id"]] = r["value"]
    assert set(by_target) == set(targets)
    assert all(len(v) == n_soups for v in by_target.values()) and len(rows) == n_soups * len(targets)
    best = json.loads((d / "best.json").read_text())
    assert set(best["targets"]) == set(targets) == set(best["per_target"])
    for t, pick in best["per_target"].items():
        assert pick["score"] == pytest.approx(max(by_target[t].values())), t
        assert by_target[t][pick["spec_id"]] == pytest.approx(pick["score"]), t
    assert (d / "best.md").read_text().startswith("| model |")
    return rows


# -- quickstart (embedded digits, no shared data) ------------------------------------------------------

def test_quickstart_smoke(tmp_path: Path) -> None:
    out = tmp_path / "qs"
    stdout = _pipeline("quickstart", "--smoke", "--out", str(out))
    assert "quickstart finished" in stdout
    _exports(out, "init", "cotrain", "std", "robust", "teacher", "student")
    assert (out / "sigs" / "all_corruptions.safetensors").is_file() and (out / "sigs" / "analysis.json").is_file()

    rows = _rows(out / "eval")
    models = ["standard", "corruption_robust", "rws_patched", "soup", "cotrained beta=1", "cotrained beta=0.5",
              "cotrained beta=0", "distilled"]
    for m in models:
        clean = _acc(rows, m, "clean")
        corr = [r for r in rows if r["model"] == m and r["suite"] == "corruptions" and r["metric"] == "acc"]
        adv = {r["condition"]: r["value"] for r in rows if r["model"] == m and r["suite"] == "adversarial"
               and r["metric"] == "acc"}  # PGD-40 on the same images: clean, l-inf and union accuracy
        assert len(clean) == 1 and set(adv) == {"clean", "linf", "union"}, m
        assert adv["union"] <= adv["linf"] <= adv["clean"], m
        if m != "distilled":  # deterministic in eval mode (the MC-dropout passes depend on the batching)
            assert adv["clean"] == clean[0], m
        assert sorted(r["condition"] for r in corr) == sorted(CORRUPTIONS) and {r["level"] for r in corr} == {3}, m
        assert all(r["n"] == 120 for r in rows if r["model"] == m and r["metric"] == "acc"), m
        assert all(_is_rate(v) for v in (*clean, *adv.values(), *(r["value"] for r in corr))), m

    # The table: the README's rows in order, numeric TA / RA / robust accuracy, equal to the result rows.
    with open(out / "table.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["model"] for r in table] == models
    adv_col = next(c for c in table[0] if c.startswith("linf"))
    for r in table:
        ta, ra, rob = float(r["TA"]), float(r["RA"]), float(r[adv_col])
        assert all(0.0 <= v <= 1.0 for v in (ta, ra, rob)), r
        assert ta == pytest.approx(_acc(rows, r["model"], "clean")[0])
        corr = _acc(rows, r["model"], "corruptions")
        assert ra == pytest.approx(sum(corr) / len(corr)) and float(r["mCE_unnormalized"]) == pytest.approx(1 - ra)
        assert rob == pytest.approx(_acc(rows, r["model"], "adversarial", "linf")[0])
    md = (out / "table.md").read_text()
    assert md.startswith("| model |") and all(f"| {m} |" in md for m in models)


# -- distillation ("Efficiently robustify"; embedded digits) ------------------------------------------

def test_distill_cpu_smoke(tmp_path: Path) -> None:
    from rws.pipelines import distill_cpu

    out = tmp_path / "distill"
    _pipeline("distill_cpu", "--smoke", "--out", str(out))
    s = distill_cpu.Settings.smoke()
    _exports(out, "student_base", *distill_cpu.MODELS, *distill_cpu.distill_runs(s, out))
    rows = _rows(out / "eval" / "table1")
    labels = ["student before tuning", "fine-tune baseline", "Ours", "Ours w/o KLD", "Ours w/o U_mc",
              "Ours (max logit)", "Ours w/o K.D.", "single head", "clean head", "unclean head", "combined head",
              "teacher (AugMix+DA)"]
    assert {r["model"] for r in rows} == set(labels)
    for m in labels:
        assert len(_acc(rows, m, "clean")) == 1 and len(_acc(rows, m, "corruptions")) == len(CORRUPTIONS), m
    assert all(_is_rate(r["value"]) and r["n"] == s.n_test for r in rows)
    # a head-selection row sends every image to exactly one head
    for m in ("Ours", "Ours w/o KLD", "Ours (max logit)"):
        for suite in ("clean", "corruptions"):
            fr = defaultdict(float)
            for r in rows:
                if r["model"] == m and r["suite"] == suite and r["metric"].startswith("head_frac:"):
                    fr[(r["condition"], r["level"])] += r["value"]
            assert fr and all(v == pytest.approx(1.0) for v in fr.values()), (m, suite)

    flips = _rows(out / "eval" / "flips")
    assert {r["metric"] for r in flips} == {"flip_prob", "acc_first_frame"}
    assert all(_is_rate(r["value"]) and r["n"] == s.n_flips for r in flips)

    report = json.loads((out / "report" / "distill.json").read_text())
    for m in ("Ours", "clean head", "student before tuning"):
        assert report["models"][m]["clean"] == pytest.approx(_acc(rows, m, "clean")[0])
        corr = _acc(rows, m, "corruptions")
        assert report["models"][m]["corruptions"] == pytest.approx(sum(corr) / len(corr))
    assert {c[1] for c in report["claims"]} <= {"held", "did not hold", "undecided"} and report["claims"]
    assert (out / "report" / "distill.md").read_text().startswith("# ")
    assert (out / "report" / "fraction_curve.png").stat().st_size > 1000


# -- adapters ("Revisiting adapters"; shared CIFAR-10) ------------------------------------------------

def test_adapters_cpu_smoke(tmp_path: Path, shared_data_dir: Path) -> None:
    from rws.pipelines import adapters_cpu

    out = tmp_path / "adapters"
    _pipeline("adapters_cpu", "--smoke", "--out", str(out), data=shared_data_dir)
    s = adapters_cpu.Settings.smoke()
    runs = adapters_cpu.trainings(s)
    _exports(out, *runs)

    table1 = _rows(out / "table1")
    expected = {"nominal", "adversarial"} | {f"{n}@{mode}" for n in runs if n.startswith("cotrain")
                                              for mode in ("clean", "robust")}
    assert {r["model"] for r in table1} == expected
    for m in expected:  # the adversarial suite: clean, PGD-40 l-inf and union accuracy on the same images
        acc = {r["condition"]: r["value"] for r in table1 if r["model"] == m and r["metric"] == "acc"}
        assert set(acc) == {"clean", "linf", "union"}, m
        assert acc["union"] <= acc["linf"] <= acc["clean"], m
    assert all(_is_rate(r["value"]) and r["n"] == s.n_robust for r in table1 if r["metric"] == "acc")

    targets = {"clean": s.k_clean, "linf": s.k_adv, **{c: s.k_clean for c in CPU_SHIFTS}}
    beta = _check_sweep(out / "beta", targets, len(adapters_cpu.BETAS))
    ens = _check_sweep(out / "ensemble", targets, len(adapters_cpu.ENSEMBLE_WEIGHTS))
    _check_sweep(out / "independent", targets, len(adapters_cpu.INDEPENDENT_WS))
    _check_sweep(out / "plane", {"clean": s.k_clean, "linf": s.k_adv}, 9)  # [-0.5, 1.5] step 1: 3 x 3
    # The ensemble that is all clean mode predicts like beta = 1 (the clean mode) on the same images.
    b1 = {r["condition"]: r["value"] for r in beta if r["model"] == "beta=1" and r["suite"] != "adversarial"}
    e1 = {r["condition"]: r["value"] for r in ens if r["model"] == "ensemble1" and r["suite"] != "adversarial"}
    assert b1 == e1 and len(b1) == 1 + len(CPU_SHIFTS)

    report = json.loads((out / "report" / "adapters.json").read_text())
    assert report["main_run"] == s.main_run and set(report["table1"]) == set(runs)
    main_row = report["table1"][s.main_run]  # the report's numbers are the result rows'
    for mode in ("clean", "robust"):
        acc = {r["condition"]: r["value"] for r in table1 if r["model"] == f"{s.main_run}@{mode}"}
        assert main_row[f"{mode}_mode_clean"] == pytest.approx(acc["clean"])
        assert main_row[f"{mode}_mode_robust"] == pytest.approx(acc["linf"])
    assert [b["beta"] for b in report["beta"]] == list(adapters_cpu.BETAS)
    for b in report["beta"]:
        assert b["clean"] == pytest.approx(next(r["value"] for r in beta if r["model"] == b["label"]
                                                and r["suite"] == "clean"))
    for fig in ("beta_curves", "soup_vs_ensemble", "token_plane"):
        assert (out / "report" / f"{fig}.png").stat().st_size > 1000, fig
    assert json.loads((out / "summary.json").read_text())["out"] == str(out)


# -- robust model soups (shared CIFAR-10) ---------------------------------------------------------------

def test_soups_cpu_smoke(tmp_path: Path, shared_data_dir: Path) -> None:
    from rws.pipelines import soups_cpu

    out = tmp_path / "soups"
    stdout = _pipeline("soups_cpu", "--smoke", "--out", str(out), data=shared_data_dir)
    s = soups_cpu.Settings.smoke()
    _exports(out, "linf", *soups_cpu.FINETUNES)
    for name in soups_cpu.FINETUNES:  # each fine-tune starts from theta_inf
        assert (out / f"{name}.log").is_file()
    _check_sweep(out / "front", {"clean": s.k_shift, "linf": s.k_adv, "l2": s.k_adv, "union": s.k_adv},
                 len(s.front_ws))
    simplex = _check_sweep(out / "simplex", {"clean": s.k_shift, "linf": s.k_adv, "l2": s.k_adv, "l1": s.k_adv}, 6)
    for w in {tuple(r["weights"]) for r in simplex}:  # convex: on the simplex
        assert sum(w) == pytest.approx(1.0) and min(w) >= 0
    grid4 = _check_sweep(out / "grid4", {"clean": s.k_shift, **{c: s.k_shift for c in CPU_SHIFTS}}, 10)
    assert {len(r["weights"]) for r in grid4} == {4}
    assert (out / "grid4" / "few_shot.json").is_file()
    for name in ("front", "simplex", "grid4"):
        assert f"## {name}" in stdout
    assert json.loads((out / "summary.json").read_text())["out"] == str(out)


# -- Robust Weight Signatures (shared CIFAR-10 + Tiny-ImageNet), then the shared-init transfer --------

@pytest.fixture(scope="module")
def rws_cpu_smoke(tmp_path_factory: pytest.TempPathFactory, shared_data_dir: Path) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("rws") / "rws_cpu"
    return out, _pipeline("rws_cpu", "--smoke", "--out", str(out), data=shared_data_dir, timeout=3600)


def test_rws_cpu_smoke(rws_cpu_smoke: tuple[Path, str], shared_data_dir: Path) -> None:
    out, stdout = rws_cpu_smoke
    assert "Standard + RWS_shallow" in stdout
    for f in ("table1.md", "table4.md", "alpha_sweep.md", "composition.md", "transfer.md", "tables.json"):
        assert (out / f).is_file(), f
    tables = json.loads((out / "tables.json").read_text())["tables"]
    rows = {r["row"]: r for r in tables["table1"]}
    for label in ("Standard", "All Models (oracle)", "Standard + RWS_shallow", "Standard + RWS_shallow,8bit",
                  "Standard + RWS_shallow, BN recalibrated"):
        assert rows[label]["RA@5"] is not None, label
    assert rows["Standard + RWS_shallow"]["TA"] == rows["Standard"]["TA"]
    assert rows["Standard + RWS_shallow,8bit"]["mb_files"] < rows["Standard + RWS_shallow"]["mb_files"]
    for fig in ("fig2_layer_norms", "fig3_cosine_layers", "fig5_cross_dataset", "fig7_alpha_sweep",
                "fig8_composition", "fig9_feature_maps"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 1000, fig
    # resumable: a second run skips every step
    env = {**os.environ, "RWS_DATA": str(shared_data_dir), "OMP_NUM_THREADS": "1"}
    again = subprocess.run([sys.executable, "-m", "rws.pipelines.rws_cpu", "--smoke", "--out", str(out),
                            "--stages", "train,tiny,extract,eval"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "[run ]" not in again.stdout, again.stdout[-2000:]


def test_rws_transfer_smoke(rws_cpu_smoke: tuple[Path, str], tmp_path: Path, shared_data_dir: Path) -> None:
    from rws.pipelines import rws_transfer

    cifar, _ = rws_cpu_smoke
    out = tmp_path / "transfer"
    stdout = _pipeline("rws_transfer", "--smoke", "--cifar", str(cifar), "--out", str(out), data=shared_data_dir)
    s = rws_transfer.Settings.smoke(cifar)
    tc = rws_transfer.TINY_CORRUPTION
    _exports(out, "init", "std", f"robust_{tc}")
    assert (out / "sigs" / f"{tc}.safetensors").is_file()
    rows = _rows(out / "eval")
    models = {"tiny_std", f"tiny_robust_{tc}", f"tiny_std+tiny_rws_{tc}",
              *[f"tiny_std+cifar_rws_{c}" for c in s.corruptions]}
    assert {r["model"] for r in rows} == models
    for m in models:
        assert len(_acc(rows, m, "clean")) == 1, m
        corr = [r for r in rows if r["model"] == m and r["suite"] == "corruptions" and r["metric"] == "acc"]
        assert sorted((r["condition"], r["level"]) for r in corr) == sorted(
            (c, lvl) for c in s.corruptions for lvl in (3, 5)), m
    assert all(_is_rate(r["value"]) and r["n"] == s.test_subset for r in rows if r["metric"] == "acc")
    table = (out / "transfer_shared.md").read_text()
    assert table in stdout and all(m in table for m in models)


def test_rws_bn_policy_smoke(tmp_path: Path, shared_data_dir: Path) -> None:
    """The BN-policy study end to end; a re-run skips every step, and a full run into the smoke run's
    --out is refused (its finished steps ran with other settings) before anything runs."""
    from rws.pipelines import rws_bn_policy as bp

    out = tmp_path / "bn_policy"
    stdout = _pipeline("rws_bn_policy", "--smoke", "--out", str(out), data=shared_data_dir)
    _exports(out, "init", "std", *[f"robust/{c}" for c in bp.CORRUPTIONS])
    for policy in ("robust", "official"):
        assert all((out / "sigs" / policy / f"{c}.safetensors").is_file() for c in bp.CORRUPTIONS)
    rows = [r for r in _rows(out / "eval") if r["metric"] == "acc"]
    info = json.loads((out / "plan.json").read_text())
    models = [name for _, name, _sid in info["rows"]]
    assert {sid for _, _, sid in info["rows"]} == {r["spec_id"] for r in rows}  # the plan's ids are the engine's
    s = bp.Settings.smoke()
    assert len(models) == 1 + len(bp.CORRUPTIONS) * (1 + len(bp.variants(s))) == len({r["model"] for r in rows})
    for m in models:  # clean + each corruption at severity 5, on the smoke run's 100 test images
        assert sorted(r["condition"] for r in rows if r["model"] == m) == sorted(["clean", *bp.CORRUPTIONS]), m
    assert all(_is_rate(r["value"]) and r["n"] == 100 for r in rows)
    summary = json.loads((out / "bn_policy.json").read_text())["summary"]
    acc = {(r["model"], r["condition"]): 100 * r["value"] for r in rows}
    n = s.calib_batches[0]
    official = next(r for r in summary if r["policy"] == f"bn_policy=official, {n} batches")
    for c in bp.CORRUPTIONS:  # the summary is the rows' difference
        assert official[c] == pytest.approx(acc[(f"std+{c}|bn=official|calib={n}", c)] - acc[("std", c)])
    assert (out / "bn_policy.md").read_text() in stdout
    env = {**os.environ, "RWS_DATA": str(shared_data_dir), "OMP_NUM_THREADS": "1"}
    again = subprocess.run([sys.executable, "-m", "rws.pipelines.rws_bn_policy", "--smoke", "--out", str(out)],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "[run ]" not in again.stdout, again.stdout[-2000:]
    full = subprocess.run([sys.executable, "-m", "rws.pipelines.rws_bn_policy", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert full.returncode == 2 and "[run ]" not in full.stdout
    assert full.stderr.startswith("error: step 'init' already finished with other settings"), full.stderr


def test_rws_composition_smoke(tmp_path: Path, shared_data_dir: Path) -> None:
    """The composition study end to end on one network: its models, signatures, every planned row on
    clean data and the six corruptions, and a table whose cells are those rows."""
    from rws.pipelines import rws_composition as rc

    out = tmp_path / "composition"
    stdout = _pipeline("rws_composition", "--smoke", "--networks", "vgg", "--out", str(out), data=shared_data_dir)
    _exports(out, "vgg/init", "vgg/std", *[f"vgg/robust/{c}" for c in rc.COMPOSED])
    assert all((out / "vgg" / "sigs" / f"{c}.safetensors").is_file() for c in rc.COMPOSED)
    rows = [r for r in _rows(out / "vgg" / "eval") if r["metric"] == "acc"]
    plan_rows = json.loads((out / "plan.json").read_text())["networks"]["vgg"]["rows"]
    assert {sid for _, _, sid in plan_rows} == {r["spec_id"] for r in rows}
    conds = sorted(["clean", *rc.COMPOSED, *rc.OTHERS])
    for _label, _name, sid in plan_rows:
        assert sorted(r["condition"] for r in rows if r["spec_id"] == sid) == conds, _label
    assert all(_is_rate(r["value"]) and r["n"] == 100 for r in rows)
    table = json.loads((out / "composition.json").read_text())["tables"]["vgg"]
    acc = {(r["spec_id"], r["condition"]): 100 * r["value"] for r in rows}
    for rec, (_label, _name, sid) in zip(table, plan_rows):
        assert rec["clean"] == pytest.approx(acc[(sid, "clean")])
        assert rec["fog"] == pytest.approx(acc[(sid, "fog")])
    assert (out / "composition.md").read_text() in stdout
    assert (out / "figures" / "composition.png").stat().st_size > 1000
