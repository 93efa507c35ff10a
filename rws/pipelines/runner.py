"""The one pipeline runner: a plan is a list of Steps, each a real call of the project's own CLIs.

    steps = plan(settings, out)          # pure: nothing runs, nothing is written
    run(steps, jobs=2)                   # run what is not done yet, two at a time

A Step says what to run (``argv`` after ``python``), how to tell it already ran (``done``: a file
that exists once the step finished; the step is then skipped, so a re-run resumes), what must run
first (``needs``: names of earlier steps) and, for steps that two drivers on the same output
directory may both reach, a ``lock`` file: the first driver takes it (the file holds its pid), the
other one goes on with the next free step and later waits for the held one to be done. A lock
whose pid is dead is taken over.

Resuming never reuses a step run with other settings: with ``record_dir`` (the drivers pass
``<out>/.steps``), a step writes ``<record_dir>/<step name>.json``, its settings (argv, environment,
the content of the files it reads), before it starts, so a step killed half-way still has the record
of what it was doing, with the run ids of the steps it builds on. A done step whose record differs
is refused (exit 2, naming the first differing argument) instead of skipped, e.g. a ``--smoke`` run
and then a full run into one ``--out``; so is one whose needed steps were run again since, and one
without a record (an output of an rws from before records: its settings are unknown).

``run`` starts every step whose needs are finished, in plan order, up to ``jobs`` at once. So a
list of independent training steps runs in parallel, a chain runs in order, and two chains (the
CIFAR-10 and the Tiny-ImageNet models of rws_cpu) interleave on the free cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

# Hydra entry points (``python -m <module>``) and the config each composes: lets tests compose a
# step's overrides with rws.config.compose to prove they are valid.
HYDRA_APPS: dict[str, str] = {
    "rws.cli.train": "train",
    "rws.cli.evaluate": "evaluate",
    "rws.cli.sweep": "sweep",
    "rws.stages.extract": "extract",
    "rws.stages.patch": "patch",
    "rws.stages.storage": "storage",
}


@dataclass(frozen=True)
class Step:
    """One command of a pipeline. ``argv`` are the interpreter's arguments (``-m rws.cli.train ...``)."""
    name: str                                   # unique in a plan; what other steps' ``needs`` name
    title: str                                  # the line printed when it runs
    argv: tuple[str, ...]
    done: Path | None = None                    # exists => finished: skip it
    needs: tuple[str, ...] = ()                 # steps that must finish first (earlier in the plan)
    env: Mapping[str, str] = field(default_factory=dict)
    lock: Path | None = None                    # claim file shared by drivers on the same output dir
    log: Path | None = None                     # stdout + stderr go to this file instead of the console
    mark_done: bool = False                     # write ``done`` after success (the step leaves no marker itself)
    files: Mapping[Path, str] = field(default_factory=dict)  # files the step reads (spec files), written before it runs
    tag: str = ""                               # the pipeline stage it belongs to ("train", "eval", ...)
    cosmetic: tuple[str, ...] = ()              # argv items that do not change the result (logger options):
                                                # left out of the step's settings record

    def command(self) -> list[str]:
        return [sys.executable, *self.argv]

    def shell(self) -> str:
        """The step as one pasteable shell line (environment settings first)."""
        env = [f"{k}={shlex.quote(v)}" for k, v in self.env.items()]
        return " ".join([*env, *(shlex.quote(c) for c in self.command())])

    def hydra_app(self) -> tuple[str, list[str]] | None:
        """(config name, overrides) when the step runs a Hydra entry point, else None."""
        if len(self.argv) >= 2 and self.argv[0] == "-m" and self.argv[1] in HYDRA_APPS:
            return HYDRA_APPS[self.argv[1]], list(self.argv[2:])
        return None


def check_plan(steps: Sequence[Step]) -> None:
    """Names are unique and every ``needs`` names an earlier step (so a plan cannot deadlock)."""
    seen: set[str] = set()
    for st in steps:
        if st.name in seen:
            raise ValueError(f"two steps are named {st.name!r}; step names must be unique in a plan")
        missing = [n for n in st.needs if n not in seen]
        if missing:
            raise ValueError(f"step {st.name!r} needs {missing}, which are not earlier steps of the plan")
        if st.mark_done and st.done is None:
            raise ValueError(f"step {st.name!r} has mark_done=True but no done marker")
        seen.add(st.name)


def select(steps: Sequence[Step], tags: Iterable[str]) -> list[Step]:
    """The steps whose tag is in ``tags`` (``--stages``); needs on dropped steps are taken as met."""
    tags = set(tags)
    kept = [st for st in steps if st.tag in tags]
    names = {st.name for st in kept}
    return [replace(st, needs=tuple(n for n in st.needs if n in names)) for st in kept]


# -- locks ----------------------------------------------------------------------------------------

def lock_file(run_dir: Path) -> Path:
    """The claim file of a run directory: ``<parent>/.<name>.lock``."""
    return run_dir.parent / f".{run_dir.name}.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim(lock: Path) -> bool:
    """Take ``lock`` for this process (the file holds our pid); False while another live process
    holds it. A stale lock (dead pid) is taken over."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                holder = 0
            if holder and holder != os.getpid() and _pid_alive(holder):
                return False
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


# -- running --------------------------------------------------------------------------------------

def _is_done(st: Step) -> bool:
    return st.done is not None and Path(st.done).exists()


def step_settings(st: Step) -> dict[str, Any]:
    """What a step's result depends on: its arguments, environment and the files it reads."""
    return {"argv": [a for a in st.argv if a not in st.cosmetic], "env": dict(sorted(st.env.items())),
            "files": {str(p): hashlib.sha1(t.encode()).hexdigest() for p, t in sorted(st.files.items())}}


def record_file(record_dir: Path, st: Step | str) -> Path:
    name = st if isinstance(st, str) else st.name
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)
    return Path(record_dir) / f"{safe}.json"


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def _inputs(record_dir: Path, st: Step) -> dict[str, str | None]:
    """The run id of each step ``st`` needs, as their records hold it now: a step made again gets a
    new id, so the steps built on its old output no longer match."""
    return {n: (_read_record(record_file(record_dir, n)) or {}).get("run_id") for n in st.needs}


def write_record(record_dir: Path | None, st: Step) -> None:
    if record_dir is None:
        return
    import uuid

    from rws.utils.io import write_json

    write_json(record_file(record_dir, st), {**step_settings(st), "inputs": _inputs(record_dir, st),
                                             "run_id": uuid.uuid4().hex})


def _difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    """The first difference between a step's record and its settings now, for the error line; None
    when they match. Inputs are compared for the needs both know (a --stages selection drops some)."""
    a, b = list(old.get("argv", [])), list(new.get("argv", []))
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"argument {i}: {x!r} then, {y!r} now"
    if len(a) != len(b):
        extra = a[len(b):] or b[len(a):]
        return f"arguments {extra!r} {'dropped' if len(a) > len(b) else 'added'}"
    for key in ("env", "files"):
        if old.get(key) != new.get(key):
            return f"its {key} differ"
    then, now = old.get("inputs") or {}, new.get("inputs") or {}
    remade = [n for n in now if n in then and then[n] != now[n]]
    if remade:
        return f"the step(s) it builds on were run again since: {', '.join(remade)}"
    return None


def check_record(record_dir: Path | None, st: Step) -> None:
    """A done step may be skipped only if it ran with the same settings, on the outputs its needs
    have now: raise UserError otherwise, also when there is no record (settings unknown)."""
    if record_dir is None:
        return
    from rws.errors import UserError

    path = record_file(record_dir, st)
    expected = ("the same settings to resume, or a new --out (or delete the outputs of that step and of every "
                "step after it)")
    if not path.exists():
        raise UserError(f"step {st.name!r} is done but there is no record of the settings it ran with "
                        "(an output of an older rws)", f"done marker {st.done}, record {path}", expected)
    old = _read_record(path)
    if old is None:
        raise UserError(f"step {st.name!r} is done but the record of its settings is unreadable",
                        f"record {path}", expected)
    new = {**json.loads(json.dumps(step_settings(st))), "inputs": _inputs(record_dir, st)}
    why = _difference(old, new)
    if why is not None:
        raise UserError(f"step {st.name!r} already finished with other settings ({why})",
                        f"record {path} (done marker {st.done})", expected)


def check_records(steps: Sequence[Step], record_dir: Path | None) -> None:
    """``check_record`` for every done step: a driver calls it before it writes anything (plan.json)."""
    for st in steps:
        if _is_done(st):
            check_record(record_dir, st)


def _execute(st: Step, record_dir: Path | None = None) -> float:
    """Run one step as a subprocess; raise SystemExit naming the command when it fails."""
    for path, text in st.files.items():
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    write_record(record_dir, st)  # before it starts: the record says what a killed step was running
    where = f" (log: {st.log})" if st.log else ""
    print(f"[run ] {st.title}{where}\n       {st.shell()}", flush=True)
    t0 = time.time()
    env = {**os.environ, **st.env}
    try:
        if st.log:
            Path(st.log).parent.mkdir(parents=True, exist_ok=True)
            with open(st.log, "w") as log:
                rc = subprocess.run(st.command(), env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        else:
            rc = subprocess.run(st.command(), env=env).returncode
    finally:
        if st.lock is not None:
            Path(st.lock).unlink(missing_ok=True)
    if rc != 0:
        tail = f"; see {st.log}" if st.log else ""
        raise SystemExit(f"step failed ({st.title}), exit code {rc}{tail}: {st.shell()}")
    if st.mark_done:
        Path(st.done).parent.mkdir(parents=True, exist_ok=True)  # type: ignore[arg-type]
        Path(st.done).touch()  # type: ignore[arg-type]
    dt = time.time() - t0
    print(f"[done] {st.title} in {dt:.1f}s", flush=True)
    return dt


def _late_refusal(record_dir: Path | None, st: Step, running: Mapping[Future, Step]) -> BaseException | None:
    """For a step found done during the run (another driver on the same --out finished it): the
    UserError if it ran with other settings, printed at once (it is raised when the running steps
    are done; no new step starts), else None."""
    try:
        check_record(record_dir, st)
    except Exception as e:  # noqa: BLE001 - UserError
        from rws.errors import one_line

        waiting = f" (waiting for {len(running)} running step(s) to finish)" if running else ""
        print(f"[stop] {one_line(str(e))}{waiting}", flush=True)
        return e
    return None


def run(steps: Sequence[Step], jobs: int = 1, poll_s: float = 10.0,
        record_dir: Path | None = None) -> dict[str, float]:
    """Run ``steps``: finished ones (done marker present) are skipped, the rest start in plan order
    as soon as their needs are finished, at most ``jobs`` at once. Returns seconds per step run here.
    On a failure no new step starts; the running ones finish, then SystemExit is raised.
    ``record_dir``: keep each step's settings there and refuse a done step run with other settings
    (a UserError, before anything runs)."""
    check_plan(steps)
    check_records(steps, record_dir)  # all refusals up front: nothing runs when one finished step does not match
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    pending = list(steps)
    finished: set[str] = set()
    held: list[Step] = []        # claimed by another driver: polled until done
    timings: dict[str, float] = {}
    failure: BaseException | None = None
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        running: dict[Future, Step] = {}
        while (pending or held or running) and failure is None:
            for st in list(held):
                if _is_done(st):
                    failure = failure or _late_refusal(record_dir, st, running)  # done by another driver
                    if failure is not None:
                        break
                    print(f"[done] {st.title}: finished by another driver", flush=True)
                    held.remove(st)
                    finished.add(st.name)
                elif st.lock is not None and claim(st.lock):  # its holder died: run it here
                    held.remove(st)
                    pending.insert(0, st)
            for st in list(pending):
                if not all(n in finished for n in st.needs):
                    continue
                if _is_done(st):
                    failure = failure or _late_refusal(record_dir, st, running)  # done by another driver
                    if failure is not None:
                        break
                    print(f"[skip] {st.title}: {st.done} exists", flush=True)
                    pending.remove(st)
                    finished.add(st.name)
                    continue
                if len(running) >= jobs:
                    continue
                if st.lock is not None and not claim(st.lock):
                    print(f"[busy] {st.title}: another driver is running it; going on with the next step", flush=True)
                    pending.remove(st)
                    held.append(st)
                    continue
                pending.remove(st)
                running[pool.submit(_execute, st, record_dir)] = st
            if failure is not None:
                break
            if not running:
                if held:
                    time.sleep(poll_s)
                    continue
                if pending:  # cannot happen for a checked plan; guards against a silent hang
                    raise RuntimeError(f"no step can start: {[st.name for st in pending]}")
                break
            done, _ = wait(list(running), timeout=poll_s if held else None, return_when=FIRST_COMPLETED)
            for fut in done:
                st = running.pop(fut)
                try:
                    timings[st.name] = fut.result()
                    finished.add(st.name)
                except BaseException as e:  # noqa: BLE001 - SystemExit from _execute included
                    failure = failure or e
        for fut in list(running):  # after a failure: let the running ones finish
            try:
                timings[running[fut].name] = fut.result()
            except BaseException:  # noqa: BLE001 - the first failure is the one reported
                pass
    if failure is not None:
        raise failure
    return timings


def run_and_report(name: str, steps: Sequence[Step], out: Path, info: Mapping[str, Any],
                   report: Callable[[Path, Mapping[str, Any]], str], jobs: int = 2) -> None:
    """A study driver's tail: write ``plan.json`` (what the report is built from), run the steps, print
    the report's markdown, write ``timings.json``: seconds per step, merged with the file's earlier
    entries (a resumed run keeps the times of the steps it skipped), and ``total``, the wall time of
    all runs into ``out``."""
    from rws.utils.io import write_json

    check_records(steps, out / ".steps")  # a refused run leaves plan.json (what the report reads) alone
    write_json(out / "plan.json", dict(info))
    t0 = time.time()
    timings = run(steps, jobs=jobs, record_dir=out / ".steps")
    print("\n" + report(out, info))
    path = out / "timings.json"
    try:
        earlier = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        earlier = {}
    merged = {**earlier, **{k: round(v, 1) for k, v in timings.items()}}
    merged["total"] = round(float(earlier.get("total", 0.0)) + time.time() - t0, 1)
    write_json(path, merged)
    print(f"\n{name} finished in {time.time() - t0:.0f}s; everything in {out}")


def study_parser(doc: str | None, default_out: str) -> argparse.ArgumentParser:
    """The options every study driver has: --out, --smoke, --print-plan (add its own after)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=default_out)
    p.add_argument("--smoke", action="store_true", help="1 epoch, a few images per class: checks the chain runs")
    p.add_argument("--print-plan", action="store_true", help="print every step as a shell command and exit")
    return p


def print_or_run(name: str, steps: Sequence[Step], out: Path, info: Mapping[str, Any],
                 report: Callable[[Path, Mapping[str, Any]], str], print_plan: bool) -> None:
    """``--print-plan``: every step as a pasteable shell line; otherwise ``run_and_report``."""
    if print_plan:
        for st in steps:
            print(f"# {st.title}\n{st.shell()}")
        return
    run_and_report(name, steps, out, info, report)
