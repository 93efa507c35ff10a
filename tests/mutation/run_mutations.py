#!/usr/bin/env python
"""Mutation check: apply each deliberate breakage of ``mutations.py`` to a temporary copy of the
repository, run the tests selected for it there, and require them to FAIL.

    .venv/bin/python tests/mutation/run_mutations.py              # all, 2 workers
    .venv/bin/python tests/mutation/run_mutations.py --list
    .venv/bin/python tests/mutation/run_mutations.py --only 'pgd_*' --only 'corruption_identity[fog]'

How one mutation runs: rws/, tests/, the top-level .py files and pyproject.toml are copied into a fresh
temporary directory, ``old`` is replaced by ``new`` in the mutation's file (an error if ``old`` does not
occur there exactly once), and one pytest session (``-x -q -p no:cacheprovider``) runs the mutation's
tests with the copy as working directory and ``PYTHONPATH=<copy>``, so the copy's ``rws`` is imported
and not the editable install of this checkout (sys.path entries come before the editable finder). The
``copy_guard`` plugin verifies that after every session that passed; the ``sanity_copy_is_imported``
mutation (an exception in the copy's rws/__init__.py) must be caught, which it cannot be if the
original were imported. A baseline session runs every selected test on an unmutated copy first: it
must pass, or the results mean nothing.

Sessions are forked from this process after it has imported torch and the other heavy dependencies
(never rws), which saves their import time in every session (``--spawn`` starts fresh interpreters
instead). Outcome per mutation: ``caught`` (pytest exit status 1 or 2: failures or errors, e.g. the
mutant does not import), ``SURVIVED`` (0), ``timeout`` (counted as caught, flagged), or ``error``
(exit status 3-5: internal error, unknown node id, nothing collected; or 99: the wrong rws imported).

Exit status: 0 when every mutation is caught, 1 when one survived, 2 on errors (a stale mutation,
a failing baseline, a test selection that no longer exists).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

from mutations import MUTATIONS, Mutation  # noqa: E402  (this folder, not a package)

PYTEST_OPTS = ["-x", "-q", "-p", "no:cacheprovider", "-p", "copy_guard", "--no-header", "-rfE"]
# Imported once here, before forking; never rws itself.
PRELOAD = ("numpy", "scipy", "scipy.ndimage", "scipy.optimize", "torch", "torch.nn.functional", "pytest", "PIL.Image",
           "cv2", "sklearn.datasets", "omegaconf", "hydra", "safetensors.torch", "torchvision", "timm",
           "pytorch_lightning", "torchmetrics", "torchattacks", "imagecorruptions", "tqdm", "matplotlib")
COPY_DIRS = ("rws", "tests")
COPY_GLOBS = ("*.py", "pyproject.toml")
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "mutation-results")


class StaleMutation(Exception):
    pass


@dataclass
class Job:
    name: str
    args: list[str]
    mutation: Mutation | None = None  # None: the baseline
    rc: int | None = None
    seconds: float = 0.0
    outcome: str = ""
    log: str = ""
    pid: int = 0
    start: float = 0.0
    copy: Path | None = None
    tail: str = ""
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ copies
def make_copy(dest: Path) -> Path:
    dest.mkdir(parents=True)
    for d in COPY_DIRS:
        shutil.copytree(ROOT / d, dest / d, ignore=IGNORE)
    for pattern in COPY_GLOBS:
        for p in ROOT.glob(pattern):
            if p.is_file():
                shutil.copy2(p, dest / p.name)
    return dest


def apply_mutation(copy: Path, m: Mutation) -> None:
    path = copy / m.file
    text = path.read_text()
    n = text.count(m.old)
    if n != 1:
        raise StaleMutation(f"{m.id}: the old text occurs {n} times in {m.file} (must be exactly once); "
                            f"update tests/mutation/mutations.py:\n{m.old!r}")
    path.write_text(text.replace(m.old, m.new))


def check_mutations(mutations: list[Mutation]) -> list[str]:
    """Problems with the list itself, against this checkout: stale old texts, missing test files."""
    problems = []
    ids = [m.id for m in mutations]
    problems += [f"duplicate mutation id {i}" for i in sorted({i for i in ids if ids.count(i) > 1})]
    for m in mutations:
        path = ROOT / m.file
        if not path.is_file():
            problems.append(f"{m.id}: {m.file} does not exist")
            continue
        n = path.read_text().count(m.old)
        if n != 1:
            problems.append(f"{m.id}: the old text occurs {n} times in {m.file} (must be exactly once):\n    {m.old!r}")
        if m.old == m.new:
            problems.append(f"{m.id}: old and new are the same")
        for a in test_paths(m.tests):
            if not (ROOT / a.split("::")[0]).is_file():
                problems.append(f"{m.id}: test file {a.split('::')[0]} does not exist")
    return problems


def test_paths(args: tuple[str, ...] | list[str]) -> list[str]:
    """The node ids / files among pytest arguments (dropping options and their values)."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in ("-k", "-m"):
            skip = True
        elif not a.startswith("-"):
            out.append(a)
    return out


def baseline_args(mutations: list[Mutation]) -> list[str]:
    """Every selected test once: whole files where a mutation selects a file, else the node ids."""
    paths = [p for m in mutations for p in test_paths(m.tests)]
    files = {p for p in paths if "::" not in p}
    out: list[str] = []
    for p in paths:
        if p in out or ("::" in p and p.split("::")[0] in files):
            continue
        out.append(p)
    return out


# ---------------------------------------------------------------------------------------- sessions
def _child_env(job: Job) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(job.copy), str(HERE)]), "RWS_MUTATION_COPY": str(job.copy),
            "RWS_MUTATION_REPORT": job.log + ".json", "PYTHONDONTWRITEBYTECODE": "1"}


def _set_child_env(job: Job) -> None:
    os.environ.update(_child_env(job))


def start_forked(job: Job) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    # child: own process group (a timeout kills the tests' subprocesses too), output to the log
    rc = 3
    try:
        os.setpgid(0, 0)
        fd = os.open(job.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        os.chdir(job.copy)
        _set_child_env(job)
        sys.path[:] = [str(job.copy), str(HERE)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT]
        if "rws" in sys.modules or any(k.startswith("rws.") for k in sys.modules):
            print("run_mutations: rws was imported before the fork", flush=True)
            os._exit(98)
        import pytest

        rc = int(pytest.main([*PYTEST_OPTS, *job.args]))
    except BaseException as e:  # noqa: BLE001  (anything: report, never return into the parent's code)
        try:
            print(f"run_mutations: session crashed: {e!r}", flush=True)
        except BaseException:  # noqa: BLE001
            pass
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(rc)


def start_spawned(job: Job) -> int:
    env = {**os.environ, **_child_env(job)}
    with open(job.log, "wb") as log:
        # reaped with os.waitpid like the forked ones; start_new_session: its own process group
        p = subprocess.Popen([sys.executable, "-m", "pytest", *PYTEST_OPTS, *job.args], cwd=job.copy, env=env,
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    p.returncode = 0  # never polled: keeps Popen.__del__ quiet
    return p.pid


def classify(job: Job, timed_out: bool) -> str:
    """caught / SURVIVED / timeout / error, from the exit status and the copy_guard report."""
    if timed_out:
        return "timeout"
    try:
        report = json.loads(Path(job.log + ".json").read_text())
    except (OSError, ValueError):
        report = {}
    job.extra["report"] = report
    rc = job.rc
    if rc in (1, 2) or (rc == 4 and report.get("collect_errors")):
        # failures, or errors such as a test module the mutant broke
        return "caught" if job.mutation is not None else "failed"
    if rc == 0:
        where = report.get("rws_file")
        if not where or Path(job.copy).resolve() not in Path(where).resolve().parents:
            job.extra["problem"] = f"rws was imported from {where!r}, not from the copy {job.copy}"
            return "error"
        return "SURVIVED" if job.mutation is not None else "passed"
    return "error"


def tail(path: str, n: int = 25) -> str:
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def run_jobs(jobs: list[Job], workers: int, timeout: float, spawn: bool, tmp: Path, keep: bool,
             verbose: bool, preload=None) -> None:
    """Run ``jobs`` ``workers`` at a time. ``preload`` (forked sessions): called once after the first job
    started, which is spawned instead, so the imports overlap with it (the baseline, the longest)."""
    running: dict[int, Job] = {}
    try:
        _run_jobs(jobs, running, workers, timeout, spawn, tmp, keep, verbose, preload)
    finally:  # interrupted (Ctrl-C) or crashed: end the sessions still running, each by its process group
        for pid in running:
            try:
                os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


def _run_jobs(jobs: list[Job], running: dict[int, Job], workers: int, timeout: float, spawn: bool, tmp: Path,
              keep: bool, verbose: bool, preload) -> None:
    pending = list(jobs)
    baseline_failed = False
    while pending or running:
        while pending and len(running) < workers and not baseline_failed:
            job = pending.pop(0)
            job.copy = make_copy(tmp / f"{len(jobs) - len(pending):03d}")
            job.log = str(tmp / f"{job.copy.name}.log")
            if job.mutation is not None:
                try:
                    apply_mutation(job.copy, job.mutation)
                except StaleMutation as e:  # the file changed since check_mutations
                    job.outcome, job.extra["problem"] = "error", str(e)
                    _finish(job, keep, verbose)
                    continue
            job.start = time.monotonic()
            job.pid = (start_spawned if spawn or preload is not None else start_forked)(job)
            running[job.pid] = job
            if preload is not None:
                preload()
                preload = None
        if baseline_failed and pending:
            for job in pending:
                job.outcome, job.rc = "skipped", None
            pending.clear()
        done_pid = 0
        status = 0
        try:
            done_pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            pass
        now = time.monotonic()
        if done_pid and done_pid in running:
            job = running.pop(done_pid)
            job.seconds = now - job.start
            job.rc = os.waitstatus_to_exitcode(status)
            job.outcome = classify(job, False)
            _finish(job, keep, verbose)
            if job.mutation is None and job.outcome != "passed":  # the baseline must pass, in the copy
                baseline_failed = True
            continue
        for pid, job in list(running.items()):
            if now - job.start > (timeout if job.mutation is not None else 2 * timeout):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                os.waitpid(pid, 0)
                running.pop(pid)
                job.seconds, job.rc = now - job.start, -9
                job.outcome = classify(job, True)
                _finish(job, keep, verbose)
                if job.mutation is None:
                    baseline_failed = True
        time.sleep(0.05)


def _finish(job: Job, keep: bool, verbose: bool) -> None:
    job.tail = tail(job.log)
    mark = {"caught": "ok", "timeout": "ok?", "SURVIVED": "!!", "error": "ERR"}.get(job.outcome, "")
    if job.mutation is None:
        mark = "ok" if job.outcome == "passed" else "ERR"
    if "problem" in job.extra:
        job.tail += "\n" + job.extra["problem"]
    print(f"  [{mark:>3}] {job.name:<42} {job.outcome:<9} "
          f"rc={job.rc} {job.seconds:6.1f} s", flush=True)
    if verbose or job.outcome in ("SURVIVED", "error") or (job.mutation is None and mark != "ok"):
        print("\n".join("      | " + line for line in job.tail.splitlines()), flush=True)
    if not keep and job.copy is not None:
        shutil.rmtree(job.copy, ignore_errors=True)


# ------------------------------------------------------------------------------------------ report
def write_reports(jobs: list[Job], out: Path, wall: float) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    rows = [{"id": j.name, "caught": j.outcome in ("caught", "timeout"), "outcome": j.outcome, "rc": j.rc,
             "seconds": round(j.seconds, 1), "caught_by": caught_by(j), "file": j.mutation.file,
             "why": j.mutation.why, "tests": list(j.mutation.tests)} for j in jobs if j.mutation is not None]
    base = next((j for j in jobs if j.mutation is None), None)
    data = {"wall_seconds": round(wall, 1), "baseline": None if base is None else
            {"rc": base.rc, "seconds": round(base.seconds, 1), "tests": base.args},
            "caught": sum(r["caught"] for r in rows), "total": len(rows), "mutations": rows}
    jpath, mpath = out / "mutations.json", out / "mutations.md"
    jpath.write_text(json.dumps(data, indent=1) + "\n")
    lines = ["| mutation | caught | seconds | breakage | caught by |", "|---|---|---:|---|---|"]
    lines += [f"| `{r['id']}` | {'yes' if r['caught'] else '**NO** (' + r['outcome'] + ')'} | {r['seconds']:.1f} | "
              f"{r['why']} | `{r['caught_by']}` |" for r in rows]
    head = (f"Mutation check: {data['caught']}/{data['total']} caught, {wall:.0f} s wall"
            + (f" (baseline {base.seconds:.0f} s, rc {base.rc})" if base else "") + "\n\n")
    mpath.write_text(head + "\n".join(lines) + "\n")
    return jpath, mpath


def caught_by(job: Job) -> str:
    """The first failing test (or the test module that failed to import) of a caught mutation."""
    report = job.extra.get("report", {})
    if job.outcome == "timeout":
        return "(timeout)"
    hits = report.get("failed") or report.get("collect_errors") or []
    return hits[0] if hits and job.outcome == "caught" else ""


def print_table(jobs: list[Job]) -> None:
    rows = [j for j in jobs if j.mutation is not None]
    w = max([len(j.name) for j in rows] + [8])
    print(f"\n{'mutation':<{w}}  caught  seconds  caught by (first failing test)")
    print(f"{'-' * w}  ------  -------  ------------------------------")
    for j in rows:
        caught = "yes" if j.outcome in ("caught", "timeout") else f"NO ({j.outcome})"
        print(f"{j.name:<{w}}  {caught:<6}  {j.seconds:7.1f}  {caught_by(j)}")


# -------------------------------------------------------------------------------------------- main
def select(only: list[str] | None) -> list[Mutation]:
    if not only:
        return list(MUTATIONS)
    # fnmatch treats [...] as a character class; match literal ids first, then as a glob with escaped brackets.
    def hit(m: Mutation, pat: str) -> bool:
        return m.id == pat or fnmatch.fnmatchcase(m.id, pat.replace("[", "[[]")) or fnmatch.fnmatchcase(m.id, pat)
    return [m for m in MUTATIONS if any(hit(m, p) for p in only)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", metavar="GLOB",
                    help="run the mutations whose id matches GLOB (repeatable; [ and ] are literal)")
    ap.add_argument("--list", action="store_true", help="list the mutations (id, file, tests) and exit")
    ap.add_argument("--workers", type=int, default=2, help="pytest sessions at a time (default 2)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per session before it is killed (default 300)")
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "mutation",
                    help="folder for mutations.json and mutations.md (default outputs/mutation)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated baseline session")
    ap.add_argument("--spawn", action="store_true", help="start each session as a fresh interpreter instead of forking")
    ap.add_argument("--keep", action="store_true", help="keep the temporary copies and logs")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every session's output tail")
    args = ap.parse_args(argv)

    mutations = select(args.only)
    if not mutations:
        print(f"no mutation matches {args.only}; see --list", file=sys.stderr)
        return 2
    if args.list:
        for m in mutations:
            print(f"{m.id:<45} {m.file:<32} {' '.join(m.tests)}")
        print(f"{len(mutations)} mutation(s)")
        return 0
    problems = check_mutations(mutations)
    if problems:
        print("stale mutation list (tests/mutation/mutations.py):\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2

    t0 = time.monotonic()
    spawn = args.spawn or not hasattr(os, "fork")
    # Before torch is imported here: forked sessions inherit this process's torch, spawned ones the env.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("WANDB_MODE", "offline")

    def preload() -> None:
        import importlib

        t = time.monotonic()
        for name in PRELOAD:
            try:
                importlib.import_module(name)
            except ImportError:
                pass
        assert "rws" not in sys.modules, "a preloaded module imported rws"
        print(f"  (preloaded {len(PRELOAD)} modules for the forked sessions in {time.monotonic() - t:.1f} s)",
              flush=True)

    jobs: list[Job] = []
    if not args.no_baseline:
        jobs.append(Job("baseline (no mutation)", baseline_args(mutations)))
    ordered = sorted(mutations, key=lambda m: not m.slow)  # stable: slow ones first, else list order
    jobs += [Job(m.id, list(m.tests), m) for m in ordered]
    print(f"{len(mutations)} mutation(s), {args.workers} worker(s), {'spawned' if spawn else 'forked'} sessions",
          flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="rws-mutation-"))
    try:
        run_jobs(jobs, args.workers, args.timeout, spawn, tmp, args.keep, args.verbose,
                 preload=None if spawn else preload)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"copies and logs kept in {tmp}")
    wall = time.monotonic() - t0
    order = {m.id: i for i, m in enumerate(mutations)}
    jobs.sort(key=lambda j: -1 if j.mutation is None else order[j.mutation.id])
    print_table(jobs)
    jpath, mpath = write_reports(jobs, args.out, wall)
    rows = [j for j in jobs if j.mutation is not None]
    caught = sum(j.outcome in ("caught", "timeout") for j in rows)
    survived = [j.name for j in rows if j.outcome == "SURVIVED"]
    errors = [j.name for j in rows if j.outcome in ("error", "skipped")]
    base = jobs[0] if jobs and jobs[0].mutation is None else None
    print(f"\n{caught}/{len(rows)} mutations caught in {wall:.0f} s wall; reports: {jpath}, {mpath}")
    if base is not None and base.outcome != "passed":
        print(f"ERROR: the baseline (unmutated copy) failed with rc={base.rc}: the selected tests must pass "
              f"before mutations mean anything.\n{base.tail}", file=sys.stderr)
        return 2
    if errors:
        print(f"ERROR: {len(errors)} mutation session(s) did not run cleanly: {', '.join(errors)}", file=sys.stderr)
        return 2
    if survived:
        print(f"FAIL: {len(survived)} mutation(s) survived (their tests passed): {', '.join(survived)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
