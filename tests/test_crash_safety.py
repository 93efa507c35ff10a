"""Crash safety (issue 10): train.py, evaluate.py and sweep.py are SIGKILLed while they write, then
rerun into the same directories. Each test checks that the files already there are intact (never
torn), that the rerun completes, that the result files hold no torn or duplicated rows, and that the
rerun recomputes nothing that had finished.

The kills are exact, not timed: ``RWS_FAULT_KILL_AT=<label>[:<n>]`` makes the process SIGKILL itself
the n-th time it reaches a named point (``rws.utils.io.fault_point``; labels in docs/CONTRACTS.md,
"Crash safety"): ``replace/<file>`` (a temp file written, before its rename), ``append-torn`` (half of
a cell's result rows written), ``cell`` (a cell's rows on disk).

Each run is the entry point's Hydra app (``rws.cli.<x>.main``, which ``python <x>.py`` runs) with a
command line, in a child forked from this process: a process of its own that really dies of SIGKILL,
without paying the interpreter, torch and Lightning imports (10-20 s on a loaded 2-core machine) per run.

What the rerun recomputed is counted from the files themselves: a measured cell rewrites its
correctness file (``correct/.../<spec_id>.safetensors``, a new inode: atomic writes rename a new file
over the old one), and a trained epoch writes its ``epochNNN.ckpt``.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch

# Imported once here, so the forked runs inherit them instead of importing them again each.
import rws.corruptions  # noqa: F401
import rws.data.datamodule  # noqa: F401
import rws.data.digits  # noqa: F401
import rws.evaluation.pipeline  # noqa: F401
import rws.methods.nominal  # noqa: F401
import rws.stages.sweep  # noqa: F401
import rws.training  # noqa: F401
from rws.cli.evaluate import main as evaluate_main
from rws.cli.sweep import main as sweep_main
from rws.cli.train import main as train_main
from rws.evaluation.results import ResultsWriter, cell_key, read_csv, read_jsonl, repair_torn_tail
from rws.utils.io import load_safetensors
from rws.weights.export import load_export, save_export

KILLED = -signal.SIGKILL  # the exit code multiprocessing gives a child killed by SIGKILL
MODEL_CFG = {"_target_": "rws.models.create_model", "name": "small_cnn", "num_classes": 10, "width": 0.25}


def _child(main: Callable[[], object], argv: list[str], kill_at: str | None, log: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    os.environ.pop("RWS_FAULT_KILL_AT", None)
    if kill_at:
        os.environ["RWS_FAULT_KILL_AT"] = kill_at
    sys.argv = argv
    main()


def _run(main: Callable[[], object], argv: list[str], log: Path, kill_at: str | None = None,
         timeout: float = 240) -> int:
    """``python <argv>`` (the Hydra app ``main``) in a forked child, killed at ``kill_at``; its exit code."""
    log.write_text(f"$ RWS_FAULT_KILL_AT={kill_at or ''} python {' '.join(argv)}\n")
    p = multiprocessing.get_context("fork").Process(target=_child, args=(main, argv, kill_at, str(log)))
    p.start()
    p.join(timeout)
    if p.is_alive():
        p.kill()
        p.join()
        pytest.fail(f"{argv[0]} ran past {timeout} s:\n{log.read_text()[-3000:]}")
    return p.exitcode


def _expect(code: int, want: int, log: Path) -> None:
    assert code == want, f"exit code {code}, expected {want}:\n{log.read_text()[-4000:]}"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def _correct_files(out: Path) -> dict[Path, tuple[int, int]]:
    return {p: _stamp(p) for p in sorted((out / "correct").rglob("*.safetensors"))}


def _recomputed(before: dict[Path, tuple[int, int]], out: Path) -> tuple[int, int]:
    """(cells whose correctness file the rerun wrote, cells it left alone)."""
    after = _correct_files(out)
    assert set(before) <= set(after)
    kept = sum(after[p] == before[p] for p in before)
    return len(after) - kept, kept


def _check_rows(jsonl: Path, n: int) -> list[dict]:
    """Every line of the file is one whole row (none torn), n rows, one per cell (none duplicated)."""
    text = jsonl.read_text()
    assert text.endswith("\n")
    rows = [json.loads(line) for line in text.splitlines()]  # raises on a torn or glued line
    keys = [cell_key(r) for r in rows]
    assert len(rows) == n and len(set(keys)) == n, keys
    assert len(read_csv(jsonl.with_suffix(".csv"))) == n
    return rows


def _export_not_mixed(export: Path) -> None:
    """An export load_export accepts is one export: metrics.json (when there) names these weights."""
    try:
        load_export(export)
    except FileNotFoundError:
        return  # refused as incomplete: fine
    metrics = export / "metrics.json"
    if metrics.is_file():
        assert json.loads(metrics.read_text())["model_sha256"] == _sha(export / "model.safetensors")


def _save_exports(root: Path, n: int) -> list[Path]:
    from rws.models import create_model

    out = []
    for i in range(n):
        torch.manual_seed(i)
        out.append(save_export(root / f"m{i}" / "export", create_model(**{k: v for k, v in MODEL_CFG.items()
                                                                           if k != "_target_"}), MODEL_CFG))
    return out


def test_train_killed_writing_the_checkpoint_then_the_export(tmp_path: Path) -> None:
    run = tmp_path / "run"
    ckpts, export = run / "checkpoints", run / "export"
    argv = ["train.py", "trainer=cpu", "data.subset_per_class=20", "test_after_fit=false",
            "trainer.enable_progress_bar=false", f"paths.output_dir={tmp_path}", f"hydra.run.dir={run}"]
    again = [*argv, "resume=auto", "trainer.max_epochs=2"]
    _expect(_run(train_main, [*argv, "trainer.max_epochs=1"], tmp_path / "1.log"), 0, tmp_path / "1.log")
    first = {p: _sha(p) for p in [ckpts / "last.ckpt", *export.iterdir()]}
    steps = torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"]

    # Killed at the end of epoch 1 with the new last.ckpt written to its temp file, not renamed: the
    # resume point and the export are the first run's, byte for byte (epoch001.ckpt, written and
    # renamed before last.ckpt, has replaced epoch000.ckpt: Lightning keeps the newest).
    _expect(_run(train_main, again, tmp_path / "2.log", kill_at="replace/last.ckpt"), KILLED, tmp_path / "2.log")
    assert {p: _sha(p) for p in first} == first
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["epoch"] == 0

    # Again, killed while the export is written (new weights renamed into place, model.yaml not yet):
    # epoch 1 is now committed, every file is whole, and the export is refused, never new weights
    # read with the old model.yaml and metrics.json.
    _expect(_run(train_main, again, tmp_path / "3.log", kill_at="replace/model.yaml"), KILLED, tmp_path / "3.log")
    last = torch.load(ckpts / "last.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (1, 2 * steps)
    load_safetensors(export / "model.safetensors")  # whole
    _export_not_mixed(export)
    with pytest.raises(FileNotFoundError, match="model.yaml"):
        load_export(export)
    epochs = {p: _stamp(p) for p in ckpts.glob("epoch*.ckpt")}

    # The rerun finishes: it trains no epoch again (no epoch checkpoint written) and writes a whole export.
    _expect(_run(train_main, again, tmp_path / "4.log"), 0, tmp_path / "4.log")
    assert {p: _stamp(p) for p in ckpts.glob("epoch*.ckpt")} == epochs
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 2 * steps
    for p in ckpts.glob("*.ckpt"):
        torch.load(p, weights_only=True)
    exp = load_export(export)
    assert exp.metrics["model_sha256"] == exp.sha256 and exp.metrics["metrics"]["epochs"] == 2
    assert exp.build()(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 2


def test_evaluate_killed_appending_a_row(tmp_path: Path) -> None:
    (export,) = _save_exports(tmp_path, 1)
    out = tmp_path / "eval"
    jsonl = out / "results.jsonl"
    argv = ["evaluate.py", f"models=[{export}]", f"out={out}", "device=cpu", "progress=false", "print_table=false",
            "test_subset=32",
            "suites=[clean,{name: corruptions, corruptions: [gaussian_noise, contrast], severities: [1, 2]}]"]

    # Killed halfway through appending the third cell's row: two whole rows and a torn line.
    log = tmp_path / "1.log"
    _expect(_run(evaluate_main, argv, log, kill_at="append-torn:3"), KILLED, log)
    text = jsonl.read_text()
    whole, torn = text.rsplit("\n", 1)[0] + "\n", text.rsplit("\n", 1)[1]
    assert len(whole.splitlines()) == 2 and torn
    with pytest.raises(json.JSONDecodeError):
        json.loads(torn)
    before = _correct_files(out)
    assert len(before) == 3  # a cell's correctness file is written before its rows

    # The rerun cuts the torn line off, keeps the two rows as they were and measures the other 3 cells.
    log = tmp_path / "2.log"
    _expect(_run(evaluate_main, argv, log), 0, log)
    assert jsonl.read_text().startswith(whole)
    _check_rows(jsonl, 5)
    assert _recomputed(before, out) == (3, 2)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["missing_cells"] == 0


def test_sweep_killed_mid_grid(tmp_path: Path) -> None:
    a, b = _save_exports(tmp_path, 2)
    out = tmp_path / "sweep"
    jsonl = out / "results.jsonl"
    argv = ["sweep.py", f"members=[{a},{b}]", f"out={out}", "grid=front", "grid.ws=[0,0.5,1]",
            "targets=[{name: clean, suite: clean, k: 32},"
            "{name: noise, suite: corruption, corruption: gaussian_noise, severity: 1, k: 32}]",
            "figures=false", "progress=false"]

    # 3 soups x 2 cells: killed after the third cell (the second soup's first), before the selection.
    log = tmp_path / "1.log"
    _expect(_run(sweep_main, argv, log, kill_at="cell:3"), KILLED, log)
    done = jsonl.read_text()
    assert len([json.loads(line) for line in done.splitlines()]) == 3 and done.endswith("\n")
    assert (out / "sweep.json").is_file() and not (out / "best.json").exists()
    before = _correct_files(out)

    log = tmp_path / "2.log"
    _expect(_run(sweep_main, argv, log), 0, log)
    assert "6 cells; 3 already done, 3 to run" in log.read_text()
    assert jsonl.read_text().startswith(done)
    rows = _check_rows(jsonl, 6)
    assert _recomputed(before, out) == (3, 3)
    assert len({r["spec_id"] for r in rows}) == 3
    best = json.loads((out / "best.json").read_text())
    assert best["single"]["spec_id"] in {r["spec_id"] for r in rows}


def test_a_torn_last_line_is_cut_off_and_a_whole_one_ended(tmp_path: Path) -> None:
    """What the writer does to a file a kill left without its final newline, before appending to it."""
    row = {"spec_id": "s", "suite": "clean", "condition": "clean", "level": "", "settings": "h", "value": 0.5}
    with ResultsWriter(tmp_path) as w:
        w.write([row, {**row, "condition": "fog"}])
    path = tmp_path / "results.jsonl"
    whole = path.read_text()
    assert not repair_torn_tail(path) and not repair_torn_tail(tmp_path / "none.jsonl")
    path.write_text(whole + json.dumps(row)[:20])  # torn: cut off
    assert repair_torn_tail(path) and path.read_text() == whole
    path.write_text(whole + json.dumps(row))  # a whole row without its newline: kept, ended
    assert repair_torn_tail(path) and path.read_text() == whole + json.dumps(row) + "\n"
    path.write_text('{"spec_id": "torn')  # the only line, torn
    with ResultsWriter(tmp_path) as w:
        w.write([row])
    assert read_jsonl(path) == [json.loads(line) for line in path.read_text().splitlines()]
    assert len(read_jsonl(path)) == 1
