"""The pipeline runner (done markers, needs, parallel streams, locks shared by two drivers) and the
pipelines' plans, checked without running them: every step's overrides compose with the config of
the CLI it calls, the evaluation steps read the right specs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from rws.config import compose
from rws.errors import UserError
from rws.pipelines import quickstart, rws_cpu, rws_transfer, soups_cpu
from rws.pipelines.runner import Step, check_plan, claim, lock_file, run, select


def _py(code: str) -> tuple[str, ...]:
    return ("-c", code)


def _touch(path: Path) -> tuple[str, ...]:
    return _py(f"import pathlib; pathlib.Path({str(path)!r}).touch()")


# -- runner ---------------------------------------------------------------------------------------

def test_run_skips_done_steps_writes_files_and_marks_done(tmp_path: Path, capsys) -> None:
    done_a = tmp_path / "a.done"
    done_a.touch()
    spec = tmp_path / "specs" / "000.yaml"
    steps = [Step("a", "step a", _py("raise SystemExit(3)"), done=done_a),  # done: never runs
             Step("b", "step b", _py(f"import pathlib; assert pathlib.Path({str(spec)!r}).read_text() == 'k: 1\\n'"),
                  done=tmp_path / ".done" / "b", mark_done=True, needs=("a",), files={spec: "k: 1\n"})]
    timings = run(steps)
    assert set(timings) == {"b"}
    assert (tmp_path / ".done" / "b").exists()
    again = run(steps)  # resumed: nothing left to run
    assert again == {}
    out = capsys.readouterr().out
    assert out.count("[skip] step a") == 2 and out.count("[run ] step b") == 1


def test_run_orders_by_needs_and_runs_independent_steps_in_parallel(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    # Each waits for the other's file: only finishes when both run at the same time.
    wait_for = "import pathlib, time\nfor _ in range(300):\n    if pathlib.Path({p!r}).exists(): break\n" \
               "    time.sleep(0.05)\nelse: raise SystemExit('the other step never ran')\n"
    steps = [Step("a", "a", _py(f"import pathlib; pathlib.Path({str(a)!r}).touch()\n" + wait_for.format(p=str(b)))),
             Step("b", "b", _py(f"import pathlib; pathlib.Path({str(b)!r}).touch()\n" + wait_for.format(p=str(a)))),
             # needs both: must see both files when it starts
             Step("c", "c", _py(f"import pathlib; assert pathlib.Path({str(a)!r}).exists() and "
                                f"pathlib.Path({str(b)!r}).exists(); pathlib.Path({str(tmp_path / 'c')!r}).touch()"),
                  needs=("a", "b"), log=tmp_path / "c.log")]
    assert set(run(steps, jobs=2)) == {"a", "b", "c"}
    assert (tmp_path / "c").exists() and (tmp_path / "c.log").exists()


def test_run_failure_stops_dependents_and_names_the_step(tmp_path: Path) -> None:
    steps = [Step("bad", "the failing step", _py("raise SystemExit(7)")),
             Step("after", "after", _touch(tmp_path / "after"), needs=("bad",))]
    with pytest.raises(SystemExit, match="the failing step.*exit code 7"):
        run(steps)
    assert not (tmp_path / "after").exists()


def _counting_step(tmp_path: Path, arg: str) -> Step:
    """A step that appends ``arg`` to runs.txt and leaves its own done file (as a training step)."""
    runs, done = tmp_path / "runs.txt", tmp_path / "train" / "export" / "metrics.json"
    code = (f"import pathlib, sys; pathlib.Path({str(runs)!r}).open('a').write(sys.argv[-1] + '\\n'); "
            f"d = pathlib.Path({str(done)!r}); d.parent.mkdir(parents=True, exist_ok=True); d.write_text('{{}}')")
    return Step("net/train", "train", ("-c", code, f"trainer.max_epochs={arg}"), done=done)


def test_resume_skips_a_step_only_under_the_same_settings(tmp_path: Path) -> None:
    records = tmp_path / ".steps"
    assert set(run([_counting_step(tmp_path, "20")], record_dir=records)) == {"net/train"}
    assert run([_counting_step(tmp_path, "20")], record_dir=records) == {}  # same settings: skipped
    # other settings (a --smoke run into the same --out): refused before anything runs, naming the argument
    with pytest.raises(UserError, match=r"'net/train' already finished with other settings "
                                        r"\(argument 2: 'trainer.max_epochs=20' then, 'trainer.max_epochs=1' now\)"):
        run([_counting_step(tmp_path, "1"), Step("later", "later", _touch(tmp_path / "later"))], record_dir=records)
    assert (tmp_path / "runs.txt").read_text() == "trainer.max_epochs=20\n" and not (tmp_path / "later").exists()
    # a spec file the step reads is part of its settings
    spec = tmp_path / "specs" / "000.yaml"
    ev = [Step("eval", "eval", _touch(tmp_path / "e"), done=tmp_path / ".done" / "eval", mark_done=True,
               files={spec: "kind: export\n"})]
    run(ev, record_dir=records)
    with pytest.raises(UserError, match="its files differ"):
        run([replace(ev[0], files={spec: "kind: soup\n"})], record_dir=records)


def test_a_done_step_without_a_record_is_refused_and_a_killed_step_is_redone(tmp_path: Path) -> None:
    records = tmp_path / ".steps"
    step = _counting_step(tmp_path, "20")
    step.done.parent.mkdir(parents=True)  # type: ignore[union-attr]
    step.done.write_text("{}")  # type: ignore[union-attr]  # an output of an older rws: settings unknown
    with pytest.raises(UserError, match="no record of the settings it ran with"):
        run([step], record_dir=records)
    step.done.unlink()  # type: ignore[union-attr]
    # the record is written before the step starts: a step that died half-way under settings A ...
    with pytest.raises(SystemExit):
        run([replace(step, argv=("-c", "raise SystemExit(9)", "trainer.max_epochs=5"))], record_dir=records)
    assert "max_epochs=5" in (records / "net_train.json").read_text()
    # ... is simply run again under settings B (it was never done)
    assert set(run([step], record_dir=records)) == {"net/train"}
    assert run([step], record_dir=records) == {}


def test_driver_user_errors_are_one_line_and_exit_2() -> None:
    for argv in (["-m", "rws.pipelines.rws_composition", "--networks", "vgg,nope", "--print-plan"],
                 ["-m", "rws.pipelines.rws_composition", "--networks", ",", "--print-plan"],
                 ["-m", "rws.pipelines.rws_cpu", "--stages", "train,nope", "--print-plan"]):
        r = subprocess.run([sys.executable, *argv], capture_output=True, text=True)
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith(("error: unknown ", "error: no network given")), r.stderr
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    twice = subprocess.run([sys.executable, "-m", "rws.pipelines.rws_composition", "--networks", "vgg,vgg",
                            "--print-plan", "--out", "/tmp/x"], capture_output=True, text=True)
    assert twice.returncode == 0 and twice.stdout.count("# 1 vgg: θ_init") == 1


def test_plan_checks() -> None:
    with pytest.raises(ValueError, match="named 'a'"):
        check_plan([Step("a", "a", ()), Step("a", "a", ())])
    with pytest.raises(ValueError, match="needs \\['b'\\]"):
        check_plan([Step("a", "a", (), needs=("b",)), Step("b", "b", ())])
    steps = [Step("t", "t", (), tag="train"), Step("e", "e", (), needs=("t",), tag="eval")]
    kept = select(steps, {"eval"})
    assert [s.name for s in kept] == ["e"] and kept[0].needs == ()


def test_lock_held_by_a_live_driver_is_waited_for_not_run(tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "std"
    lock = lock_file(run_dir)
    assert lock == tmp_path / ".std.lock"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # the "other driver"
    try:
        lock.write_text(str(other.pid))
        assert not claim(lock)
        done = run_dir / "export" / "metrics.json"
        ran = tmp_path / "ran_here"

        def other_driver_finishes() -> None:
            time.sleep(0.5)
            done.parent.mkdir(parents=True)
            done.touch()

        threading.Thread(target=other_driver_finishes).start()
        steps = [Step("std", "train std", _touch(ran), done=done, lock=lock),
                 Step("next", "next step", _touch(tmp_path / "next"), needs=("std",))]
        run(steps, poll_s=0.1)
        assert not ran.exists() and (tmp_path / "next").exists()
        assert "[busy] train std" in capsys.readouterr().out
    finally:
        other.kill()
        other.wait()
    # the holder is dead now: its lock is stale and this driver takes the step over
    assert claim(lock) and lock.read_text() == str(os.getpid())
    lock.unlink()


# -- plans ----------------------------------------------------------------------------------------

def _compose_all(steps: list[Step]) -> int:
    n = 0
    for st in steps:
        app = st.hydra_app()
        if app is not None:
            compose(*app)
            n += 1
    return n


def test_compose_rejects_a_bad_override() -> None:
    """What the plan tests rely on: a mistyped override fails to compose."""
    with pytest.raises(Exception):
        compose("train", ["experiment=rws/cpu", "trainer.max_epochz=1"])


def test_rws_cpu_smoke_plan(tmp_path: Path) -> None:
    out = tmp_path / "out"
    s = rws_cpu.Settings.smoke()
    steps = rws_cpu.plan(s, out)
    assert not out.exists()  # planning writes nothing
    check_plan(steps)
    by_tag = {t: [st for st in steps if st.tag == t] for t in rws_cpu.STAGES}
    cs = s.corruptions
    assert [st.name for st in by_tag["train"]] == ["init", "std", *[f"robust/{c}" for c in cs], "augmented"]
    assert [st.name for st in by_tag["tiny"]] == ["tiny/init", "tiny/std", "tiny/robust/gaussian_noise"]
    assert all(st.lock is not None and st.done.name == "metrics.json" for st in by_tag["train"] + by_tag["tiny"])
    assert [st.name for st in by_tag["extract"]] == ["sigs/shallow32", "sigs/shallow16", "sigs/shallow8",
                                                     "sigs/full32", "tiny/sigs/shallow32"]
    full = next(st for st in by_tag["extract"] if st.name == "sigs/full32")
    assert "layers.k=13" in full.argv  # every layer of the width-1/4 VGG-16-BN but the head
    assert all(st.done is not None for st in steps)  # every step resumable
    assert _compose_all(steps) == len(steps) - 2  # all but the two figure-data steps are Hydra apps
    for st in (x for x in steps if x.argv[1] == "rws.stages.rws_analysis"):
        from rws.stages.rws_analysis import build_parser

        build_parser().parse_args(list(st.argv[2:]))

    evals = {st.name: st for st in by_tag["eval"]}
    assert {n.split("/")[0] for n in evals} == {"eval", "eval_tiny", "eval_reverse", "eval_recal"}
    for c in cs:
        st = evals[f"eval/corr_{c}"]
        specs = [yaml.safe_load(text) for text in st.files.values()]
        assert len(specs) == 3 + 5 + len(s.alphas) - 1  # std, augmented, robust/c, 5 variants, α sweep (α=1 shared)
        for sp in specs:
            for sig in sp.get("signatures", []):
                assert Path(sig["path"]).stem == c  # oracle: only this corruption's signatures
        assert "sigs/full32" in st.needs and "sigs/shallow8" in st.needs and f"robust/{c}" in st.needs
        assert f"suites=[{{name: corruptions, corruptions: [{c}], severities: [3,5]}}]" in st.argv
    tiny = evals["eval_tiny/tiny_clean"]
    assert "tiny/sigs/shallow32" in tiny.needs and "sigs/shallow32" in tiny.needs and "data=tiny_imagenet" in tiny.argv


def test_rws_cpu_recalibrated_rows_are_plain_patch_specs(tmp_path: Path) -> None:
    from rws.specs import validate

    s = rws_cpu.Settings.smoke()
    steps = {st.name: st for st in rws_cpu.plan(s, tmp_path)}
    single = [yaml.safe_load(t) for t in steps["eval_recal/recal_corr_fog"].files.values()]
    assert len(single) == 1
    assert single[0]["bn_policy"] == "recalibrate" and single[0]["name"] == "std+shallow32:fog@1|bn=recalibrate"
    assert single[0]["calibration"] == {"corruption": "fog", "severity": 5, "batches": s.calib_batches,
                                        "seed": 1234, "split": "train"}
    comps = [yaml.safe_load(t) for t in steps["eval_recal/recal_compositions"].files.values()]
    # 3 compositions in the plan, two of them the same recipe for 2 corruptions: measured once
    assert [len(c["signatures"]) for c in comps] == [2, 2]
    assert all(c["calibration"]["corruptions"] == s.corruptions for c in comps)
    for sp in single + comps:
        validate(sp)
    # evaluated on the training steps' data (the calibration batches come from that datamodule)
    assert "data.subset_per_class=20" in steps["eval_recal/recal_corr_fog"].argv


def test_rws_cpu_plan_without_transfer_and_stage_selection(tmp_path: Path) -> None:
    s = rws_cpu.Settings.smoke()
    s.transfer = False
    steps = rws_cpu.plan(s, tmp_path)
    assert not any(st.name.startswith(("tiny", "eval_tiny", "eval_reverse", "figure_data/cross")) for st in steps)
    only_eval = select(steps, {"eval", "report"})
    assert all(st.tag in ("eval", "report") for st in only_eval)
    check_plan(only_eval)


def test_rws_cpu_groups_are_oracle_and_unique(tmp_path: Path) -> None:
    """Full-size settings: every corruption group evaluates only its own signatures, no recipe twice."""
    s = rws_cpu.Settings()
    info = rws_cpu.plan_info(s)
    groups = {name: (specs, suites) for name, specs, suites in rws_cpu.eval_groups(tmp_path, s, info)}
    for c in s.corruptions:
        specs, suites = groups[f"corr_{c}"]
        assert suites[0]["corruptions"] == [c] and suites[0]["severities"] == [3, 5]
        assert all(Path(sig["path"]).stem == c for sp in specs for sig in sp.get("signatures", []))
    names = [sp["name"] for sp in groups["clean"][0]]
    assert len(names) == len(set(names))
    assert len(info["compositions"]) == 4 and info["pair"] == ["gaussian_noise", "fog"]


def test_other_pipeline_plans_compose(tmp_path: Path) -> None:
    q = quickstart.plan(quickstart.Settings(), tmp_path / "q")
    assert [st.name for st in q] == ["init", "cotrain", "std", "robust", "sigs", "teacher", "student", "evaluate_0",
                                     "evaluate_1", "table"] and _compose_all(q) == 9
    # init and cotrain start together (both cores); std and robust both fine-tune θ_init (one init, RWS)
    assert [st.needs for st in q[:4]] == [(), (), ("init",), ("init",)]
    ev = next(st for st in q if st.name == "evaluate_0")
    specs = compose("evaluate", list(ev.argv[2:]))["specs"]
    assert [sp["kind"] for sp in specs] == ["export", "export", "patch", "soup", *["adapter"] * 5, "heads"]
    assert [sp["beta"] for sp in specs[4:9]] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert specs[9]["select"]["rule"] == "mc_dropout_kl" and next(st for st in q if st.name == "student").needs == (
        "std", "teacher")
    t = rws_transfer.plan(rws_transfer.Settings(cifar=tmp_path / "cifar"), tmp_path / "t")
    assert _compose_all(t) == 5
    assert {st.name for st in t if st.needs == ("init",)} == {"std", "robust_gaussian_noise"}  # run in parallel
    ev = next(st for st in t if st.name == "evaluate")
    assert len(ev.files) == 2 + 5 + 1  # std, robust, the 5 CIFAR-10 signatures, the Tiny one
    sp = soups_cpu.plan(soups_cpu.Settings.smoke(), tmp_path / "s")
    assert _compose_all(sp) == len(sp) == 7
    finetunes = [st for st in sp if st.needs == ("linf",)]
    assert [st.name for st in finetunes] == list(soups_cpu.FINETUNES) and all(st.log for st in finetunes)
    assert next(st for st in sp if st.name == "grid4").needs == ("linf", *soups_cpu.FINETUNES)
    assert not any(p.exists() for p in (tmp_path / "q", tmp_path / "t", tmp_path / "s"))


def test_smoke_settings_compose_and_shrink_only_the_smoke_plans(tmp_path: Path) -> None:
    """The smoke settings the end-to-end tests run (tests/test_pipeline_smoke.py) are valid overrides,
    and the full settings' commands carry none of them."""
    q_full = {st.name: st for st in quickstart.plan(quickstart.Settings(), tmp_path)}
    q = {st.name: st for st in quickstart.plan(quickstart.Settings.smoke(), tmp_path)}
    assert _compose_all(list(q.values())) == 9
    ev = compose("evaluate", list(q["evaluate_0"].argv[2:]))
    assert ev.data.test_subset == 120 and [s["beta"] for s in ev.specs if s["kind"] == "adapter"] == [1.0, 0.5, 0.0]
    assert compose("evaluate", list(q_full["evaluate_0"].argv[2:])).data.test_subset is None
    assert compose("train", list(q["init"].argv[2:])).trainer.max_epochs == 2

    t = {st.name: st for st in rws_transfer.plan(rws_transfer.Settings.smoke(tmp_path / "cifar"), tmp_path / "t")}
    assert _compose_all(list(t.values())) == 5
    assert compose("train", list(t["std"].argv[2:])).data.subset_per_class == 3
    specs = [yaml.safe_load(text) for text in t["evaluate"].files.values()]
    assert [Path(sp["signatures"][0]["path"]).stem for sp in specs if "cifar_rws" in sp["name"]] == [
        "gaussian_noise", "fog"]  # only the signatures rws_cpu --smoke writes
    t_full = rws_transfer.plan(rws_transfer.Settings(cifar=tmp_path / "cifar"), tmp_path / "t")
    assert "data.test_subset=1000" in next(st for st in t_full if st.name == "evaluate").argv

    sp = {st.name: st for st in soups_cpu.plan(soups_cpu.Settings.smoke(), tmp_path / "s")}
    grid4 = compose("sweep", list(sp["grid4"].argv[2:])).grid
    assert (grid4.low, grid4.high, grid4.step) == (0, 1, 0.5)
    assert list(compose("sweep", list(sp["front"].argv[2:])).grid.ws) == [0.0, 0.5, 1.0]
    full = {st.name: st for st in soups_cpu.plan(soups_cpu.Settings(), tmp_path / "s")}
    assert "grid.ws=[-0.2,0.0,0.2,0.4,0.6,0.8,1.0,1.2]" in full["front"].argv
    assert not any(a.startswith(("grid.low", "grid.high", "grid.step")) for st in full.values() for a in st.argv)


def test_run_and_report_keeps_the_timings_of_skipped_steps(tmp_path: Path, capsys) -> None:
    from rws.pipelines.runner import run_and_report

    step = Step("a", "a", _touch(tmp_path / "a.done"), done=tmp_path / "a.done")
    report = lambda out, info: f"report of {info['x']}"  # noqa: E731
    run_and_report("study", [step], tmp_path, {"x": 1}, report)
    first = json.loads((tmp_path / "timings.json").read_text())
    assert set(first) == {"a", "total"}
    (tmp_path / "timings.json").write_text(json.dumps({"a": 123.4, "total": 200.0}))  # as if "a" took long
    run_and_report("study", [step], tmp_path, {"x": 1}, report)  # resumed: "a" is skipped
    second = json.loads((tmp_path / "timings.json").read_text())
    assert second["a"] == 123.4 and second["total"] >= 200.0
    assert json.loads((tmp_path / "plan.json").read_text()) == {"x": 1}
    assert capsys.readouterr().out.count("report of 1") == 2


def test_a_step_finished_meanwhile_by_another_driver_under_other_settings_is_refused(tmp_path: Path, capsys) -> None:
    """Step "a" is pending behind "first" when another driver (here: "first" itself) finishes it with
    another record: it must not be skipped as done."""
    from rws.pipelines.runner import record_file

    records = tmp_path / ".steps"
    late = Step("a", "step a", _touch(tmp_path / "never"), done=tmp_path / "a.done", needs=("first",))
    foreign = json.dumps({"argv": ["-c", "other settings"], "env": {}, "files": {}})
    first = Step("first", "first", _py(
        f"import pathlib; pathlib.Path({str(record_file(records, late))!r}).write_text({foreign!r}); "
        f"pathlib.Path({str(late.done)!r}).touch()"))
    with pytest.raises(UserError, match="'a' already finished with other settings"):
        run([first, late], record_dir=records)
    assert "[stop] step 'a' already finished" in capsys.readouterr().out and not (tmp_path / "never").exists()


def test_a_refused_study_run_leaves_its_plan_alone_and_cosmetic_arguments_do_not_count(tmp_path: Path) -> None:
    from rws.pipelines.runner import run_and_report

    report = lambda out, info: ""  # noqa: E731
    step = _counting_step(tmp_path, "20")
    run_and_report("study", [step], tmp_path, {"epochs": 20}, report)
    with pytest.raises(UserError):
        run_and_report("study", [_counting_step(tmp_path, "1")], tmp_path, {"epochs": 1}, report)
    assert json.loads((tmp_path / "plan.json").read_text()) == {"epochs": 20}
    # a logger option (rws_cpu --wandb) is cosmetic: resuming with it is the same settings
    with_logger = replace(step, argv=(*step.argv, "logger=wandb"), cosmetic=("logger=wandb",))
    assert run([with_logger], record_dir=tmp_path / ".steps") == {}
    assert (tmp_path / "runs.txt").read_text().count("\n") == 1


def test_a_done_step_built_on_a_step_that_ran_again_is_refused(tmp_path: Path) -> None:
    """Deleting one step's output re-runs it; the steps after it were built on the old output, so
    they are refused (not skipped) until their outputs are deleted too — then they run again."""
    records = tmp_path / ".steps"
    a = Step("a", "a", _touch(tmp_path / "a.done"), done=tmp_path / "a.done", tag="a")
    b = Step("b", "b", _touch(tmp_path / "b.done"), done=tmp_path / "b.done", needs=("a",), tag="b")
    c = Step("c", "c", _touch(tmp_path / "c.done"), done=tmp_path / "c.done", tag="c")  # independent of a
    assert set(run([a, b, c], record_dir=records)) == {"a", "b", "c"}
    assert run([a, b, c], record_dir=records) == {}
    (tmp_path / "a.done").unlink()
    with pytest.raises(UserError, match=r"'b' already finished with other settings \(the step\(s\) it builds on "
                                        r"were run again since: a\)"):
        run([a, b, c], record_dir=records)
    assert (tmp_path / "a.done").exists()  # a itself was redone
    (tmp_path / "b.done").unlink()
    assert set(run([a, b, c], record_dir=records)) == {"b"}
    assert run([a, b, c], record_dir=records) == {}
    assert run(select([a, b, c], ["b"]), record_dir=records) == {}  # a stage selection that drops the need
