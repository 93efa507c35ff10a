"""sweep.py: soup grids and spec lists through the evaluation engine, resume keys, shards, selection,
the few-shot study, tables and wandb on sweep outputs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rws.evaluation.results import read_results
from rws.evaluation.selection import base_image_groups, best_specs, few_shot_splits, few_shot_study
from rws.evaluation.suites.clean import CleanSuite
from rws.evaluation.suites.corruptions import CorruptionSuite
from rws.stages.sweep import run_sweep
from rws.stages.sweep.targets import parse_targets
from rws.weights.export import save_export
from tiny_problem import fit_images  # shared with tests/test_attacks.py

ROOT = Path(__file__).resolve().parents[1]
CFG = {"name": "small_cnn", "num_classes": 10, "width": 0.25}
QUIET = {"log": lambda s: None}


def _exports(tmp_path: Path, n: int) -> list[str]:
    from rws.models import create_model

    paths = []
    for i in range(n):
        torch.manual_seed(i)
        m = create_model(**CFG)
        paths.append(str(save_export(tmp_path / f"m{i}" / "export", m, CFG)))
    return paths


@pytest.fixture(scope="module")
def trained_members(tmp_path_factory):
    """Two trained small_cnn exports (width 0.25, ~95 % on the digits test split) from one init: the
    first after 2 epochs, the second 1 epoch further at a lower rate; and the digits test images."""
    from rws.data.digits import digits_splits
    from rws.models import create_model

    root = tmp_path_factory.mktemp("members")
    x, y = digits_splits(32)["train"]
    x = x.float() / 255
    torch.manual_seed(0)
    model = create_model(**CFG)

    fit_images(model, x, y, 2, 3e-3, 0)
    first = save_export(root / "m0" / "export", model, CFG)
    fit_images(model, x, y, 1, 1e-3, 1)
    second = save_export(root / "m1" / "export", model, CFG)
    xt, yt = digits_splits(32)["test"]
    return [str(first), str(second)], xt.float() / 255, yt


def _soup(members, weights):
    """The soup built here from the exports: every floating tensor (BN statistics too) weighted."""
    from rws.weights.export import load_export

    exports = [load_export(m) for m in members]
    model = exports[0].build().eval()
    states = [e.state_dict for e in exports]
    model.load_state_dict({k: sum(w * sd[k] for w, sd in zip(weights, states)) if v.is_floating_point() else v
                           for k, v in states[0].items()})
    return model


def _accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def _cfg(members, out, **kw):
    cfg = {"members": members, "out": str(out), "grid": {"kind": "grid", "low": 0, "high": 1, "step": 0.5},
           "targets": [{"name": "clean", "suite": "clean", "k": 16}], "seed": 0, "attack_steps": 2,
           "progress": False}
    cfg.update(kw)
    return cfg


def _data(n=32):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.fixture
def measured(monkeypatch):
    """Counts the clean and corruption cells actually measured (not skipped)."""
    calls: list[tuple[str, object, int]] = []
    for cls in (CleanSuite, CorruptionSuite):
        real = cls.run

        def spy(self, model, cell, source, device, deps, _real=real):
            calls.append((cell.condition, cell.level, source.k))
            return _real(self, model, cell, source, device, deps)

        monkeypatch.setattr(cls, "run", spy)
    return calls


TARGETS = [{"name": "clean", "suite": "clean", "k": 16},
           {"name": "noise", "suite": "corruption", "corruption": "gaussian_noise", "severity": [1, 3], "k": 8}]


def test_targets_use_the_engine_vocabulary():
    t = parse_targets([*TARGETS, {"name": "u", "suite": "union", "threats": [{"norm": "inf", "eps": "8/255"},
                                                                              {"norm": "l2", "eps": 0.5}], "k": 4},
                       {"name": "c", "suite": "corruptions", "corruptions": ["fog"], "severities": [2]}],
                      default_k=7, suite_defaults={"seed": 3, "attacks": ["apgd-ce"], "n_iter": 2})
    assert [x.options["name"] for x in t] == ["clean", "corruptions", "adversarial", "corruptions"]
    assert t[1].options["corruptions"] == "gaussian_noise" and t[1].options["severities"] == [1, 3]
    assert t[2].conditions == ["union"] and t[2].options["n_iter"] == 2 and t[2].options["seed"] == 3
    assert t[3].k == 7 and "attacks" not in t[3].options
    with pytest.raises(ValueError, match="unique"):
        parse_targets([TARGETS[0], TARGETS[0]])
    with pytest.raises(ValueError, match="needs threat"):
        parse_targets([{"name": "a", "suite": "adversarial"}])
    with pytest.raises(ValueError, match="suite must be one of"):
        parse_targets([{"name": "a", "suite": "bogus"}])


def test_member_names_of_the_wrong_length_is_a_config_error(tmp_path, measured):
    """A shorter member_names list used to drop the unnamed members from best.md silently."""
    members = _exports(tmp_path, 3)
    x, y = _data()
    out = tmp_path / "names"
    for names in (["a", "b"], ["a", "b", "c", "d"], []):
        with pytest.raises(ValueError, match=rf"member_names has {len(names)} names for 3 members; give exactly 3"):
            run_sweep(_cfg(members, out, member_names=names), x=x, y=y, **QUIET)
    assert measured == [] and not out.exists()  # refused before anything was evaluated or written
    best = run_sweep(_cfg(members, out, member_names=["a", "b", "c"]), x=x, y=y, figures=False, **QUIET)
    assert best["member_names"] == ["a", "b", "c"]


def test_sweep_outputs_and_resume(tmp_path, measured):
    members = _exports(tmp_path, 3)
    x, y = _data()
    out = tmp_path / "sweep"
    cfg = _cfg(members, out, targets=TARGETS)
    best = run_sweep(cfg, x=x, y=y, **QUIET)
    assert len(measured) == 6 * 3  # 6 convex soups (step 0.5) x 3 cells (clean, noise@1, noise@3)
    rows = read_results(out)
    assert len({r["spec_id"] for r in rows}) == 6 and len(rows) == 18
    for key in ("spec_id", "spec", "suite", "condition", "level", "metric", "value", "n", "settings", "seed", "git",
                "timestamp", "weights"):
        assert key in rows[0]
    assert {(r["suite"], r["condition"], r["level"], r["n"]) for r in rows} == {
        ("clean", "clean", "", 16), ("corruptions", "gaussian_noise", 1, 8), ("corruptions", "gaussian_noise", 3, 8)}
    assert {r["metric"] for r in rows} == {"acc"}
    assert set(best["per_target"]) == {"clean", "noise"}
    # A multi-cell target scores the fraction over all its examples.
    sid = best["per_target"]["noise"]["spec_id"]
    noise = [r["value"] for r in rows if r["spec_id"] == sid and r["suite"] == "corruptions"]
    assert best["per_target"]["noise"]["score"] == pytest.approx(sum(noise) / 2)
    assert (out / "best.md").read_text().startswith("| model |")
    from safetensors.torch import load_file

    mats = load_file(str(out / "correctness.safetensors"))
    assert mats["clean"].shape == (6, 16) and mats["noise"].shape == (6, 16)
    assert (out / "figures" / "simplex_clean.png").is_file() and (out / "figures" / "top5.png").is_file()
    meta = json.loads((out / "sweep.json").read_text())
    assert meta["generator"]["kind"] == "soup_grid" and [t["name"] for t in meta["targets"]] == ["clean", "noise"]

    # Re-run: nothing to evaluate. Adding a target evaluates only the new cells.
    measured.clear()
    run_sweep(cfg, x=x, y=y, figures=False, **QUIET)
    assert measured == []
    run_sweep({**cfg, "targets": TARGETS + [{"name": "clean8", "suite": "clean", "k": 8}]}, x=x, y=y, figures=False,
              **QUIET)
    assert measured == [("clean", "", 8)] * 6


def test_changed_settings_are_measured_again(tmp_path, measured):
    members = _exports(tmp_path, 2)
    x, y = _data()
    out = tmp_path / "s"
    base = _cfg(members, out, grid={"kind": "front", "ws": [0, 1]}, targets=TARGETS)
    run_sweep(base, x=x, y=y, figures=False, **QUIET)
    assert len(measured) == 2 * 3
    changes = {
        "k": {"targets": [{**TARGETS[0], "k": 12}, TARGETS[1]]},                         # clean only
        "severity": {"targets": [TARGETS[0], {**TARGETS[1], "severity": [1, 4]}]},         # noise@4 only
        "seed": {"seed": 1},                                                               # every cell
    }
    expected = {"k": [("clean", "", 12)], "severity": [("gaussian_noise", 4, 8)],
                "seed": [("clean", "", 16), ("gaussian_noise", 1, 8), ("gaussian_noise", 3, 8)]}
    for name, change in changes.items():
        measured.clear()
        run_sweep({**base, **change}, x=x, y=y, figures=False, **QUIET)
        assert measured == expected[name] * 2, name
    # The first settings are still on disk and still complete: rerunning them measures nothing.
    measured.clear()
    best = run_sweep(base, x=x, y=y, figures=False, **QUIET)
    assert measured == [] and set(best["per_target"]) == {"clean", "noise"}


def test_front_and_adversarial(tmp_path, trained_members):
    """Trained members at radii where robust accuracy lies between 0 and clean (measured per soup:
    clean 98/85/67 %, linf 4/255 40/29/13 %, l2 0.47 40/21/13 %, union 38/19/13 %): every soup's clean,
    linf and union values are the ones computed here on the soup built here (APGD-CE, 2 steps, seed 0,
    the k images as one batch), the union is the per-example AND of linf and l2, and robust accuracy is
    strictly below clean (an attack that does nothing would equal it)."""
    from safetensors.torch import load_file

    from rws.attacks import ThreatModel
    from rws.attacks.evaluate import robust_correct

    members, xt, yt = trained_members
    k = 48
    x, y = xt[:k], yt[:k]
    out = tmp_path / "front"
    linf, l2 = {"norm": "linf", "eps": "4/255"}, {"norm": "l2", "eps": 0.47}
    targets = [{"name": "clean", "suite": "clean", "k": k},
               {"name": "linf", "suite": "adversarial", "threat": linf, "k": k},
               {"name": "union", "suite": "union", "threats": [linf, l2], "k": k}]
    cfg = _cfg(members, out, grid={"kind": "front", "ws": [0, 0.5, 1]}, targets=targets, attacks=["apgd-ce"])
    run_sweep(cfg, x=x, y=y, **QUIET)
    rows = read_results(out)
    assert {r["suite"] for r in rows} == {"clean", "adversarial"}
    assert sum(r["condition"] == "l2" for r in rows) == 3  # the union's l2 cell, measured on the way
    mats = load_file(str(out / "correctness.safetensors"))
    sids = json.loads((out / "sweep.json").read_text())["spec_ids"]
    assert len(sids) == 3
    strictly_below_both = 0
    for i, sid in enumerate(sids):
        mine = {r["condition"]: r for r in rows if r["spec_id"] == sid}
        soup = _soup(members, mine["clean"]["weights"])
        clean = _accuracy(soup, x, y)
        robust = {c: robust_correct(soup, x, y, ThreatModel(t["norm"], t["eps"]), attacks=("apgd-ce",), n_iter=2, seed=0)
                  for c, t in (("linf", linf), ("l2", l2))}
        union = robust["linf"] & robust["l2"]
        assert mine["clean"]["value"] == pytest.approx(clean)
        assert mine["linf"]["value"] == pytest.approx(robust["linf"].float().mean().item())
        assert mine["union"]["value"] == pytest.approx(union.float().mean().item())
        assert torch.equal(mats["linf"][i].bool(), robust["linf"]) and torch.equal(mats["union"][i].bool(), union)
        assert mine["union"]["value"] <= min(mine["linf"]["value"], mine["l2"]["value"])
        assert mine["linf"]["value"] < clean and mine["l2"]["value"] < clean and mine["union"]["value"] > 0, mine
        strictly_below_both += mine["union"]["value"] < min(mine["linf"]["value"], mine["l2"]["value"])
    # Each threat breaks points the other does not (measured: 2 of the 3 soups), so the union is
    # neither threat's cell copied.
    assert strictly_below_both >= 1
    assert (out / "figures" / "front.png").is_file() and (out / "figures" / "front_scatter.png").is_file()


def test_sharded_sweep_gives_the_unsharded_rows(tmp_path):
    members = _exports(tmp_path, 2)
    x, y = _data()
    grid = {"kind": "front", "ws": [0, 0.25, 0.5, 0.75, 1]}
    best_one = run_sweep(_cfg(members, tmp_path / "one", grid=grid, targets=TARGETS), x=x, y=y, figures=False, **QUIET)
    sharded = tmp_path / "sharded"
    assert run_sweep(_cfg(members, sharded, grid=grid, targets=TARGETS, shard="0/2"), x=x, y=y, **QUIET) == {}
    assert not (sharded / "best.json").exists()  # the selection waits for shard 1
    best_two = run_sweep(_cfg(members, sharded, grid=grid, targets=TARGETS, shard="1/2"), x=x, y=y, figures=False,
                         **QUIET)
    assert best_two == best_one

    def cells(d):
        return {(r["spec_id"], r["suite"], r["condition"], str(r["level"]), r["settings"]): (r["value"], r["n"])
                for r in read_results(d)}
    assert cells(sharded) == cells(tmp_path / "one") and len(cells(sharded)) == 5 * 3
    assert len(read_results(sharded / "results.shard-0-of-2.jsonl")) == 3 * 3  # soups 0, 2, 4


def test_spec_list_sweep_few_shot_and_tables(tmp_path):
    from rws.report.tables import summary_table

    members = _exports(tmp_path, 3)
    x, y = _data(40)
    out = tmp_path / "list"
    cfg = {"specs": members, "out": str(out), "seed": 0, "progress": False,
           "targets": [{"name": "clean", "suite": "clean", "k": 40},
                       {"name": "fog", "suite": "corruptions", "corruptions": ["fog"], "severities": [2, 3], "k": 40}]}
    best = run_sweep(cfg, x=x, y=y, **QUIET)
    assert "weights" not in best["single"]
    few = json.loads((out / "few_shot.json").read_text())
    assert few["clean"]["n_soups"] == 3 and few["clean"]["n_examples"] == 40 and few["clean"]["k"]["10"]["trials"] == 50
    # Two conditions x the same 40 images: the study splits by base image (half of the 40 held out).
    assert few["fog"]["n_examples"] == 80 and few["fog"]["n_images"] == 40 and few["fog"]["n_test"] == 40
    assert "| m0 |" in (out / "best.md").read_text()
    table = summary_table(read_results(out))
    assert [r["model"] for r in table] == ["m0", "m1", "m2"]
    assert all(r["TA"] is not None and r["RA"] is not None for r in table)


def test_selection_and_few_shot_shapes():
    scores = torch.tensor([[0.5, 0.9], [0.8, 0.2], [0.75, 0.7]], dtype=torch.float64)
    best = best_specs(scores, ["a", "b", "c"], ["t1", "t2"], [{"weights": w} for w in ([1, 0], [0, 1], [0.5, 0.5])])
    assert best["per_target"]["t1"]["spec_id"] == "b" and best["per_target"]["t2"]["spec_id"] == "a"
    assert best["single"]["spec_id"] == "c" and best["single"]["weights"] == [0.5, 0.5]
    g = torch.Generator().manual_seed(0)
    correct = torch.rand(20, 1000, generator=g) < torch.linspace(0.3, 0.8, 20)[:, None]
    study = few_shot_study(correct, trials=5)
    assert set(study["k"]) == {"10", "30", "100", "300", "500"}
    assert study["k"]["500"]["trials"] == 5 and study["n_test"] == 500
    assert study["k"]["500"]["mean"] >= study["k"]["10"]["mean"] - 0.05


def test_few_shot_picks_the_best_soup():
    """The pick is the spec best on the k selection examples: with one spec clearly best (90 % vs
    50 %) every trial at k >= 30 scores exactly that spec's held-out accuracy; on a graded spectrum
    (10 specs, 30 ... 80 %) the k = 500 pick is within a point of the oracle (the best on the held-out
    set; measured: equal), far above a random pick."""
    g = torch.Generator().manual_seed(0)
    p = torch.full((12,), 0.5)
    p[7] = 0.9
    correct = torch.rand(12, 1000, generator=g) < p[:, None]
    study = few_shot_study(correct, ks=(30, 100, 500), trials=20, seed=3)
    held_out = [float(correct[7, test].double().mean()) for test, _ in few_shot_splits(1000, (30, 100, 500), 20, 500, seed=3)]
    for k in ("30", "100", "500"):
        assert study["k"][k]["mean"] == pytest.approx(sum(held_out) / 20), k
    graded = torch.rand(10, 1000, generator=g) < torch.linspace(0.3, 0.8, 10)[:, None]
    study = few_shot_study(graded, trials=20)
    assert study["k"]["500"]["mean"] >= study["oracle"]["mean"] - 0.01, study
    assert study["k"]["500"]["mean"] > graded.float().mean() + 0.2  # far above a random pick (55 %)


def test_best_specs_breaks_exact_ties_at_random_seeded():
    # Specs 0, 2 and 3 tie on t1; 0 is first in sweep order and used to win every time.
    scores = torch.tensor([[0.9, 0.1], [0.5, 0.2], [0.9, 0.3], [0.9, 0.4]], dtype=torch.float64)
    picks = [best_specs(scores, ["a", "b", "c", "d"], ["t1", "t2"], seed=s)["per_target"]["t1"] for s in range(40)]
    assert {p["spec_id"] for p in picks} == {"a", "c", "d"}
    assert all(p["n_tied"] == 3 and p["score"] == 0.9 for p in picks)
    again = best_specs(scores, ["a", "b", "c", "d"], ["t1", "t2"], seed=7)
    assert again["per_target"]["t1"]["spec_id"] == picks[7]["spec_id"]
    assert again["per_target"]["t2"] == {**again["per_target"]["t2"], "spec_id": "d", "n_tied": 1}


def test_few_shot_ties_score_the_mean_of_the_tied_specs():
    """Many specs right on all k = 10 selection examples; the first in order is the worst (an extreme
    soup first in grid order). Random tie-breaking scores, in expectation, the mean held-out accuracy
    over the tied specs of each trial; "first in order" scores the bad spec whenever it is tied."""
    g = torch.Generator().manual_seed(0)
    s, n, trials = 40, 600, 400
    p = torch.full((s,), 0.99)
    p[0] = 0.90
    correct = torch.rand(s, n, generator=g) < p[:, None]
    study = few_shot_study(correct, ks=(10,), trials=trials, n_test=300, seed=0)
    expected, first, n_tied = [], [], []
    for test, picks in few_shot_splits(n, (10,), trials, 300, seed=0):
        acc = correct[:, test].double().mean(1)
        hits = correct[:, picks[10]].sum(1)
        tied = (hits == hits.max()).nonzero().squeeze(1)
        expected.append(float(acc[tied].mean()))  # exact expectation over the random tie-break
        first.append(float(acc[tied[0]]))           # the old rule
        n_tied.append(len(tied))
    expected_mean = sum(expected) / trials
    assert sum(n_tied) / trials > 20  # ties are the rule here, not the exception
    assert sum(first) / trials < expected_mean - 0.02  # the old rule is visibly worse
    assert study["k"]["10"]["mean"] == pytest.approx(expected_mean, abs=0.002)
    assert few_shot_study(correct, ks=(10,), trials=trials, n_test=300, seed=0) == study  # seeded


def test_few_shot_split_by_base_image():
    """A 3-condition target over 50 images (cells concatenated): no base image is ever in both the
    held-out and the selection set, and the held-out set holds whole images (all 3 conditions)."""
    groups = base_image_groups(150, 3)
    assert groups.tolist() == list(range(50)) * 3
    with pytest.raises(ValueError, match="multiple of the cell count"):
        base_image_groups(151, 3)
    splits = few_shot_splits(150, (10, 30, 60), trials=30, n_test=60, seed=1, groups=groups)
    for test, picks in splits:
        held = set(groups[test].tolist())
        assert len(test) == 60 and len(held) == 20  # 20 whole images x 3 conditions
        assert sorted(test.tolist()) == sorted(i for i in range(150) if int(groups[i]) in held)
        for k, pick in picks.items():
            assert len(pick) == k and not held & set(groups[pick].tolist())
    # Flattened examples (no groups) do put one image on both sides, which the grouping prevents.
    leak = any(set(groups[t].tolist()) & set(groups[p].tolist())
               for t, ps in few_shot_splits(150, (30,), trials=30, n_test=60, seed=1) for p in ps.values())
    assert leak
    correct = torch.rand(5, 150, generator=torch.Generator().manual_seed(0)) < 0.7
    study = few_shot_study(correct, ks=(10, 30), trials=10, n_test=60, groups=groups)
    assert study["n_images"] == 50 and study["n_test"] == 60 and study["k"]["30"]["trials"] == 10


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


def test_sweep_cli_on_digits_with_wandb_and_tables(tmp_path, trained_members):
    members = trained_members[0]
    out = tmp_path / "cli"
    r = subprocess.run([sys.executable, "sweep.py", f"members=[{members[0]},{members[1]}]", f"out={out}",
                        "grid=front", "grid.ws=[0,0.5,1]",
                        "targets=[{name: clean, suite: clean, k: 32},"
                        "{name: fog, suite: corruption, corruption: fog, severity: 2, k: 32}]",
                        f"paths.cache_dir={tmp_path / 'cache'}", "figures=true", "logger=wandb", "progress=false"],
                       cwd=ROOT, capture_output=True, text=True, timeout=240, env={**__import__("os").environ,
                                                                                    "WANDB_MODE": "offline"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "3 soups x 2 targets" in r.stdout
    # Each soup's clean value is its accuracy computed here on the sweep's 32 test images (the digits
    # test split, subset seed 0), and the best clean soup is the one with the highest.
    from rws.data import DigitsDataModule
    from rws.evaluation.sources import load_test_subset

    x, y = load_test_subset(DigitsDataModule(cache_dir=str(tmp_path / "cache")), 32, seed=0)
    rows = read_results(out)
    clean = {r["spec_id"]: r for r in rows if r["condition"] == "clean"}
    assert len(clean) == 3 and {r["n"] for r in clean.values()} == {32}
    mine = {sid: _accuracy(_soup(members, r["weights"]), x, y) for sid, r in clean.items()}
    assert all(r["value"] == pytest.approx(mine[sid]) for sid, r in clean.items()), (clean, mine)
    assert max(mine.values()) > 0.6  # trained members: far above chance
    best = json.loads((out / "best.json").read_text())["per_target"]["clean"]
    assert best["score"] == pytest.approx(max(mine.values())) == pytest.approx(mine[best["spec_id"]])
    # The wandb run (offline files) holds the result rows as they are on disk.
    (table,) = out.glob("wandb/offline-run-*/files/media/table/results_*.table.json")
    data = json.loads(table.read_text())
    assert len(data["data"]) == 3 * 2
    logged = [dict(zip(data["columns"], r)) for r in data["data"]]
    assert sorted((r["spec_id"], r["condition"], r["value"]) for r in logged) == \
        sorted((r["spec_id"], r["condition"], r["value"]) for r in rows)
    assert list(out.glob("wandb/offline-run-*/files/media/images/figures/*.png"))
    t = subprocess.run([sys.executable, "-m", "rws.report.tables", str(out), "--table", "summary"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert t.returncode == 0, t.stderr
    lines = [line for line in t.stdout.splitlines() if line.startswith("| soup")]
    assert len(lines) == 3 and all(" - " not in line.split("|")[3] for line in lines)  # TA and RA are numbers
