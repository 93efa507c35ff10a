"""The error rule in-process (rws.errors, rws.cli.entry): which exceptions are user mistakes and the
one line each becomes, the ``???`` check before a task runs, the exit status 2 and Hydra's run files
put back. The same rule through real CLI subprocesses: tests/test_bad_inputs.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rws.cli.entry import OutputGuard, check_required, hydra_entry, report, run_task
from rws.config import compose
from rws.data.errors import DatasetNotFoundError
from rws.errors import UserError, one_line, user_error


def _raised(fn) -> BaseException:
    try:
        fn()
    except BaseException as e:  # noqa: BLE001 - the point is to get the exception with its traceback
        return e
    raise AssertionError("did not raise")


# -- UserError and one_line ------------------------------------------------------------------------

def test_user_error_parts_and_line() -> None:
    e = UserError("bad alpha -1", "option alpha", "a number >= 0")
    assert (e.what, e.where, e.expected) == ("bad alpha -1", "option alpha", "a number >= 0")
    assert str(e) == "bad alpha -1, option alpha, a number >= 0" and isinstance(e, ValueError)
    assert e.line() == "error: bad alpha -1, option alpha, a number >= 0"
    single = UserError("just a message\n  on two lines")
    assert single.where is None and single.expected is None
    assert single.line() == "error: just a message; on two lines"


def test_one_line() -> None:
    assert one_line("  a   b \n\n c\td ") == "a b; c d"
    assert one_line("\n \n") == "unknown error"
    assert one_line("\n".join("xyz"), max_parts=2) == "x; y; ... (1 more)"


# -- user_error: what is a user mistake --------------------------------------------------------------

def test_user_errors_pass_through() -> None:
    e = UserError("x")
    assert user_error(e) is e
    d = DatasetNotFoundError("cifar10", "/nowhere", "data_batch_1 ...", "download it")
    assert user_error(d) is d and "cifar10 dataset not found at /nowhere" in d.line()


def test_hydra_composition_errors() -> None:
    err = user_error(_raised(lambda: compose("train", ["model=nope"])))
    assert err is not None and err.what == "unknown model 'nope'" and err.where == "option model=nope"
    assert "small_cnn" in err.expected and err.expected.startswith("one of: ")

    err = user_error(_raised(lambda: compose("no_such_config")))  # a missing primary config: no options
    assert err is not None and err.where == "no_such_config" and "Cannot find primary config" in err.what

    err = user_error(_raised(lambda: compose("train", ["model=[unclosed"])))
    assert err is not None and err.what == "cannot parse override 'model=[unclosed'"
    assert err.expected == "key=value with a YAML value (quote lists and dicts)"

    err = user_error(_raised(lambda: compose("train", ["trainer.max_epochz=1"])))
    assert err is not None and err.line().startswith("error: Could not override 'trainer.max_epochz'")
    assert "\n" not in err.line()

    from omegaconf.errors import ConfigKeyError

    wrapped = HydraException("Could not override 'trainer.zz'.\nTo append to your config use +trainer.zz=1")
    wrapped.__cause__ = ConfigKeyError("Key 'zz' is not in struct")
    wrapped.__cause__.full_key = "trainer.zz"
    err = user_error(wrapped)
    assert err is not None and err.what == "Could not override 'trainer.zz'" and err.where == "option trainer.zz"
    assert err.expected.startswith("a key of the composed config")

    plain = user_error(HydraException("a plain hydra problem\nsecond line"))
    assert plain is not None and plain.line() == "error: a plain hydra problem; second line"


def test_omegaconf_errors_name_the_key() -> None:
    err = user_error(_raised(lambda: OmegaConf.create({"grp": {"zz": "???"}}).grp.zz))
    assert err is not None and err.what == "missing required value grp.zz" and err.where == "option grp.zz"
    assert err.expected == "set it on the command line, e.g. grp.zz=VALUE"

    err = user_error(_raised(lambda: OmegaConf.create({"qq": "${nope}"}).qq))
    assert err is not None and err.what == "Interpolation key 'nope' not found" and err.where == "option qq"

    def struct_key() -> None:
        cfg = OmegaConf.create({"a": 1})
        OmegaConf.set_struct(cfg, True)
        cfg.qq  # noqa: B018

    err = user_error(_raised(struct_key))
    assert err is not None and "Key 'qq' is not in struct" in err.what


def test_instantiation_errors_are_user_errors_only_when_their_cause_is() -> None:
    missing = Path("/nonexistent/model.safetensors")
    err = user_error(_raised(lambda: instantiate({"_target_": "rws.utils.io.load_safetensors", "path": str(missing)})))
    assert err is not None and "rws.utils.io.load_safetensors" in err.what and str(missing) in err.what
    # a missing argument of the target: the config is wrong
    err = user_error(_raised(lambda: instantiate({"_target_": "rws.errors.UserError"})))
    assert err is not None and "missing 1 required positional argument: 'what'" in err.what
    # a library's ValueError inside the target is a bug
    assert user_error(_raised(lambda: instantiate({"_target_": "builtins.int", "_args_": ["x"]}))) is None


def test_missing_files_and_rws_value_errors() -> None:
    err = user_error(_raised(lambda: open("/nonexistent/file.txt")))
    assert err is not None and "No such file or directory" in err.what and err.where is None  # name in msg

    class Gone(FileNotFoundError):  # a message that does not name the file: the file is added
        def __str__(self) -> str:
            return "checkpoint missing"

    gone = Gone()
    gone.filename = "/data/x.bin"
    err = user_error(gone)
    assert err is not None and err.line() == "error: checkpoint missing, /data/x.bin"

    from rws.pipelines.runner import Step, check_plan

    err = user_error(_raised(lambda: check_plan([Step("a", "a", ()), Step("a", "a", ())])))
    assert err is not None and "two steps are named 'a'" in err.what  # a ValueError raised by rws
    assert user_error(_raised(lambda: int("x"))) is None                 # ... by Python / a library: a bug
    assert user_error(ValueError("never raised")) is None                # no traceback: not rws's
    assert user_error(RuntimeError("a bug")) is None and user_error(KeyError("k")) is None


# -- rws.cli.entry ---------------------------------------------------------------------------------

def test_check_required_lists_every_missing_value() -> None:
    cfg = OmegaConf.create({"a": "???", "b": {"c": "???", "ok": 1}, "l": [1, "???"], "i": "${a}", "n": None})
    with pytest.raises(UserError) as e:
        check_required(cfg)
    assert e.value.what == "missing required values a, b.c, l[1]" and e.value.where == "options a, b.c, l[1]"
    assert e.value.expected == "set on the command line, e.g. a=VALUE"
    with pytest.raises(UserError, match="^missing required value x, option x"):
        check_required(OmegaConf.create({"x": "???", "y": 2}))
    check_required(OmegaConf.create({"x": 1, "i": "${x}"}))  # nothing missing: no error
    check_required({"not": "a DictConfig"})


def test_run_task_returns_reports_or_reraises(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = OmegaConf.create({"x": 1})
    assert run_task(lambda c: c.x + 1, cfg) == 2
    with pytest.raises(SystemExit) as e:
        run_task(lambda c: (_ for _ in ()).throw(UserError("bad x", "option x", "an int")), cfg)
    assert e.value.code == 2 and capsys.readouterr().err == "error: bad x, option x, an int\n"
    with pytest.raises(SystemExit) as e:
        run_task(lambda c: c, OmegaConf.create({"x": "???"}))  # checked before the task runs
    assert e.value.code == 2 and "missing required value x" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="a genuine bug"):
        run_task(lambda c: (_ for _ in ()).throw(RuntimeError("a genuine bug")), cfg)
    with pytest.raises(SystemExit) as e:
        report(UserError("one\nline"))
    assert e.value.code == 2 and capsys.readouterr().err == "error: one; line\n"


def _hydra_cfg(run_dir: Path, subdir: str | None = ".hydra", job: str = "train") -> object:
    return OmegaConf.create({"hydra": {"run": {"dir": str(run_dir)}, "output_subdir": subdir, "job": {"name": job}}})


def test_output_guard_puts_back_what_hydra_wrote(tmp_path: Path) -> None:
    existing = tmp_path / "existing"
    (existing / ".hydra").mkdir(parents=True)
    (existing / ".hydra" / "config.yaml").write_text("old: config\n")
    (existing / "result.txt").write_text("kept\n")
    guard = OutputGuard(anything=1)
    guard.on_run_start(_hydra_cfg(existing))
    (existing / ".hydra" / "config.yaml").write_text("new: config\n")  # what Hydra writes at run start
    (existing / ".hydra" / "overrides.yaml").write_text("[]\n")
    (existing / "train.log").write_text("log\n")
    OutputGuard.undo()
    assert (existing / ".hydra" / "config.yaml").read_text() == "old: config\n"
    assert not (existing / ".hydra" / "overrides.yaml").exists() and not (existing / "train.log").exists()
    assert (existing / "result.txt").read_text() == "kept\n"
    OutputGuard.undo()  # once only: a second undo does nothing

    fresh = tmp_path / "a" / "b" / "run"  # created by Hydra: removed again, with its empty parents
    guard.on_run_start(_hydra_cfg(fresh, subdir=None, job="evaluate"))
    fresh.mkdir(parents=True)
    (fresh / "evaluate.log").write_text("log\n")
    OutputGuard.undo()
    assert not (tmp_path / "a").exists() and tmp_path.exists()

    kept = tmp_path / "k" / "run"  # a directory the task filled is left alone
    guard.on_run_start(_hydra_cfg(kept))
    (kept / ".hydra").mkdir(parents=True)
    (kept / "output.json").write_text("{}")
    OutputGuard.undo()
    assert (kept / "output.json").exists() and not (kept / ".hydra").exists()

    guard.on_run_start(OmegaConf.create({"hydra": {"run": {"dir": "${nope}"}}}))  # cannot resolve yet
    assert OutputGuard._state is None


def test_hydra_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    seen = []

    @hydra_entry("storage")
    def task(cfg):
        seen.append(cfg)
        if cfg.get("boom"):
            raise RuntimeError("a genuine bug")
        return "ran"

    plain = OmegaConf.create({"given": True})  # called with a config: the plain task, no Hydra
    assert task.task.__name__ == "task" and task(plain) == "ran" and seen == [plain]
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    run_dir = tmp_path / "run"

    def cli(*args: str) -> object:
        monkeypatch.setattr(sys, "argv", ["storage", f"hydra.run.dir={run_dir}", *args])
        return task()

    with pytest.raises(SystemExit) as e:  # a ??? value: one line, exit 2, no run directory left
        cli("out=???")
    assert e.value.code == 2 and capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: missing required value out, option out, set on the command line, e.g. out=VALUE")
    assert not run_dir.exists() and "HYDRA_FULL_ERROR" not in os.environ
    with pytest.raises(SystemExit) as e:  # a composition error, raised by Hydra before the task
        cli("model=nope")
    assert e.value.code == 2 and "error: " in capsys.readouterr().err
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    with pytest.raises(RuntimeError, match="a genuine bug"):  # a bug keeps its exception
        cli("+boom=true")
    assert os.environ["HYDRA_FULL_ERROR"] == "0"  # the caller's value is put back
    cli(f"out={tmp_path / 'out'}")  # a good run: the task gets the composed config, Hydra's files stay
    assert seen[-1].run_name == "storage" and seen[-1].out == str(tmp_path / "out")
    assert (run_dir / ".hydra" / "config.yaml").is_file()
